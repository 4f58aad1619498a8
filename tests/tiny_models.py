"""Tiny random models and random LeanK masks for the cache, attention and generate tests (CPU, fp32)."""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from leank_hf import LeanKMasks

# Small windows so ~40-token prompts have sink, middle and recent regions, and flushes happen every few steps.
SINK, RECENT, FLUSH = 4, 8, 3

# Kept channels per KV head of layers 2, 5 and 8 of the authors' Llama-3.1-8B-Instruct mask (head_dim 128).
LLAMA_WIDTHS = (
    (0, 32, 0, 64, 32, 96, 32, 32),
    (32, 64, 96, 0, 32, 64, 32, 0),
    (64, 0, 96, 0, 0, 32, 32, 32),
)

_SMALL = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
)
# (config class, model class, config overrides); real models' values differ, only the attention structure matters.
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
    "gemma3": (
        Gemma3TextConfig,
        Gemma3ForCausalLM,
        {
            "num_hidden_layers": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "sliding_window": 12,
            "query_pre_attn_scalar": 32,
        },
    ),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"num_hidden_layers": 2}),
    # Llama-3.1-8B's attention head shape: 8 KV heads of 128 channels, GQA groups of 2 here.
    "llama128": (
        LlamaConfig,
        LlamaForCausalLM,
        {"num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
    ),
}


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A seeded random model of `family` in eval mode, fp32, default attention, without an EOS token."""
    config_class, model_class, family_overrides = FAMILIES[family]
    config = config_class(**{**_SMALL, **family_overrides, **overrides})
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def random_masks(
    config, align: int = 8, widths: tuple[tuple[int, ...], ...] | None = None, seed: int = 0, **windows
) -> LeanKMasks:
    """A random aligned mask for `config`: uneven kept widths per head, zero-width heads included.

    Full-attention layers get random multiples of `align` (or `widths[layer]`), each head at least once 0 and once
    below full width across the model; other layer types keep everything. `windows` sets sink/recent/flush sizes.
    """
    text = config.get_text_config(decoder=True)
    num_heads, head_dim = text.num_key_value_heads, text.head_dim
    layer_types = getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(text.num_hidden_layers, num_heads, head_dim, dtype=torch.bool)
    full_layers = [index for index, kind in enumerate(layer_types) if kind == "full_attention"]
    for position, layer in enumerate(full_layers):
        if widths is not None:
            layer_widths = torch.tensor(widths[position % len(widths)])
        else:
            layer_widths = torch.randint(0, head_dim // align + 1, (num_heads,), generator=generator) * align
            layer_widths[position % num_heads] = 0  # a zero-width head in every layer
            layer_widths[(position + 1) % num_heads] = align  # and a narrow one
        for head, width in enumerate(layer_widths.tolist()):
            kept = torch.randperm(head_dim, generator=generator)[:width]
            mask[layer, head] = False
            mask[layer, head, kept] = True
    defaults = {"sink_size": SINK, "recent_size": RECENT, "flush_size": FLUSH}
    return LeanKMasks(mask, align=align, **{**defaults, **windows})


def ones_masks(config, **windows) -> LeanKMasks:
    """A mask that keeps every channel: LeanK must then equal exact attention."""
    text = config.get_text_config(decoder=True)
    mask = torch.ones(text.num_hidden_layers, text.num_key_value_heads, text.head_dim, dtype=torch.bool)
    defaults = {"sink_size": SINK, "recent_size": RECENT, "flush_size": FLUSH}
    return LeanKMasks(mask, align=text.head_dim, **{**defaults, **windows})
