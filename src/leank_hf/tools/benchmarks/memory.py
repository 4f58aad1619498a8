"""KV-cache bytes of a `DynamicCache` and a `LeanKCache` holding the same tokens, at real models' attention shapes.

The `LeanKCache` stores its middle region in the model's dtype or, with `middle_quant`, in 8 bits (codes plus one
fp32 scale per token and KV head, counted in the middle's bytes).

Both caches are real cache objects built from the model's config and filled through their layers' `update` with
`[1, H, T, D]` keys and values (batch 1), then one generated token. On the `meta` device the tensors have their real
shapes and dtypes but no data, which the caches never read, so 128K-token caches cost no memory; `cpu` and `cuda`
fill random values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, LlamaConfig, Qwen2Config

from ...cache import LeanKCache
from ...cache_layer import LeanKLayer
from ...footprint import MemoryFootprint
from ...masks import LeanKMasks
from . import BenchmarkResult, mib

# name: (mask / base model id, config with the model's attention shape; no weights are needed)
MODELS = {
    "Llama-3.1-8B": (
        "meta-llama/Llama-3.1-8B-Instruct",
        lambda: LlamaConfig(
            num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128
        ),
    ),
    "Qwen2.5-7B": (
        "Qwen/Qwen2.5-7B-Instruct",
        lambda: Qwen2Config(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4),
    ),
}
DEFAULT_TOKENS = (8192, 16384, 32768, 65536, 131072)


def _fill(cache: Any, config: Any, tokens: int, device: str, dtype: torch.dtype) -> None:
    """Feed `tokens` prompt tokens and one generated token through every layer of `cache`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (1, config.num_key_value_heads, tokens, head_dim)
    if device == "meta":
        keys = values = torch.empty(shape, dtype=dtype, device=device)
    else:
        generator = torch.Generator(device).manual_seed(0)
        keys = torch.randn(shape, dtype=dtype, device=device, generator=generator)
        values = torch.randn(shape, dtype=dtype, device=device, generator=generator)
    for index, layer in enumerate(cache.layers):
        cache.update(keys, values, index)
        if isinstance(layer, LeanKLayer):
            layer.finish_prefill(None)
        cache.update(keys[:, :, :1], values[:, :, :1], index)


def measure(
    masks: LeanKMasks,
    config: Any,
    tokens: int,
    device: str = "meta",
    dtype=torch.bfloat16,
    middle_quant: str | None = None,
) -> dict:
    """Bytes of both caches after `tokens` prompt tokens and one generated token (`middle_quant` as `LeanKCache`'s).

    Returns:
        `dict`: `dense` (bytes a `DynamicCache` holds) and `footprint` (the `LeanKCache`'s `MemoryFootprint`).
    """
    dense = DynamicCache(config=config)
    _fill(dense, config, tokens, device, dtype)
    dense_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.layers)
    del dense
    cache = LeanKCache(masks, config, middle_quant=middle_quant)
    _fill(cache, config, tokens, device, dtype)
    footprint = cache.memory_footprint()
    if footprint.dense != dense_bytes:
        raise RuntimeError(f"LeanKCache reports {footprint.dense} dense bytes, a DynamicCache holds {dense_bytes}")
    return {"dense": dense_bytes, "footprint": footprint}


def _row(
    model: str, tokens: int, middle: str, dense: int, footprint: MemoryFootprint
) -> tuple[list[str], dict[str, Any]]:
    regions = footprint.regions
    keys, values = regions["keys/middle"], regions["values/middle"]
    middle_dense = keys.dense + values.dense
    middle_saved = 1 - (keys.used + values.used) / middle_dense
    full = regions["keys/full"].used + regions["values/full"].used
    row = [
        model,
        f"{tokens:,}",
        middle,
        mib(dense),
        mib(footprint.used),
        f"{1 - footprint.used / dense:.1%}",
        f"{mib(keys.dense)} → {mib(keys.used)} ({1 - keys.used / keys.dense:.1%})",
        f"{mib(values.dense)} → {mib(values.used)} ({1 - values.used / values.dense:.1%})",
        f"{middle_saved:.1%}",
        f"{1 - middle_saved:.2%}",
        mib(full),
        mib(footprint.allocated),
    ]
    data = {
        "model": model,
        "tokens": tokens,
        "middle": middle,
        "dynamic_cache_bytes": dense,
        "leank_used_bytes": footprint.used,
        "leank_allocated_bytes": footprint.allocated,
        "middle_kv_saved": middle_saved,
        "regions": {name: vars(region) for name, region in regions.items()},
    }
    return row, data


def run_memory_benchmark(
    models: Sequence[str] = tuple(MODELS),
    tokens: Sequence[int] = DEFAULT_TOKENS,
    device: str = "meta",
    middle_quants: Sequence[str | None] = (None,),
) -> BenchmarkResult:
    """KV-cache bytes, `DynamicCache` vs `LeanKCache` with the shipped masks, bf16, batch 1.

    Args:
        models (`Sequence[str]`): keys of `MODELS`.
        tokens (`Sequence[int]`): prompt lengths.
        device (`str`): `"meta"` (shapes only), `"cpu"` or `"cuda"` (random values).
        middle_quants (`Sequence[str | None]`): the `LeanKCache`'s `middle_quant` settings to measure (a row each).
    """
    rows, data, notes = [], [], []
    for model in models:
        mask_id, make_config = MODELS[model]
        masks, config = LeanKMasks.from_pretrained(mask_id), make_config()
        zero = masks.zero_heads().float().mean().item()
        notes.append(
            f"{model}: mask keeps {masks.kept_fraction:.2%} of K channels, {zero:.2%} of KV heads keep none; "
            f"expected middle KV saving {1 - (masks.kept_fraction + 1 - zero) / 2:.1%}; windows sink "
            f"{masks.sink_size}, recent {masks.recent_size}, flush {masks.flush_size}."
        )
        for count in tokens:
            for quant in middle_quants:
                result = measure(masks, config, count, device, middle_quant=quant or "none")
                row, values = _row(model, count, quant or "bf16", result["dense"], result["footprint"])
                rows.append(row)
                data.append(values)
    notes.append(
        f"Caches filled on the `{device}` device with bf16 keys/values, batch 1: the prompt, then one generated "
        "token. Middle = tokens past the sink and the full-precision recent window; `allocated` includes spare "
        "capacity of LeanK's amortised growth. `middle`: the LeanK middle region's storage (int8 / fp8: 8-bit codes "
        "plus one fp32 scale per token and KV head for keys and one for values, counted in the middle's bytes); "
        "`middle KV / dense`: its bytes over a DynamicCache's bf16 bytes for the same tokens."
    )
    columns = [
        "model",
        "tokens",
        "middle",
        "DynamicCache MiB",
        "LeanKCache MiB",
        "saved",
        "middle K MiB (saved)",
        "middle V MiB (saved)",
        "middle KV saved",
        "middle KV / dense",
        "LeanK full region MiB",
        "LeanK allocated MiB",
    ]
    settings = {
        "models": list(models),
        "tokens": list(tokens),
        "device": device,
        "dtype": "bfloat16",
        "batch": 1,
        "middle_quant": [quant or "none" for quant in middle_quants],
    }
    title = "KV-cache memory: DynamicCache vs LeanKCache"
    return BenchmarkResult("memory", title, columns, rows, data, settings, notes)
