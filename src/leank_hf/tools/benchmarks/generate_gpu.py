"""GPU end-to-end decoding: `generate()` with transformers' caches against the LeanK caches.

Methods: `sdpa` (DynamicCache + sdpa, eager), `static_compiled` (StaticCache + sdpa, `generate`'s auto-compile:
transformers' fastest single-GPU path), `leank` (LeanKCache + the Triton kernel, eager) and `leank_static_compiled`
(LeanKStaticCache + the Triton custom op, auto-compiled); a suffix `_int8` or `_fp8` runs a LeanK method with the
middle region in 8 bits (`middle_quant`). Compiled methods first generate a few tokens on the
same cache (compilation and CUDA-graph recording are not timed), then `reset()` it.

A random-weight Llama with Llama-3.1-8B's shapes (32 layers, hidden 4096, 32 query / 8 KV heads of 128 channels;
MLP width and vocabulary configurable, Llama-3.1-8B's MLP by default) and the authors' Llama-3.1-8B mask. For each
batch size: a prompt of `context` random tokens, `new_tokens` greedy tokens; decode tokens/s is timed from the first
generated token to the last (prefill excluded), with peak memory over the whole call and over the decode phase.
Each method first generates a few tokens of a short prompt, so kernel loading and library setup are not timed.

The largest batch that fits at `context` tokens is searched separately for each method: caches filled with random
keys/values (no prefill, whose activations would otherwise set the limit), then two eager decode steps (a compiled
method's CUDA-graph memory pool is not counted).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    StaticCache,
    StoppingCriteria,
    StoppingCriteriaList,
)

from ...attention import apply_leank, revert_leank
from ...cache import LeanKCache
from ...cache_layer import LeanKLayer
from ...errors import LeanKUsageError
from ...masks import LeanKMasks
from ...static_cache import LeanKStaticCache, LeanKStaticLayer
from . import MASK_ID, BenchmarkResult, llama_masks
from .kernel import copy_bandwidth_gbps

_LEANK_8BIT = tuple(f"{method}_{quant}" for quant in ("int8", "fp8") for method in ("leank", "leank_static_compiled"))
METHODS = ("sdpa", "static_compiled", "leank", "leank_static_compiled", *_LEANK_8BIT)
COMPILED = ("static_compiled", "leank_static_compiled", "leank_static_compiled_int8", "leank_static_compiled_fp8")
DEFAULT_METHODS = METHODS[:4]  # the FP8-middle methods run when asked for
# The largest-batch search (which fills caches by hand) covers these; the tensor-parallel benchmark the dynamic ones.
SEARCHED = ("sdpa", "static_compiled", "leank", "leank_static_compiled")
DYNAMIC = ("sdpa", "leank")
GIB = 2**30


@dataclass
class GenerateResult:
    """One (method, batch) generate run."""

    method: str
    batch: int
    context: int
    new_tokens: int
    prefill_s: float
    decode_tokens_per_s: float
    decode_ms_per_step: float
    peak_gib: float
    decode_peak_gib: float
    cache_gib: float
    read_gib: float  # cache bytes a decode step reads (allocated for StaticCache, whose sdpa reads every slot)
    floor_ms: float  # (weight bytes + read_gib) / device copy bandwidth


class _StepClock(StoppingCriteria):
    """Records the GPU-synchronised time of every generated token; never stops generation."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.decode_peak = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        if len(self.times) == 1:
            torch.cuda.reset_peak_memory_stats()  # from here on: the decode phase
        self.decode_peak = torch.cuda.max_memory_allocated()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def build_model(intermediate_size: int, vocab_size: int, num_layers: int) -> LlamaForCausalLM:
    """A random bf16 Llama on the GPU with Llama-3.1-8B's attention shape."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=1 << 18,
        rope_theta=500000.0,
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def switch_attention(model: LlamaForCausalLM, method: str) -> None:
    """Switch `model` to `method`'s attention: LeanK methods the Triton kernel, the others sdpa."""
    if method.startswith("leank"):
        apply_leank(model, backend="triton")
    else:
        revert_leank(model)
        model.set_attn_implementation("sdpa")


def new_cache(method: str, model: LlamaForCausalLM, masks: LeanKMasks, max_cache_len: int = 0) -> Any:
    """An empty cache for `method` (static ones hold `max_cache_len` slots); a tensor-parallel model's LeanK cache
    keeps this rank's KV heads."""
    config = model.config
    quant = next((name for name in ("int8", "fp8") if method.endswith(f"_{name}")), "none")
    method = method.removesuffix(f"_{quant}")
    if method == "static_compiled":
        return StaticCache(config=config, max_cache_len=max_cache_len)
    if method == "leank":
        return LeanKCache.for_model(model, masks, middle_quant=quant)
    if method == "leank_static_compiled":
        return LeanKStaticCache(masks, config, max_cache_len=max_cache_len, middle_quant=quant)
    return DynamicCache(config=config)


