"""Host-side helpers both LeanK decode launchers use: interpreter mode, grid splits, the 8-bit middle's checks."""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from triton import knobs

from ...errors import LeanKUsageError
from .layout import VALUE_TILE, has_value_storage

# Kernels are built as interpreted functions when TRITON_INTERPRET=1 at import. The interpreter computes bf16
# wrongly, so loads are cast to fp32 right away in that mode.
INTERPRETED = bool(knobs.runtime.interpret)
CODE_DTYPES = (torch.uint8, torch.float8_e4m3fn)  # an 8-bit middle's codes (int8 stored offset by 128)
LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_CHUNK_KEYS = 512  # shortest middle chunk a program attends (8 tiles of 64 keys, 4 of 128)


@functools.cache
def sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_splits(
    batch: int, busy_heads: int, num_mid: int, block_n: int, num_sms: int, ctas_per_sm: int = 8
) -> tuple[int, int]:
    """Number of middle-region splits and their length in tokens (a multiple of `block_n`).

    Enough programs to give every SM `ctas_per_sm` middle chunks, but no chunk shorter than `MIN_CHUNK_KEYS` keys
    (or one tile) and at most `MAX_SPLITS` chunks (the merge of many parts costs more than the parallelism gains). The
    floor is in keys, not tiles, so 128-key tiles (an 8-bit middle) split a batch-1 context as finely as 64-key ones.
    """
    if num_mid <= 0 or busy_heads == 0:
        return 0, block_n
    wanted = math.ceil(num_sms * ctas_per_sm / (batch * busy_heads))
    splits = max(1, min(wanted, MAX_SPLITS, math.ceil(num_mid / max(MIN_CHUNK_KEYS, block_n))))
    split_len = math.ceil(math.ceil(num_mid / splits) / block_n) * block_n
    return math.ceil(num_mid / split_len), split_len


def equal_chunks(num_mid: int, splits: int, split_len: int) -> tuple[int, ...]:
    """Bounds `(0, split_len, ..., num_mid)` of `splits` chunks of `split_len` tokens (the last may be shorter)."""
    return tuple(min(num_mid, i * split_len) for i in range(splits + 1))


