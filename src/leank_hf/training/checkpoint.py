"""Trainer checkpoints (tensors and plain values, read with `torch.load(weights_only=True)`) and the CSV log."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

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