def cache_bytes(cache: Any) -> tuple[int, int]:
    """`(allocated, read per decode step)` bytes of a cache after generation."""
    if isinstance(cache, LeanKCache | LeanKStaticCache):
        footprint = cache.memory_footprint()
        return footprint.allocated, footprint.used
    allocated = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)
    return allocated, allocated


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def greedy_generate(
    model: LlamaForCausalLM, prompt: torch.Tensor, cache: Any, new_tokens: int, criteria: tuple[Any, ...] = ()
) -> None:
    """Exactly `new_tokens` greedy tokens after `prompt` on `cache`; `criteria` are called at every token (clocks)."""
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList(list(criteria)),
    )


@torch.inference_mode()
def time_generate(
    model: LlamaForCausalLM,
    masks: LeanKMasks,
    method: str,
    batch: int,
    context: int,
    new_tokens: int,
    *,
    weight_bytes: int = 0,
    copy_gbps: float = float("inf"),
) -> GenerateResult:
    """Greedy `generate` of `new_tokens` after a random prompt of `context` tokens."""
    switch_attention(model, method)
    generator = torch.Generator(device="cuda").manual_seed(batch)
    prompt = torch.randint(1, model.config.vocab_size, (batch, context), device="cuda", generator=generator)
    cache = new_cache(method, model, masks, context + new_tokens)
    if method in COMPILED:  # compile and record the decode step on this cache, then start over on it
        greedy_generate(model, prompt[:, : min(context, 1024)], cache, 4)
        cache.reset()
    clock = _StepClock()
    _free()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    greedy_generate(model, prompt, cache, new_tokens, (clock,))
    torch.cuda.synchronize()
    steps = len(clock.times) - 1
    decode_s = clock.times[-1] - clock.times[0]
    allocated, read = cache_bytes(cache)
    result = GenerateResult(
        method=method,
        batch=batch,
        context=context,
        new_tokens=new_tokens,
        prefill_s=clock.times[0] - start,
        decode_tokens_per_s=batch * steps / decode_s,
        decode_ms_per_step=1e3 * decode_s / steps,
        peak_gib=max(torch.cuda.max_memory_allocated(), clock.decode_peak) / GIB,
        decode_peak_gib=clock.decode_peak / GIB,
        cache_gib=allocated / GIB,
        read_gib=read / GIB,
        floor_ms=1e3 * (weight_bytes + read) / (copy_gbps * 1e9),
    )
    del cache
    _free()
    return result


@torch.inference_mode()
def fits(model: LlamaForCausalLM, masks: LeanKMasks, method: str, batch: int, context: int) -> bool:
    """Whether a cache of `batch` rows x `context` random tokens fits, and two decode steps run on it."""
    switch_attention(model, method)
    config = model.config
    cache = None
    try:
        cache = new_cache(method, model, masks, context + 2)
        fill_random(cache, batch, context, config.num_key_value_heads, config.head_dim)
        token = torch.ones(batch, 1, dtype=torch.long, device="cuda")
        for _ in range(2):
            model(token, past_key_values=cache, logits_to_keep=1)
        torch.cuda.synchronize()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del cache
        _free()


def fill_random(
    cache: Any,
    batch: int,
    context: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
) -> None:
    """Fill every layer of an empty cache (dynamic, static or LeanK) with `context` random tokens per row, as after a
    prompt (no pads)."""
    shape = (batch, num_kv_heads, context, head_dim)
    positions = {"cache_position": torch.arange(context, device=device)}
    for index, layer in enumerate(cache.layers):
        keys = torch.randn(shape, device=device, dtype=dtype)
        values = torch.randn_like(keys)
        if isinstance(layer, LeanKLayer):
            layer.update(keys, values)
            layer.finish_prefill(None)
        elif isinstance(layer, LeanKStaticLayer):
            layer.update(keys, values)
            layer.prompt_attended(None)
        else:
            cache.update(keys, values, index, positions)
        del keys, values


