"""`LeanKMasks`: one model's static K-channel keep mask plus the metadata it was trained with.

The class holds the data, its validation and statistics. Loading, saving and pushing come from `hub.MaskHubMixin`,
the import of a MInference release from `minference.MInferenceMixin`; neither module imports this one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from .constants import MASK_FORMAT_VERSION
from .contract import ModelShape
from .errors import MaskError
from .hub import MaskHubMixin
from .minference import MInferenceMixin
from .ops.decode_attention.quantization import CHOICES as QUANT_CHOICES

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass
class LeanKMasks(MaskHubMixin, MInferenceMixin):
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
            Free-form, JSON-serialisable provenance (steps, data, seed, source of an imported mask, ...).
        middle_quant (`str`, *optional*):
            Recommended storage of the middle region with this mask, measured by its publisher: `"int8"` or `"fp8"`
            (8 bits, see `LeanKCache`) or `"none"`; caches built without `middle_quant` use it. `None` (files
            without the key): no recommendation, the model's dtype.
        format_version (`int`, *optional*):
            Version of the saved format the mask was read from; files newer than this library are refused.

    Example:

    ```python
    >>> from leank_hf import LeanKMasks
    >>> masks = LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")  # bundled copy, no network
    >>> round(masks.pruned_ratio, 4), int(masks.zero_heads().sum())
    (0.6875, 47)
    >>> print(masks.summary())  # doctest: +SKIP
    ```
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
    middle_quant: str | None = None
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
        for name in ("base_model", "base_model_revision"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise MaskError(f"`{name}` must be a string or None, got {value!r}")
        if not isinstance(self.training_info, dict):
            raise MaskError(f"`training_info` must be a dict, got {type(self.training_info).__name__}")
        if self.middle_quant is not None and self.middle_quant not in QUANT_CHOICES:
            raise MaskError(f"`middle_quant` must be None or one of {list(QUANT_CHOICES)}, got {self.middle_quant!r}")
        ratio = self.target_ratio
        if ratio is not None and (
            isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1
        ):
            raise MaskError(f"`target_ratio` must be a number in [0, 1] or None, got {ratio!r}")
        if not isinstance(self.format_version, int) or isinstance(self.format_version, bool):
            raise MaskError(f"`format_version` must be an int, got {self.format_version!r}")
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
        return self.mask.sum().item() / self.mask.numel()

    @property
    def pruned_ratio(self) -> float:
        """Fraction of K channels pruned (the achieved ratio)."""
        return 1.0 - self.kept_fraction

    def zero_heads(self) -> torch.Tensor:
        """Boolean `[num_layers, num_kv_heads]`: heads with no kept channel (their middle K and V are not stored)."""
        return self.kept_counts() == 0

    def kept_fraction_per_layer(self) -> torch.Tensor:
        """Fraction of K channels kept in each layer, `[num_layers]` float32."""
        return self.mask.float().mean(dim=(1, 2))

    def kept_fraction_per_head(self) -> torch.Tensor:
        """Fraction of K channels kept by each KV head, `[num_layers, num_kv_heads]` float32."""
        return self.mask.float().mean(dim=2)

    def width_histogram(self) -> dict[int, int]:
        """Number of KV heads for each kept-channel count, e.g. `{0: 47, 32: 120, 64: 67, 96: 22}`."""
        return dict(sorted(Counter(self.kept_counts().flatten().tolist()).items()))

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of K and V cache one middle-region token takes over all layers with this mask.

        Middle-region tokens (past the sink, out of the recent window) store only the kept K channels, and no V at
        all for heads that keep no channel. Sink and recent tokens keep every channel (see `dense_kv_bytes_per_token`).

        Args:
            dtype (`torch.dtype`, *optional*, defaults to `torch.bfloat16`):
                Dtype of the cache.
        """
        itemsize = _itemsize(dtype)
        kept_v_heads = int((~self.zero_heads()).sum())
        return itemsize * (int(self.mask.sum()) + kept_v_heads * self.head_dim)

    def dense_kv_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of K and V cache one token takes over all layers without pruning: `2 * L * H * D * itemsize`."""
        return 2 * self.mask.numel() * _itemsize(dtype)

    def kv_bytes_saved_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        """Bytes of K and V cache this mask saves per middle-region token, against the dense cache."""
        return self.dense_kv_bytes_per_token(dtype) - self.kv_bytes_per_token(dtype)

    def summary(self, dtype: torch.dtype = torch.bfloat16) -> str:
        """A plain-text table of the mask's metadata and statistics, overall and per layer.

        Args:
            dtype (`torch.dtype`, *optional*, defaults to `torch.bfloat16`):
                Cache dtype used for the bytes-per-token line.
        """
        rows = self._statistics_rows(dtype)
        width = max(len(label) for label, _ in rows)
        lines = [f"{label:<{width}}  {value}" for label, value in rows]
        counts = self.kept_counts()
        zero = self.zero_heads().sum(-1)
        lines += ["", f"{'layer':>5}  {'kept':>6}  {'zero heads':>10}  kept channels per KV head"]
        for layer, fraction in enumerate(self.kept_fraction_per_layer().tolist()):
            heads = " ".join(f"{count:>3}" for count in counts[layer].tolist())
            lines.append(f"{layer:>5}  {fraction:>6.1%}  {int(zero[layer]):>10}  {heads}")
        return "\n".join(lines)

    def _statistics_rows(self, dtype: torch.dtype = torch.bfloat16) -> list[tuple[str, str]]:
        """(label, value) rows shared by `summary` and the model card."""
        num_heads = self.num_layers * self.num_kv_heads
        num_zero = int(self.zero_heads().sum())
        target = "-" if self.target_ratio is None else f"{self.target_ratio:.2%}"
        dense = self.dense_kv_bytes_per_token(dtype)
        pruned = self.kv_bytes_per_token(dtype)
        histogram = ", ".join(f"{width}: {count}" for width, count in self.width_histogram().items())
        recommended = [] if self.middle_quant is None else [("recommended middle storage", self.middle_quant)]
        return [
            ("base model", f"{self.base_model or '-'} (revision {self.base_model_revision or '-'})"),
            ("shape", f"{self.num_layers} layers x {self.num_kv_heads} KV heads x {self.head_dim} channels"),
            ("windows", f"sink {self.sink_size}, recent {self.recent_size}, flush {self.flush_size}"),
            ("align", str(self.align)),
            ("K channels pruned", f"{self.pruned_ratio:.2%} (target {target})"),
            ("KV heads with no kept channel", f"{num_zero} / {num_heads} ({num_zero / num_heads:.2%})"),
            ("KV heads per kept-channel count", histogram),
            (
                f"middle-region KV bytes per token ({str(dtype).removeprefix('torch.')})",
                f"{dense:,} dense -> {pruned:,} ({(dense - pruned) / dense:.2%} saved)",
            ),
            *recommended,
        ]

    def plot(self, ax: Axes | None = None) -> Axes:
        """Heatmap of kept channels per layer (rows) and KV head (columns), for notebooks. Needs matplotlib.

        Args:
            ax (`matplotlib.axes.Axes`, *optional*):
                Axes to draw on; a new figure is made if omitted.

        Returns:
            `matplotlib.axes.Axes`: the axes drawn on.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError(
                "LeanKMasks.plot needs matplotlib: `pip install 'leank_hf[plot]'` (or `pip install matplotlib`)"
            ) from error
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.4 * self.num_kv_heads + 2.0), max(3.0, 0.2 * self.num_layers)))
        image = ax.imshow(
            self.kept_counts().numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=self.head_dim, origin="upper"
        )
        ax.figure.colorbar(image, ax=ax, label="kept K channels")
        ax.set_xlabel("KV head")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.base_model or 'LeanK mask'}: {self.pruned_ratio:.2%} of K channels pruned")
        return ax

    # ---------------------------------------------------------- compatibility
    def check_compatible(self, config: Any) -> None:
        """Raise `MaskError` if this mask does not fit a transformers config (its text config is used).

        Checks layer count, KV head count and head_dim, and that the model's full-attention layers are what the mask
        prunes. Sliding-window layers of mixed models are left unpruned and must keep all channels in the mask.
        """
        ModelShape.from_config(config).check_mask(self.mask, made_for=self.base_model)

    # ------------------------------------------------------------- equality
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeanKMasks):
            return NotImplemented
        return torch.equal(self.mask, other.mask) and all(
            getattr(self, item.name) == getattr(other, item.name) for item in fields(self) if item.name != "mask"
        )


def _as_bool_mask(mask: Any) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise MaskError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 3:
        raise MaskError(f"mask must have rank 3 [num_layers, num_kv_heads, head_dim], got shape {list(mask.shape)}")
    if mask.numel() == 0:
        raise MaskError(f"mask must have at least one layer, KV head and channel, got shape {list(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask.detach().to("cpu").contiguous()
    if mask.is_complex() or not (mask.is_floating_point() or mask.dtype in _INT_DTYPES):
        raise MaskError(f"mask dtype must be bool or a 0/1 numeric tensor, got {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise MaskError("mask values must all be 0 or 1 (1 = keep the channel)")
    return (mask != 0).detach().to("cpu").contiguous()


def _itemsize(dtype: torch.dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"`dtype` must be a torch.dtype such as torch.bfloat16, got {dtype!r}")
    return dtype.itemsize


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
