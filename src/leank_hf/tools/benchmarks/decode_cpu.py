"""CPU decode-step time: LeanKCache with the LeanK attention (PyTorch path) vs DynamicCache with sdpa.

One random-weight Llama model with Llama-3.1-8B's attention shape (32 query / 8 KV heads of 128 channels) on a few
layers, with the authors' Llama mask on evenly spaced layers of the real model; small MLP and vocabulary, since both
methods share them. Caches are filled with random keys and values (a prompt of this length would take minutes to
prefill on a CPU), then both models decode the same tokens, steps interleaved so that both see the same machine load.
The measured window is centred on the context length, so it contains one flush of LeanK's recent window.

Two timings: a whole model step (`model(token, past_key_values=cache)`), and one layer's cache update plus attention
(what LeanK changes).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.utils.logging import tqdm

from ...attention import apply_leank, implementation_name
from ...cache import LeanKCache
from ...cache_layer import LeanKLayer
from ...masks import LeanKMasks
from . import BenchmarkResult, llama_masks

DEFAULT_CONTEXTS = (1024, 2048, 4096, 8192, 16384)


def build_models(num_layers: int, dtype: torch.dtype) -> tuple[LlamaForCausalLM, LlamaForCausalLM, LeanKMasks]:
    """The sdpa model, a copy switched to LeanK (torch backend), and the masks of `num_layers` layers."""
    masks = llama_masks(num_layers, spread=True)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=1024,
        intermediate_size=1024,
        num_hidden_layers=num_layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=1 << 20,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation("sdpa")
    leank_model = apply_leank(copy.deepcopy(model), backend="torch")
    return model, leank_model, masks


def _random_states(config: Any, tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(tokens)
    shape = (1, config.num_key_value_heads, tokens, config.head_dim)
    return torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype)


def _fill(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    layer.update(keys, values)
    if isinstance(layer, LeanKLayer):
        layer.finish_prefill(None)


def _interleaved(functions: Sequence[Callable[[], Any]], steps: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each function, called in turn (the order rotates every step)."""
    times: list[list[float]] = [[] for _ in functions]
    for step in range(warmup + steps):
        for offset in range(len(functions)):
            index = (step + offset) % len(functions)
            start = time.perf_counter()
            functions[index]()
            if step >= warmup:
                times[index].append(time.perf_counter() - start)
    return times