def largest_batch(probe: Callable[[int], bool], start: int = 1, limit: int = 1024) -> int:
    """Largest `b <= limit` with `probe(b)` true, assuming monotonicity: doubling, then bisection."""
    if not probe(start):
        return 0
    low, high = start, start * 2
    while high <= limit and probe(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if probe(middle) else (low, middle)
    return low


def run_generate_benchmark(
    *,
    contexts: tuple[int, ...] = (32768,),
    new_tokens: int = 256,
    batches: tuple[int, ...] = (1, 8),
    methods: tuple[str, ...] = DEFAULT_METHODS,
    intermediate_size: int = 14336,
    vocab_size: int = 32000,
    num_layers: int = 32,
    search_max_batch: bool = True,
    report: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Decode throughput and memory per (context, batch, method), and the largest batch each method fits.

    Args:
        contexts (`tuple[int, ...]`, *optional*, defaults to `(32768,)`): prompt tokens per row.
        new_tokens (`int`, *optional*, defaults to 256): generated tokens per row.
        batches (`tuple[int, ...]`, *optional*, defaults to `(1, 8)`): batch sizes of the timed runs.
        methods (`tuple[str, ...]`, *optional*): a subset of `METHODS`.
        intermediate_size (`int`, *optional*, defaults to 14336): MLP width (Llama-3.1-8B's by default).
        vocab_size (`int`, *optional*, defaults to 32000): vocabulary (Llama-3.1-8B has 128256; only the LM head's
            cost depends on it).
        num_layers (`int`, *optional*, defaults to 32): decoder layers (the mask's first `num_layers` layers).
        search_max_batch (`bool`, *optional*, defaults to True): also search, at the first context, the largest batch
            of each method in `SEARCHED`.
        report (`Callable[[str], None]`, *optional*): called with one line per finished measurement.

    Returns:
        `BenchmarkResult` named `"generate_gpu"`.
    """
    if not torch.cuda.is_available():
        raise LeanKUsageError("the generate benchmark needs a CUDA GPU, and torch sees none; run it on a GPU machine")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise LeanKUsageError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    masks = llama_masks(num_layers)
    model = build_model(intermediate_size, vocab_size, num_layers)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    copy_gbps = copy_bandwidth_gbps()
    for method in methods:  # load kernels and libraries outside the timed runs (compiled methods warm up per shape)
        if method not in COMPILED:
            time_generate(model, masks, method, 1, 2 * (masks.sink_size + masks.recent_size), 4)
    results: list[GenerateResult] = []
    rows: list[list[Any]] = []
    for context in contexts:
        for batch in batches:
            for method in methods:
                try:
                    result = time_generate(
                        model, masks, method, batch, context, new_tokens, weight_bytes=weight_bytes, copy_gbps=copy_gbps
                    )
                except torch.OutOfMemoryError:
                    _free()
                    report(f"{method} context {context} batch {batch}: out of memory")
                    rows.append([context, batch, method, "OOM", "-", "-", "-", "-", "-", "-"])
                    continue
                results.append(result)
                report(
                    f"{method} context {context} batch {batch}: {result.decode_tokens_per_s:.1f} tok/s, "
                    f"{result.decode_ms_per_step:.2f} ms/step (floor {result.floor_ms:.2f}), prefill "
                    f"{result.prefill_s:.1f} s, peak {result.peak_gib:.1f} GiB"
                )
                rows.append(
                    [
                        context,
                        batch,
                        method,
                        f"{result.decode_tokens_per_s:.1f}",
                        f"{result.decode_ms_per_step:.2f}",
                        f"{result.floor_ms:.2f}",
                        f"{100 * result.floor_ms / result.decode_ms_per_step:.0f}%",
                        f"{result.prefill_s:.2f}",
                        f"{result.peak_gib:.1f}",
                        f"{result.cache_gib:.2f}",
                    ]
                )
    notes = [
        f"{torch.cuda.get_device_name()}, bf16, random-weight Llama: {num_layers} layers, hidden 4096, 32 q / 8 KV "
        f"heads x 128, MLP {intermediate_size}, vocab {vocab_size} ({weight_bytes / GIB:.1f} GiB of weights); mask "
        f"{MASK_ID}; prompts of random tokens, {new_tokens} greedy new tokens. sdpa = DynamicCache + sdpa; "
        "static_compiled = StaticCache + sdpa with generate's auto-compile; leank = LeanKCache + Triton, eager; "
        "leank_static_compiled = LeanKStaticCache + Triton custom op with generate's auto-compile; *_int8 / *_fp8: "
        "the same with the middle region in int8 / FP8 e4m3 (codes + per-token scales).",
        f"floor = (weight bytes + cache bytes read per step) / device copy bandwidth ({copy_gbps:.0f} GB/s, read + "
        "write counted); % floor = floor / measured ms per step.",
    ]
    largest: dict[str, int] = {}
    if search_max_batch:
        context = contexts[0]
        for method in [m for m in SEARCHED if m in methods]:
            largest[method] = largest_batch(lambda b, method=method: fits(model, masks, method, b, context))
            report(f"{method}: largest batch at {context} tokens = {largest[method]}")
        notes.append(
            f"Largest batch that fits at {context} tokens (cache filled with random K/V, two decode steps; prefill "
            f"activations not counted): {largest}."
        )
    return BenchmarkResult(
        name="generate_gpu",
        title="End-to-end decoding on GPU: transformers' caches vs the LeanK caches",
        columns=[
            "context",
            "batch",
            "method",
            "decode tok/s",
            "ms/step",
            "floor ms",
            "% floor",
            "prefill s",
            "peak GiB",
            "cache GiB",
        ],
        rows=rows,
        data=[asdict(r) for r in results],
        settings={
            "contexts": list(contexts),
            "new_tokens": new_tokens,
            "batches": list(batches),
            "methods": list(methods),
            "intermediate_size": intermediate_size,
            "vocab_size": vocab_size,
            "num_layers": num_layers,
            "weight_bytes": weight_bytes,
            "copy_gbps": copy_gbps,
            "largest_batch": largest,
        },
        notes=notes,
    )
