"""Cache bytes per region (`MemoryFootprint`), next to what a `DynamicCache` holds for the same tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .middle_region import MiddleRegion


@dataclass(frozen=True)
class RegionBytes:
    """Bytes of one cache region.

    Args:
        allocated (`int`): bytes of the tensors that hold the region, spare capacity included.
        used (`int`): bytes of the slots that hold cached tokens.
        dense (`int`): bytes a `DynamicCache` holds for the same tokens.
    """

    allocated: int = 0
    used: int = 0
    dense: int = 0

    def __add__(self, other: RegionBytes) -> RegionBytes:
        return RegionBytes(self.allocated + other.allocated, self.used + other.used, self.dense + other.dense)


REGIONS = ("keys/full", "values/full", "keys/middle", "values/middle")


@dataclass(frozen=True)
class MemoryFootprint:
    """Cache bytes per region (`REGIONS`), next to what a `DynamicCache` would hold.

    "full" regions hold tokens with all channels: sinks and recent windows of LeanK layers, and every layer LeanK
    does not prune (sliding-window layers). "middle" regions hold the pruned tokens of LeanK layers.
    """

    regions: dict[str, RegionBytes] = field(default_factory=lambda: {name: RegionBytes() for name in REGIONS})

    def __add__(self, other: MemoryFootprint) -> MemoryFootprint:
        return MemoryFootprint({name: self.regions[name] + other.regions[name] for name in REGIONS})

    @property
    def allocated(self) -> int:
        return sum(region.allocated for region in self.regions.values())

    @property
    def used(self) -> int:
        return sum(region.used for region in self.regions.values())

    @property
    def dense(self) -> int:
        return sum(region.dense for region in self.regions.values())


def compact_layer_footprint(
    *,
    full_keys: torch.Tensor,
    full_values: torch.Tensor,
    full_slots: int,
    length: int,
    middle: MiddleRegion,
    num_mid: int,
) -> MemoryFootprint:
    """Bytes of a LeanK layer holding `length` slots per row: `full_slots` of them in the full region (sinks and
    recent window), `num_mid` in the middle region; a `DynamicLayer` would hold every slot with all channels."""
    batch, num_heads, _, head_dim = full_keys.shape
    dense_token = batch * num_heads * head_dim * full_keys.element_size()  # one token's K (or V), all heads
    full = RegionBytes(full_keys.nbytes, full_slots * dense_token, (length - num_mid) * dense_token)
    middle_keys, middle_values = middle.used_bytes(num_mid)
    allocated_keys, allocated_values = middle.nbytes
    dense_middle = num_mid * dense_token
    return MemoryFootprint(
        {
            "keys/full": full,
            "values/full": RegionBytes(full_values.nbytes, full.used, full.dense),
            "keys/middle": RegionBytes(allocated_keys, middle_keys, dense_middle),
            "values/middle": RegionBytes(allocated_values, middle_values, dense_middle),
        }
    )


def dense_footprint(keys: torch.Tensor, values: torch.Tensor) -> MemoryFootprint:
    """Bytes of dense keys and values (a prompt not compacted yet, a sliding-window layer): all in the full region."""
    return MemoryFootprint(
        {
            **MemoryFootprint().regions,
            "keys/full": RegionBytes(keys.nbytes, keys.nbytes, keys.nbytes),
            "values/full": RegionBytes(values.nbytes, values.nbytes, values.nbytes),
        }
    )
