"""Storage layout of one layer's LeanK cache, shared by the cache (writer) and the attention paths (readers).

Middle-region keys of one layer live in one flat buffer per batch row, `mid_keys [B, mid_cap * C]`, where
`C = sum(widths)`. KV heads are stored in *storage order* (kept width descending, ties by head id), each head as a
contiguous `[mid_cap, width]` block starting at element `mid_cap * offsets[h]`:

    element (b, h, t, c) of the compact keys  ->  mid_keys[b, mid_cap * offsets[h] + t * widths[h] + c]

so a run of equal-width heads is one `[n, mid_cap, width]` view, and a kernel reads each head contiguously.
Middle values hold only heads with a kept channel, in storage order (`value_slots[h]`, -1 for zero-width heads). In
the model's dtype they are token-major, `mid_values [B, num_value_heads, mid_cap, head_dim]` (`stride(-1) == 1`).
8-bit codes are stored in tiles of `VALUE_TILE` tokens, `mid_values [B, num_value_heads, tiles, head_dim, VALUE_TILE]`,
each tile one contiguous channel-major block (`new_value_storage`; `middle_values_like` converts token-major ones): the
probabilities-times-values product reduces over tokens, 8-bit matrix operands load fast only when that dimension is
contiguous and aligned, and a tile read as one block streams from DRAM faster than `head_dim` runs a row apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...contract import Windows


class WidthGroup(NamedTuple):
    """A run of heads with the same kept width, consecutive in storage order."""

    first: int  # storage position of the first head of the run
    count: int  # number of heads
    width: int  # kept channels of each head
    offset: int  # compact channel offset of the first head (= offsets of that head)


CODE_GROUP = 16  # 8-bit values are read in whole groups of this many tokens (aligned, vectorised loads)
VALUE_TILE = 128  # 8-bit values are stored in tiles of this many tokens, each a contiguous [head_dim, VALUE_TILE]


def code_capacity(capacity: int) -> int:
    """Tokens an 8-bit value buffer of `capacity` tokens holds: whole `VALUE_TILE`s."""
    return -(-capacity // VALUE_TILE) * VALUE_TILE


def new_value_storage(
    batch: int, num_value_heads: int, capacity: int, head_dim: int, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Zeroed `mid_values`: `[B, NV, capacity, D]` in the model's dtype, `[B, NV, tiles, D, VALUE_TILE]` for 8-bit
    codes (`tiles * VALUE_TILE == code_capacity(capacity)`; the kernels read whole token groups, whose spare codes
    stay finite and get zero weight)."""
    if dtype.itemsize != 1:
        return torch.zeros(batch, num_value_heads, capacity, head_dim, dtype=dtype, device=device)
    tiles = code_capacity(capacity) // VALUE_TILE
    return torch.zeros(batch, num_value_heads, tiles, head_dim, VALUE_TILE, dtype=dtype, device=device)


def has_value_storage(values: torch.Tensor) -> bool:
    """Whether `values` is stored as `new_value_storage` stores its dtype (any batch and head strides)."""
    if values.dtype.itemsize != 1:
        return values.dim() == 4 and values.stride(-1) == 1
    return (
        values.dim() == 5
        and values.shape[-1] == VALUE_TILE
        and values.stride()[2:] == (values.shape[3] * VALUE_TILE, VALUE_TILE, 1)
    )


def middle_values_like(values: torch.Tensor) -> torch.Tensor:
    """`values` stored as `new_value_storage` stores its dtype: itself if it already is, else a copy of token-major
    `[B, NV, T, D]` values (8-bit codes become tiles)."""
    if has_value_storage(values):
        return values
    batch, heads, tokens, head_dim = values.shape
    stored = new_value_storage(batch, heads, tokens, head_dim, values.dtype, values.device)
    if values.dtype.itemsize != 1:
        return stored.copy_(values)
    padded = values.new_zeros(batch, heads, code_capacity(tokens), head_dim)
    padded[:, :, :tokens] = values
    return stored.copy_(padded.view(*stored.shape[:3], VALUE_TILE, head_dim).transpose(3, 4))


