"""Import of the LeanK masks released in Microsoft's MInference repository (`minference/configs/leank/*.pth`).

Those files are a `torch.save` of one float32 tensor of 0.0/1.0 indexed `[layer, kv_head, channel]` (1 = keep), in the
Hugging Face `rotate_half` channel layout. They carry no metadata: the model id and the decoder windows come from the
caller (the defaults are those of the release's decoder). `MInferenceMixin` gives `LeanKMasks` its `from_minference`;
this module never imports `masks.py`.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import MaskError

if TYPE_CHECKING:
    from .serialization import MaskT

# `align` is inferred as the largest of these that divides every kept count and head_dim.
_ALIGN_CANDIDATES = (32, 16, 8, 4, 2, 1)


class MInferenceMixin:
    """`from_minference` for `LeanKMasks` (the dataclass that inherits this)."""

    @classmethod
    def from_minference(
        cls: type[MaskT],
        path: str | os.PathLike,
        *,
        base_model: str,
        base_model_revision: str | None = None,
        sink_size: int = 128,
        recent_size: int = 768,
        flush_size: int = 128,
        align: int | None = None,
        target_ratio: float | None = None,
        training_info: dict[str, Any] | None = None,
    ) -> MaskT:
        """Import a mask released with MInference's LeanK (`.pth`, float 0/1 `[L, H, D]`).

        The source file name and its sha256 are recorded in `training_info` (`source_file`, `source_sha256`).

        Args:
            path (`str` or `os.PathLike`):
                The `.pth` file; read with `torch.load(weights_only=True)`.
            base_model (`str`):
                Hub id of the model the mask was trained for.
            base_model_revision (`str`, *optional*):
                Revision of that model.
            sink_size (`int`, *optional*, defaults to 128):
                Sink tokens of the release's decoder.
            recent_size (`int`, *optional*, defaults to 768):
                Recent-window tokens of the release's decoder.
            flush_size (`int`, *optional*, defaults to 128):
                Flush chunk of the release's decoder.
            align (`int`, *optional*):
                Kept-count granularity; inferred from the mask when omitted (largest power of two up to 32 that
                divides every head's kept count and head_dim).
            target_ratio (`float`, *optional*):
                Pruning ratio the mask was trained for, if known.
            training_info (`dict`, *optional*):
                Extra provenance merged over the recorded source file name and sha256.
        """
        path = Path(path)
        if not path.is_file():
            raise MaskError(f"no MInference mask file at {str(path)!r}")
        if not isinstance(base_model, str) or not base_model:
            raise MaskError("`base_model` must name the Hub id of the model the mask was trained for")
        try:
            tensor = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as error:
            detail = " ".join(f"{type(error).__name__}: {error}".split())[:120]  # one line: unpickler errors span many
            raise MaskError(
                f"{str(path)!r} is not a tensor file that torch.load(weights_only=True) can read ({detail}); "
                "expected a MInference LeanK mask (.pth of one float 0/1 tensor [layers, KV heads, head_dim])"
            ) from error
        if not isinstance(tensor, torch.Tensor):
            raise MaskError(
                f"{str(path)!r} holds a {type(tensor).__name__}, not a tensor; expected a MInference LeanK mask "
                "(one float 0/1 tensor [layers, KV heads, head_dim])"
            )
        if tensor.dim() != 3:
            raise MaskError(
                f"{str(path)!r} holds a tensor of shape {list(tensor.shape)}; a LeanK mask has rank 3 "
                "[layers, KV heads, head_dim]"
            )
        if align is None:
            align = infer_align((tensor != 0).sum(-1), tensor.shape[-1])
        info = {"source_file": path.name, "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        info.update(training_info or {})
        return cls(
            mask=tensor,
            base_model=base_model,
            base_model_revision=base_model_revision,
            sink_size=sink_size,
            recent_size=recent_size,
            flush_size=flush_size,
            align=align,
            target_ratio=target_ratio,
            training_info=info,
        )


def infer_align(kept_counts: torch.Tensor, head_dim: int) -> int:
    """Largest power of two up to 32 that divides `head_dim` and every entry of `kept_counts`."""
    common = math.gcd(head_dim, *(int(count) for count in kept_counts.flatten().tolist()))
    return next(candidate for candidate in _ALIGN_CANDIDATES if common % candidate == 0)
