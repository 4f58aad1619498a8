"""peft models: LeanK switches the transformers model inside, and warns when adapters change the keys."""

from __future__ import annotations

import warnings
from typing import Any

import torch


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a peft `PeftModel` (`get_base_model()`), else `model` itself."""
    get_base_model = getattr(type(model), "get_base_model", None)
    return model.get_base_model() if callable(get_base_model) else model


def warn_if_keys_adapted(model: torch.nn.Module, stacklevel: int = 3) -> None:
    """Warn when peft adapters (LoRA, ...) sit on key projections (`k_proj`): they change the keys a mask was learned
    on. Adapters merged into the weights cannot be seen."""
    adapted = [
        name
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "k_proj" and hasattr(module, "base_layer")  # peft's tuner layers wrap a base
    ]
    if adapted:
        warnings.warn(
            f"peft adapters on {len(adapted)} key projections (first: {adapted[0]}) change the keys the LeanK mask was "
            "learned on, so the pruned channels may matter to the adapted model; check its answers (`leank-hf eval`) "
            "or train a mask with the adapter in place",
            stacklevel=stacklevel,
        )
