"""`LeanKCache`: a transformers `Cache` whose full-attention layers store middle-region keys with kept channels only.

Per LeanK layer and batch row: the first `sink_size` real tokens and a recent window of at least `recent_size` tokens
are kept with all channels (`full_keys`/`full_values`); older tokens move to the middle region in chunks of
`flush_size`, keys with only their KV head's kept channels, values only for heads that keep a channel. The storage
layout is `ops.decode_attention.layout` (`HeadLayout`, `CompactKV`); the semantics are in DESIGN.md.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer

from .contract import FULL_ATTENTION, SLIDING_ATTENTION, ModelShape, Windows
from .errors import LeanKUsageError, MaskError
from .masks import LeanKMasks
from .ops.decode_attention.layout import CompactKV, HeadLayout, StaticKV
from .tensor_parallel import KVHeadShard, kv_head_shard

logger = logging.getLogger(__name__)

# Tokens written to the middle region per `index_copy_`: bounds the index tensor on long prompts.
_WRITE_CHUNK = 4096
# Middle-region capacity grows by this fraction when full, by at least one and at most `_MAX_GROWTH` flushes: large
# caches keep little spare room, and a growth (a copy of the region) still comes at most every few hundred tokens.
_GROWTH = 0.25
_MAX_GROWTH = 16

_CHUNKED_PREFILL = (
    "this forward continues a prompt that no decode step followed (chunked prefill, e.g. "
    "`generate(prefill_chunk_size=...)`), but the LeanKCache already compacted the prompt; build it with "
    "`LeanKCache(..., chunked_prefill=True)` to attend chunked prompts exactly (the prompt then stays dense until the "
    "first decode step, at a DynamicCache's peak memory), or feed the prompt in one forward"
)
_NOT_SWITCHED = (
    "this model's attention received the compact keys of a LeanKCache, which only the LeanK attention can read; "
    "call `leank_hf.apply_leank(model)` before generating with a LeanKCache"
)
_NOT_COMPILABLE = (
    "the dynamic LeanKCache cannot be captured by torch.compile: its tensors change shape at every flush; run the "
    "model without torch.compile, or use LeanKStaticCache, the compile-capable LeanK cache"
)


@torch.compiler.disable(reason=_NOT_COMPILABLE)
def _refuse_compile() -> None:
    """Raise the compile error. Dynamo does not trace it: with `fullgraph=True` it reports the reason above, without
    it breaks the graph and runs this function, which raises."""
    raise LeanKUsageError(_NOT_COMPILABLE)


class LeanKStates:
    """What a LeanK layer returns from `update` in place of key and value tensors.

    Only the LeanK attention function opens it (`payload`); any other attention implementation touches a tensor
    attribute such as `.shape` first and gets a `LeanKUsageError` that says to call `apply_leank`, instead of computing
    garbage. The refusing attributes are plain properties (no `__getattr__`), so torch.compile traces the object.
    """

    def __init__(self, payload: PrefillKV | CompactKV | StaticKV):
        self.payload = payload

    def __getitem__(self, index: Any) -> Any:
        raise LeanKUsageError(_NOT_SWITCHED)

    def __len__(self) -> int:
        raise LeanKUsageError(_NOT_SWITCHED)

    def __repr__(self) -> str:
        return f"LeanKStates({type(self.payload).__name__})"


def _refuse(self: LeanKStates) -> Any:
    raise LeanKUsageError(_NOT_SWITCHED)


# Tensor attributes other attention implementations (sdpa, eager, flash, flex) read from keys and values.
_TENSOR_ATTRIBUTES = (
    "contiguous", "device", "dim", "dtype", "expand", "float", "is_cuda", "ndim", "reshape", "shape", "size", "to",
    "transpose", "unsqueeze", "view",
)  # fmt: skip
for _name in _TENSOR_ATTRIBUTES:
    setattr(LeanKStates, _name, property(_refuse))


@dataclass
class PrefillKV:
    """The dense keys and values of a layer's prompt so far: attended exactly, compacted by `layer` later."""

    keys: torch.Tensor  # [B, H, P, D]
    values: torch.Tensor  # [B, H, P, D]
    layer: LeanKLayer


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


