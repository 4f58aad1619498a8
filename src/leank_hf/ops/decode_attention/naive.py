"""PyTorch attention over one layer's LeanK cache: the CPU path and the oracle of the Triton kernel.

The middle keys are read as stored, one `[B, count, T, width]` view per run of equal-width heads, never widened back
to `head_dim`. An 8-bit middle is read as codes (each width group cast to fp32 for its matmul, as a bf16 group is;
stored int8 codes keep their offset of 128 through the products, which lose it once): its per-token scales multiply
the scores (keys) and the probabilities (values), so no dequantized copy is built.
Scores, softmax and accumulation are fp32. Python loops run over width groups only (a handful per layer), never over
heads, tokens or query rows.
"""

from __future__ import annotations

import torch

from .layout import VALUE_TILE, CompactKV, HeadLayout, StaticKV
from .quantization import code_offset


def leank_decode_torch(query: torch.Tensor, kv: CompactKV, *, scale: float) -> torch.Tensor:
    """Attention of `query` over a LeanK cache, following the validity rules of `CompactKV`.

    Args:
        query (`torch.Tensor`):
            `[B, Hq, n, D]` queries of `n` consecutive positions starting at global slot `kv.query_start`; query head
            `j` reads KV head `j // (Hq // H)` (the `repeat_kv` order).
        kv (`CompactKV`):
            The layer's cache with one boundary per query row.
        scale (`float`):
            Factor applied to every score before the softmax (usually `head_dim ** -0.5`).

    Returns:
        `torch.Tensor`: `[B, Hq, n, D]` in the query's dtype.
    """
    full_valid, mid_valid = _validity(kv, query.shape[2], query.device)
    num_full = kv.sink_size + kv.num_recent
    return attend_compact(
        query,
        kv.layout,
        kv.full_keys[:, :, :num_full],
        kv.full_values[:, :, :num_full],
        full_valid,
        [kv.mid_key_group(group) for group in kv.layout.groups] if kv.num_mid else [],
        kv.mid_values,
        mid_valid,
        scale=scale,
        mid_scales=_scales(kv, kv.num_mid),
    )


def leank_static_decode_torch(query: torch.Tensor, kv: StaticKV, *, scale: float) -> torch.Tensor:
    """Decode attention of `query` `[B, Hq, 1, D]` over a `LeanKStaticCache` layer (rules of `StaticKV`).

    Fixed shapes and device-side positions only (no host synchronisation): `torch.compile` captures it. Every middle
    slot up to the capacity is scored and masked, as a static cache's dense attention does.
    """
    full_valid, mid_valid = _static_validity(kv)
    num_full = kv.windows.sink_size + kv.ring_size
    return attend_compact(
        query,
        kv.layout,
        kv.full_keys[:, :, :num_full],
        kv.full_values[:, :, :num_full],
        full_valid,
        [kv.mid_key_group(group) for group in kv.layout.groups],
        kv.mid_values,
        mid_valid,
        scale=scale,
        mid_scales=_scales(kv, kv.mid_cap),
    )


