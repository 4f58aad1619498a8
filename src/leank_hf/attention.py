"""The LeanK attention implementation for transformers, and `apply_leank` / `revert_leank` to switch a model to it.

The implementation is registered under `"leank"` (backend `"auto"`), `"leank_torch"` and `"leank_triton"`, each with
transformers' `sdpa_mask` as mask builder. It reads a `LeanKCache`'s compact keys; every call without them (prompt
prefill, any other cache, no cache) goes to transformers' own sdpa attention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .adapters import unwrap_peft, warn_if_keys_adapted
from .cache_states import LeanKStates, PrefillKV
from .constants import ATTN_IMPLEMENTATION
from .errors import LeanKUsageError
from .ops.decode_attention import BACKENDS, StaticKV, leank_decode_attention, leank_static_decode_attention

_PREVIOUS_ATTRIBUTE = "_leank_previous_attn_implementation"


def implementation_name(backend: str = "auto") -> str:
    """Name of the registered attention implementation for a backend: `"leank"`, `"leank_torch"`, `"leank_triton"`."""
    if backend not in BACKENDS:
        raise LeanKUsageError(f"`backend` has to be one of {list(BACKENDS)} but got {backend!r}")
    return ATTN_IMPLEMENTATION if backend == "auto" else f"{ATTN_IMPLEMENTATION}_{backend}"


_NAMES = tuple(implementation_name(backend) for backend in BACKENDS)


def _leank_attention(backend: str) -> Callable[..., tuple[torch.Tensor, None]]:
    def leank_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor | LeanKStates,
        value: torch.Tensor | LeanKStates,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """transformers attention interface: `query [B, Hq, n, D]` -> `([B, n, Hq, D], None)`."""
        if not isinstance(key, LeanKStates):
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        _check_supported(module, dropout, kwargs)
        payload = key.payload
        if isinstance(payload, PrefillKV):
            prompt_mask = None if attention_mask is None else attention_mask[..., : payload.keys.shape[2]]
            output = sdpa_attention_forward(
                module, query, payload.keys, payload.values, prompt_mask, dropout=dropout, scaling=scaling, **kwargs
            )
            payload.layer.prompt_attended(left_padding(attention_mask, query.shape[0]))
            return output
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        payload.key_mask = key_mask(attention_mask, query.shape[0])  # a fresh payload per update
        if isinstance(payload, StaticKV):
            output = leank_static_decode_attention(query, payload, scale=scale, backend=backend)
        else:
            output = leank_decode_attention(query, payload, scale=scale, backend=backend)
        return output.transpose(1, 2).contiguous(), None

    leank_attention.__name__ = implementation_name(backend) + "_attention"
    return leank_attention


def _check_supported(module: torch.nn.Module, dropout: float, kwargs: dict[str, Any]) -> None:
    layer = getattr(module, "layer_idx", "?")
    if kwargs.get("softcap") is not None:
        raise LeanKUsageError(
            f"layer {layer} uses attention logit softcapping (e.g. Gemma 2), which LeanK does not support; use this "
            "model without LeanK"
        )
    if kwargs.get("s_aux") is not None:
        raise LeanKUsageError(f"layer {layer} uses learned attention sinks (s_aux), which LeanK does not support")
    if kwargs.get("sliding_window") is not None:
        raise LeanKUsageError(
            f"layer {layer} attends a sliding window but its cache layer is a LeanK layer; build the LeanKCache from "
            "this model's config so sliding layers keep transformers' own cache layer"
        )
    if dropout:
        raise LeanKUsageError("LeanK attention runs in inference only: call `model.eval()` (attention dropout > 0)")


def key_mask(attention_mask: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    """Which global key slots each row may attend, `[B, kv]` bool: the last query row of a 4D attention mask.

    Args:
        attention_mask (`torch.Tensor`, *optional*):
            The `[B or 1, 1, q, kv]` mask of `sdpa_mask` (bool, True = attend) or an additive float mask.
        batch_size (`int`):
            Rows of the batch.

    Returns:
        `torch.Tensor` or `None`: `[batch_size, kv]` bool (a view where possible), or `None` when there is no mask.
    """
    if attention_mask is None:
        return None
    last = attention_mask[:, 0, -1]
    allowed = last if last.dtype == torch.bool else last > torch.finfo(last.dtype).min
    return allowed.expand(batch_size, -1)


def left_padding(attention_mask: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
    """Left-pad slots per row, `[B]`: leading masked keys of the last query row of a prompt's 4D mask.

    Args:
        attention_mask (`torch.Tensor`, *optional*):
            The `[B or 1, 1, q, kv]` mask of `sdpa_mask` (bool, True = attend) or an additive float mask.
        batch_size (`int`):
            Rows of the batch.

    Returns:
        `torch.Tensor` or `None`: `[batch_size]` int64, or `None` when there is no mask (no padding).
    """
    allowed = key_mask(attention_mask, batch_size)
    return None if allowed is None else allowed.int().argmax(-1)


def register_leank_attention() -> None:
    """Register the LeanK attention implementations and their mask builder with transformers (idempotent)."""
    for backend in BACKENDS:
        name = implementation_name(backend)
        AttentionInterface.register(name, _leank_attention(backend))
        AttentionMaskInterface.register(name, sdpa_mask)


def apply_leank(model: PreTrainedModel, backend: str = "auto") -> PreTrainedModel:
    """Switch a transformers model to the LeanK attention, so it can use a `LeanKCache`.

    Calls without compact keys (prompt prefill, other caches) still run transformers' sdpa attention, so the model
    keeps working with a `DynamicCache`. Applying twice is harmless (the backend of the last call wins);
    `revert_leank` restores the previous implementation.

    Args:
        model (`PreTrainedModel` or peft `PeftModel`):
            The model to switch (in place); a peft model's base model is switched, with a warning when adapters sit
            on the key projections (they change the keys the mask was learned on).
        backend (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (Triton kernel for CUDA decode steps when available, PyTorch otherwise), `"torch"` or
            `"triton"`.

    Returns:
        `PreTrainedModel`: the same model.
    """
    name = implementation_name(backend)
    base = unwrap_peft(model)
    if not isinstance(base, PreTrainedModel):
        raise LeanKUsageError(
            f"apply_leank needs a transformers PreTrainedModel or a peft model around one, got {type(model).__name__}"
        )
    warn_if_keys_adapted(base)
    if not base._supports_sdpa:
        raise LeanKUsageError(
            f"{type(base).__name__} does not support transformers' sdpa attention, which LeanK uses for the prompt "
            "and for layers it does not prune; LeanK cannot be used with this model"
        )
    register_leank_attention()
    current = base.config._attn_implementation
    if current not in _NAMES:
        setattr(base, _PREVIOUS_ATTRIBUTE, current)
    base.set_attn_implementation(name)
    if base.config._attn_implementation != name:
        raise LeanKUsageError(
            f"{type(base).__name__} cannot switch its attention implementation to {name!r} (its attention does not "
            "use transformers' AttentionInterface), so it cannot use a LeanKCache"
        )
    return model


def revert_leank(model: PreTrainedModel) -> PreTrainedModel:
    """Undo `apply_leank`: restore the attention implementation the model had before (sdpa if unknown).

    Args:
        model (`PreTrainedModel` or peft `PeftModel`):
            The model to switch back (in place). A model not switched to LeanK is returned unchanged.

    Returns:
        `PreTrainedModel`: the same model.
    """
    base = unwrap_peft(model)
    if base.config._attn_implementation in _NAMES:
        base.set_attn_implementation(getattr(base, _PREVIOUS_ATTRIBUTE, None) or "sdpa")
    if hasattr(base, _PREVIOUS_ATTRIBUTE):
        delattr(base, _PREVIOUS_ATTRIBUTE)
    return model


register_leank_attention()
