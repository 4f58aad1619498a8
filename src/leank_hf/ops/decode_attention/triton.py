"""Triton decode attention over a LeanK cache: one launch reads exactly the stored bytes and merges the splits.

Decode only (one query row per step); multi-token chunks against a compact cache take the PyTorch path
(`leank_decode_attention` dispatches).

The launch has one program per `(batch row, KV head, split)`, started split by split (the grid's slowest axis), KV heads
ordered as stored (widest first): the longest programs start first and the last wave holds middle chunks, not a full
region (~3x a chunk's bytes) that would leave the other SMs idle. Split 0 attends the full region (sinks + recent
window, all channels); splits `1..S` each attend one chunk of the compact middle region, reading the head's contiguous
`[T, width]` key block and its `[T, head_dim]` value block (for an 8-bit middle, tiles of `layout.VALUE_TILE` tokens,
each a contiguous channel-major `[head_dim, VALUE_TILE]` block of codes). Chunk bounds come from a small table
(`launch.middle_chunks`): by default guided, shrinking toward the end, so the last wave of programs is short and the SMs
idle less while it drains. All query heads of a GQA group form one tile, so every key byte is read once. Each program
writes a normalised partial output and its log-sum-exp (base 2) in fp32, then bumps a per-(row, head) counter; the
program that finishes last merges the parts of its query heads and resets the counter to zero.

An 8-bit middle (`QUANT`; `ops.decode_attention.quantization`) is read as codes with keys as the rows of both
products (`tiles.attend_middle_codes`): each tile's codes are converted in registers to fp16 (exact for int8 and e4m3
codes; fp32 for an fp32 model) and multiplied with the query divided by its largest entry; the key scales and that
divisor multiply the tile's scores, the value scales go to the probabilities before the value product. Softmax and
accumulation stay fp32.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime import driver

from ...errors import LeanKUsageError
from .launch import (
    INTERPRETED,
    LOG2E,
    TileSettings,
    check_block_n,
    check_middle_dtypes,
    equal_chunks,
    middle_chunks,
    next_power_of_2,
    query_block,
    sm_count,
    tile_settings,
)
from .layout import CompactKV
from .tiles import attend_full_tile, attend_middle, store_part_and_merge

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit(
    do_not_specialize=[
        "sink_size",
        "num_full",
        "recent_start",
        "query_pos",
        "boundary",
        "mid_cap",
        "num_mid",
        "num_parts",
    ]
)
def _leank_decode_kernel(
    Q, FULL_K, FULL_V, MID_K, MID_V, MID_KS, MID_VS, PAD, KEY_MASK, WIDTHS, CHANNELS, OFFSETS, VALUE_SLOTS,
    STORAGE_ORDER, CHUNK_STARTS, O_PART, LSE_PART, COUNTERS, OUT,
    stride_qb, stride_qh,
    stride_fkb, stride_fkh, stride_fkt,
    stride_fvb, stride_fvh, stride_fvt,
    stride_mkb,
    stride_mvb, stride_mvh, stride_mvt,
    stride_msb, stride_msh,
    stride_kmb,
    scale_log2,
    sink_size, num_full, recent_start, query_pos, boundary, mid_cap, num_mid, num_parts,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    G_POW: tl.constexpr, MERGE_S: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr, QUANT: tl.constexpr, FULL_BLOCK_N: tl.constexpr, MAX_WIDTH: tl.constexpr,
):  # fmt: skip
    i_b = tl.program_id(0).to(tl.int64)
    i_h = tl.load(STORAGE_ORDER + tl.program_id(1))
    i_split = tl.program_id(2)
    pad = tl.load(PAD + i_b)
    p_key_mask = KEY_MASK + i_b * stride_kmb  # this row's mask bytes by global slot (unused without a mask)
    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < G
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < HEAD_DIM
    # query rows of this KV head's GQA group: heads i_h * G + g
    p_q = Q + i_b * stride_qb + (i_h * G + o_g).to(tl.int64) * stride_qh  # [BLOCK_G]

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if i_split == 0:
        # Full region: slot s < sink_size is global slot pad + s, slot sink_size + r is recent_start + r.
        q = tl.load(p_q[:, None] + o_d[None, :], mask=m_g[:, None] & m_d[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        p_k = FULL_K + i_b * stride_fkb + i_h.to(tl.int64) * stride_fkh
        p_v = FULL_V + i_b * stride_fvb + i_h.to(tl.int64) * stride_fvh
        for start in range(0, num_full, FULL_BLOCK_N):
            o_s = start + tl.arange(0, FULL_BLOCK_N)
            is_sink = o_s < sink_size
            g = tl.where(is_sink, pad + o_s, recent_start + o_s - sink_size)
            valid = (g <= query_pos) & tl.where(is_sink, g < boundary, (o_s < num_full) & (g >= boundary) & (g >= pad))
            m_i, l_i, acc = attend_full_tile(
                m_i, l_i, acc, q, p_k, p_v, o_s, g, valid, stride_fkt, stride_fvt, p_key_mask, scale_log2, o_d, m_d,
                UPCAST, DOT_PRECISION, HAS_KEY_MASK,
            )  # fmt: skip
    else:
        # Middle chunk: index t is global slot sink_size + t; valid for pad <= t < boundary - sink_size.
        width = tl.load(WIDTHS + i_h)
        t_start = tl.maximum(tl.load(CHUNK_STARTS + i_split - 1), pad.to(tl.int32))
        t_stop = tl.minimum(tl.minimum(tl.load(CHUNK_STARTS + i_split), num_mid), boundary - sink_size)
        if (width > 0) & (t_start < t_stop):
            key_offset = tl.multiple_of(tl.load(OFFSETS + i_h), 16)
            value_slot = tl.load(VALUE_SLOTS + i_h).to(tl.int64)
            p_k = MID_K + i_b * stride_mkb + key_offset * mid_cap
            p_v = MID_V + i_b * stride_mvb + value_slot * stride_mvh
            scale_offset = i_b * stride_msb + value_slot * stride_msh  # scales [B, NV, mid_cap] (8-bit middle)
            p_channels = CHANNELS + i_h * HEAD_DIM
            # One compiled loop per width up to the layer's widest; the one matching this head's width runs.
            for i_w in tl.static_range(1, MAX_WIDTH // 16 + 1):
                if width == i_w * 16:
                    m_i, l_i, acc = attend_middle(
                        p_q,
                        p_channels,
                        m_g,
                        p_k,
                        p_v,
                        stride_mvt,
                        p_key_mask + sink_size,
                        t_start,
                        t_stop,
                        scale_log2,
                        MID_KS + scale_offset,
                        MID_VS + scale_offset,
                        i_w * 16,
                        BLOCK_G,
                        BLOCK_N,
                        BLOCK_D,
                        HEAD_DIM,
                        UPCAST,
                        DOT_PRECISION,
                        HAS_KEY_MASK,
                        QUANT,
                    )

    store_part_and_merge(
        m_i, l_i, acc, O_PART, LSE_PART, COUNTERS, OUT, i_b, i_h, i_split, num_parts,
        G, G_POW, MERGE_S, HEAD_DIM, BLOCK_G, BLOCK_D,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _chunk_starts(device: torch.device, chunks: tuple[int, ...]) -> torch.Tensor:
    """The chunk bounds as an int32 tensor on `device`, made once per device and bounds (a decode step's bounds change
    when the middle grows, once per flush). A CUDA graph that captures a launch needs its bounds made before capture
    (a first eager call) and kept alive: the static kernel, which graphs replay, does not use this table."""
    return torch.tensor(chunks or (0,), dtype=torch.int32, device=device)


# Per (device, stream): int32 counters of finished programs per (batch row, KV head). Every launch leaves them at 0.
_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def _counters(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed counters for one launch, reused across launches on the same stream (the kernel resets them)."""
    if device.type != "cuda":
        return torch.zeros(size, dtype=torch.int32, device=device)
    key = (device, driver.active.get_current_stream(device.index))  # Triton's raw handle: no torch Stream object
    counters = _COUNTERS.get(key)
    if counters is None or counters.numel() < size:
        counters = _COUNTERS[key] = torch.zeros(max(size, 1024), dtype=torch.int32, device=device)
    return counters


