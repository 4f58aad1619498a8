"""GPU end-to-end decoding: `generate()` with DynamicCache + sdpa against LeanKCache + the Triton kernel.

A random-weight Llama with Llama-3.1-8B's shapes (32 layers, hidden 4096, 32 query / 8 KV heads of 128 channels;
MLP width and vocabulary configurable, Llama-3.1-8B's MLP by default) and the authors' Llama-3.1-8B mask. For each
batch size: a prompt of `context` random tokens, `new_tokens` greedy tokens; decode tokens/s is timed from the first
generated token to the last (prefill excluded), with peak memory over the whole call and over the decode phase.
Each method first generates a few tokens of a short prompt, so kernel loading and library setup are not timed.

The largest batch that fits at `context` tokens is searched separately for each method: caches filled with random
keys/values (no prefill, whose activations would otherwise set the limit for both), then two decode steps.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

from ..attention import apply_leank, revert_leank
from ..cache import LeanKCache, LeanKLayer
from ..errors import LeanKUsageError
from ..masks import LeanKMasks
from . import BenchmarkResult

MASK_ID = "meta-llama/Llama-3.1-8B-Instruct"
METHODS = ("sdpa", "leank")
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


def llama_masks(num_layers: int) -> LeanKMasks:
    """The first `num_layers` layers of the bundled Llama-3.1-8B-Instruct mask, with its windows."""
    full = LeanKMasks.from_pretrained(MASK_ID)
    return LeanKMasks(
        full.mask[:num_layers],
        base_model=full.base_model,
        sink_size=full.sink_size,
        recent_size=full.recent_size,
        flush_size=full.flush_size,
        align=full.align,
    )


def switch_attention(model: LlamaForCausalLM, method: str) -> None:
    """Switch `model` to `method`'s attention: `"leank"` (Triton kernel) or `"sdpa"`."""
    if method == "leank":
        apply_leank(model, backend="triton")
    else:
        revert_leank(model)
        model.set_attn_implementation("sdpa")


def new_cache(method: str, model: LlamaForCausalLM, masks: LeanKMasks) -> DynamicCache | LeanKCache:
    """An empty cache for `method`; a tensor-parallel model's LeanK cache keeps this rank's KV heads."""
    return LeanKCache.for_model(model, masks) if method == "leank" else DynamicCache(config=model.config)


def cache_bytes(cache: DynamicCache | LeanKCache) -> int:
    if isinstance(cache, LeanKCache):
        return cache.memory_footprint().allocated
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.keys is not None)


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


@torch.inference_mode()
def time_generate(
    model: LlamaForCausalLM, masks: LeanKMasks, method: str, batch: int, context: int, new_tokens: int
) -> GenerateResult:
    """Greedy `generate` of `new_tokens` after a random prompt of `context` tokens."""
    switch_attention(model, method)
    generator = torch.Generator(device="cuda").manual_seed(batch)
    prompt = torch.randint(1, model.config.vocab_size, (batch, context), device="cuda", generator=generator)
    cache = new_cache(method, model, masks)
    clock = _StepClock()
    _free()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        past_key_values=cache,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([clock]),
    )
    torch.cuda.synchronize()
    steps = len(clock.times) - 1
    decode_s = clock.times[-1] - clock.times[0]
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
        cache_gib=cache_bytes(cache) / GIB,
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
        cache = new_cache(method, model, masks)
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


