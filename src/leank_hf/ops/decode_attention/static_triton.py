"""Triton decode attention over a `LeanKStaticCache` layer, as a PyTorch custom op that CUDA graphs capture.

Same program structure as `triton.py` (whose tile loops, part store and merge it reuses): one program per `(batch
row, KV head, part)`, started part by part; the first `FULL_PARTS` parts read slices of the sinks and the ring (so at
batch 1 the full region, ~3x the bytes of a middle chunk, is no straggler), the others chunks of the compact middle;
the last program of each `(row, head)` merges the parts. What differs: the grid is fixed by the cache's capacity
(`num_splits` chunks of `split_len` tokens cover `mid_cap`), and the query slot is read from device memory, so the
window boundary and the live middle length are computed in the kernel; chunks past the live length store an empty
part and return. An 8-bit middle is read as in `triton.py` (codes converted in registers to fp16, scales on scores
and probabilities).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import (
    INTERPRETED,
    LOG2E,
    check_block_n,
    check_middle_dtypes,
    choose_splits,
    next_power_of_2,
    query_block,
    sm_count,
    tile_settings,
)
from .layout import StaticKV
from .tiles import attend_full_tile, attend_middle, store_part_and_merge


@triton.jit
def _leank_static_decode_kernel(
    Q, FULL_K, FULL_V, MID_K, MID_V, MID_KS, MID_VS, PAD, POSITION, KEY_MASK, WIDTHS, CHANNELS, OFFSETS, VALUE_SLOTS,
    STORAGE_ORDER, O_PART, LSE_PART, COUNTERS, OUT,
    stride_qb, stride_qh,
    stride_fb, stride_fh, stride_ft,
    stride_mkb,
    stride_mvb, stride_mvh, stride_mvt,
    stride_msb, stride_msh,
    stride_maskb,
    scale_log2,
    SINK: tl.constexpr, RECENT: tl.constexpr, FLUSH: tl.constexpr, RING: tl.constexpr, MID_CAP: tl.constexpr,
    SPLIT_LEN: tl.constexpr, FULL_LEN: tl.constexpr, FULL_PARTS: tl.constexpr, NUM_PARTS: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr, QUANT: tl.constexpr,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    G_POW: tl.constexpr, MERGE_S: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FULL_BLOCK_N: tl.constexpr, MAX_WIDTH: tl.constexpr,
):  # fmt: skip
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.load(STORAGE_ORDER + tl.program_id(1))
    i_split = tl.program_id(2)
    pad = tl.load(PAD + i_b)
    position = tl.load(POSITION)
    # Window start of the query (contract.Windows.boundary): sink + flush * floor(max(0, q + 1 - sink - recent) / flush)
    boundary = SINK + FLUSH * (tl.maximum(position + 1 - SINK - RECENT, 0) // FLUSH)
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    p_q = Q + i_b * stride_qb + (i_h * G + o_g).to(tl.int64) * stride_qh  # [BLOCK_G]

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if i_split < FULL_PARTS:
        # Full slots [i_split * FULL_LEN, ...): sink slot s is global pad + s, ring slot SINK + r the latest g <= q
        # with g % RING == r.
        q = tl.load(p_q[:, None] + o_d[None, :], mask=m_g[:, None] & m_d[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        p_k = FULL_K + i_b * stride_fb + i_h.to(tl.int64) * stride_fh
        p_v = FULL_V + i_b * stride_fb + i_h.to(tl.int64) * stride_fh
        for start in range(i_split * FULL_LEN, tl.minimum((i_split + 1) * FULL_LEN, SINK + RING), FULL_BLOCK_N):
            o_s = start + tl.arange(0, FULL_BLOCK_N)
            is_sink = o_s < SINK
            ring_slot = position - (position - (o_s - SINK)) % RING
            g = tl.where(is_sink, pad + o_s, ring_slot)
            valid = tl.where(is_sink, (g < boundary) & (g <= position), (g >= boundary) & (g >= pad) & (g >= 0))
            valid = valid & (o_s < SINK + RING)
            m_i, l_i, acc = attend_full_tile(
                m_i, l_i, acc, q, p_k, p_v, o_s, g, valid, stride_ft, stride_ft, KEY_MASK + i_b * stride_maskb,
                scale_log2, o_d, m_d, UPCAST, DOT_PRECISION, HAS_KEY_MASK,
            )  # fmt: skip
    else:
        # Middle chunk: index t is global slot SINK + t; valid for pad <= t < boundary - SINK.
        width = tl.load(WIDTHS + i_h)
        t_start = tl.maximum((i_split - FULL_PARTS) * SPLIT_LEN, pad.to(tl.int32))
        t_stop = tl.minimum(tl.minimum((i_split - FULL_PARTS + 1) * SPLIT_LEN, MID_CAP), (boundary - SINK).to(tl.int32))
        if (width > 0) & (t_start < t_stop):
            key_offset = tl.multiple_of(tl.load(OFFSETS + i_h), 16)
            value_slot = tl.load(VALUE_SLOTS + i_h).to(tl.int64)
            p_k = MID_K + i_b * stride_mkb + key_offset * MID_CAP
            p_v = MID_V + i_b * stride_mvb + value_slot * stride_mvh
            scale_offset = i_b * stride_msb + value_slot * stride_msh  # scales [B, NV, MID_CAP] (8-bit middle)
            p_channels = CHANNELS + i_h * HEAD_DIM
            # One compiled loop per width up to the layer's widest; the one matching this head's width runs.
            for i_w in tl.static_range(1, MAX_WIDTH // 16 + 1):
                if width == i_w * 16:
                    m_i, l_i, acc = attend_middle(
                        p_q, p_channels, m_g, p_k, p_v, stride_mvt,
                        KEY_MASK + i_b * stride_maskb + SINK, t_start, t_stop, scale_log2, MID_KS + scale_offset,
                        MID_VS + scale_offset, i_w * 16, BLOCK_G, BLOCK_N, BLOCK_D, HEAD_DIM, UPCAST, DOT_PRECISION,
                        HAS_KEY_MASK, QUANT,
                    )  # fmt: skip
    store_part_and_merge(
        m_i, l_i, acc, O_PART, LSE_PART, COUNTERS, OUT, i_b, i_h, i_split, NUM_PARTS,
        G, G_POW, MERGE_S, HEAD_DIM, BLOCK_G, BLOCK_D,
    )  # fmt: skip


@torch.library.custom_op("leank_hf::static_decode", mutates_args=("counters",))
def static_decode(
    query: torch.Tensor,
    full_keys: torch.Tensor,
    full_values: torch.Tensor,
    mid_keys: torch.Tensor,
    mid_values: torch.Tensor,
    mid_key_scales: torch.Tensor | None,
    mid_value_scales: torch.Tensor | None,
    pad: torch.Tensor,
    position: torch.Tensor,
    key_mask: torch.Tensor | None,
    widths: torch.Tensor,
    channels: torch.Tensor,
    offsets: torch.Tensor,
    value_slots: torch.Tensor,
    storage_order: torch.Tensor,
    counters: torch.Tensor,
    scale: float,
    sink_size: int,
    recent_size: int,
    flush_size: int,
    ring_size: int,
    mid_cap: int,
    num_value_heads: int,
    max_width: int,
    block_n: int,
    full_block_n: int,
    num_stages: int,
    max_registers: int | None,
) -> torch.Tensor:
    """The launch behind `leank_static_decode_triton` (a custom op: one opaque node for torch.compile)."""
    batch, num_q_heads, _, head_dim = query.shape
    num_kv_heads = widths.shape[0]
    group = num_q_heads // num_kv_heads
    num_sms = sm_count(query.device.index or 0) if query.device.type == "cuda" else 8
    num_splits, split_len = choose_splits(batch, num_value_heads, mid_cap, block_n, num_sms)  # for the capacity
    full_len, full_parts = _full_parts(sink_size + ring_size, split_len, block_n)
    num_parts = full_parts + num_splits
    rows = batch * num_q_heads * num_parts
    partial_out = torch.empty(rows * head_dim, device=query.device, dtype=torch.float32)
    partial_lse = torch.empty(rows, device=query.device, dtype=torch.float32)
    out = torch.empty_like(query)
    block_d = next_power_of_2(head_dim)
    group_pow = next_power_of_2(group)
    # The bool mask's bytes (a view here: inductor cannot lower a bool bitcast); without one, any tensor (unread).
    mask = key_mask.view(torch.uint8) if key_mask is not None else pad
    quant = mid_key_scales is not None
    # fp32 scales of an 8-bit middle; without them, any tensor (never read: QUANT is False).
    key_scales, value_scales = (mid_key_scales, mid_value_scales) if quant else (partial_lse, partial_lse)
    scale_strides = (key_scales.stride(0), key_scales.stride(1)) if quant else (0, 0)
    _leank_static_decode_kernel[(batch, num_kv_heads, num_parts)](
        query, full_keys, full_values, mid_keys, mid_values, key_scales, value_scales, pad, position, mask,
        widths, channels, offsets, value_slots, storage_order,
        partial_out, partial_lse, counters, out,
        query.stride(0), query.stride(1),
        full_keys.stride(0), full_keys.stride(1), full_keys.stride(2),
        mid_keys.stride(0),
        mid_values.stride(0), mid_values.stride(1), mid_values.stride(2),
        *scale_strides,
        mask.stride(0),
        scale * LOG2E,
        SINK=sink_size, RECENT=recent_size, FLUSH=flush_size, RING=ring_size, MID_CAP=mid_cap,
        SPLIT_LEN=split_len, FULL_LEN=full_len, FULL_PARTS=full_parts, NUM_PARTS=num_parts,
        HAS_KEY_MASK=key_mask is not None, QUANT=quant,
        G=group, HEAD_DIM=head_dim, BLOCK_G=query_block(group_pow, quant), BLOCK_N=block_n, BLOCK_D=block_d,
        G_POW=group_pow, MERGE_S=max(1, 8192 // (group_pow * block_d)), UPCAST=INTERPRETED,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32", FULL_BLOCK_N=full_block_n,
        MAX_WIDTH=max_width, num_warps=4, num_stages=num_stages, maxnreg=max_registers,
    )  # fmt: skip
    return out


def _full_parts(full_slots: int, split_len: int, block_n: int) -> tuple[int, int]:
    """`(slots per part, parts)` of the full region: about half a middle chunk each (a full slot carries all `2 * D`
    channels, a middle token its kept key channels and at most `D` values), whole tiles."""
    full_len = max(block_n, split_len // 2 // block_n * block_n)
    return full_len, -(-full_slots // full_len)


@static_decode.register_fake
def _(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return torch.empty_like(query)


def leank_static_decode_triton(
    query: torch.Tensor, kv: StaticKV, *, scale: float, block_n: int | None = None
) -> torch.Tensor:
    """Decode attention of `query` `[B, Hq, 1, D]` over a `LeanKStaticCache` layer in one launch of fixed grid.

    Args:
        query (`torch.Tensor`): fp16, bf16 or fp32 on CUDA (or CPU under `TRITON_INTERPRET=1`), contiguous.
        kv (`StaticKV`): the layer's step view; every kept width a multiple of 16; its middle in the query's dtype or
            8-bit (codes and scales).
        scale (`float`): softmax scale.
        block_n (`int`, *optional*): keys per middle tile (a power of two >= 16); `launch.tile_settings` chooses it
            (and the rest of the launch settings) by the middle's storage if not given.
    """
    layout, windows = kv.layout, kv.windows
    settings = tile_settings(kv.mid_key_scales is not None)
    block_n = block_n or settings.block_n
    check_block_n(block_n)
    check_middle_dtypes(query, kv.mid_keys, kv.mid_values, kv.mid_key_scales, kv.mid_value_scales, kv.mid_cap)
    return static_decode(
        query.contiguous(),
        kv.full_keys,
        kv.full_values,
        kv.mid_keys,
        kv.mid_values,
        kv.mid_key_scales,
        kv.mid_value_scales,
        kv.pad,
        kv.position,
        kv.key_mask,
        layout.widths,
        layout.channels,
        layout.offsets,
        layout.value_slots,
        layout.storage_order,
        kv.counters,
        scale,
        windows.sink_size,
        windows.recent_size,
        windows.flush_size,
        kv.ring_size,
        kv.mid_cap,
        layout.num_value_heads,
        layout.max_width,
        block_n,
        min(settings.full_block_n, block_n),
        settings.num_stages,
        settings.max_registers,
    )