def _check_inputs(query: torch.Tensor, kv: CompactKV) -> None:
    """The step's inputs (query, key mask, shapes), then, unless `kv.from_cache`, every cache tensor."""
    layout = kv.layout
    if query.dim() != 4 or query.shape[2] != 1:
        raise LeanKUsageError(
            f"the Triton LeanK kernel takes one query row per step, `query` [B, Hq, 1, D], got shape "
            f"{tuple(query.shape)}; use backend='torch' for multi-token queries"
        )
    if len(kv.boundaries) != 1:
        raise LeanKUsageError(f"the Triton LeanK kernel needs one boundary per step, got {len(kv.boundaries)}")
    batch, num_q_heads, _, head_dim = query.shape
    num_kv_heads = layout.num_kv_heads
    if head_dim != layout.head_dim or num_q_heads % num_kv_heads:
        raise LeanKUsageError(
            f"query shape {tuple(query.shape)} does not fit the cache layout (head_dim {layout.head_dim}, "
            f"{num_kv_heads} KV heads): need head_dim {layout.head_dim} and a multiple of {num_kv_heads} query heads"
        )
    if query.dtype not in _SUPPORTED_DTYPES:
        raise LeanKUsageError(f"the Triton LeanK kernel supports {_SUPPORTED_DTYPES}, got query dtype {query.dtype}")
    odd = [group.width for group in layout.groups if group.width % 16]
    if odd:
        raise LeanKUsageError(
            f"the Triton LeanK kernel needs kept widths that are multiples of 16, got {odd}; "
            "use backend='torch' or a mask built with align=16 or 32"
        )
    if query.device.type != "cuda" and not INTERPRETED:
        raise LeanKUsageError(
            f"the Triton LeanK kernel runs on CUDA tensors, got {query.device}; use backend='torch' on CPU"
        )
    if query.stride(-1) != 1:
        raise LeanKUsageError("`query` must be contiguous in its last dimension")
    if kv.full_keys.device != query.device:
        raise LeanKUsageError(f"the cache is on {kv.full_keys.device} but the query is on {query.device}")
    if kv.full_keys.dtype != query.dtype:
        raise LeanKUsageError(f"`full_keys` has dtype {kv.full_keys.dtype} but the query has {query.dtype}")
    key_mask = kv.key_mask
    if key_mask is not None and (
        key_mask.device != query.device
        or key_mask.dtype != torch.bool
        or key_mask.dim() != 2
        or key_mask.shape[0] != batch
        or key_mask.shape[1] <= kv.query_start
        or key_mask.stride(-1) != 1
    ):
        raise LeanKUsageError(
            f"`key_mask` must be a bool [B, L > query_start] tensor on {query.device}, contiguous in its last "
            f"dimension; got {key_mask.dtype} {tuple(key_mask.shape)} on {key_mask.device}"
        )
    if tuple(kv.full_keys.shape[:2]) != (batch, num_kv_heads) or kv.mid_keys.shape[0] != batch:
        raise LeanKUsageError(
            f"cache tensors do not match the query batch {batch} and {num_kv_heads} KV heads: full_keys "
            f"{tuple(kv.full_keys.shape)}, mid_keys {tuple(kv.mid_keys.shape)}"
        )
    if not kv.from_cache:
        _check_cache_tensors(query, kv)


