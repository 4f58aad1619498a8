"""What LeanK cache layers hand to the attention in place of key and value tensors (`LeanKStates`), and the
refusals of uses they cannot serve (non-LeanK attention, torch.compile of the dynamic cache, chunked prefill)."""

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

CHUNKED_PREFILL = (
    "this forward continues a prompt that no decode step followed (chunked prefill, e.g. "
    "`generate(prefill_chunk_size=...)`), but the LeanKCache already compacted the prompt; build it with "
    "`LeanKCache(..., chunked_prefill=True)` to attend chunked prompts exactly (the prompt then stays dense until the "
    "first decode step, at a DynamicCache's peak memory), or feed the prompt in one forward"
)
_NOT_COMPILABLE = (
    "the dynamic LeanKCache cannot be captured by torch.compile: its tensors change shape at every flush; run the "
    "model without torch.compile, or use LeanKStaticCache, the compile-capable LeanK cache"
)


@torch.compiler.disable(reason=_NOT_COMPILABLE)
def refuse_compile() -> None:
    """Raise the compile error. Dynamo does not trace it: with `fullgraph=True` it reports the reason above, without
    it breaks the graph and runs this function, which raises."""
    raise LeanKUsageError(_NOT_COMPILABLE)


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
