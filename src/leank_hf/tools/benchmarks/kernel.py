"""GPU benchmark of one decode-attention step: the LeanK Triton kernel against dense decode attention.

Shapes are Llama-3.1-8B's (32 query / 8 KV heads, head_dim 128) with a LeanK mask (the authors' Llama mask by
default); every layer of the mask gets its own LeanK cache of the same context, and dense attention reads the full
`[B, 8, T, 128]` cache. Two timings per method, both medians after warm-up:

- events: CUDA events around each call, L2 flushed before each repetition (`triton.testing.do_bench`); a call whose
  host-side launch cost exceeds the flush shows that cost too (LeanK calls check what a decode step through a LeanK
  cache checks: the step's inputs, `CompactKV.from_cache`);
- graph: replays of a CUDA graph of the calls (`triton.testing.do_bench_cudagraph`), the GPU time alone.

Bandwidth counts the cache bytes each method must read, over the graph time. With `middle_quants`, the LeanK kernel
is also timed on an 8-bit middle region (int8 or FP8 e4m3 codes plus one fp32 scale per token and KV head for keys
and values), whose bytes (scales included) set its bytes-limit speedup.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from transformers.utils.logging import tqdm

from ...contract import Windows
from ...errors import LeanKUsageError
from ...masks import LeanKMasks
from ...ops.decode_attention.layout import CompactKV, HeadLayout, middle_values_like
from ...ops.decode_attention.quantization import FORMATS, quantize_rows
from . import MASK_ID, BenchmarkResult

DEFAULT_CONTEXTS = (8192, 32768, 131072)
DEFAULT_BATCHES = (1, 8, 32)
NUM_Q_HEADS = 32  # Llama-3.1-8B
NUM_KV_HEADS = 8
HEAD_DIM = 128


@dataclass
class KernelResult:
    """One (context, batch) point: LeanK kernel time (mean over layers) against dense baselines."""

    context: int
    batch: int
    middle: str  # storage of the LeanK middle region: bf16 / int8 / fp8
    layers: int
    leank_ms: float
    leank_graph_ms: float
    sdpa_ms: float
    sdpa_graph_ms: float
    flash_attn_ms: float | None
    flash_attn_graph_ms: float | None
    speedup_vs_sdpa: float
    speedup_vs_sdpa_graph: float
    speedup_vs_flash_attn_graph: float | None
    bytes_limit_speedup: float
    leank_gbps: float
    leank_copy_fraction: float
    sdpa_gbps: float
    leank_bytes: int
    dense_bytes: int


def _bench(fn: Callable[[], object], rep_ms: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median"))


def _bench_both(fn: Callable[[], object], rep_ms: int) -> tuple[float, float]:
    """`(events_ms, graph_ms)` medians of `fn`."""
    import triton.testing

    graph_ms = float(triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median"))
    return _bench(fn, rep_ms), graph_ms


def host_us_per_call(fn: Callable[[], object], calls: int = 200) -> float:
    """Host time of one call in microseconds, for a call whose GPU work is shorter than its launch cost."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def copy_bandwidth_gbps(size_bytes: int = 2 << 30, rep_ms: int = 100) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read plus bytes written), the ceiling of a memory-bound kernel."""
    src = torch.randn(size_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(functools.partial(dst.copy_, src), rep_ms)
    return 2 * size_bytes / (ms * 1e-3) / 1e9


def _window(context: int, sink: int, recent: int, flush: int) -> tuple[int, int]:
    """`(boundary, num_recent)` of a decode step with `context` cached slots (DESIGN.md's flush rule)."""
    boundary = Windows(sink, recent, flush).flushed(context)
    return boundary, context - boundary


def _random_middle(
    shape: tuple[int, ...], dtype: torch.dtype, quant: str | None, row: int, device: str = "cuda"
) -> torch.Tensor:
    """Normal values on `device` in `dtype`, or the 8-bit codes of `quant` of normal vectors of `row` elements, each
    quantized at its own scale as the cache quantizes a token's head (codes spread over the format's range: the
    kernel's speed depends on the bytes it reads: unit-scale int8 codes, nearly all in [-4, 4], ran ~3% faster)."""
    values = torch.randn(shape, device=device)
    if quant is None:
        return values.to(dtype)
    return quantize_rows(values.unflatten(-1, (-1, row)), FORMATS[quant])[0].flatten(-2)


def _layer_caches(
    masks: LeanKMasks, layers: Sequence[int], context: int, batch: int, dtype: torch.dtype, quant: str | None = None
) -> list[CompactKV]:
    """A LeanK cache of `context` slots per layer; middle buffers are shared views of one allocation (random data;
    with `quant`, 8-bit codes of random vectors (`_random_middle`) and random fp32 scales, not the codes' own)."""
    sink, recent, flush = masks.sink_size, masks.recent_size, masks.flush_size
    boundary, num_recent = _window(context, sink, recent, flush)
    num_mid = boundary - sink
    layouts = [HeadLayout.from_mask(masks.mask[layer]).to("cuda") for layer in layers]
    max_width = max(layout.total_width for layout in layouts)
    max_value_heads = max(layout.num_value_heads for layout in layouts)
    full_keys = torch.randn(batch, NUM_KV_HEADS, sink + recent + flush, HEAD_DIM, device="cuda", dtype=dtype)
    full_values = torch.randn_like(full_keys)
    # key rows of the mask's alignment (every kept width is a multiple of it), value rows of a head's channels
    mid_keys = _random_middle((batch, num_mid * max_width), dtype, quant, masks.align)
    mid_values = middle_values_like(_random_middle((batch, max_value_heads, num_mid, HEAD_DIM), dtype, quant, HEAD_DIM))
    scales = None
    if quant is not None:
        scales = torch.rand(2, batch, max_value_heads, num_mid, device="cuda") / 64
    pad = torch.zeros(batch, dtype=torch.int64, device="cuda")
    return [
        CompactKV(
            layout=layout,
            full_keys=full_keys,
            full_values=full_values,
            sink_size=sink,
            num_recent=num_recent,
            recent_start=boundary,
            mid_keys=mid_keys[:, : num_mid * layout.total_width],
            mid_values=mid_values[:, : layout.num_value_heads],
            mid_cap=num_mid,
            num_mid=num_mid,
            pad=pad,
            query_start=context - 1,
            boundaries=(boundary,),
            mid_key_scales=None if scales is None else scales[0, :, : layout.num_value_heads],
            mid_value_scales=None if scales is None else scales[1, :, : layout.num_value_heads],
        )
        for layout in layouts
    ]


def _as_cache_steps(query: torch.Tensor, caches: list[CompactKV]) -> list[CompactKV]:
    """`caches` as a cache layer hands its steps to the kernel (`CompactKV.from_cache`), after one call each that
    checks every cache tensor."""
    from ...ops.decode_attention.triton import leank_decode_triton

    for kv in caches:
        leank_decode_triton(query, kv, scale=1.0)
    return [replace(kv, from_cache=True) for kv in caches]


def _leank_bytes(kv: CompactKV, batch: int, element: int) -> int:
    """Bytes one decode step reads: full region, query and middle (8-bit: codes plus their fp32 scales)."""
    full = batch * NUM_KV_HEADS * (kv.sink_size + kv.num_recent) * HEAD_DIM * 2
    code = kv.mid_keys.element_size()
    middle = batch * kv.num_mid * (kv.layout.total_width + kv.layout.num_value_heads * HEAD_DIM) * code
    if kv.mid_key_scales is not None:
        middle += 2 * batch * kv.num_mid * kv.layout.num_value_heads * kv.mid_key_scales.element_size()
    return (full + batch * NUM_Q_HEADS * HEAD_DIM) * element + middle


def _flash_attn_with_kvcache() -> Callable[..., torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_with_kvcache
    except ImportError:
        return None
    return flash_attn_with_kvcache


def bench_point(
    masks: LeanKMasks,
    layers: Sequence[int],
    context: int,
    batch: int,
    *,
    dtype: torch.dtype = torch.bfloat16,
    copy_gbps: float,
    rep_ms: int = 40,
    middle_quants: Sequence[str | None] = (None,),
) -> list[KernelResult]:
    """Time the LeanK kernel on every layer in `layers` (once per middle storage in `middle_quants`) and dense decode
    attention on the same context."""
    from ...ops.decode_attention.triton import leank_decode_triton

    element = torch.finfo(dtype).bits // 8
    scale = HEAD_DIM**-0.5
    query = torch.randn(batch, NUM_Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype)
    leank = {}
    for quant in middle_quants:
        caches = _as_cache_steps(query, _layer_caches(masks, layers, context, batch, dtype, quant))
        times = [_bench_both(functools.partial(leank_decode_triton, query, kv, scale=scale), rep_ms) for kv in caches]
        leank[quant] = (
            statistics.fmean(t[0] for t in times),
            statistics.fmean(t[1] for t in times),
            statistics.fmean(_leank_bytes(kv, batch, element) for kv in caches),
        )
        caches.clear()
        torch.cuda.empty_cache()
    dense_bytes = (2 * batch * NUM_KV_HEADS * context * HEAD_DIM + batch * NUM_Q_HEADS * HEAD_DIM) * element
    dense = _bench_dense(query, context, scale, rep_ms)
    return [
        _result(context, batch, quant or "bf16", len(layers), *times, dense_bytes, copy_gbps, *dense)
        for quant, times in leank.items()
    ]


def _result(
    context: int,
    batch: int,
    middle: str,
    layers: int,
    leank_ms: float,
    leank_graph_ms: float,
    leank_bytes: float,
    dense_bytes: int,
    copy_gbps: float,
    sdpa_ms: float,
    sdpa_graph_ms: float,
    flash_ms: float | None,
    flash_graph_ms: float | None,
) -> KernelResult:
    leank_gbps = leank_bytes / (leank_graph_ms * 1e-3) / 1e9
    return KernelResult(
        context=context,
        batch=batch,
        middle=middle,
        layers=layers,
        leank_ms=leank_ms,
        leank_graph_ms=leank_graph_ms,
        sdpa_ms=sdpa_ms,
        sdpa_graph_ms=sdpa_graph_ms,
        flash_attn_ms=flash_ms,
        flash_attn_graph_ms=flash_graph_ms,
        speedup_vs_sdpa=sdpa_ms / leank_ms,
        speedup_vs_sdpa_graph=sdpa_graph_ms / leank_graph_ms,
        speedup_vs_flash_attn_graph=flash_graph_ms / leank_graph_ms if flash_graph_ms else None,
        bytes_limit_speedup=dense_bytes / leank_bytes,
        leank_gbps=leank_gbps,
        leank_copy_fraction=leank_gbps / copy_gbps,
        sdpa_gbps=dense_bytes / (sdpa_graph_ms * 1e-3) / 1e9,
        leank_bytes=int(leank_bytes),
        dense_bytes=dense_bytes,
    )


def _flash_sdpa(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA decode restricted to the flash backend, GQA without repeating K/V."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(query, keys, values, scale=scale, enable_gqa=True)


def _bench_dense(
    query: torch.Tensor, context: int, scale: float, rep_ms: int
) -> tuple[float, float, float | None, float | None]:
    """`(sdpa_ms, sdpa_graph_ms, flash_attn_ms, flash_attn_graph_ms)` on a dense cache of `context` tokens."""
    batch = query.shape[0]
    keys = torch.randn(batch, NUM_KV_HEADS, context, HEAD_DIM, device="cuda", dtype=query.dtype)
    values = torch.randn_like(keys)
    sdpa_ms, sdpa_graph_ms = _bench_both(functools.partial(_flash_sdpa, query, keys, values, scale), rep_ms)
    flash_attn_with_kvcache = _flash_attn_with_kvcache()
    if flash_attn_with_kvcache is None:
        return sdpa_ms, sdpa_graph_ms, None, None
    # flash-attn takes [B, T, H, D]
    q, k, v = (x.transpose(1, 2).contiguous() for x in (query, keys, values))
    keys = values = None
    flash_ms, flash_graph_ms = _bench_both(
        functools.partial(flash_attn_with_kvcache, q, k, v, softmax_scale=scale), rep_ms
    )
    return sdpa_ms, sdpa_graph_ms, flash_ms, flash_graph_ms


def _fits(context: int, batch: int, dtype: torch.dtype) -> bool:
    """Dense K/V plus the LeanK buffers (at most as large) must fit in free memory with room to spare."""
    dense = 2 * batch * NUM_KV_HEADS * context * HEAD_DIM * torch.finfo(dtype).bits // 8
    free, _ = torch.cuda.mem_get_info()
    return 2 * dense < 0.85 * free


def measure_host_cost(masks: LeanKMasks, dtype: torch.dtype = torch.bfloat16) -> dict[str, float]:
    """Host microseconds per call of the LeanK kernel and of SDPA on a small problem (8K tokens, batch 1, layer 0)."""
    from ...ops.decode_attention.triton import leank_decode_triton

    query = torch.randn(1, NUM_Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=dtype)
    (kv,) = _as_cache_steps(query, _layer_caches(masks, [0], 8192, 1, dtype))
    keys = torch.randn(1, NUM_KV_HEADS, 8192, HEAD_DIM, device="cuda", dtype=dtype)
    return {
        "leank_host_us": host_us_per_call(functools.partial(leank_decode_triton, query, kv, scale=0.1)),
        "sdpa_host_us": host_us_per_call(functools.partial(_flash_sdpa, query, keys, keys, 0.1)),
    }


COLUMNS = [
    "context",
    "batch",
    "LeanK middle",
    "LeanK ms (events / graph)",
    "SDPA ms (events / graph)",
    "flash-attn ms (events / graph)",
    "speedup vs SDPA (events / graph)",
    "bytes limit",
    "LeanK GB/s",
    "% of copy BW",
]


def _row(r: KernelResult) -> list[str]:
    def pair(events: float | None, graph: float | None) -> str:
        return "-" if events is None or graph is None else f"{events:.3f} / {graph:.3f}"

    return [
        str(r.context),
        str(r.batch),
        r.middle,
        pair(r.leank_ms, r.leank_graph_ms),
        pair(r.sdpa_ms, r.sdpa_graph_ms),
        pair(r.flash_attn_ms, r.flash_attn_graph_ms),
        f"{r.speedup_vs_sdpa:.2f}x / {r.speedup_vs_sdpa_graph:.2f}x",
        f"{r.bytes_limit_speedup:.2f}x",
        f"{r.leank_gbps:.0f}",
        f"{100 * r.leank_copy_fraction:.0f}%",
    ]


def run_kernel_benchmark(
    contexts: Sequence[int],
    batches: Sequence[int],
    *,
    masks: LeanKMasks | None = None,
    layers: Sequence[int] | None = None,
    rep_ms: int = 40,
    middle_quants: Sequence[str | None] = (None,),
) -> BenchmarkResult:
    """Time every (context, batch) point that fits in GPU memory.

    Args:
        contexts (`Sequence[int]`):
            Cached tokens per row.
        batches (`Sequence[int]`):
            Batch sizes.
        masks (`LeanKMasks`, *optional*):
            A mask of Llama-3.1-8B's shape `[L, 8, 128]`; defaults to the bundled authors' Llama-3.1-8B mask.
        layers (`Sequence[int]`, *optional*):
            Layers of the mask to time (the LeanK time is their mean); defaults to all.
        rep_ms (`int`, *optional*, defaults to 40):
            Milliseconds of repetitions per timing.
        middle_quants (`Sequence[str | None]`, *optional*):
            LeanK middle storages to time, a row each: `None` (the query's dtype), `"int8"`, `"fp8"`.

    Returns:
        `BenchmarkResult` named `"kernel"`.
    """
    import triton

    if not torch.cuda.is_available():
        raise LeanKUsageError("`bench kernel` needs a CUDA GPU, and torch sees none; run it on a GPU machine")
    masks = LeanKMasks.from_pretrained(MASK_ID) if masks is None else masks
    if tuple(masks.mask.shape[1:]) != (NUM_KV_HEADS, HEAD_DIM):
        raise LeanKUsageError(
            f"the kernel benchmark uses Llama-3.1-8B shapes ({NUM_KV_HEADS} KV heads, head_dim {HEAD_DIM}); the mask "
            f"has shape {tuple(masks.mask.shape)}"
        )
    layers = list(range(masks.num_layers)) if layers is None else list(layers)
    copy_gbps = copy_bandwidth_gbps()
    host = measure_host_cost(masks)
    results, skipped = [], []
    for context, batch in tqdm([(c, b) for c in contexts for b in batches], desc="bench kernel", leave=False):
        if _fits(context, batch, torch.bfloat16):
            results += bench_point(
                masks, layers, context, batch, copy_gbps=copy_gbps, rep_ms=rep_ms, middle_quants=middle_quants
            )
        else:
            skipped.append(f"{context}x{batch}")
    device = torch.cuda.get_device_name()
    notes = [
        f"{device}, bf16, Llama-3.1-8B attention shape (32 q / 8 KV heads, head_dim 128), mask {masks.base_model}; "
        f"LeanK times are the mean over {len(layers)} layer(s). Device copy bandwidth {copy_gbps:.0f} GB/s "
        "(read + write).",
        "events: CUDA events per call after warm-up, L2 flushed before each (host launch cost shows when it exceeds "
        "the flush); graph: CUDA-graph replay, GPU time only. GB/s and % of copy BW: cache bytes read / graph time. "
        "bytes limit: dense cache bytes / LeanK cache bytes. LeanK middle int8 / fp8: 8-bit codes and fp32 scales "
        "(per token and KV head, keys and values; counted in the LeanK bytes) of random normal vectors; SDPA reads a "
        "bf16 cache.",
        f"Host cost per call (8K tokens, batch 1): LeanK {host['leank_host_us']:.0f} us, "
        f"SDPA {host['sdpa_host_us']:.0f} us.",
    ]
    if skipped:
        notes.append("Skipped (does not fit in GPU memory): " + ", ".join(skipped))
    if _flash_attn_with_kvcache() is None:
        notes.append("flash-attn is not installed: no flash_attn_with_kvcache column.")
    return BenchmarkResult(
        name="kernel",
        title="Decode attention: LeanK Triton kernel vs dense SDPA (flash) decode",
        columns=COLUMNS,
        rows=[_row(r) for r in results],
        data=[asdict(r) for r in results],
        settings={
            "contexts": list(contexts),
            "batches": list(batches),
            "layers": layers,
            "mask": masks.base_model,
            "rep_ms": rep_ms,
            "middle_quant": [quant or "none" for quant in middle_quants],
            "device": device,
            "triton": triton.__version__,
            "copy_gbps": copy_gbps,
            **host,
        },
        notes=notes,
    )
