"""`TrainSettings`: every option of the mask trainer, with its default, documentation and allowed range written once.

`leank-hf train` generates its settings options from these fields (`--kebab-case` name, type, default, range and the
`help` text), and `__post_init__` checks the same ranges for Python callers.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, Literal

from ..contract import Windows
from ..errors import LeanKUsageError

Bound = Literal[">= 0", ">= 1", "> 0", "(0, 1)", "[0, 1]"]
# The test of each bound (NaN fails every comparison, so it is never in range).
BOUNDS: dict[str, Callable[[float], bool]] = {
    ">= 0": lambda value: value >= 0,
    ">= 1": lambda value: value >= 1,
    "> 0": lambda value: value > 0,
    "(0, 1)": lambda value: 0 < value < 1,
    "[0, 1]": lambda value: 0 <= value <= 1,
}


def _setting(default: Any, help: str, *, bound: Bound | None = None, defines_run: bool = True) -> Any:
    """A field of `TrainSettings`: `help` documents it (and is its CLI help), `bound` is its allowed range, and
    `defines_run=False` marks how one invocation runs (free to change when a run is resumed)."""
    return field(default=default, metadata={"help": help, "bound": bound, "defines_run": defines_run})


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The options of a mask training run; each field is documented by its `help` metadata.

    The fields that define the run are saved with each checkpoint: a resumed run must use the same ones
    (`run_settings()`); `checkpoint_every`, `max_steps` and `gradient_checkpointing` may change on resume.

    Example:
        ```python
        >>> settings = TrainSettings(ratio=0.7, stage1_steps=300, stage2_steps=60)
        >>> masks = leank_hf.train_masks(model, tokenizer, settings=settings, output_dir="my-mask")
        ```
    """

    ratio: float = _setting(0.7, "Fraction of K channels to prune.", bound="(0, 1)")
    align: int = _setting(16, "Every head keeps a multiple of this many channels (must divide head_dim).", bound=">= 1")
    sink_size: int = _setting(
        64, "First tokens kept with all channels, as the deployed cache keeps them.", bound=">= 0"
    )
    recent_size: int = _setting(256, "Most recent tokens kept with all channels.", bound=">= 1")
    flush_size: int = _setting(
        64, "Tokens leave the recent window for the pruned middle in chunks of this many.", bound=">= 1"
    )
    stage1_steps: int = _setting(300, "Optimizer steps of stage 1 (scales with an L1 penalty).", bound=">= 0")
    stage2_steps: int = _setting(60, "Optimizer steps of stage 2 (the binary mask as deployed).", bound=">= 0")
    lr: float = _setting(0.02, "AdamW learning rate (of both stages unless stage2_lr is given).", bound="> 0")
    stage2_lr: float | None = _setting(None, "AdamW learning rate of stage 2 (default: lr).", bound="> 0")
    l1_weight: float = _setting(0.06, "Stage-1 weight of the sparsity term mean(scale).", bound=">= 0")
    warmup_fraction: float = _setting(
        0.2, "Share of each stage's steps with a linear warm-up (at least one step).", bound="[0, 1]"
    )
    decay_fraction: float = _setting(
        0.2, "Share of each stage's steps with a linear decay (at least one step).", bound="[0, 1]"
    )
    min_lr_fraction: float = _setting(
        0.1, "Learning rate at the end of each stage, as a share of its rate.", bound="[0, 1]"
    )
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm.", bound="> 0")
    steps_per_sample: int = _setting(
        1,
        "Optimizer steps sharing one sample: its prefix runs once, its questions are dealt out over them.",
        bound=">= 1",
    )
    seed: int = _setting(0, "Seed of the synthetic data (recorded in the mask).")
    checkpoint_every: int = _setting(
        10, "Steps between checkpoints (with an output folder).", bound=">= 1", defines_run=False
    )
    max_steps: int | None = _setting(
        None, "Stop after this step (time-boxed runs; resume later to finish).", bound=">= 1", defines_run=False
    )
    gradient_checkpointing: bool = _setting(
        False,
        "Recompute the student's attention in the backward pass: same results, less memory on long contexts.",
        defines_run=False,
    )

    def __post_init__(self) -> None:
        Windows(self.sink_size, self.recent_size, self.flush_size)  # the windows' own rule and messages
        for item in fields(self):
            _check(item.name, getattr(self, item.name), item.metadata["bound"])
        if self.total_steps == 0:
            raise LeanKUsageError("need at least one step: stage1_steps and stage2_steps are both 0")

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def base_lr(self, stage: int) -> float:
        """The learning rate of `stage` (1 or 2) before its schedule."""
        return self.stage2_lr if stage == 2 and self.stage2_lr is not None else self.lr

    def lr_at(self, step: int) -> float:
        """Learning rate of `step`: per stage, linear warm-up, constant, then linear decay to `min_lr_fraction`.

        transformers' `get_wsd_schedule(warmup_type="linear", decay_type="linear", min_lr_ratio=...)` has this shape
        (one step later) but warms up from `min_lr_ratio` times the rate instead of 0, and
        `get_constant_schedule_with_warmup` has no decay: neither gives this sequence, so it is written here.
        """
        stage = 1 if step < self.stage1_steps else 2
        local, length = (step, self.stage1_steps) if stage == 1 else (step - self.stage1_steps, self.stage2_steps)
        warmup = max(1, math.ceil(self.warmup_fraction * length))
        decay = max(1, math.ceil(self.decay_fraction * length))
        if local < warmup:
            return self.base_lr(stage) * (local + 1) / warmup
        into_decay = local - (length - decay)
        if into_decay >= 0:
            return self.base_lr(stage) * (1.0 - (1.0 - self.min_lr_fraction) * (into_decay + 1) / decay)
        return self.base_lr(stage)

    def run_settings(self) -> dict[str, Any]:
        """The fields that define the run (`stage2_lr` resolved): saved with checkpoints, compared on resume."""
        values = {item.name: getattr(self, item.name) for item in fields(self) if item.metadata["defines_run"]}
        return values | {"stage2_lr": self.base_lr(2)}


@cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainSettings)


def value_type(name: str) -> type:
    """`int`, `float` or `bool`: the type of the values of field `name` (`float | None` -> `float`)."""
    hint = _field_types()[name]
    (kind,) = [arg for arg in typing.get_args(hint) or (hint,) if arg is not type(None)]
    return kind


def _check(name: str, value: Any, bound: Bound | None) -> None:
    if value is None and type(None) in typing.get_args(_field_types()[name]):
        return
    kind = value_type(name)
    if kind is bool:
        valid, expected = isinstance(value, bool), "True or False"
    elif kind is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer" if bound is None else f"{bound} (an integer)"
    else:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        expected = f"in {bound}" if bound in ("(0, 1)", "[0, 1]") else f"a finite number {bound or ''}".rstrip()
    if not valid or (bound is not None and not BOUNDS[bound](value)):
        raise LeanKUsageError(f"`{name}` must be {expected}, got {value!r}")
