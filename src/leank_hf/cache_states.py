"""What LeanK cache layers hand to the attention in place of key and value tensors (`LeanKStates`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .errors import LeanKUsageError
from .ops.decode_attention.layout import CompactKV, StaticKV

_NOT_SWITCHED = (
    "this model's attention received the compact keys of a LeanKCache, which only the LeanK attention can read; "
    "call `leank_hf.apply_leank(model)` before generating with a LeanKCache"
)


@dataclass
class PrefillKV:
    """The dense keys and values of a layer's prompt so far: attended exactly, then stored by `layer`."""

    keys: torch.Tensor  # [B, H, P, D]
    values: torch.Tensor  # [B, H, P, D]
    layer: Any  # the LeanK layer, whose `prompt_attended` the attention calls


class LeanKStates:
    """What a LeanK layer returns from `update` in place of key and value tensors.

    Only the LeanK attention function opens it (`payload`); any other attention implementation touches a tensor
    attribute such as `.shape` first and gets a `LeanKUsageError` that says to call `apply_leank`, instead of computing
    garbage. The refusing attributes are plain properties (no `__getattr__`), so torch.compile traces the object.
    """

    def __init__(self, payload: PrefillKV | CompactKV | StaticKV):
        self.payload = payload

    def __getitem__(self, index: Any) -> Any:
        raise LeanKUsageError(_NOT_SWITCHED)

    def __len__(self) -> int:
        raise LeanKUsageError(_NOT_SWITCHED)

    def __repr__(self) -> str:
        return f"LeanKStates({type(self.payload).__name__})"


def _refuse(self: LeanKStates) -> Any:
    raise LeanKUsageError(_NOT_SWITCHED)


# Tensor attributes other attention implementations (sdpa, eager, flash, flex) read from keys and values.
_TENSOR_ATTRIBUTES = (
    "contiguous", "device", "dim", "dtype", "expand", "float", "is_cuda", "ndim", "reshape", "shape", "size", "to",
    "transpose", "unsqueeze", "view",
)  # fmt: skip
for _name in _TENSOR_ATTRIBUTES:
    setattr(LeanKStates, _name, property(_refuse))
