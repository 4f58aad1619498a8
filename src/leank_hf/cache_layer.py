"""`LeanKLayer`: one full-attention layer of a `LeanKCache`, the dynamic LeanK cache.

Per batch row: the first `sink_size` real tokens and a recent window of at least `recent_size` tokens are kept with
all channels (`full_keys`/`full_values`); older tokens move to the middle region (`MiddleRegion`) in chunks of
`flush_size`, keys with only their KV head's kept channels, values only for heads that keep a channel. The storage
layout is `ops.decode_attention.layout`; the semantics are in DESIGN.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

from .cache_states import CHUNKED_PREFILL, LeanKStates, PrefillKV, refuse_compile
from .contract import Windows
from .errors import LeanKUsageError, MaskError
from .footprint import MemoryFootprint, compact_layer_footprint, dense_footprint
from .middle_region import MiddleRegion
from .ops.decode_attention.layout import CompactKV, HeadLayout
from .ops.decode_attention.quantization import check_quant_name, resolve_quant

logger = logging.getLogger(__name__)


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
        middle_quant (`str`, *optional*):
            Store the middle region in 8 bits: `"int8"` or `"fp8"` (FP8 e4m3); `None` keeps the model's dtype.
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
        middle_quant: str | None = None,
    ):
        super().__init__()
        check_quant_name(middle_quant)
        self.keep_prompt_dense, self.middle_quant = keep_prompt_dense, middle_quant
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
        self.middle: MiddleRegion | None = None
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
        self.layout = self.host_layout.to(self.device)
        self.full_keys = self.full_values = self._full_buffer(0)
        quant = resolve_quant(self.middle_quant, self.device)
        self.middle = MiddleRegion(
            self.host_layout, self.layout, batch=batch, capacity=0, dtype=self.dtype, quant=quant
        )
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
            refuse_compile()
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
                raise LeanKUsageError(CHUNKED_PREFILL)
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
            mid_keys=self.middle.keys,
            mid_values=self.middle.values,
            mid_cap=self.middle.capacity,
            num_mid=self.num_mid,
            pad=self.pad,
            query_start=old_length,
            boundaries=tuple(self._flushed(position + 1) for position in range(old_length, length)),
            mid_key_scales=self.middle.key_scales,
            mid_value_scales=self.middle.value_scales,
            from_cache=True,
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
        self.middle = self.middle.with_room(start + count, keep=self.num_mid, flush_size=self.flush_size)
        self.middle.write_range(keys, values, start)
        self.num_mid = start + count

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
        for name in ("full_keys", "full_values", "pad"):
            setattr(self, name, function(getattr(self, name)))
        self.middle.map_batch(function)
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
        if self._prompt is not None:  # a dense prompt, as a DynamicLayer holds it
            return dense_footprint(self._prompt.keys, self._prompt.values)
        return compact_layer_footprint(
            full_keys=self.full_keys,
            full_values=self.full_values,
            full_slots=min(self.sink_size, self.length) + self.num_recent,
            length=self.length,
            middle=self.middle,
            num_mid=self.num_mid,
        )
