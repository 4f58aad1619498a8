"""The rules every LeanK module shares: the windows (sink, recent, flush) and a model's shape. Depends on torch only.

`Windows.flushed` is the one place the window boundary rule is written (DESIGN.md "Semantics"): it takes Python ints
(the dynamic cache, the trainer, the references) and device tensors (the compile-capable cache computes it from the
cache position on the device, with no host synchronisation). `ModelShape` reads layers, KV heads, head_dim and layer
types from a transformers config once, as transformers' own caches infer them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .errors import LeanKUsageError, MaskError

Length = TypeVar("Length", int, torch.Tensor)

FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"


@dataclass(frozen=True)
class Windows:
    """Which cached tokens a LeanK query reads with all channels.

    Args:
        sink_size (`int`):
            First real tokens of each row kept with all channels (>= 0).
        recent_size (`int`):
            Most recent tokens kept with all channels (>= 1).
        flush_size (`int`):
            Tokens leave the recent window for the pruned middle in chunks of this size (>= 1).
    """

    sink_size: int
    recent_size: int
    flush_size: int

    def __post_init__(self) -> None:
        for name, minimum in (("sink_size", 0), ("recent_size", 1), ("flush_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise LeanKUsageError(f"`{name}` must be an int >= {minimum}, got {value!r}")

    def flushed(self, length: Length) -> Length:
        """Global slot where the full recent window starts when a layer holds `length` slots (pads included).

        `sink + flush * floor(max(0, length - sink - recent) / flush)`: never below `sink_size`; with `flush_size == 1`
        the window is exactly the last `recent_size` slots. `length` is an int or an integer tensor (elementwise).
        """
        beyond = length - self.sink_size - self.recent_size
        beyond = beyond.clamp(min=0) if isinstance(beyond, torch.Tensor) else max(0, beyond)
        return self.sink_size + self.flush_size * (beyond // self.flush_size)

    def boundary(self, position: Length) -> Length:
        """Start of the full window read by the query at global slot `position` (`flushed(position + 1)`)."""
        return self.flushed(position + 1)

    @property
    def max_full_span(self) -> int:
        """Most tokens a query reads from its recent window: `recent_size + flush_size - 1`."""
        return self.recent_size + self.flush_size - 1


@dataclass(frozen=True)
class ModelShape:
    """The attention shape of a decoder, as transformers' caches read it from the config.

    Args:
        num_layers (`int`): decoder layers.
        num_kv_heads (`int`): key/value heads per layer.
        head_dim (`int`): channels per head.
        layer_types (`tuple[str, ...]`): each layer's attention type (`"full_attention"`, `"sliding_attention"`, ...).
        sliding_window (`int`, *optional*): window of the sliding layers.
        name (`str`): the model's name or type, for messages.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    sliding_window: int | None = None
    name: str = "model"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape of a transformers config (its decoder text config for multimodal models)."""
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        num_layers = text.num_hidden_layers
        layer_types = getattr(text, "layer_types", None)
        if layer_types is None:  # what transformers' DynamicCache infers for configs without `layer_types`
            if getattr(text, "sliding_window", None) is not None:
                layer_types = [SLIDING_ATTENTION] * num_layers
            elif getattr(text, "attention_chunk_size", None) is not None:
                layer_types = ["chunked_attention"] * num_layers
            else:
                layer_types = [FULL_ATTENTION] * num_layers
        return cls(
            num_layers=num_layers,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            layer_types=tuple(layer_types[:num_layers]),
            sliding_window=getattr(text, "sliding_window", None),
            name=getattr(text, "_name_or_path", "") or getattr(text, "model_type", "") or "model",
        )

    @property
    def mask_shape(self) -> tuple[int, int, int]:
        """`(num_layers, num_kv_heads, head_dim)`: the shape of this model's LeanK mask."""
        return self.num_layers, self.num_kv_heads, self.head_dim

    def check_mask(self, mask: torch.Tensor, made_for: str | None = None) -> None:
        """Raise `MaskError` unless `mask` `[L, H, D]` fits: same shape, and only full-attention layers pruned.

        Sliding-window layers are left to transformers (and to the trainer's teacher), so their rows must keep every
        channel; any other layer type is refused by the cache.
        """
        if tuple(mask.shape) != self.mask_shape:
            raise MaskError(
                f"mask shape {list(mask.shape)} (layers, KV heads, head_dim) does not match {self.name!r} with "
                f"{list(self.mask_shape)}; this mask was made for {made_for or 'another model'}: load the mask "
                "trained for this model or train one with `leank-hf train`"
            )
        for layer, layer_type in enumerate(self.layer_types):
            if layer_type != FULL_ATTENTION and not bool(mask[layer].all()):
                window = (
                    f" (a sliding-window layer, sliding_window={self.sliding_window})"
                    if layer_type == SLIDING_ATTENTION
                    else ""
                )
                raise MaskError(
                    f"layer {layer} is a {layer_type!r} layer{window}, which LeanK leaves unpruned, but the mask "
                    "prunes channels there; use a mask made for this config or set that layer's mask to all ones"
                )

    def require_all_full_attention(self, purpose: str) -> None:
        """Raise `LeanKUsageError` unless every layer is a full-attention layer (`purpose` names who needs it)."""
        others = sorted({t for t in self.layer_types if t != FULL_ATTENTION})
        if others:
            raise LeanKUsageError(
                f"{purpose} supports models whose layers are all full attention; {self.name!r} has {others} layers"
            )


def full_attention_mask_shape(model, purpose: str) -> tuple[int, int, int]:
    """`(num_layers, num_kv_heads, head_dim)` of a decoder whose layers are all full attention.

    Raises `LeanKUsageError` naming `purpose` (e.g. `"the trainer"`) for any other layer type.
    """
    shape = ModelShape.from_config(model.config)
    shape.require_all_full_attention(purpose)
    return shape.mask_shape
