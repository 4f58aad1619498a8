"""From learned channel scales to a deployable binary mask: global threshold, per-head alignment, top channels."""

from __future__ import annotations

import torch

from ..errors import LeanKUsageError


def channel_ranks(alpha: torch.Tensor, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Global rank of every channel (0 = most important), by alpha descending, equal alphas by `tiebreak` descending.

    Stage 1 clamps many scales to exactly 0 (or 1); the trainer passes the running sum of alpha over the steps as
    `tiebreak`, so among channels at 0 the one that got there last ranks first.
    """
    flat = alpha.detach().flatten()
    order = torch.arange(flat.numel(), device=alpha.device)
    if tiebreak is not None:
        order = tiebreak.detach().flatten().argsort(descending=True, stable=True)
    order = order[flat[order].argsort(descending=True, stable=True)]
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel(), device=alpha.device)
    return ranks.view(alpha.shape)


def kept_units(alpha: torch.Tensor, ratio: float, align: int, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Kept channels per head, in units of `align`, `[L, H]` int64, from a global threshold at the target ratio.

    The total kept count is `round((1 - ratio) * N / align) * align` over all `N` channels, so the achieved ratio is
    the target up to one `align` unit. The channels above the global threshold set each head's raw count; every
    head keeps `floor(count / align)` units and the leftover units go to the heads with the largest remainders
    (largest-remainder rounding), which keeps the total exact and every count a multiple of `align`.
    """
    num_layers, num_heads, head_dim = alpha.shape
    if head_dim % align:
        raise LeanKUsageError(f"`align`={align} must divide head_dim={head_dim}")
    if not 0.0 <= ratio <= 1.0:
        raise LeanKUsageError(f"`ratio` must be in [0, 1], got {ratio}")
    total_units = round((1.0 - ratio) * alpha.numel() / align)
    top = channel_ranks(alpha, tiebreak) < total_units * align
    counts = top.sum(-1).flatten()
    units = counts // align
    remainder = counts % align
    missing = int(total_units - units.sum())
    extra = remainder.argsort(descending=True, stable=True)[:missing]
    units[extra] += 1
    return units.view(num_layers, num_heads)


def binary_mask(alpha: torch.Tensor, ratio: float, align: int, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Bool `[L, H, D]` keep mask: each head keeps its `kept_units(...) * align` best-ranked channels.

    Args:
        alpha (`torch.Tensor`): `[L, H, D]` learned scales.
        ratio (`float`): target fraction of channels to prune.
        align (`int`): every head's kept count is a multiple of this.
        tiebreak (`torch.Tensor`, *optional*): `[L, H, D]` secondary key among equal alphas (see `channel_ranks`).
    """
    keep = kept_units(alpha, ratio, align, tiebreak) * align
    within_head = channel_ranks(alpha, tiebreak).argsort(dim=-1).argsort(dim=-1)
    return within_head < keep[..., None]


def straight_through(alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Forward value: the binary mask as deployed (kept channels at 1, pruned at 0); backward: identity to alpha."""
    return mask.to(alpha.dtype) + (alpha - alpha.detach())