@torch.inference_mode()
def measure(
    models: tuple[LlamaForCausalLM, LlamaForCausalLM, LeanKMasks],
    context: int,
    steps: int,
    warmup: int,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Step times (s) of both models, and one layer's update + attention times, around `context` tokens."""
    model, leank_model, masks = models
    config = model.config
    prompt = context - steps // 2 - warmup
    keys, values = _random_states(config, prompt, dtype)
    dense, leank = DynamicCache(config=config), LeanKCache(masks, config)
    for cache in (dense, leank):
        for layer in cache.layers:
            _fill(layer, keys, values)
    token = torch.ones(1, 1, dtype=torch.long)
    dense_step = lambda: model(token, past_key_values=dense)  # noqa: E731
    leank_step = lambda: leank_model(token, past_key_values=leank)  # noqa: E731
    _interleaved((dense_step, leank_step), steps=0, warmup=warmup)
    before = leank.layers[0].num_mid
    step_times = _interleaved((dense_step, leank_step), steps, warmup=0)
    flushes = (leank.layers[0].num_mid - before) // masks.flush_size

    # One layer: cache update of a token, then attention, as each model's attention layer does it.
    module = model.model.layers[0].self_attn
    leank_attention = AttentionInterface()[implementation_name("torch")]
    dense_layer, leank_layer = DynamicLayer(), LeanKLayer(masks.mask[0], **_windows(masks))
    _fill(dense_layer, keys, values)
    _fill(leank_layer, keys, values)
    query = torch.randn(1, config.num_attention_heads, 1, config.head_dim).to(dtype)
    new_keys, new_values = keys[:, :, :1], values[:, :, :1]

    def dense_call():
        key_states, value_states = dense_layer.update(new_keys, new_values)
        return sdpa_attention_forward(module, query, key_states, value_states, None, scaling=module.scaling)

    def leank_call():
        states, _ = leank_layer.update(new_keys, new_values)
        return leank_attention(module, query, states, states, None, scaling=module.scaling)

    def attention_only():  # sdpa over the same tokens held in place: a dense cache that never copies
        return sdpa_attention_forward(module, query, keys, values, None, scaling=module.scaling)

    layer_times = _interleaved((dense_call, leank_call, attention_only), steps, warmup)
    return {"step": step_times, "layer": layer_times, "flushes": flushes}


def _windows(masks: LeanKMasks) -> dict[str, int]:
    return {"sink_size": masks.sink_size, "recent_size": masks.recent_size, "flush_size": masks.flush_size}


def run_decode_benchmark(
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
    num_layers: int = 4,
    steps: int = 64,
    warmup: int = 4,
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
) -> BenchmarkResult:
    """Decode-step times on CPU, LeanK vs DynamicCache + sdpa, at several context lengths.

    Args:
        contexts (`Sequence[int]`): context lengths (tokens in the cache at the middle of the measured window).
        num_layers (`int`): decoder layers of the random model.
        steps (`int`): measured decode steps per context and method.
        warmup (`int`): unmeasured steps before.
        dtype (`torch.dtype`): model and cache dtype.
        threads (`int`, *optional*): torch intra-op threads for the run (default: torch's choice).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    try:
        result = _run(contexts, num_layers, steps, warmup, dtype)
    finally:
        torch.set_num_threads(previous_threads)
    if threads:  # a run with an explicit thread count saves beside the default one
        result.name = f"decode_cpu_{threads}thread"
    return result


def _run(contexts: Sequence[int], num_layers: int, steps: int, warmup: int, dtype: torch.dtype) -> BenchmarkResult:
    models = build_models(num_layers, dtype)
    masks = models[2]
    rows, data = [], []
    for context in tqdm(contexts, desc="bench decode", unit="context", leave=False):
        result = measure(models, context, steps, warmup, dtype)
        (dense_step, leank_step), (dense_layer, leank_layer, sdpa_only) = result["step"], result["layer"]
        medians = [statistics.median(times) * 1e3 for times in (dense_step, leank_step, dense_layer, leank_layer)]
        sdpa_median = statistics.median(sdpa_only) * 1e3
        means = [statistics.fmean(times) * 1e3 for times in (dense_step, leank_step)]
        rows.append(
            [
                f"{context:,}",
                f"{medians[0]:.1f} ({means[0]:.1f})",
                f"{medians[1]:.1f} ({means[1]:.1f})",
                f"{medians[0] / medians[1]:.2f}x",
                f"{medians[2]:.2f}",
                f"{medians[3]:.2f}",
                f"{medians[2] / medians[3]:.2f}x",
                f"{sdpa_median:.2f}",
            ]
        )
        data.append(
            {
                "context": context,
                "flushes_in_window": result["flushes"],
                "step_seconds": {"dynamic_sdpa": dense_step, "leank": leank_step},
                "layer_seconds": {"dynamic_sdpa": dense_layer, "leank": leank_layer, "sdpa_only": sdpa_only},
            }
        )
    columns = [
        "context",
        "DynamicCache+sdpa step ms, median (mean)",
        "LeanK step ms, median (mean)",
        "step speedup",
        "DynamicCache+sdpa layer ms",
        "LeanK layer ms",
        "layer speedup",
        "sdpa alone layer ms",
    ]
    kept, zero = masks.kept_fraction, masks.zero_heads().float().mean().item()
    notes = [
        f"Random Llama model, {num_layers} layers with Llama-3.1-8B's attention shape (32 q / 8 KV heads x 128), "
        f"hidden 1024, MLP 1024, vocab 1024, {str(dtype).removeprefix('torch.')}, batch 1, "
        f"{torch.get_num_threads()} torch threads. Mask: layers {masks.training_info['layers']} of the Llama-3.1-8B "
        f"mask ({kept:.1%} of K channels kept, {zero:.1%} of KV heads empty); sink {masks.sink_size}, recent "
        f"{masks.recent_size}, flush {masks.flush_size}.",
        f"{steps} measured steps per point (after {warmup} warm-up steps), interleaved between the two methods; the "
        "window holds one flush of LeanK's recent window, so the mean includes one flush per "
        f"{steps} steps (twice as often as in a long generation). Layer = one layer's cache update plus attention "
        "of one token, the part LeanK changes (DynamicCache concatenates the whole cache every step); sdpa alone = "
        "the same attention over keys held in place, without any cache update (a lower bound for dense caches).",
    ]
    settings = {"contexts": list(contexts), "layers": num_layers, "steps": steps, "warmup": warmup}
    settings |= {"dtype": str(dtype), "threads": torch.get_num_threads()}
    title = "CPU decode step: LeanK vs DynamicCache + sdpa"
    return BenchmarkResult("decode_cpu", title, columns, rows, data, settings, notes)