def _check_cache_tensors(query: torch.Tensor, kv: CompactKV) -> None:
    """Devices, dtypes and strides of every tensor the kernel reads, for a `CompactKV` built outside a cache layer."""
    tensors = {
        "full_values": kv.full_values,
        "mid_keys": kv.mid_keys,
        "mid_values": kv.mid_values,
        "pad": kv.pad,
        "layout.widths": kv.layout.widths,
        "layout.channels": kv.layout.channels,
    }
    for name, tensor in tensors.items():
        if tensor.device != query.device:
            raise LeanKUsageError(f"`{name}` is on {tensor.device} but the query is on {query.device}")
    check_middle_dtypes(query, kv.mid_keys, kv.mid_values, kv.mid_key_scales, kv.mid_value_scales, kv.mid_cap)
    if kv.full_values.dtype != query.dtype:
        raise LeanKUsageError(f"`full_values` has dtype {kv.full_values.dtype} but the query has {query.dtype}")
    for name, tensor in (("full_keys", kv.full_keys), ("full_values", kv.full_values), ("mid_keys", kv.mid_keys)):
        if tensor.numel() and tensor.stride(-1) != 1:
            raise LeanKUsageError(f"`{name}` must be contiguous in its last dimension")


def leank_decode_fwd(
    query: torch.Tensor,
    kv: CompactKV,
    scale: float,
    *,
    num_splits: int | None = None,
    chunks: tuple[int, ...] | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
    settings: TileSettings | None = None,
) -> torch.Tensor:
    """Launch the decode kernel. See `leank_decode_triton`; the keywords tune the launch.

    Args:
        num_splits (`int`, *optional*):
            Middle-region chunks of equal length per (batch row, KV head).
        chunks (`tuple[int, ...]`, *optional*):
            Middle-region chunk bounds `(0, ..., kv.num_mid)` (`launch.middle_chunks`); chosen from the problem size
            and SM count if neither this nor `num_splits` is given.
        block_n (`int`, *optional*):
            Keys per middle tile (a power of two >= 16), overriding `settings.block_n`; full-region tiles are no longer.
        num_warps (`int`, *optional*, defaults to 4):
            Warps per program.
        settings (`TileSettings`, *optional*):
            Tile sizes, load stages and register cap; `launch.tile_settings` chooses by the middle's storage if not
            given.
    """
    _check_inputs(query, kv)
    quant = kv.mid_key_scales is not None
    settings = settings or tile_settings(quant)
    block_n = block_n or settings.block_n
    check_block_n(block_n)
    layout = kv.layout
    batch, num_q_heads, _, head_dim = query.shape
    num_kv_heads = layout.num_kv_heads
    group = num_q_heads // num_kv_heads
    if num_splits is not None:
        split_len = math.ceil(math.ceil(max(kv.num_mid, 1) / max(num_splits, 1)) / block_n) * block_n
        splits = math.ceil(kv.num_mid / split_len) if layout.num_value_heads else 0
        chunks = equal_chunks(kv.num_mid, splits, split_len)
    elif chunks is None:
        num_sms = sm_count(query.device.index or 0) if query.device.type == "cuda" else 8
        chunks = middle_chunks(
            batch, layout.num_value_heads, kv.num_mid, block_n, num_sms, guided=settings.guided,
            programs_per_sm=settings.programs_per_sm, min_keys=settings.min_chunk_keys,
        )  # fmt: skip
    num_parts = len(chunks)  # the full region and each middle chunk
    chunk_starts = _chunk_starts(query.device, chunks)
    rows = batch * num_q_heads * num_parts
    partial_out = torch.empty(rows * head_dim, device=query.device, dtype=torch.float32)
    partial_lse = torch.empty(rows, device=query.device, dtype=torch.float32)
    out = torch.empty(batch, num_q_heads, 1, head_dim, device=query.device, dtype=query.dtype)
    group_pow = next_power_of_2(group)
    block_d = next_power_of_2(head_dim)
    full_keys, full_values, mid_values = kv.full_keys, kv.full_values, kv.mid_values
    # Bytes of the bool mask; without one, any pointer (never read: HAS_KEY_MASK is False).
    key_mask = kv.pad if kv.key_mask is None else kv.key_mask.view(torch.uint8)
    # fp32 scales of an 8-bit middle; without them, any tensor (never read: QUANT is False).
    key_scales, value_scales = (kv.mid_key_scales, kv.mid_value_scales) if quant else (partial_lse, partial_lse)
    scale_strides = key_scales.stride()[:2] if quant else (0, 0)
    _leank_decode_kernel[(batch, num_kv_heads, num_parts)](
        query, full_keys, full_values, kv.mid_keys, mid_values, key_scales, value_scales, kv.pad, key_mask,
        layout.widths, layout.channels, layout.offsets, layout.value_slots, layout.storage_order, chunk_starts,
        partial_out, partial_lse, _counters(query.device, batch * num_kv_heads), out,
        *query.stride()[:2], *full_keys.stride()[:3], *full_values.stride()[:3], kv.mid_keys.stride(0),
        *mid_values.stride()[:3], *scale_strides, key_mask.stride(0),
        scale * LOG2E,
        kv.sink_size, kv.sink_size + kv.num_recent, kv.recent_start, kv.query_start, kv.boundaries[0],
        kv.mid_cap, kv.num_mid, num_parts,
        G=group, HEAD_DIM=head_dim, BLOCK_G=query_block(group_pow, quant), BLOCK_N=block_n,
        BLOCK_D=block_d, G_POW=group_pow, MERGE_S=max(1, 8192 // (group_pow * block_d)),
        UPCAST=INTERPRETED, DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        HAS_KEY_MASK=kv.key_mask is not None, QUANT=quant, FULL_BLOCK_N=min(settings.full_block_n, block_n),
        MAX_WIDTH=layout.max_width,
        num_warps=num_warps, num_stages=settings.num_stages, maxnreg=settings.max_registers,
    )  # fmt: skip
    return out


def leank_decode_triton(query: torch.Tensor, kv: CompactKV, *, scale: float) -> torch.Tensor:
    """Decode attention of one query row over a layer's LeanK cache, in one kernel launch.

    Args:
        query (`torch.Tensor`):
            `[B, Hq, 1, D]` fp16, bf16 or fp32 on CUDA; `Hq` a multiple of the cache's KV heads (GQA).
        kv (`CompactKV`):
            The layer's cache as returned by `LeanKLayer.update`, with `len(kv.boundaries) == 1` and every kept
            width a multiple of 16; its middle in the query's dtype or 8-bit (int8 / FP8 e4m3 codes and scales).
        scale (`float`):
            Softmax scale applied to the logits.

    Returns:
        `torch.Tensor`: `[B, Hq, 1, D]` attention output in the query's dtype (fp32 accumulation).
    """
    return leank_decode_fwd(query, kv, scale)
