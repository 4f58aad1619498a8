"""The middle region of one LeanK layer: kept key channels, and values of the heads that keep a channel.

Both caches store it the same way (the layout of `ops.decode_attention.layout`); `LeanKLayer` grows it by flushes,
`LeanKStaticLayer` allocates it once for `max_cache_len` tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .ops.decode_attention.layout import HeadLayout, WidthGroup


class MiddleRegion:
    """`capacity` middle tokens per batch row: `keys [B, capacity * C]` and `values [B, NV, capacity, D]`.

    Zero-filled, so slots never written are read (with zero weight) as zeros, never as NaN.

    Args:
        host_layout (`HeadLayout`): the layer's layout on the host (index arithmetic).
        layout (`HeadLayout`): the same layout on the device of the cache.
        batch (`int`): batch rows.
        capacity (`int`): middle tokens per row.
        dtype (`torch.dtype`): the model's dtype.
    """

    def __init__(self, host_layout: HeadLayout, layout: HeadLayout, *, batch: int, capacity: int, dtype: torch.dtype):
        device = layout.widths.device
        self.host_layout, self.layout, self.capacity = host_layout, layout, capacity
        self.keys = torch.zeros(batch, capacity * layout.total_width, dtype=dtype, device=device)
        self.values = torch.zeros(batch, layout.num_value_heads, capacity, layout.head_dim, dtype=dtype, device=device)
        # Element of compact channel k at middle index t: key_base[k] + t * key_step[k] (see layout.py).
        self.key_base, self.key_step = host_layout.middle_key_index(capacity, device)
        self.value_heads = layout.storage_order[: layout.num_value_heads]

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    def write(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        """Store `[B, H, n, D]` tokens at middle indices `index [n]` (a device tensor; no host synchronisation)."""
        layout = self.layout
        if layout.total_width:
            compact = keys.transpose(1, 2).reshape(self.batch, keys.shape[2], -1).index_select(2, layout.gather_index)
            flat = self.key_base + index[:, None] * self.key_step  # [n, C]
            self.keys.index_copy_(1, flat.flatten(), compact.flatten(1))
        if layout.num_value_heads:
            self.values.index_copy_(2, index, values.index_select(1, self.value_heads))

    def resized(self, capacity: int, keep: int) -> MiddleRegion:
        """A region of `capacity` tokens holding this one's first `keep` tokens."""
        region = MiddleRegion(self.host_layout, self.layout, batch=self.batch, capacity=capacity, dtype=self.keys.dtype)
        if keep:
            for group in self.layout.groups:
                region._group_view(group)[:, :, :keep] = self._group_view(group)[:, :, :keep]
            region.values[:, :, :keep] = self.values[:, :, :keep]
        return region

    def _group_view(self, group: WidthGroup) -> torch.Tensor:
        """`[B, count, capacity, width]` view of one width group's block of the flat key buffer."""
        start = self.capacity * group.offset
        stop = start + self.capacity * group.count * group.width
        return self.keys[:, start:stop].view(self.batch, group.count, self.capacity, group.width)

    def map_batch(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace keys and values by `function` of them (a batch reorder or selection)."""
        self.keys, self.values = function(self.keys), function(self.values)

    def copy_batch_(self, index: torch.Tensor) -> None:
        """Reorder the batch rows in place (addresses stay fixed)."""
        for tensor in (self.keys, self.values):
            tensor.copy_(tensor.index_select(0, index.to(tensor.device)))

    def zero_(self) -> None:
        self.keys.zero_()
        self.values.zero_()

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor a write or a read of the region touches."""
        return self.keys, self.values, self.key_base, self.key_step, self.value_heads

    @property
    def nbytes(self) -> tuple[int, int]:
        """Allocated bytes of the keys and of the values."""
        return self.keys.nbytes, self.values.nbytes

    def used_bytes(self, tokens: int) -> tuple[int, int]:
        """Bytes of the keys and of the values of `tokens` middle tokens per row."""
        layout, item = self.layout, self.keys.element_size()
        keys = self.batch * tokens * layout.total_width * item
        return keys, self.batch * layout.num_value_heads * tokens * layout.head_dim * item
