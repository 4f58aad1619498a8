"""Where `train_masks` reports each step's metrics: the CSV log (default), TensorBoard, or nowhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LeanKUsageError
from .checkpoint import LOG_NAME, CsvLog

REPORT_TO = ("csv", "tensorboard", "none")


class TensorBoardLog:
    """Scalars of each step under `leank/<metric>` in `log_dir` (TensorBoard's `./runs/...` when `None`)."""

    def __init__(self, log_dir: Path | None, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise LeanKUsageError(
                "report_to='tensorboard' needs the tensorboard package: `pip install tensorboard`"
            ) from error
        # purge_step drops the events a resumed run writes again, as the CSV log drops its rows.
        self.writer = SummaryWriter(None if log_dir is None else str(log_dir), purge_step=resume_step)

    def append(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(f"leank/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()


class Reporter:
    """The trackers of a run: `log(row)` once per step, `close()` at the end."""

    def __init__(
        self,
        report_to: str | Sequence[str],
        output_dir: str | Path | None,
        resume_step: int | None,
        active: bool = True,
    ) -> None:
        """Open the trackers named by `report_to` (validated on every process; only `active` ones write).

        `"csv"` writes `output_dir/training_log.csv` (nothing without `output_dir`), `"tensorboard"` writes events
        to `output_dir/runs`, `"none"` reports nowhere. `resume_step` is the step a resumed run restarts from.
        """
        names = [report_to] if isinstance(report_to, str) else list(report_to)
        unknown = [name for name in names if name not in REPORT_TO]
        if unknown or not names or ("none" in names and len(names) > 1):
            raise LeanKUsageError(
                f"`report_to` takes one or more of {list(REPORT_TO[:2])}, or 'none' alone; got {report_to!r}"
            )
        self.logs: list[CsvLog | TensorBoardLog] = []
        if not active:
            return
        if "csv" in names and output_dir:
            self.logs.append(CsvLog(Path(output_dir) / LOG_NAME, resume_step))
        if "tensorboard" in names:
            self.logs.append(TensorBoardLog(Path(output_dir) / "runs" if output_dir else None, resume_step))

    def log(self, row: dict[str, Any]) -> None:
        for log in self.logs:
            log.append(row)

    def close(self) -> None:
        for log in self.logs:
            if isinstance(log, TensorBoardLog):
                log.close()
