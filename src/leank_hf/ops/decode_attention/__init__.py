"""Attention over a LeanK cache: `leank_decode_attention` picks the PyTorch path or the Triton kernel."""

from __future__ import annotations

import functools
import importlib
import logging
import warnings
from collections.abc import Callable

import torch

from ...errors import LeanKUsageError
from .layout import CompactKV, HeadLayout, StaticKV, WidthGroup
from .naive import leank_decode_torch, leank_static_decode_torch

BACKENDS = ("auto", "torch", "triton")

logger = logging.getLogger(__name__)
# (cache kind, path, backend, reason) already logged: each choice is logged on first use, not per decode step.
_announced: set[tuple[str, str, str, str]] = set()

__all__ = [
    "BACKENDS",
    "CompactKV",
    "HeadLayout",
    "StaticKV",
    "WidthGroup",
    "leank_decode_attention",
    "leank_decode_torch",
    "leank_static_decode_attention",
    "leank_static_decode_torch",
]


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
            _announce("dynamic", "triton", backend)
            return kernel(query, kv, scale=scale)
        try:
            if kernel is not None:
                output = kernel(query, kv, scale=scale)
                _announce("dynamic", "triton", backend)
                return output
            _announce("dynamic", "torch", backend, "the Triton kernel is not installed")
        except LeanKUsageError as error:  # inputs the kernel does not take (e.g. a mask's alignment)
            warnings.warn(f"LeanK falls back to the PyTorch attention: {error}", stacklevel=2)
            _announce("dynamic", "torch", backend, f"Triton fallback: {error}", logging.INFO)
    elif query.shape[2] != 1:
        _announce("dynamic", "torch", backend, "multi-token query")
    else:
        _announce("dynamic", "torch", backend, "no CUDA" if backend == "auto" else "")
    return leank_decode_torch(query, kv, scale=scale)


def leank_static_decode_attention(
    query: torch.Tensor, kv: StaticKV, *, scale: float, backend: str = "auto"
) -> torch.Tensor:
    """Decode attention of `query` `[B, Hq, 1, D]` over a `LeanKStaticCache` layer; capturable by CUDA graphs.

    `backend` as in `leank_decode_attention`: `"auto"` takes the Triton custom op for CUDA queries when every kept
    width is a multiple of 16 (the PyTorch path otherwise, without a warning: the choice is fixed per layer, not per
    step, and logged at DEBUG by the first call outside compiled code).
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` has to be one of {list(BACKENDS)} but got {backend!r}")
    aligned = all(group.width % 16 == 0 for group in kv.layout.groups)
    if backend == "triton" and not aligned:
        raise LeanKUsageError("the Triton LeanK kernel needs kept widths that are multiples of 16; use backend='torch'")
    triton = backend == "triton" or (backend == "auto" and query.is_cuda and aligned)
    if not torch.compiler.is_compiling():  # no logging in traced code: the eager first call logs the choice
        reason = "" if triton or backend == "torch" else "widths not multiples of 16" if query.is_cuda else "no CUDA"
        _announce("static", "triton" if triton else "torch", backend, reason)
    if triton:
        return _static_triton_kernel()(query, kv, scale=scale)
    return leank_static_decode_torch(query, kv, scale=scale)


def _announce(kind: str, path: str, backend: str, reason: str = "", level: int = logging.DEBUG) -> None:
    """Log (at `level`) the first time a `kind` cache's decode attention takes `path` under `backend` for `reason`."""
    key = (kind, path, backend, reason)
    if key not in _announced:
        _announced.add(key)
        detail = f"; {reason}" if reason else ""
        logger.log(
            level, "LeanK %s-cache decode attention takes the %s path (backend=%r%s)", kind, path, backend, detail
        )


@functools.cache
def _static_triton_kernel() -> Callable[..., torch.Tensor]:
    """The static-cache Triton launcher (imported once, outside compiled regions after the first call)."""
    from .static_triton import leank_static_decode_triton

    return leank_static_decode_triton


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
