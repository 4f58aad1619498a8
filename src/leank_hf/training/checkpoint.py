"""The run folder: trainer checkpoints (tensors and plain values, read with `torch.load(weights_only=True)`), the
check that a folder may take a run, and the CSV log."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from ..constants import CONFIG_NAME
from ..errors import LeanKUsageError

CHECKPOINT_NAME = "trainer_state.pt"
LOG_NAME = "training_log.csv"
LOG_FIELDS = (
    "step",
    "stage",
    "loss",
    "mse",
    "l1",
    "lr",
    "grad_norm",
    "mean_alpha",
    "soft_ratio",
    "mask_ratio",
    "seconds",
)


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `directory/trainer_state.pt` atomically (a crash never leaves a half-written checkpoint)."""
    path = Path(directory) / CHECKPOINT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Read the checkpoint written by `save_checkpoint`; raises `LeanKUsageError` if there is none."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise LeanKUsageError(f"nothing to resume: {path} does not exist; drop `resume` to start a new run")
    return torch.load(path, map_location="cpu", weights_only=True)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes under `torch.distributed` (`(0, 1)` without it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_run_folder(output_dir: str | os.PathLike | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a saved one unless `overwrite`, and `resume` without a folder.

    A folder holds a run when it has a checkpoint, a training log or a saved mask. With `overwrite`, the old
    checkpoint is deleted (a stale one could later be resumed by mistake); the log and the mask are rewritten.
    """
    if resume and overwrite:
        raise LeanKUsageError("`resume` continues the saved run and `overwrite` replaces it: pass only one")
    if output_dir is None:
        if resume:
            raise LeanKUsageError("`resume=True` needs the `output_dir` of the run to continue")
        return
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise LeanKUsageError(f"`output_dir` {str(folder)!r} is a file; pass a new or existing folder")
    held = [name for name in (f"checkpoint/{CHECKPOINT_NAME}", LOG_NAME, CONFIG_NAME) if (folder / name).is_file()]
    if held and not (resume or overwrite):
        raise LeanKUsageError(
            f"{str(folder)!r} already holds a run ({', '.join(held)}); continue it with resume (--resume), "
            "replace it with overwrite (--overwrite), or pick another output folder"
        )
    rank, world = rank_and_world()
    if overwrite and rank == 0:
        (folder / "checkpoint" / CHECKPOINT_NAME).unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()  # every process has looked before process 0 writes the new run


class CsvLog:
    """Append-only CSV of per-step losses; on resume, rows at or after the resumed step are dropped first."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) < resume_step]
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, LOG_FIELDS).writerow(
                {key: (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()}
            )
