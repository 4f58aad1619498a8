"""Attention over a LeanK cache: `leank_decode_attention` picks the PyTorch path or the Triton kernel."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import torch

from ...errors import LeanKUsageError
from .layout import CompactKV, HeadLayout, WidthGroup
from .naive import leank_decode_torch

BACKENDS = ("auto", "torch", "triton")

__all__ = ["BACKENDS", "CompactKV", "HeadLayout", "WidthGroup", "leank_decode_attention", "leank_decode_torch"]


def leank_decode_attention(query: torch.Tensor, kv: CompactKV, *, scale: float, backend: str = "auto") -> torch.Tensor:
    """Attention of `query` over one layer's LeanK cache.

    Args:
        query (`torch.Tensor`):
            `[B, Hq, n, D]` queries at global slots `kv.query_start .. kv.query_start + n - 1`.
        kv (`CompactKV`):
            The layer's cache, as returned by `LeanKLayer.update`.
        scale (`float`):
            Score scaling (usually `head_dim ** -0.5`).
        backend (`str`, *optional*, defaults to `"auto"`):
            `"torch"`, `"triton"` or `"auto"`: the Triton kernel for single-row CUDA queries when it is installed,
            PyTorch otherwise (also when the kernel refuses the inputs, with a warning). The kernel handles one query
            row; longer chunks always take the PyTorch path.

    Returns:
        `torch.Tensor`: `[B, Hq, n, D]` in the query's dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` has to be one of {list(BACKENDS)} but got {backend!r}")
    if query.shape[2] == 1 and (backend == "triton" or (backend == "auto" and query.is_cuda)):
        kernel = _triton_kernel(required=backend == "triton")
        if kernel is not None and backend == "triton":
            return kernel(query, kv, scale=scale)
        try:
            if kernel is not None:
                return kernel(query, kv, scale=scale)
        except LeanKUsageError as error:  # inputs the kernel does not take (e.g. a mask's alignment)
            warnings.warn(f"LeanK falls back to the PyTorch attention: {error}", stacklevel=2)
    return leank_decode_torch(query, kv, scale=scale)


def _triton_kernel(required: bool) -> Callable[..., torch.Tensor] | None:
    """The Triton launcher, or `None` when its module is not part of this install and `required` is False."""
    name = f"{__name__}.triton"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name or required:
            raise
        return None
    return module.leank_decode_triton
