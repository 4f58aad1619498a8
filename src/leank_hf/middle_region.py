"""The middle region of one LeanK layer: kept key channels, and values of the heads that keep a channel.

Both caches store it the same way (the layout of `ops.decode_attention.layout`); `LeanKLayer` grows it by flushes,
`LeanKStaticLayer` allocates it once for `max_cache_len` tokens. With a `MiddleQuant` format the keys and values are
8-bit codes with one fp32 scale per (token, KV head) (`ops.decode_attention.quantization`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from .ops.decode_attention.layout import VALUE_TILE, HeadLayout, WidthGroup, new_value_storage
from .ops.decode_attention.quantization import MiddleQuant, quantize_rows, quantize_segments

logger = logging.getLogger(__name__)

# Tokens written at once by `write_range`: bounds the index tensor on long prompts.
_WRITE_CHUNK = 4096
# A growing region grows by this fraction when full, by at least one and at most `_MAX_GROWTH` flushes: large caches
# keep little spare room, and a growth (a copy of the region) still comes at most every few hundred tokens.
_GROWTH = 0.25
_MAX_GROWTH = 16


class MiddleRegion:
    """`capacity` middle tokens per batch row: `keys [B, capacity * C]` and `values [B, NV, capacity, D]` (8-bit values
    in tiles, `[B, NV, tiles, D, VALUE_TILE]`, see `ops.decode_attention.layout`).

    With `quant`, both hold 8-bit codes and `key_scales`/`value_scales` `[B, NV, capacity]` (fp32, KV heads in
    storage order, as the values) their scales; without it they hold the model's dtype and the scales are `None`.
    Zero-filled, so slots never written are read (with zero weight) as zeros, never as NaN.

    Args:
        host_layout (`HeadLayout`): the layer's layout on the host (index arithmetic).
        layout (`HeadLayout`): the same layout on the device of the cache.
        batch (`int`): batch rows.
        capacity (`int`): middle tokens per row.
        dtype (`torch.dtype`): the model's dtype.
        quant (`MiddleQuant`, *optional*): 8-bit format of keys and values.
    """

    def __init__(
        self,
        host_layout: HeadLayout,
        layout: HeadLayout,
        *,
        batch: int,
        capacity: int,
        dtype: torch.dtype,
        quant: MiddleQuant | None = None,
    ):
        device = layout.widths.device
        self.host_layout, self.layout, self.capacity, self.dtype, self.quant = (
            host_layout,
            layout,
            capacity,
            dtype,
            quant,
        )
        stored = dtype if quant is None else quant.dtype
        num_value_heads = layout.num_value_heads
        self.keys = torch.zeros(batch, capacity * layout.total_width, dtype=stored, device=device)
        self.values = new_value_storage(batch, num_value_heads, capacity, layout.head_dim, stored, device)
        self.key_scales = self.value_scales = None
        if quant is not None:
            self.key_scales = torch.zeros(batch, num_value_heads, capacity, dtype=torch.float32, device=device)
            self.value_scales = torch.zeros_like(self.key_scales)
        # Element of compact channel k at middle index t: key_base[k] + t * key_step[k] (see layout.py).
        self.key_base, self.key_step = host_layout.middle_key_index(capacity, device)
        self.value_heads = layout.storage_order[:num_value_heads]
        # 8-bit codes: channel d of middle index t at [t // VALUE_TILE, d, t % VALUE_TILE] of a head's tiles.
        self.value_channels = torch.arange(layout.head_dim, device=device)[None, :]

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    def write(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        """Store `[B, H, n, D]` tokens at middle indices `index [n]` (a device tensor; no host synchronisation)."""
        layout, quant = self.layout, self.quant
        if layout.total_width:
            compact = keys.transpose(1, 2).reshape(self.batch, keys.shape[2], -1).index_select(2, layout.gather_index)
            if quant is not None:
                runs = tuple((group.count, group.width) for group in layout.groups)
                compact, scales = quantize_segments(compact, runs, quant)
                self.key_scales.index_copy_(2, index, scales.transpose(1, 2))
            flat = self.key_base + index[:, None] * self.key_step  # [n, C]
            self.keys[:, flat.flatten()] = compact.flatten(1)
        if layout.num_value_heads:
            kept = values.index_select(1, self.value_heads)
            if quant is not None:
                kept, scales = quantize_rows(kept, quant)
                self.value_scales.index_copy_(2, index, scales)
            if quant is None:
                self.values.index_copy_(2, index, kept)
            else:  # tiles [B, NV, tiles, D, VALUE_TILE]
                tiles, columns = (index // VALUE_TILE)[:, None], (index % VALUE_TILE)[:, None]
                self.values[:, :, tiles, self.value_channels, columns] = kept

    def write_range(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """Store `[B, H, T, D]` tokens at middle indices `start .. start + T - 1` (in chunks of `_WRITE_CHUNK`)."""
        device = self.keys.device
        for offset in range(0, keys.shape[2], _WRITE_CHUNK):
            chunk = slice(offset, offset + _WRITE_CHUNK)
            size = keys[:, :, chunk].shape[2]
            index = torch.arange(start + offset, start + offset + size, device=device)
            self.write(keys[:, :, chunk], values[:, :, chunk], index)

    def with_room(self, tokens: int, keep: int, flush_size: int) -> MiddleRegion:
        """This region if it holds `tokens`, else a grown one (a multiple of `flush_size` tokens, at least `_GROWTH`
        more) holding this one's first `keep` tokens."""
        if tokens <= self.capacity:
            return self
        growth = min(max(math.ceil(self.capacity * _GROWTH), flush_size), _MAX_GROWTH * flush_size)
        capacity = -(-max(tokens, self.capacity + growth) // flush_size) * flush_size
        logger.debug("LeanKCache layer grows its middle region from %d to %d tokens", self.capacity, capacity)
        return self.resized(capacity, keep)

    def resized(self, capacity: int, keep: int) -> MiddleRegion:
        """A region of `capacity` tokens holding this one's first `keep` tokens."""
        region = MiddleRegion(
            self.host_layout, self.layout, batch=self.batch, capacity=capacity, dtype=self.dtype, quant=self.quant
        )
        if keep:
            for group in self.layout.groups:
                region._group_view(group)[:, :, :keep] = self._group_view(group)[:, :, :keep]
            values = keep if self.quant is None else -(-keep // VALUE_TILE)  # tokens, or whole tiles of codes
            region.values[:, :, :values] = self.values[:, :, :values]
            if self.quant is not None:
                region.key_scales[:, :, :keep] = self.key_scales[:, :, :keep]
                region.value_scales[:, :, :keep] = self.value_scales[:, :, :keep]
        return region

    def _group_view(self, group: WidthGroup) -> torch.Tensor:
        """`[B, count, capacity, width]` view of one width group's block of the flat key buffer."""
        start = self.capacity * group.offset
        stop = start + self.capacity * group.count * group.width
        return self.keys[:, start:stop].view(self.batch, group.count, self.capacity, group.width)

    def _stored(self) -> tuple[str, ...]:
        stored = ("keys", "values")
        return stored if self.quant is None else (*stored, "key_scales", "value_scales")

    def map_batch(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace keys, values (and scales) by `function` of them (a batch reorder or selection)."""
        for name in self._stored():
            setattr(self, name, function(getattr(self, name)))

    def copy_batch_(self, index: torch.Tensor) -> None:
        """Reorder the batch rows in place (addresses stay fixed)."""
        for name in self._stored():
            tensor = getattr(self, name)
            tensor.copy_(tensor.index_select(0, index.to(tensor.device)))

    def zero_(self) -> None:
        for name in self._stored():
            getattr(self, name).zero_()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor a write or a read of the region touches."""
        scales = () if self.quant is None else (self.key_scales, self.value_scales)
        return self.keys, self.values, *scales, self.key_base, self.key_step, self.value_heads, self.value_channels

    @property
    def nbytes(self) -> tuple[int, int]:
        """Allocated bytes of the keys and of the values, their scales included."""
        if self.quant is None:
            return self.keys.nbytes, self.values.nbytes
        return self.keys.nbytes + self.key_scales.nbytes, self.values.nbytes + self.value_scales.nbytes

    def used_bytes(self, tokens: int) -> tuple[int, int]:
        """Bytes of the keys and of the values of `tokens` middle tokens per row, their scales included."""
        layout, item = self.layout, self.keys.element_size()
        scale = 0 if self.quant is None else self.batch * layout.num_value_heads * tokens * 4
        keys = self.batch * tokens * layout.total_width * item
        return keys + scale, self.batch * layout.num_value_heads * tokens * layout.head_dim * item + scale
