"""The trainer's attention: exact attention, or middle-region keys scaled per channel (the student of the trainer).

Registered with transformers under the name `"leank_train"` (an attention function plus the sdpa mask builder), so
no model code is patched. Outside a `scaled_middle_keys(...)` block it is transformers' own sdpa attention; inside,
every query row of the call is a generated-token row and its middle-region keys are scaled channel by channel:

    logit(q, g) = scaling * sum_d q_d * s[h, d] * k_d(g)   for sink_size <= g < boundary(q)
                = scaling * sum_d q_d * k_d(g)              otherwise (sink and recent windows)

with the boundary rule of the deployed cache (DESIGN.md). Heads marked in `skip` (zero kept channels) do not attend to
their middle keys at all, as deployed. Scaling the query by `s` is the same as scaling every middle key by `s` and
costs `n` rows instead of `T`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from ..contract import Windows

TRAIN_ATTENTION = "leank_train"


@dataclass
class MiddleKeyScaling:
    """What the student attention applies to middle-region keys.

    Args:
        scales (`torch.Tensor`): `[num_layers, num_kv_heads, head_dim]` per-channel scales (may require grad).
        skip (`torch.Tensor`, *optional*): `[num_layers, num_kv_heads]` bool; `True` heads skip their middle keys.
        sink_size (`int`), recent_size (`int`), flush_size (`int`): the deployed cache's windows.
        checkpoint (`bool`, *optional*, defaults to `False`): recompute the attention in the backward pass instead
            of keeping its `[rows, keys]` logits and probabilities per layer (the student's largest activations on
            long contexts; the rest scales with the few answer rows only).
    """

    scales: torch.Tensor
    skip: torch.Tensor | None
    sink_size: int
    recent_size: int
    flush_size: int
    checkpoint: bool = False


_ACTIVE: ContextVar[MiddleKeyScaling | None] = ContextVar("leank_train_scaling", default=None)


@contextlib.contextmanager
def scaled_middle_keys(scaling: MiddleKeyScaling) -> Iterator[None]:
    """Within this block, `"leank_train"` attention treats every query row as a generated token (student mode)."""
    token = _ACTIVE.set(scaling)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def middle_region(
    num_queries: int, num_keys: int, *, sink_size: int, recent_size: int, flush_size: int, device=None
) -> torch.Tensor:
    """Bool `[n, T]`: `True` where key slot `g` is in the middle region of query row `i` (at slot `T - n + i`)."""
    slots = torch.arange(num_keys - num_queries, num_keys, device=device)
    boundary = Windows(sink_size, recent_size, flush_size).boundary(slots)
    keys = torch.arange(num_keys, device=device)
    return (keys[None, :] >= sink_size) & (keys[None, :] < boundary[:, None])


def scaled_key_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scales: torch.Tensor,
    skip: torch.Tensor | None,
    *,
    sink_size: int,
    recent_size: int,
    flush_size: int,
    scaling: float,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of generated-token rows with per-channel scaled middle keys (fp32 inside, one softmax).

    Args:
        query (`torch.Tensor`): `[B, Hq, n, D]`, rows at slots `T - n .. T - 1`.
        key (`torch.Tensor`), value (`torch.Tensor`): `[B, Hkv, T, D]` post-RoPE keys and values.
        scales (`torch.Tensor`): `[Hkv, D]` channel scales of middle keys.
        skip (`torch.Tensor`, *optional*): `[Hkv]` bool, heads that ignore middle keys.
        sink_size (`int`), recent_size (`int`), flush_size (`int`): windows (see `leank_hf.contract.Windows`).
        scaling (`float`): softmax scale.
        attention_mask (`torch.Tensor`, *optional*): `[B, 1, n, T]` bool (`True` = attend) or additive float mask.

    Returns:
        `torch.Tensor` `[B, n, Hq, D]` in the query's dtype.
    """
    batch, num_q_heads, n, dim = query.shape
    num_kv_heads, num_keys = key.shape[1], key.shape[2]
    groups = num_q_heads // num_kv_heads
    q = query.float().view(batch, num_kv_heads, groups, n, dim)
    k = key.float()
    full = torch.einsum("bhgnd,bhtd->bhgnt", q, k)
    scaled = torch.einsum("bhgnd,bhtd->bhgnt", q * scales.float()[None, :, None, None, :], k)
    middle = middle_region(
        n, num_keys, sink_size=sink_size, recent_size=recent_size, flush_size=flush_size, device=query.device
    )
    logits = torch.where(middle, scaled, full) * scaling
    blocked = torch.ones(n, num_keys, dtype=torch.bool, device=query.device).triu(num_keys - n + 1)
    blocked = blocked.expand(batch, num_kv_heads, groups, n, num_keys)
    if skip is not None:
        blocked = blocked | (middle & skip.view(1, num_kv_heads, 1, 1, 1))
    if attention_mask is not None:
        mask = attention_mask[..., -n:, -num_keys:]
        if mask.dtype == torch.bool:
            blocked = blocked | ~mask.view(batch, 1, 1, n, num_keys)
        else:
            logits = logits + mask.float().view(batch, 1, 1, n, num_keys)
    logits = logits.masked_fill(blocked, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhgnt,bhtd->bhgnd", probs, value.float())
    return out.reshape(batch, num_q_heads, n, dim).transpose(1, 2).contiguous().to(query.dtype)


def training_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The `"leank_train"` attention function (transformers' attention-interface signature)."""
    state = _ACTIVE.get()
    if state is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    layer = module.layer_idx
    attention = scaled_key_attention
    if state.checkpoint and torch.is_grad_enabled():
        attention = functools.partial(torch.utils.checkpoint.checkpoint, scaled_key_attention, use_reentrant=False)
    out = attention(
        query,
        key,
        value,
        state.scales[layer],
        None if state.skip is None else state.skip[layer],
        sink_size=state.sink_size,
        recent_size=state.recent_size,
        flush_size=state.flush_size,
        scaling=module.scaling if scaling is None else scaling,
        attention_mask=attention_mask,
    )
    return out, None


def register_training_attention() -> None:
    """Register `"leank_train"` (attention function and sdpa mask builder) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRAIN_ATTENTION, training_attention)
    AttentionMaskInterface.register(TRAIN_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def training_attention_enabled(model) -> Iterator[None]:
    """Switch `model` to the `"leank_train"` attention for the block, then back to its previous implementation."""
    register_training_attention()
    previous = model.config._attn_implementation
    model.set_attn_implementation(TRAIN_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def truncate_cache(cache, length: int) -> None:
    """Cut every layer of a `DynamicCache` back to its first `length` slots, detached from any autograd graph."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[..., :length, :].detach()
            layer.values = layer.values[..., :length, :].detach()


def prefill(model, prefix_ids: torch.Tensor):
    """Run `prefix_ids [P]` once without gradients (exact attention) and return the filled `DynamicCache`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model.base_model(input_ids=prefix_ids.to(model.device)[None], past_key_values=cache, use_cache=True)
    return cache