def fill_random(cache: DynamicCache | LeanKCache, batch: int, context: int, num_kv_heads: int, head_dim: int) -> None:
    """Fill every layer of an empty cache with `context` random bf16 tokens per row, as after a prompt (no pads)."""
    shape = (batch, num_kv_heads, context, head_dim)
    for index, layer in enumerate(cache.layers):
        keys = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        values = torch.randn_like(keys)
        if isinstance(layer, LeanKLayer):
            layer.update(keys, values)
            layer.finish_prefill(None)
        else:
            cache.update(keys, values, index)
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
    context: int = 32768,
    new_tokens: int = 256,
    batches: tuple[int, ...] = (1, 8),
    intermediate_size: int = 14336,
    vocab_size: int = 32000,
    num_layers: int = 32,
    search_max_batch: bool = True,
    report: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Decode throughput and memory of both methods, and the largest batch each fits at `context` tokens.

    Args:
        context (`int`, *optional*, defaults to 32768): prompt tokens per row.
        new_tokens (`int`, *optional*, defaults to 256): generated tokens per row.
        batches (`tuple[int, ...]`, *optional*, defaults to `(1, 8)`): batch sizes of the timed runs.
        intermediate_size (`int`, *optional*, defaults to 14336): MLP width (Llama-3.1-8B's by default).
        vocab_size (`int`, *optional*, defaults to 32000): vocabulary (Llama-3.1-8B has 128256; only the LM head's
            cost depends on it).
        num_layers (`int`, *optional*, defaults to 32): decoder layers (the mask's first `num_layers` layers).
        search_max_batch (`bool`, *optional*, defaults to True): also search the largest batch per method.
        report (`Callable[[str], None]`, *optional*): called with one line per finished measurement.

    Returns:
        `BenchmarkResult` named `"generate_gpu"`.
    """
    if not torch.cuda.is_available():
        raise LeanKUsageError("the generate benchmark needs a CUDA GPU, and torch sees none; run it on a GPU machine")
    masks = llama_masks(num_layers)
    model = build_model(intermediate_size, vocab_size, num_layers)
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    for method in METHODS:  # load kernels and libraries outside the timed runs
        time_generate(model, masks, method, 1, 2 * (masks.sink_size + masks.recent_size), 4)
    results: list[GenerateResult] = []
    rows: list[list[Any]] = []
    for batch in batches:
        for method in METHODS:
            try:
                result = time_generate(model, masks, method, batch, context, new_tokens)
            except torch.OutOfMemoryError:
                _free()
                report(f"{method} batch {batch}: out of memory")
                rows.append([method, batch, "OOM", "-", "-", "-", "-", "-"])
                continue
            results.append(result)
            report(
                f"{method} batch {batch}: {result.decode_tokens_per_s:.1f} tok/s, {result.decode_ms_per_step:.1f} "
                f"ms/step, prefill {result.prefill_s:.1f} s, peak {result.peak_gib:.1f} GiB"
            )
            rows.append(
                [
                    method,
                    batch,
                    f"{result.decode_tokens_per_s:.1f}",
                    f"{result.decode_ms_per_step:.2f}",
                    f"{result.prefill_s:.2f}",
                    f"{result.peak_gib:.1f}",
                    f"{result.decode_peak_gib:.1f}",
                    f"{result.cache_gib:.2f}",
                ]
            )
    notes = [
        f"{torch.cuda.get_device_name()}, bf16, random-weight Llama: {num_layers} layers, hidden 4096, 32 q / 8 KV "
        f"heads x 128, MLP {intermediate_size}, vocab {vocab_size} ({weights_gib:.1f} GiB of weights); mask "
        f"{MASK_ID}; prompt {context} random tokens, {new_tokens} greedy new tokens. sdpa = DynamicCache + sdpa "
        "attention; leank = LeanKCache + apply_leank(backend='triton').",
    ]
    speedups = {
        r.batch: r.decode_tokens_per_s
        / next(s.decode_tokens_per_s for s in results if s.method == "sdpa" and s.batch == r.batch)
        for r in results
        if r.method == "leank" and any(s.method == "sdpa" and s.batch == r.batch for s in results)
    }
    for batch, speedup in speedups.items():
        notes.append(f"Decode throughput LeanK / sdpa at batch {batch}: {speedup:.2f}x")
    largest: dict[str, int] = {}
    if search_max_batch:
        for method in METHODS:
            largest[method] = largest_batch(lambda b, method=method: fits(model, masks, method, b, context))
            report(f"{method}: largest batch at {context} tokens = {largest[method]}")
        ratio = largest["leank"] / largest["sdpa"] if largest["sdpa"] else float("nan")
        notes.append(
            f"Largest batch that fits at {context} tokens (cache filled with random K/V, two decode steps; prefill "
            f"activations not counted): sdpa {largest['sdpa']}, leank {largest['leank']} ({ratio:.2f}x)."
        )
    return BenchmarkResult(
        name="generate_gpu",
        title="End-to-end decoding on GPU: DynamicCache + sdpa vs LeanKCache + Triton",
        columns=["method", "batch", "decode tok/s", "ms/step", "prefill s", "peak GiB", "decode peak GiB", "cache GiB"],
        rows=rows,
        data=[asdict(r) for r in results],
        settings={
            "context": context,
            "new_tokens": new_tokens,
            "batches": list(batches),
            "intermediate_size": intermediate_size,
            "vocab_size": vocab_size,
            "num_layers": num_layers,
            "weights_gib": weights_gib,
            "largest_batch": largest,
        },
        notes=notes,
    )