@functools.lru_cache(maxsize=1024)
def middle_chunks(
    batch: int,
    busy_heads: int,
    num_mid: int,
    block_n: int,
    num_sms: int,
    *,
    guided: float = 0.0,
    programs_per_sm: int = 3,
    min_keys: int = MIN_CHUNK_KEYS,
) -> tuple[int, ...]:
    """Bounds of the middle-region chunks of each `(batch row, KV head)`: `(0, end_1, ..., num_mid)`, whole tiles.

    `guided == 0`: the `choose_splits` chunks, all of one length. `guided > 0`: each chunk is the remaining middle
    divided by `guided` times the programs that run at once per `(row, head)` (`programs_per_sm` per SM), at least
    `min_keys`: chunks shrink toward the end, so the programs of the last wave are short and the SMs idle less
    while it drains (guided self-scheduling; the grid starts chunks in order).
    """
    if not guided:
        return equal_chunks(num_mid, *choose_splits(batch, busy_heads, num_mid, block_n, num_sms))
    if num_mid <= 0 or busy_heads == 0:
        return (0,)
    per_stream = guided * num_sms * programs_per_sm / (batch * busy_heads)
    bounds = [0]
    while bounds[-1] < num_mid:
        remaining = num_mid - bounds[-1]
        length = max(min_keys, block_n, math.ceil(remaining / per_stream / block_n) * block_n)
        bounds.append(min(num_mid, bounds[-1] + length))
    return tuple(bounds)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= `n` (1 for `n <= 1`), in plain Python: launchers call it on every launch."""
    return 1 << max(n - 1, 0).bit_length()


def query_block(group_pow: int, quantized: bool) -> int:
    """Query rows per tile (a GQA group padded to a power of two). The model's dtype: at least 16, the rows of a
    tensor-core product. An 8-bit middle: the group itself, the columns of its keys-as-rows products
    (`tiles.attend_middle_codes`), which stay warp-level MMAs up to 8 (from 16 Triton picks Hopper's warp-group MMAs,
    which read 8-bit operands from shared memory two bytes at a time)."""
    return group_pow if quantized else max(16, group_pow)


@dataclasses.dataclass(frozen=True)
class TileSettings:
    """Launch settings of both decode kernels.

    `block_n` keys per middle tile, `full_block_n` slots per full-region tile (launchers use at most `block_n`; the
    full region loads every channel, so long tiles there cost registers), `num_stages` load stages, `max_registers`
    per thread (`None`: the compiler's choice). The register cap sets how many programs share an SM (three 4-warp
    programs at 168 registers or fewer, two above) and, below what the loops need, makes ptxas spill. `guided`,
    `programs_per_sm` and `min_chunk_keys` choose the dynamic kernel's middle chunks (`middle_chunks`; the static
    kernel's are of equal length).
    """

    block_n: int
    full_block_n: int
    num_stages: int
    max_registers: int | None
    guided: float = 0.0
    programs_per_sm: int = 3
    min_chunk_keys: int = MIN_CHUNK_KEYS


@functools.cache
def tile_settings(quantized: bool) -> TileSettings:
    """Default settings, from `benchmarks/tune_kernel.py` on an H200 (32K tokens, batch 8 and 1), by the middle's
    storage (8-bit codes or the model's dtype). 8-bit: no register cap (the int8 kernel takes 168 registers up to a
    kept width of 96, the most that lets three 4-warp programs share an SM; a cap of 168 spilled and ran 1.7-2.0%
    slower over the Llama mask's 32 layers, 200 slower still), and 3 stages keep more bytes in flight; more programs
    per SM (2 stages with 128 or 96 registers, or 8 warps), 4 stages and 64-key tiles ran slower. Guided chunks of at
    least 1024 keys: against equal chunks of at least 512, 4% faster at batch 8 (8-bit) and 4-14% at batch 1."""
    if quantized:
        return TileSettings(128, 64, 3, None, guided=1.15, programs_per_sm=3, min_chunk_keys=1024)
    return TileSettings(64, 64, 3, None, guided=1.5, programs_per_sm=2, min_chunk_keys=1024)


def check_block_n(block_n: int) -> None:
    """Keys per middle tile: a power of two >= 16 (a tensor-core operand's rows and a Triton range)."""
    if block_n < 16 or block_n & (block_n - 1):
        raise LeanKUsageError(f"`block_n` must be a power of two >= 16, got {block_n}")


def check_middle_dtypes(
    query: torch.Tensor,
    mid_keys: torch.Tensor,
    mid_values: torch.Tensor,
    key_scales: torch.Tensor | None,
    value_scales: torch.Tensor | None,
    mid_cap: int,
) -> None:
    """The middle holds the query's dtype (values token-major), or 8-bit codes (values in tiles, as
    `layout.new_value_storage` stores them) with fp32 scales `[B, NV, >= mid_cap]` beside them."""
    if key_scales is None and value_scales is None:
        for name, tensor in (("mid_keys", mid_keys), ("mid_values", mid_values)):
            if tensor.dtype != query.dtype:
                raise LeanKUsageError(f"`{name}` has dtype {tensor.dtype} but the query has {query.dtype}")
        if mid_values.dim() != 4 or mid_values.numel() and mid_values.stride(-1) != 1:
            raise LeanKUsageError("`mid_values` must be `[B, NV, T, D]`, contiguous in its last dimension")
        return
    if mid_keys.dtype not in CODE_DTYPES or mid_values.dtype != mid_keys.dtype:
        raise LeanKUsageError(
            f"an 8-bit middle stores {CODE_DTYPES} codes in `mid_keys` and `mid_values`, got {mid_keys.dtype} and "
            f"{mid_values.dtype}"
        )
    if not has_value_storage(mid_values) or mid_values.shape[2] * VALUE_TILE < mid_cap:
        raise LeanKUsageError(
            f"8-bit `mid_values` must be stored in tiles of {VALUE_TILE} tokens, `[B, NV, tiles, D, {VALUE_TILE}]` "
            f"with each tile contiguous and room for {mid_cap} tokens, got shape {tuple(mid_values.shape)} and "
            f"strides {mid_values.stride()}; allocate it with `ops.decode_attention.layout.new_value_storage` (or "
            "convert token-major values with `middle_values_like`)"
        )
    expected = (mid_values.shape[0], mid_values.shape[1])
    for name, scales in (("mid_key_scales", key_scales), ("mid_value_scales", value_scales)):
        if (
            scales is None
            or scales.dtype != torch.float32
            or scales.device != query.device
            or tuple(scales.shape[:2]) != expected
            or scales.shape[2] < mid_cap
            or scales.stride(-1) != 1
            or scales.stride() != key_scales.stride()
        ):
            raise LeanKUsageError(
                f"`{name}` must be fp32 [B, NV, >= {mid_cap}] on {query.device} with the strides of `mid_key_scales`, "
                f"contiguous in its last dimension"
            )