class LeanKLayer(CacheLayerMixin):
    """One full-attention layer of a `LeanKCache`.

    The first `update` is the prompt: the layer returns its dense keys for exact attention, after which the LeanK
    attention calls `prompt_attended` with each row's left-pad count, and the layer compacts it right away. With
    `keep_prompt_dense=True` (chunked prefill) every multi-token `update` that directly follows extends the prompt,
    which stays dense until the first single-token `update`, `crop` (also `crop(0)`), batch reorder or selection;
    without it such an update is refused (it would read a compacted prompt). Every later `update` returns a
    `CompactKV` (wrapped in `LeanKStates`). Tensors live on the device and in the dtype of the first keys.

    Args:
        layer_mask (`torch.Tensor`):
            Boolean `[num_kv_heads, head_dim]` keep mask of this layer.
        sink_size (`int`):
            First real tokens of each row kept with all channels.
        recent_size (`int`):
            Most recent tokens kept with all channels (plus up to `flush_size - 1` waiting for the next flush).
        flush_size (`int`):
            Tokens leave the recent window in chunks of this size.
        keep_prompt_dense (`bool`, *optional*, defaults to `False`):
            Keep the prompt dense until decoding starts, so a prompt fed in chunks is attended exactly.
    """

    is_compileable = False
    is_sliding = False
    # Removing the tokens of the last update always works (after the prompt: up to `flush_size` of them); see `crop`.
    is_croppable = True

    def __init__(
        self,
        layer_mask: torch.Tensor,
        *,
        sink_size: int,
        recent_size: int,
        flush_size: int,
        keep_prompt_dense: bool = False,
    ):
        super().__init__()
        self.keep_prompt_dense = keep_prompt_dense
        self.host_layout = HeadLayout.from_mask(layer_mask)
        self.windows = Windows(sink_size, recent_size, flush_size)
        self.sink_size, self.recent_size, self.flush_size = sink_size, recent_size, flush_size
        self._clear()

    def _clear(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.length = 0  # global slots held (pads included)
        self.recent_start = self.sink_size  # global slot of full slot `sink_size`
        self.num_mid = 0  # middle holds global slots [sink_size, sink_size + num_mid)
        self.mid_cap = 0
        self.pad: torch.Tensor | None = None  # [B] left-pad slots per row, known after the prefill
        self._pad_bound = 0  # Python upper bound of `pad`, so sink writes need no device sync
        self._prompt: PrefillKV | None = None  # the dense prompt, until it is compacted
        self._pending = False  # the last prompt update has not been attended yet
        self._decoding = False  # a single-token update, crop or batch change came after the prompt

    # ------------------------------------------------------------------ setup
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, num_heads, _, head_dim = key_states.shape
        if (num_heads, head_dim) != tuple(self.host_layout.channels.shape):
            sharded = torch.distributed.is_available() and torch.distributed.is_initialized()
            raise MaskError(
                f"keys have {num_heads} KV heads of dim {head_dim} but the layer mask is "
                f"{list(self.host_layout.channels.shape)}; use the mask made for this model"
                + (
                    " (a tensor-parallel model gives each rank its own KV heads: build the cache with "
                    "`LeanKCache.for_model(model, masks)`)"
                    if sharded
                    else ""
                )
            )
        self.dtype, self.device, self.batch = key_states.dtype, key_states.device, batch
        layout = self.layout = self.host_layout.to(self.device)
        self._value_heads = layout.storage_order[: layout.num_value_heads]
        self.full_keys = self.full_values = self._full_buffer(0)
        self.mid_keys = key_states.new_empty(batch, 0)
        self.mid_values = key_states.new_empty(batch, layout.num_value_heads, 0, head_dim)
        self._set_mid_capacity(0)
        self.is_initialized = True

    @property
    def num_recent(self) -> int:
        """Tokens of the recent window in the full region."""
        return max(0, self.length - self.recent_start)

    def _flushed(self, length: int) -> int:
        return self.windows.flushed(length)

    # ----------------------------------------------------------------- update
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[LeanKStates, LeanKStates]:
        """Append `[B, H, n, D]` keys and values; return them for attention, wrapped in `LeanKStates`.

        During the prompt the dense prompt so far is returned (`PrefillKV`); later calls return the compact cache
        (`CompactKV`) with one boundary per new query row.
        """
        if torch.compiler.is_compiling():
            _refuse_compile()
        if self._pending:
            raise LeanKUsageError(
                "a LeanKCache layer was updated twice without attention in between (its prompt was never attended); "
                "call `cache.reset()` and run the model with `apply_leank(model)`"
            )
        if self.length == 0:
            self.lazy_initialization(key_states, value_states)
            return self._extend_prompt(key_states, value_states)
        if key_states.shape[0] != self.batch:
            raise LeanKUsageError(
                f"a LeanKCache holding batch size {self.batch} got keys of batch size {key_states.shape[0]}; "
                "use a fresh cache (or `cache.reset()`) for a new batch"
            )
        if key_states.shape[2] > 1 and not self._decoding:
            if self._prompt is None:
                raise LeanKUsageError(_CHUNKED_PREFILL)
            return self._extend_prompt(key_states, value_states)
        self._decoding = True
        if self._prompt is not None:
            self._compact()
        states = LeanKStates(self._append(key_states, value_states))
        return states, states

    def _extend_prompt(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[LeanKStates, LeanKStates]:
        """Append a prompt update to the dense prompt; return all of it for exact attention."""
        if self._prompt is not None:
            keys = torch.cat([self._prompt.keys, keys], dim=2)
            values = torch.cat([self._prompt.values, values], dim=2)
        self.length = keys.shape[2]
        self._prompt, self._pending = PrefillKV(keys, values, self), True
        states = LeanKStates(self._prompt)
        return states, states

    def prompt_attended(self, pad: torch.Tensor | None) -> None:
        """Record each row's left padding after the exact attention of a prompt update. Called by the LeanK attention.

        Args:
            pad (`torch.Tensor`, *optional*):
                `[B]` left-pad slots per row (leading masked keys of the last query row); `None` means no padding.
        """
        self._pending = False
        if pad is None:
            self.pad = torch.zeros(self.batch, dtype=torch.int64, device=self.device)
        else:
            self.pad = pad.to(device=self.device, dtype=torch.int64)
            self._pad_bound = self.length - 1  # a row keeps at least its last token
        if not self.keep_prompt_dense:
            self._compact()

    def finish_prefill(self, pad: torch.Tensor | None) -> None:
        """Record `pad` (as `prompt_attended`) and compact the dense prompt now.

        The layer compacts on its own when the prompt ends (see the class docstring); benchmarks and tests call this
        to build a compact cache without running attention.
        """
        self.prompt_attended(pad)
        if self._prompt is not None:
            self._compact()

    def _compact(self) -> None:
        """Store the dense prompt in the sink, middle and recent regions, and drop it."""
        prompt, self._prompt = self._prompt, None
        keys, values = prompt.keys, prompt.values
        length = self.length
        # The window starts where the decode step after `length - flush_size` tokens would put it, so removing up to
        # `flush_size` prompt tokens can still be undone by `crop`.
        self.recent_start = start = self._flushed(max(0, length - self.flush_size) + 1)
        self._ensure_full_capacity(self.sink_size + max(0, length - start), keep=0)
        self._write_sinks(keys, values, first_slot=0)
        if length > start:
            self.full_keys[:, :, self.sink_size : self.sink_size + length - start] = keys[:, :, start:]
            self.full_values[:, :, self.sink_size : self.sink_size + length - start] = values[:, :, start:]
        self._write_middle(keys[:, :, self.sink_size : start], values[:, :, self.sink_size : start], 0)
        logger.debug(
            "LeanKCache layer compacted a %d-slot prompt: %d middle tokens, %d recent",
            length,
            self.num_mid,
            length - start,
        )

    def _append(self, keys: torch.Tensor, values: torch.Tensor) -> CompactKV:
        old_length, sink = self.length, self.sink_size
        length = old_length + keys.shape[2]
        first = self._flushed(old_length + 1)  # boundary of the first new query row
        last = self._flushed(length)  # boundary of the last one
        self._flush_to(first)
        self._drop_recent(first)
        self._ensure_full_capacity(sink + length - first, keep=sink + self.num_recent)
        self._write_sinks(keys, values, first_slot=old_length)
        skip = max(0, first - old_length)  # new tokens before the window (sequence still shorter than the sink)
        if keys.shape[2] > skip:
            self.full_keys[:, :, sink + old_length + skip - first : sink + length - first] = keys[:, :, skip:]
            self.full_values[:, :, sink + old_length + skip - first : sink + length - first] = values[:, :, skip:]
        self.length = length
        # The middle also receives what the last row no longer reads in full; earlier rows still read those tokens
        # from the full region until the next update drops them.
        self._flush_to(last)
        return CompactKV(
            layout=self.layout,
            full_keys=self.full_keys,
            full_values=self.full_values,
            sink_size=sink,
            num_recent=self.num_recent,
            recent_start=first,
            mid_keys=self.mid_keys,
            mid_values=self.mid_values,
            mid_cap=self.mid_cap,
            num_mid=self.num_mid,
            pad=self.pad,
            query_start=old_length,
            boundaries=tuple(self._flushed(position + 1) for position in range(old_length, length)),
        )

    # ------------------------------------------------------------ full region
    def _full_buffer(self, capacity: int) -> torch.Tensor:
        # Zeros: sink slots a short or padded row has not filled yet are read (with zero weight) by the attention.
        shape = (self.batch, self.layout.num_kv_heads, capacity, self.layout.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _ensure_full_capacity(self, slots: int, keep: int) -> None:
        """Make the full region hold `slots` slots, keeping its first `keep` ones.

        Decode needs `sink + recent + flush - 1` slots, a prompt up to `flush` more; a long chunk needs more, given
        back after a later update.
        """
        base = self.sink_size + self.recent_size + 2 * self.flush_size
        capacity = self.full_keys.shape[2]
        if capacity >= slots and not (capacity > 2 * base and slots <= base):
            return
        capacity = slots + self.flush_size if slots > base else base
        keys, values = self._full_buffer(capacity), self._full_buffer(capacity)
        keys[:, :, :keep] = self.full_keys[:, :, :keep]
        values[:, :, :keep] = self.full_values[:, :, :keep]
        self.full_keys, self.full_values = keys, values

    def _write_sinks(self, keys: torch.Tensor, values: torch.Tensor, first_slot: int) -> None:
        """Copy new tokens (global slots from `first_slot`) that belong to a row's sink into its sink slots."""
        count, sink = keys.shape[2], self.sink_size
        if sink == 0 or count == 0 or first_slot >= sink + self._pad_bound:
            return
        index = self.pad[:, None] + torch.arange(sink, device=self.device) - first_slot  # [B, S] into the new tokens
        inside = ((index >= 0) & (index < count))[:, None, :, None]
        index = index.clamp(0, count - 1)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        for new, full in ((keys, self.full_keys), (values, self.full_values)):
            full[:, :, :sink] = torch.where(inside, new.gather(2, index), full[:, :, :sink])

    def _drop_recent(self, new_start: int) -> None:
        """Move the recent window to start at global slot `new_start` (its older tokens are in the middle)."""
        shift = new_start - self.recent_start
        if shift <= 0:
            return
        keep, sink = self.length - new_start, self.sink_size
        if keep > 0:
            for full in (self.full_keys, self.full_values):
                full[:, :, sink : sink + keep] = full[:, :, sink + shift : sink + shift + keep].clone()
        self.recent_start = new_start

    # ---------------------------------------------------------- middle region
    def _flush_to(self, stop: int) -> None:
        """Write the full region's tokens up to global slot `stop` into the middle region."""
        count = stop - self.sink_size - self.num_mid
        if count <= 0:
            return
        slot = self.sink_size + (self.sink_size + self.num_mid - self.recent_start)
        self._write_middle(
            self.full_keys[:, :, slot : slot + count], self.full_values[:, :, slot : slot + count], self.num_mid
        )

    def _write_middle(self, keys: torch.Tensor, values: torch.Tensor, start: int) -> None:
        """Store `[B, H, T, D]` tokens at middle indices `start .. start + T - 1`: kept key channels, kept heads' V."""
        count = keys.shape[2]
        if count == 0:
            return
        self._ensure_mid_capacity(start + count)
        layout, batch = self.layout, self.batch
        for offset in range(0, count, _WRITE_CHUNK):
            chunk_keys = keys[:, :, offset : offset + _WRITE_CHUNK]
            size, first = chunk_keys.shape[2], start + offset
            if layout.total_width:
                flat = chunk_keys.transpose(1, 2).reshape(batch, size, -1)
                compact = flat.index_select(2, layout.gather_index)  # [B, T, C] in storage order
                tokens = torch.arange(first, first + size, device=self.device)[:, None]
                index = self._mid_index_base + tokens * self._mid_index_step  # [T, C]
                self.mid_keys.index_copy_(1, index.flatten(), compact.flatten(1))
            if layout.num_value_heads:
                chunk_values = values[:, :, offset : offset + _WRITE_CHUNK]
                self.mid_values[:, :, first : first + size] = chunk_values.index_select(1, self._value_heads)
        self.num_mid = start + count

    def _ensure_mid_capacity(self, tokens: int) -> None:
        if tokens <= self.mid_cap:
            return
        flush = self.flush_size
        growth = min(max(math.ceil(self.mid_cap * _GROWTH), flush), _MAX_GROWTH * flush)
        capacity = max(tokens, self.mid_cap + growth)
        capacity = -(-capacity // flush) * flush
        layout = self.layout
        keys = self.mid_keys.new_empty(self.batch, capacity * layout.total_width)
        values = self.mid_values.new_empty(self.batch, layout.num_value_heads, capacity, layout.head_dim)
        if self.num_mid:
            for group in layout.groups:
                _group_view(keys, capacity, group)[:, :, : self.num_mid] = _group_view(
                    self.mid_keys, self.mid_cap, group
                )[:, :, : self.num_mid]
            values[:, :, : self.num_mid] = self.mid_values[:, :, : self.num_mid]
        logger.debug(
            "LeanKCache layer grows its middle region from %d to %d tokens (%d bytes)",
            self.mid_cap,
            capacity,
            keys.nbytes + values.nbytes,
        )
        self.mid_keys, self.mid_values = keys, values
        self._set_mid_capacity(capacity)

    def _set_mid_capacity(self, capacity: int) -> None:
        self.mid_cap = capacity
        # Element of compact channel k at middle index t: base[k] + t * width[k] (see layout.py).
        self._mid_index_base, self._mid_index_step = self.host_layout.middle_key_index(capacity, self.device)

    # -------------------------------------------------------- Cache protocol
    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        """Drop every cached token; the next update is a prefill again (batch size may change)."""
        self._clear()

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens (a negative count, as in transformers).

        A crop of a dense prompt (`crop(0)` too, which transformers' assisted decoding calls after each verification)
        cuts any number of its tokens and ends the prompt (compacts it). After that, tokens are removable while the
        tokens that come back into the recent window are still held in full: always the tokens of the last update (of
        the prompt: its last `flush_size`), older ones only until the next flush.
        """
        if tokens_to_remove > 0:
            raise ValueError(
                f"Calling `crop` with a positive value (`{tokens_to_remove}`) is not supported. "
                "Please use a negative integer to remove that number of tokens from the cache instead."
            )
        if self.length == 0:
            return
        self._check_no_pending("crop")
        self._decoding = True
        length = self.length + tokens_to_remove
        if length <= 0:
            self.reset()
            return
        if self._prompt is not None:  # a crop ends the prompt: cut the dense tokens, then compact
            self._prompt = PrefillKV(self._prompt.keys[:, :, :length], self._prompt.values[:, :, :length], self)
            self.length = length
            self._compact()
            return
        if tokens_to_remove == 0:
            return
        if self._flushed(length + 1) < self.recent_start:
            removable = self.length - (self.recent_start + self.recent_size - 1)
            raise LeanKUsageError(
                f"cannot remove {-tokens_to_remove} tokens from a LeanKCache layer of {self.length} tokens: older "
                f"tokens are already stored with pruned keys; at most {max(0, removable)} can be removed now. For "
                f"assisted or prompt-lookup decoding, propose at most `flush_size` ({self.flush_size}) candidates per "
                "step (`prompt_lookup_num_tokens` / `num_assistant_tokens`), or build the cache with a larger "
                "`flush_size`"
            )
        self.length = length
        # Middle entries past the window start may hold removed tokens: rewrite them from the full region later.
        self.num_mid = min(self.num_mid, self.recent_start - self.sink_size)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch rows (beam search)."""
        self._map_batch(lambda tensor: tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the batch rows `indices`."""
        self._map_batch(lambda tensor: tensor[indices.to(tensor.device) if torch.is_tensor(indices) else indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat each batch row `repeats` times."""
        self._map_batch(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def _map_batch(self, function: Any) -> None:
        if self.length == 0:
            return
        self._check_no_pending("change the batch of")
        self._decoding = True
        if self._prompt is not None:
            self._compact()
        for name in ("full_keys", "full_values", "mid_keys", "mid_values", "pad"):
            setattr(self, name, function(getattr(self, name)))
        self.batch = self.pad.shape[0]

    def _check_no_pending(self, action: str) -> None:
        if self._pending:
            raise LeanKUsageError(f"cannot {action} a LeanKCache layer whose prompt has not been attended yet")

    def offload(self) -> None:
        raise NotImplementedError(
            "LeanKCache layers hold several tensors (full and middle regions) and do not support offloading; "
            "build the cache without `offloading`"
        )

    def prefetch(self) -> None:
        raise NotImplementedError("LeanKCache layers do not support offloading, hence nothing to prefetch")

    # ---------------------------------------------------------------- memory
    def memory_footprint(self) -> MemoryFootprint:
        """Bytes per region held by this layer, next to what a `DynamicLayer` holds for the same tokens."""
        if self.length == 0:
            return MemoryFootprint()
        if self._prompt is not None:  # a dense prompt: all in the full region, as a DynamicLayer holds it
            keys, values = self._prompt.keys.nbytes, self._prompt.values.nbytes
            return MemoryFootprint(
                {
                    **MemoryFootprint().regions,
                    "keys/full": RegionBytes(keys, keys, keys),
                    "values/full": RegionBytes(values, values, values),
                }
            )
        layout, item = self.layout, self.full_keys.element_size()
        dense_token = self.batch * layout.num_kv_heads * layout.head_dim * item  # one token's K (or V), all heads
        full_slots = min(self.sink_size, self.length) + self.num_recent
        full = RegionBytes(self.full_keys.nbytes, full_slots * dense_token, (self.length - self.num_mid) * dense_token)
        middle_keys = self.batch * self.num_mid * layout.total_width * item
        middle_values = self.batch * layout.num_value_heads * self.num_mid * layout.head_dim * item
        dense_middle = self.num_mid * dense_token
        return MemoryFootprint(
            {
                "keys/full": full,
                "values/full": RegionBytes(self.full_values.nbytes, full.used, full.dense),
                "keys/middle": RegionBytes(self.mid_keys.nbytes, middle_keys, dense_middle),
                "values/middle": RegionBytes(self.mid_values.nbytes, middle_values, dense_middle),
            }
        )


def _group_view(mid_keys: torch.Tensor, capacity: int, group: Any) -> torch.Tensor:
    """`[B, count, capacity, width]` view of one width group's block of a flat middle-key buffer."""
    start = capacity * group.offset
    stop = start + capacity * group.count * group.width
    return mid_keys[:, start:stop].view(mid_keys.shape[0], group.count, capacity, group.width)


class LeanKCache(Cache):
    """A transformers cache that stores the keys of the middle region with only the LeanK mask's kept channels.

    Use it with a model switched to the LeanK attention (`apply_leank(model)`): the prompt is attended exactly and
    compacted layer by layer; generated tokens attend sinks and recent window in full and the middle with kept
    channels only. Full-attention layers are LeanK layers; sliding-window layers of mixed models are transformers'
    own `DynamicSlidingWindowLayer`.

    Args:
        masks (`LeanKMasks`):
            The keep masks of this model.
        config (`PreTrainedConfig`):
            The model's config (its text config is used); checked against the masks.
        sink_size (`int`, *optional*):
            First real tokens of each row kept with all channels. Defaults to the masks' `sink_size`.
        recent_size (`int`, *optional*):
            Most recent tokens kept with all channels. Defaults to the masks' `recent_size`.
        flush_size (`int`, *optional*):
            Tokens leave the recent window in chunks of this size. Defaults to the masks' `flush_size`.
        kv_heads (`KVHeadShard`, *optional*):
            The KV heads this rank holds in a tensor-parallel model: layers keep those rows of the mask. Set by
            `LeanKCache.for_model`; `None` (all heads) otherwise.
        chunked_prefill (`bool`, *optional*, defaults to `False`):
            Attend a prompt fed in several forwards (`generate(prefill_chunk_size=...)`) exactly: each layer keeps
            the prompt dense until the first decode step, so peak memory is a `DynamicCache`'s for the prompt. Without
            it each layer compacts its prompt right after attending it, and a forward continuing the prompt is refused.

    Example:

    ```python
    >>> from leank_hf import LeanKCache, LeanKMasks, apply_leank
    >>> model = apply_leank(AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B-Instruct"))
    >>> cache = LeanKCache(LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct"), model.config)
    >>> output = model.generate(**inputs, past_key_values=cache, max_new_tokens=64)
    >>> cache.memory_footprint().used
    ```
    """

    _CACHE_ARGUMENTS: tuple[str, ...] = ("sink_size", "recent_size", "flush_size", "chunked_prefill")

    def __init__(
        self,
        masks: LeanKMasks,
        config: Any,
        *,
        sink_size: int | None = None,
        recent_size: int | None = None,
        flush_size: int | None = None,
        kv_heads: KVHeadShard | None = None,
        chunked_prefill: bool = False,
    ):
        self.chunked_prefill = chunked_prefill
        if not isinstance(masks, LeanKMasks):
            raise LeanKUsageError(f"`masks` must be a LeanKMasks, got {type(masks).__name__}")
        shape = ModelShape.from_config(config)
        shape.check_mask(masks.mask, made_for=masks.base_model)
        self.masks = masks
        self.kv_heads = kv_heads
        heads = slice(None) if kv_heads is None else slice(kv_heads.start, kv_heads.stop)
        self.windows = Windows(
            masks.sink_size if sink_size is None else sink_size,
            masks.recent_size if recent_size is None else recent_size,
            masks.flush_size if flush_size is None else flush_size,
        )
        self.sink_size, self.recent_size, self.flush_size = (
            self.windows.sink_size,
            self.windows.recent_size,
            self.windows.flush_size,
        )
        layers: list[CacheLayerMixin] = []
        for index, layer_type in enumerate(shape.layer_types):
            if layer_type == FULL_ATTENTION:
                layers.append(self._full_attention_layer(masks.mask[index, heads]))
            elif layer_type == SLIDING_ATTENTION:
                layers.append(self._sliding_layer(shape.sliding_window))
            else:
                raise LeanKUsageError(
                    f"layer {index} is a {layer_type!r} layer, which {type(self).__name__} does not support: it "
                    "prunes 'full_attention' layers and leaves 'sliding_attention' layers to transformers"
                )
        super().__init__(layers=layers)

    def _full_attention_layer(self, layer_mask: torch.Tensor) -> CacheLayerMixin:
        return LeanKLayer(
            layer_mask,
            sink_size=self.sink_size,
            recent_size=self.recent_size,
            flush_size=self.flush_size,
            keep_prompt_dense=self.chunked_prefill,
        )

    def _sliding_layer(self, sliding_window: int) -> CacheLayerMixin:
        return DynamicSlidingWindowLayer(sliding_window=sliding_window)

    @classmethod
    def from_pretrained(cls, mask_repo: str | os.PathLike, *, config: Any, **kwargs: Any) -> LeanKCache:
        """Load masks with `LeanKMasks.from_pretrained(mask_repo, **hub_kwargs)` and build a cache for `config`.

        A model's own folder or repo id finds masks saved in its `leank/` subfolder. Warns when the masks were
        learned on another Hub model than the one `config` was loaded from.

        Args:
            mask_repo (`str` or `os.PathLike`):
                Local folder, bundled mask's base model id, or Hub repo id of the masks or of the model.
            config (`PreTrainedConfig`):
                The model's config.
            kwargs:
                The cache's own keyword arguments (`sink_size`, `recent_size`, `flush_size`; `max_cache_len` for
                `LeanKStaticCache`); the others are Hub arguments: `subfolder`, `revision`, and
                `huggingface_hub.hf_hub_download`'s (`cache_dir`, `token`, `local_files_only`, `force_download`,
                `repo_type`, ...).
        """
        from .hub import warn_if_made_for_another_model

        cache_kwargs = {name: kwargs.pop(name) for name in cls._CACHE_ARGUMENTS if name in kwargs}
        masks = LeanKMasks.from_pretrained(mask_repo, **kwargs)
        warn_if_made_for_another_model(masks, config)
        return cls(masks, config, **cache_kwargs)

    @classmethod
    def for_model(cls, model: Any, masks: LeanKMasks, **cache_kwargs: Any) -> LeanKCache:
        """A cache for `model` as loaded: on one process as `cls(masks, model.config, **cache_kwargs)`; under tensor
        parallelism (`from_pretrained(..., tp_plan="auto")` under `torchrun`) with the mask rows of the KV heads this
        rank holds, read from the model's sharded `k_proj` weights (`leank_hf.tensor_parallel.kv_head_shard`).

        Args:
            model (`PreTrainedModel`):
                The model the cache is for.
            masks (`LeanKMasks`):
                The keep masks of the whole model (every rank passes the same masks).
            cache_kwargs:
                The cache's own keyword arguments (windows; `max_cache_len` for `LeanKStaticCache`).

        Raises:
            `LeanKUsageError`: a sharding LeanK cannot follow (KV heads replicated or split unevenly).
        """
        return cls(masks, model.config, kv_heads=kv_head_shard(model), **cache_kwargs)

    def memory_footprint(self, all_ranks: bool = False) -> MemoryFootprint:
        """Bytes per region (K/V x full/middle): allocated, used, and what a `DynamicCache` would hold.

        Under tensor parallelism the bytes are this rank's (its KV heads only); `all_ranks=True` sums them over the
        tensor-parallel ranks, which is a collective: every rank must call it. On one process it changes nothing.
        """
        total = MemoryFootprint()
        for layer in self.layers:
            if hasattr(layer, "memory_footprint"):  # LeanK layers
                total = total + layer.memory_footprint()
            elif layer.is_initialized and layer.keys is not None:
                keys = RegionBytes(layer.keys.nbytes, layer.keys.nbytes, layer.keys.nbytes)
                values = RegionBytes(layer.values.nbytes, layer.values.nbytes, layer.values.nbytes)
                total = total + MemoryFootprint({**MemoryFootprint().regions, "keys/full": keys, "values/full": values})
        if not all_ranks or self.kv_heads is None:
            return total
        fields = ("allocated", "used", "dense")
        summed = iter(self.kv_heads.sum_over_ranks([getattr(total.regions[n], f) for n in REGIONS for f in fields]))
        return MemoryFootprint({name: RegionBytes(*(next(summed) for _ in fields)) for name in REGIONS})