@dataclass(frozen=True)
class HeadLayout:
    """Per-head kept channels of one layer and where they live in the compact buffers.

    All tensors are indexed by natural KV head id unless said otherwise.
    """

    head_dim: int
    widths: torch.Tensor  # [H] int32: kept channels per head
    channels: torch.Tensor  # [H, head_dim] int32: kept channel ids ascending, padded with 0 past widths[h]
    offsets: torch.Tensor  # [H] int64: compact channel offset of each head (prefix sum in storage order)
    value_slots: torch.Tensor  # [H] int32: head's index in mid_values, -1 if it keeps no channel
    storage_order: torch.Tensor  # [H] int64: natural head id at each storage position
    gather_index: torch.Tensor  # [C] int64: h * head_dim + channel for each compact channel, storage order
    groups: tuple[WidthGroup, ...]  # runs of equal width (zero-width run excluded)
    total_width: int  # C
    num_value_heads: int  # heads with width > 0

    @property
    def num_kv_heads(self) -> int:
        return self.widths.shape[0]

    @property
    def max_width(self) -> int:
        """The widest head's kept channels (0 if no head keeps any)."""
        return self.groups[0].width if self.groups else 0

    @classmethod
    def from_mask(cls, layer_mask: torch.Tensor) -> HeadLayout:
        """Build the layout from one layer's boolean mask `[num_kv_heads, head_dim]` (True = keep)."""
        layer_mask = layer_mask.to(device="cpu", dtype=torch.bool)
        num_heads, head_dim = layer_mask.shape
        widths = layer_mask.sum(-1)
        # Stable sort, width descending: zero-width heads end up last.
        storage_order = sorted(range(num_heads), key=lambda h: (-int(widths[h]), h))
        offsets = torch.zeros(num_heads, dtype=torch.int64)
        value_slots = torch.full((num_heads,), -1, dtype=torch.int32)
        channels = torch.zeros(num_heads, head_dim, dtype=torch.int32)
        gather, groups, offset = [], [], 0
        for position, head in enumerate(storage_order):
            width = int(widths[head])
            kept = layer_mask[head].nonzero().flatten()
            channels[head, :width] = kept.to(torch.int32)
            offsets[head] = offset
            if width:
                value_slots[head] = position
                gather.append(head * head_dim + kept)
                if groups and groups[-1].width == width:
                    groups[-1] = groups[-1]._replace(count=groups[-1].count + 1)
                else:
                    groups.append(WidthGroup(first=position, count=1, width=width, offset=offset))
            offset += width
        return cls(
            head_dim=head_dim,
            widths=widths.to(torch.int32),
            channels=channels,
            offsets=offsets,
            value_slots=value_slots,
            storage_order=torch.tensor(storage_order, dtype=torch.int64),
            gather_index=torch.cat(gather) if gather else torch.zeros(0, dtype=torch.int64),
            groups=tuple(groups),
            total_width=offset,
            num_value_heads=int((widths > 0).sum()),
        )

    def middle_key_index(self, capacity: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(base [C], step [C])`: compact channel k of middle index t lives at `mid_keys[b, base[k] + t * step[k]]`.

        `step` is the width of channel k's head and `base = capacity * offset(head) + position within the head`, for a
        flat buffer of `capacity` tokens per head (the layout above). Call it on the host layout.
        """
        widths = self.widths.long()[self.storage_order]
        step = torch.repeat_interleave(widths, widths)
        offsets = torch.repeat_interleave(self.offsets[self.storage_order], widths)
        base = capacity * offsets + torch.arange(self.total_width) - offsets
        return base.to(device), step.to(device)

    def to(self, device: torch.device | str) -> HeadLayout:
        """A copy with every tensor on `device`."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("widths", "channels", "offsets", "value_slots", "storage_order", "gather_index")
        }
        return HeadLayout(
            head_dim=self.head_dim,
            groups=self.groups,
            total_width=self.total_width,
            num_value_heads=self.num_value_heads,
            **moved,
        )


@dataclass
class CompactKV:
    """Everything an attention path needs to attend one layer's LeanK cache. Returned by the cache's `update`.

    Global slots count cache positions, pads included. For batch row `b` with `pad[b]` left-pad slots, and query row
    `i` at global slot `q_i = query_start + i` whose full recent window starts at global slot `boundaries[i]`:

    - full slot `s < sink_size` (sink of row b, global slot `pad[b] + s`) is valid iff `pad[b] + s < boundaries[i]`
      and `pad[b] + s <= q_i` (the second bound matters while the sequence is shorter than the sink);
    - full slot `sink_size + r` (global slot `g = recent_start + r`, `r < num_recent`) is valid iff
      `boundaries[i] <= g <= q_i` and `g >= pad[b]`;
    - middle index `t < num_mid` (global slot `sink_size + t`) is valid iff `t >= pad[b]` and
      `sink_size + t < boundaries[i]`, and uses only the kept channels; heads of width 0 have no middle keys.

    On top of these rules, where `key_mask` is given (the attention mask's last query row), a key at global slot `g`
    of row `b` is read only if `key_mask[b, g]`: masked positions that are not left padding (a masked span, the pads
    of a batched follow-up turn) are never attended.

    For a decode step (one query row) `boundaries == (recent_start,)`.

    An 8-bit middle region (`ops.decode_attention.quantization`) stores codes in `mid_keys`/`mid_values` and their
    fp32 scales in `mid_key_scales`/`mid_value_scales` `[B, num_value_heads, mid_cap]` (heads in storage order); the
    stored key of middle index `t` is `code * mid_key_scales[b, slot, t]`, its value likewise. FP8 e4m3 codes are
    stored as they are, int8 codes offset by 128 in `uint8` (a stored byte `u` is the code `u - 128`).

    `from_cache` marks one built by a LeanK cache layer from its own buffers, which keeps them in the dtypes, devices
    and strides the kernels read: the Triton launcher then checks the step's inputs (query, key mask, shapes) and
    leaves out the per-tensor checks of the cache (most of its host time per call).
    """

    layout: HeadLayout
    full_keys: torch.Tensor  # [B, H, cap_full, D]
    full_values: torch.Tensor  # [B, H, cap_full, D]
    sink_size: int
    num_recent: int
    recent_start: int
    mid_keys: torch.Tensor  # [B, mid_cap * C]
    mid_values: torch.Tensor  # [B, num_value_heads, mid_cap, D]; 8-bit: [B, num_value_heads, tiles, D, VALUE_TILE]
    mid_cap: int
    num_mid: int
    pad: torch.Tensor  # [B] int64
    query_start: int
    boundaries: tuple[int, ...]
    key_mask: torch.Tensor | None = None  # [B, L] bool over global slots (L >= query_start + n); None: all readable
    mid_key_scales: torch.Tensor | None = None  # [B, num_value_heads, mid_cap] fp32 (8-bit middle only)
    mid_value_scales: torch.Tensor | None = None  # [B, num_value_heads, mid_cap] fp32 (8-bit middle only)
    from_cache: bool = False

    def mid_key_group(self, group: WidthGroup) -> torch.Tensor:
        """The `[B, count, num_mid, width]` view of one width group's middle keys (no copy)."""
        batch = self.mid_keys.shape[0]
        start = self.mid_cap * group.offset
        stop = start + self.mid_cap * group.count * group.width
        block = self.mid_keys[:, start:stop].view(batch, group.count, self.mid_cap, group.width)
        return block[:, :, : self.num_mid]


@dataclass
class StaticKV:
    """One decode step's view of a `LeanKStaticCache` layer: tensors of fixed shape and the query slot on the device.

    For batch row `b`, query slot `q = position` and window start `w = windows.boundary(q)`:

    - full slot `s < sink_size` holds global slot `pad[b] + s`; valid iff `pad[b] + s < w` and `pad[b] + s <= q`;
    - full slot `sink_size + r` (`r < ring`) holds the latest global slot `g <= q` with `g % ring == r`; valid iff
      `g >= w`, `g >= pad[b]` and `g >= 0`;
    - middle index `t` holds global slot `sink_size + t`; valid iff `t >= pad[b]` and `sink_size + t < w`, and uses
      only the kept channels (heads of width 0 have none);
    - with `key_mask` `[B, >= q + 1]`, a key at global slot `g` is read only where `key_mask[b, g]` is True;
    - an 8-bit middle carries its scales as `CompactKV` does.
    """

    layout: HeadLayout
    windows: Windows
    ring_size: int
    full_keys: torch.Tensor  # [B, H, >= sink + ring, D]
    full_values: torch.Tensor  # [B, H, >= sink + ring, D]
    mid_keys: torch.Tensor  # [B, mid_cap * C]
    mid_values: torch.Tensor  # [B, num_value_heads, mid_cap, D]; 8-bit: [B, num_value_heads, tiles, D, VALUE_TILE]
    mid_cap: int
    pad: torch.Tensor  # [B] int64
    position: torch.Tensor  # [] int64: global slot of the query
    counters: torch.Tensor  # [B * H] int32, zero between launches (Triton kernel's merge counters)
    key_mask: torch.Tensor | None = None  # [B, kv] bool
    mid_key_scales: torch.Tensor | None = None  # [B, num_value_heads, mid_cap] fp32 (8-bit middle only)
    mid_value_scales: torch.Tensor | None = None  # [B, num_value_heads, mid_cap] fp32 (8-bit middle only)

    def mid_key_group(self, group: WidthGroup) -> torch.Tensor:
        """The `[B, count, mid_cap, width]` view of one width group's middle keys (no copy)."""
        start = self.mid_cap * group.offset
        stop = start + self.mid_cap * group.count * group.width
        return self.mid_keys[:, start:stop].view(self.mid_keys.shape[0], group.count, self.mid_cap, group.width)
