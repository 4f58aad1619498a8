"""`LeanKMasks`: one model's static K-channel keep mask plus the metadata it was trained with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .constants import MASK_FORMAT_VERSION
from .errors import MaskError


@dataclass
class LeanKMasks:
    """A LeanK key-channel mask for one model.

    Args:
        mask (`torch.Tensor`):
            Boolean tensor `[num_layers, num_kv_heads, head_dim]`; `True` keeps the channel. Channels are in the
            Hugging Face `rotate_half` layout of post-RoPE keys (channels `j`, `j + head_dim // 2` pair up).
        base_model (`str`, *optional*):
            Hub id of the model the mask was made for.
        base_model_revision (`str`, *optional*):
            Revision (commit) of that model.
        sink_size (`int`, *optional*, defaults to 128):
            First tokens of each row kept with all channels.
        recent_size (`int`, *optional*, defaults to 768):
            Most recent tokens kept with all channels.
        flush_size (`int`, *optional*, defaults to 128):
            Tokens leave the recent window for the pruned region in chunks of this size.
        align (`int`, *optional*, defaults to 32):
            Every head's kept-channel count is a multiple of this.
        target_ratio (`float`, *optional*):
            Fraction of K channels the training aimed to prune.
        training_info (`dict`, *optional*):
            Free-form provenance (steps, data, seed, source of an imported mask, ...).
    """

    mask: torch.Tensor
    base_model: str | None = None
    base_model_revision: str | None = None
    sink_size: int = 128
    recent_size: int = 768
    flush_size: int = 128
    align: int = 32
    target_ratio: float | None = None
    training_info: dict[str, Any] = field(default_factory=dict)
    format_version: int = MASK_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.mask = _as_bool_mask(self.mask)
        for name in ("sink_size", "recent_size", "flush_size", "align"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise MaskError(f"`{name}` must be a non-negative int, got {value!r}")
        if self.recent_size < 1 or self.flush_size < 1 or self.align < 1:
            raise MaskError(
                f"`recent_size`, `flush_size` and `align` must be >= 1, got "
                f"{self.recent_size}, {self.flush_size}, {self.align}"
            )
        if self.head_dim % self.align:
            raise MaskError(f"`align`={self.align} does not divide head_dim={self.head_dim}")
        counts = self.kept_counts()
        bad = (counts % self.align).nonzero()
        if len(bad):
            layer, head = bad[0].tolist()
            raise MaskError(
                f"layer {layer}, KV head {head} keeps {int(counts[layer, head])} channels, not a multiple of "
                f"align={self.align} ({len(bad)} head(s) misaligned); re-threshold the mask with this align or "
                "declare the align it was built with"
            )
        if self.target_ratio is not None and not 0.0 <= float(self.target_ratio) <= 1.0:
            raise MaskError(f"`target_ratio` must be in [0, 1], got {self.target_ratio}")
        if self.format_version > MASK_FORMAT_VERSION:
            raise MaskError(
                f"mask format version {self.format_version} is newer than this leank_hf supports "
                f"({MASK_FORMAT_VERSION}); upgrade leank_hf"
            )

    # ------------------------------------------------------------------ shape
    @property
    def num_layers(self) -> int:
        return self.mask.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.mask.shape[1]

    @property
    def head_dim(self) -> int:
        return self.mask.shape[2]

    # ------------------------------------------------------------ statistics
    def kept_counts(self) -> torch.Tensor:
        """Kept channels per head, `[num_layers, num_kv_heads]` int64."""
        return self.mask.sum(-1)

    @property
    def kept_fraction(self) -> float:
        """Fraction of K channels kept over all layers and heads."""
        return self.mask.float().mean().item()

    @property
    def pruned_ratio(self) -> float:
        """Fraction of K channels pruned (the achieved ratio)."""
        return 1.0 - self.kept_fraction

    def zero_heads(self) -> torch.Tensor:
        """Boolean `[num_layers, num_kv_heads]`: heads with no kept channel (their middle K and V are not stored)."""
        return self.kept_counts() == 0

    # ---------------------------------------------------------- compatibility
    def check_compatible(self, config: Any) -> None:
        """Raise `MaskError` if this mask does not fit a transformers config (its text config is used).

        Checks layer count, KV head count and head_dim, and that the model's full-attention layers are what the mask
        prunes. Sliding-window layers of mixed models are left unpruned and must keep all channels in the mask.
        """
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        num_layers = text.num_hidden_layers
        num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        expected = (num_layers, num_kv_heads, head_dim)
        if tuple(self.mask.shape) != expected:
            name = getattr(text, "_name_or_path", "") or getattr(text, "model_type", "model")
            raise MaskError(
                f"mask shape {list(self.mask.shape)} (layers, KV heads, head_dim) does not match {name!r} with "
                f"{list(expected)}; this mask was made for {self.base_model or 'another model'}: load the mask "
                "trained for this model or train one with `leank-hf train`"
            )
        layer_types = getattr(text, "layer_types", None) or ["full_attention"] * num_layers
        for layer, layer_type in enumerate(layer_types):
            if layer_type != "full_attention" and not bool(self.mask[layer].all()):
                raise MaskError(
                    f"layer {layer} is a {layer_type!r} layer, which LeanK leaves unpruned, but the mask prunes "
                    "channels there; set that layer's mask to all ones"
                )


def _as_bool_mask(mask: Any) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 3:
        raise MaskError(f"mask must have rank 3 [num_layers, num_kv_heads, head_dim], got shape {list(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask.detach().to("cpu").contiguous()
    if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in _INT_DTYPES):
        raise MaskError(f"mask dtype must be bool or a 0/1 numeric tensor, got {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise MaskError("mask values must all be 0 or 1 (1 = keep the channel)")
    return (mask != 0).detach().to("cpu").contiguous()


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