def attend_compact(
    query: torch.Tensor,
    layout: HeadLayout,
    full_keys: torch.Tensor,
    full_values: torch.Tensor,
    full_valid: torch.Tensor,
    mid_key_groups: list[torch.Tensor],
    mid_values: torch.Tensor,
    mid_valid: torch.Tensor,
    *,
    scale: float,
    mid_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One softmax over full-channel keys and compact middle keys, each masked by its validity.

    Args:
        query (`torch.Tensor`): `[B, Hq, n, D]`.
        layout (`HeadLayout`): the layer's kept channels and storage order.
        full_keys, full_values (`torch.Tensor`): `[B, H, F, D]` keys and values read with all channels.
        full_valid (`torch.Tensor`): bool, broadcastable to `[B, H, Hq // H, n, F]`.
        mid_key_groups (`list[torch.Tensor]`): per width group of `layout.groups`, `[B, count, T, width]` (empty: no
            middle).
        mid_values (`torch.Tensor`): `[B, num_value_heads, >= T, D]`, or 8-bit codes in tiles `[B, num_value_heads,
            >= T / VALUE_TILE, D, VALUE_TILE]` (`layout.new_value_storage`).
        mid_valid (`torch.Tensor`): bool, broadcastable to `[B, count, Hq // H, n, T]`.
        scale (`float`): factor applied to every score.
        mid_scales (`tuple[torch.Tensor, torch.Tensor]`, *optional*): an 8-bit middle's key and value scales, each
            `[B, num_value_heads, T]` (storage order); the middle keys and values are then codes.
    """
    batch, num_query_heads, num_rows, head_dim = query.shape
    num_heads = layout.num_kv_heads
    rows = num_query_heads // num_heads * num_rows  # GQA group x query rows, attended together per KV head
    # [B, H, rows, D], the GQA group outermost within `rows`
    q = (query.float() * scale).reshape(batch, num_heads, rows, head_dim)
    num_full = full_keys.shape[2]
    scores = q @ full_keys.float().transpose(-1, -2)
    scores = scores.view(batch, num_heads, -1, num_rows, num_full).masked_fill(~full_valid, float("-inf"))
    row_max = scores.amax(-1, keepdim=True)  # -inf only for a row whose every key is masked (a hole in a chunk)

    # Pass 1: middle scores per width group, and the running max over both regions.
    middle = []
    if mid_key_groups:
        num_mid = mid_key_groups[0].shape[2]
        q_flat = q.transpose(1, 2).reshape(batch, rows, num_heads * head_dim)
        for group, group_keys in zip(layout.groups, mid_key_groups):
            heads = layout.storage_order[group.first : group.first + group.count]  # natural head ids
            channels = layout.gather_index[group.offset : group.offset + group.count * group.width]
            q_group = q_flat.index_select(2, channels).view(batch, rows, group.count, group.width).transpose(1, 2)
            group_scores = q_group @ group_keys.float().transpose(-1, -2)
            if offset := code_offset(group_keys.dtype):  # q . (code + offset) - offset * sum(q)
                group_scores = group_scores - offset * q_group.sum(-1, keepdim=True)
            if mid_scales is not None:  # q . (s k) = s (q . k)
                group_scores = group_scores * mid_scales[0][:, group.first : group.first + group.count, None]
            group_scores = group_scores.view(batch, group.count, -1, num_rows, num_mid)
            group_scores = group_scores.masked_fill(~mid_valid, float("-inf"))
            group_max = torch.maximum(row_max.index_select(1, heads), group_scores.amax(-1, keepdim=True))
            row_max = row_max.index_copy(1, heads, group_max)
            middle.append((group, heads, group_scores))

    # Pass 2: exponentials against the shared max, summed and applied to the values of each region. A row without
    # any readable key gets zeros, not NaN (its NaN would reach the values other rows read with weight 0).
    row_max = row_max.clamp(min=torch.finfo(torch.float32).min)
    probs = torch.exp(scores - row_max)
    denominator = probs.sum(-1)
    output = probs.view(batch, num_heads, rows, num_full) @ full_values.float()
    for group, heads, group_scores in middle:
        group_probs = torch.exp(group_scores - row_max.index_select(1, heads))
        denominator = denominator.index_add(1, heads, group_probs.sum(-1))
        group_probs = group_probs.view(batch, group.count, rows, num_mid)
        if mid_scales is not None:  # sum_t p_t (s_t v_t) = (p * s) @ v
            group_probs = group_probs * mid_scales[1][:, group.first : group.first + group.count, None]
        values = mid_values[:, group.first : group.first + group.count]
        output = output.index_add(1, heads, _weighted_values(group_probs, values))

    output = output / denominator.clamp(min=torch.finfo(torch.float32).tiny).view(batch, num_heads, rows, 1)
    return output.view(batch, num_query_heads, num_rows, head_dim).to(query.dtype)


def _weighted_values(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`probs [B, c, rows, T] @ values` in fp32, for token-major values `[B, c, >= T, D]` or 8-bit tiles `[B, c, >= T /
    VALUE_TILE, D, VALUE_TILE]`, which are multiplied tile by tile rather than copied token-major. Stored int8 codes
    carry their offset into the product, which then loses it once (no pass over the codes to remove it)."""
    tokens = probs.shape[-1]
    if values.dim() == 4:
        return probs @ values[:, :, :tokens].float()
    tiles = -(-tokens // VALUE_TILE)
    padded = torch.nn.functional.pad(probs, (0, tiles * VALUE_TILE - tokens)).unflatten(-1, (tiles, VALUE_TILE))
    weighted = (padded.transpose(2, 3) @ values[:, :, :tiles].float().transpose(-1, -2)).sum(2)
    if offset := code_offset(values.dtype):  # (code + offset) . p - offset * sum(p)
        weighted = weighted - offset * probs.sum(-1, keepdim=True)
    return weighted


def _scales(kv: CompactKV | StaticKV, tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An 8-bit middle's key and value scales of its first `tokens` indices, or `None`."""
    if kv.mid_key_scales is None:
        return None
    return kv.mid_key_scales[:, :, :tokens], kv.mid_value_scales[:, :, :tokens]


def _static_validity(kv: StaticKV) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys the decode query reads: `([B, 1, 1, 1, sink + ring], [B, 1, 1, 1, mid_cap])` booleans."""
    device, windows = kv.pad.device, kv.windows
    sink, ring = windows.sink_size, kv.ring_size
    position, pad = kv.position, kv.pad[:, None]  # [], [B, 1]
    boundary = windows.boundary(position)
    sink_slots = pad + torch.arange(sink, device=device)  # [B, S]
    sink_valid = (sink_slots < boundary) & (sink_slots <= position)
    ring_index = torch.arange(ring, device=device)
    ring_slots = position - torch.remainder(position - ring_index, ring)  # [R]: latest slot <= q in each ring index
    ring_valid = (ring_slots >= boundary) & (ring_slots >= pad) & (ring_slots >= 0)  # [B, R]
    middle = torch.arange(kv.mid_cap, device=device)
    mid_valid = (middle >= pad) & (middle + sink < boundary)  # [B, T]
    if kv.key_mask is not None:
        key_mask = kv.key_mask
        last = key_mask.shape[1] - 1
        sink_valid = sink_valid & key_mask.gather(1, sink_slots.clamp(max=last))
        ring_valid = ring_valid & key_mask.gather(1, ring_slots.clamp(0, last).expand_as(ring_valid))
        mid_valid = mid_valid & key_mask.gather(1, (middle + sink).clamp(max=last).expand_as(mid_valid))
    full_valid = torch.cat([sink_valid, ring_valid], -1)
    return full_valid[:, None, None, None], mid_valid[:, None, None, None]


def _validity(kv: CompactKV, num_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query row reads: `([B, 1, 1, n, S + num_recent], [B, 1, 1, n, num_mid])` booleans."""
    positions = torch.arange(kv.query_start, kv.query_start + num_rows, device=device)[:, None]  # [n, 1]
    if num_rows == 1:
        boundary = kv.boundaries[0]  # a Python int: no host-to-device copy on the decode path
    else:
        boundary = torch.tensor(kv.boundaries, device=device)[:, None]
    pad = kv.pad[:, None, None]  # [B, 1, 1]

    sink_slots = pad + torch.arange(kv.sink_size, device=device)  # [B, 1, S]
    sink_valid = (sink_slots < boundary) & (sink_slots <= positions)
    recent_slots = torch.arange(kv.recent_start, kv.recent_start + kv.num_recent, device=device)
    recent_valid = (recent_slots >= boundary) & (recent_slots <= positions) & (recent_slots >= pad)
    batch = pad.shape[0]
    full_valid = torch.cat([sink_valid.expand(batch, num_rows, -1), recent_valid.expand(batch, num_rows, -1)], -1)

    middle = torch.arange(kv.num_mid, device=device)
    mid_valid = (middle >= pad) & (middle + kv.sink_size < boundary)
    if kv.key_mask is not None:  # masked positions (holes) anywhere in a row, by global slot
        key_mask = kv.key_mask[:, None]  # [B, 1, L]
        sink_index = sink_slots.clamp(max=key_mask.shape[-1] - 1)  # slots past the sequence are invalid already
        stop = kv.recent_start + kv.num_recent
        full_valid = full_valid & torch.cat([key_mask.gather(2, sink_index), key_mask[..., kv.recent_start : stop]], -1)
        mid_valid = mid_valid & key_mask[..., kv.sink_size : kv.sink_size + kv.num_mid]
    return full_valid[:, None, None], mid_valid.expand(-1, num_rows, -1)[:, None, None]
