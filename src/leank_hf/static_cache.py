"""`LeanKStaticCache`: a LeanK cache with preallocated regions that `torch.compile` and CUDA graphs can capture.

Same masks, windows and results as `LeanKCache` (DESIGN.md "Semantics"); a different storage (DESIGN.md "Static
storage"): every token's kept key channels (and its value, for heads that keep a channel) are written to the middle
region when the token arrives, its full key and value to a ring of the last `recent_size + 2 * flush_size` slots, and a
row's first `sink_size` real tokens to its sink slots. Nothing moves at a flush: the window boundary, computed on the
device from the cache length, only decides which copy attention reads. A decode step has fixed shapes, no host
synchronisation and no Python branch on a length, so `generate()` auto-compiles it on CUDA.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin, StaticSlidingWindowLayer

from .cache import LeanKCache
from .cache_states import LeanKStates, PrefillKV
from .contract import Windows
from .errors import LeanKUsageError, MaskError
from .footprint import MemoryFootprint, compact_layer_footprint
from .masks import LeanKMasks
from .middle_region import MiddleRegion
from .ops.decode_attention.layout import CompactKV, HeadLayout, StaticKV
from .ops.decode_attention.quantization import resolve_quant
from .tensor_parallel import KVHeadShard

logger = logging.getLogger(__name__)


class LeanKStaticLayer(CacheLayerMixin):
    """One full-attention layer of a `LeanKStaticCache`, with regions sized for `max_cache_len` tokens.

    Regions (allocated at the first update, on the device and in the dtype of the keys, addresses fixed):
    `full_keys`/`full_values` `[B, H, sink + ring, D]` (each row's sink, then the ring: global slot g at
    `sink + g % ring`), `middle` (a `MiddleRegion` of `mid_cap` tokens; middle index
    `t = g - sink`, layout of `HeadLayout`; index `mid_cap - 1` takes writes of slots below the sink), `pad` `[B]`,
    and `cumulative_length` (a device scalar: global slots held, pads included).

    Args:
        layer_mask (`torch.Tensor`): boolean `[num_kv_heads, head_dim]` keep mask of this layer.
        windows (`Windows`): sink, recent and flush sizes.
        max_cache_len (`int`): most tokens (prompt, pads and generated) the layer holds.
        middle_quant (`str`, *optional*): 8-bit middle region, as `LeanKLayer`'s.
    """

    is_compileable = True
    is_sliding = False
    # The ring keeps `2 * flush_size` slots more than a query reads, so the last `flush_size` tokens can be removed.
    is_croppable = True

    def __init__(
        self, layer_mask: torch.Tensor, *, windows: Windows, max_cache_len: int, middle_quant: str | None = None
    ):
        super().__init__()
        self.middle_quant = middle_quant
        self.host_layout = HeadLayout.from_mask(layer_mask)
        self.windows = windows
        self.max_cache_len = max_cache_len
        self.ring_size = windows.recent_size + 2 * windows.flush_size
        self.mid_cap = max(0, max_cache_len - windows.sink_size) + 1
        self.cumulative_length = torch.tensor(0, dtype=torch.int64)
        self._pending: PrefillKV | None = None
        self._decoding = False  # True once the prompt is stored: later updates attend compact keys
        self._prompt_length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, num_heads, _, head_dim = key_states.shape
        if (num_heads, head_dim) != tuple(self.host_layout.channels.shape):
            raise MaskError(
                f"keys have {num_heads} KV heads of dim {head_dim} but the layer mask is "
                f"{list(self.host_layout.channels.shape)}; use the mask made for this model"
            )
        self.dtype, self.device, self.batch = key_states.dtype, key_states.device, batch
        layout = self.layout = self.host_layout.to(self.device)
        # Slots: sinks, ring, and one spare that takes the writes of tokens outside the sink.
        full_shape = (batch, num_heads, self.windows.sink_size + self.ring_size + 1, head_dim)
        self._dump_slot = full_shape[2] - 1
        # Zeros: slots not written yet are read with zero weight, never as NaN garbage.
        self.full_keys = torch.zeros(full_shape, dtype=self.dtype, device=self.device)
        self.full_values = torch.zeros(full_shape, dtype=self.dtype, device=self.device)
        self.middle = MiddleRegion(
            self.host_layout,
            layout,
            batch=batch,
            capacity=self.mid_cap,
            dtype=self.dtype,
            quant=resolve_quant(self.middle_quant, self.device),
        )
        self.pad = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.counters = torch.zeros(batch * num_heads, dtype=torch.int32, device=self.device)
        self.cumulative_length = self.cumulative_length.to(self.device)
        for tensor in self._static_tensors():
            torch._dynamo.mark_static_address(tensor)
        self.is_initialized = True
        logger.debug(
            "LeanKStaticCache layer allocated %d bytes for %d tokens",
            self.full_keys.nbytes + self.full_values.nbytes + sum(self.middle.nbytes),
            self.max_cache_len,
        )

    def _static_tensors(self) -> tuple[torch.Tensor, ...]:
        """Every tensor a decode step reads: fixed addresses, so CUDA graphs replay without copying inputs."""
        layout = self.layout
        return (
            layout.widths,
            layout.channels,
            layout.offsets,
            layout.value_slots,
            layout.storage_order,
            layout.gather_index,
            *self.middle.tensors(),
            self.full_keys,
            self.full_values,
            self.pad,
            self.counters,
            self.cumulative_length,
        )

    # ----------------------------------------------------------------- update
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[LeanKStates, LeanKStates]:
        """Store `[B, H, n, D]` keys and values; return what the LeanK attention reads, wrapped in `LeanKStates`.

        The prompt comes back dense (exact attention, then `prompt_attended`); a decode step as `StaticKV` (device
        scalars only); a multi-token update after decoding started as a `CompactKV` for the PyTorch path.
        """
        if self._pending is not None:
            raise LeanKUsageError(
                "a LeanKStaticCache layer was updated twice without attention in between (its prompt was never "
                "attended); call `cache.reset()` and run the model with `apply_leank(model)`"
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] != self.batch:
            raise LeanKUsageError(
                f"a LeanKStaticCache holding batch size {self.batch} got keys of batch size {key_states.shape[0]}; "
                "use a fresh cache (or `cache.reset()`) for a new batch"
            )
        if not self._decoding:
            self._pending = PrefillKV(key_states, value_states, self)
            states = LeanKStates(self._pending)
            return states, states
        if key_states.shape[2] == 1:
            payload = self._decode_step(key_states, value_states)
        else:
            payload = self._chunk(key_states, value_states)
        states = LeanKStates(payload)
        return states, states

    def prompt_attended(self, pad: torch.Tensor | None) -> None:
        """Store the prompt after its exact attention (called by the LeanK attention with each row's left pads)."""
        prompt, self._pending = self._pending, None
        if pad is not None:
            self.pad.copy_(pad.to(device=self.device, dtype=torch.int64))
        length = prompt.keys.shape[2]
        if length > self.max_cache_len:
            raise LeanKUsageError(
                f"the prompt has {length} slots but the LeanKStaticCache holds {self.max_cache_len}; build it with a "
                "larger `max_cache_len`"
            )
        self._write(prompt.keys, prompt.values, torch.zeros((), dtype=torch.int64, device=self.device))
        self.cumulative_length.fill_(length)
        self._prompt_length = length
        self._decoding = True

    def _write(self, keys: torch.Tensor, values: torch.Tensor, start: torch.Tensor) -> None:
        """Write `[B, H, n, D]` tokens at global slots `start .. start + n - 1` into the sinks, ring and middle."""
        count = keys.shape[2]
        sink, ring = self.windows.sink_size, self.ring_size
        slots = start + torch.arange(count, device=self.device)  # [n]
        # Full region, one indexed write per tensor: row b's sink slot s holds global slot pad[b] + s (slot `dump`
        # takes the tokens outside the sink), ring slot sink + g % ring holds global slot g (only the last `ring`
        # tokens are written, so no two writes hit one ring slot).
        recent = slice(max(0, count - ring), count)
        sink_slot = slots[:, None] - self.pad[None, :]  # [n, B]
        sink_slot = torch.where((sink_slot >= 0) & (sink_slot < sink), sink_slot, self._dump_slot)
        ring_slot = (sink + slots[recent] % ring)[:, None].expand(-1, self.batch)
        rows = torch.arange(self.batch, device=self.device)
        index_rows = torch.cat([rows.expand(count, -1), rows.expand(ring_slot.shape[0], -1)])[:, :, None]
        index_slots = torch.cat([sink_slot, ring_slot])[:, :, None]
        heads = torch.arange(keys.shape[1], device=self.device)
        for new, full in ((keys, self.full_keys), (values, self.full_values)):
            tokens = torch.cat([new.permute(2, 0, 1, 3), new[:, :, recent].permute(2, 0, 1, 3)])  # [m, B, H, D]
            # Indexing the buffer itself (not a transposed view): compiled, a scatter into it and nothing more.
            full.index_put_((index_rows, heads, index_slots), tokens)
        self.middle.write(keys, values, torch.where(slots >= sink, slots - sink, self.mid_cap - 1))

    def _decode_step(self, keys: torch.Tensor, values: torch.Tensor) -> StaticKV:
        position = self.cumulative_length.clone()
        self._write(keys, values, position)
        self.cumulative_length.add_(1)
        return StaticKV(
            layout=self.layout,
            windows=self.windows,
            ring_size=self.ring_size,
            full_keys=self.full_keys,
            full_values=self.full_values,
            mid_keys=self.middle.keys,
            mid_values=self.middle.values,
            mid_cap=self.mid_cap,
            pad=self.pad,
            position=position,
            counters=self.counters,
            mid_key_scales=self.middle.key_scales,
            mid_value_scales=self.middle.value_scales,
        )

    def _chunk(self, keys: torch.Tensor, values: torch.Tensor) -> CompactKV:
        """A multi-token update after decoding started (a reused cache): eager, read by the PyTorch path."""
        if torch.compiler.is_compiling():
            raise LeanKUsageError(
                "a LeanKStaticCache takes multi-token forwards (a prompt, a new turn) outside compiled code only; "
                "`generate(prefill_chunk_size=...)` compiles the prompt's chunks: use LeanKCache for chunked prefill, "
                "or feed the prompt in one forward"
            )
        start = int(self.cumulative_length)
        count = keys.shape[2]
        if start == self._prompt_length:
            raise LeanKUsageError(
                "a LeanKStaticCache attends a prompt exactly only when it comes in one forward, and this forward "
                "continues a prompt that no decode step followed (chunked prefill?): feed the prompt in one forward, "
                "or use LeanKCache for chunked prefill"
            )
        if start + count > self.max_cache_len:
            raise LeanKUsageError(
                f"the cache holds {start} slots and got {count} more, beyond its `max_cache_len` of "
                f"{self.max_cache_len}; build a LeanKStaticCache with a larger `max_cache_len`"
            )
        windows, sink = self.windows, self.windows.sink_size
        first = windows.boundary(start)  # window start of the first new row (the earliest)
        # Full region of the CompactKV: sinks, then cached slots [first, start) from the ring, then the new tokens.
        older = torch.arange(first, start, device=self.device)
        ring = sink + older % self.ring_size
        full_keys = torch.cat([self.full_keys[:, :, :sink], self.full_keys[:, :, ring], keys], 2)
        full_values = torch.cat([self.full_values[:, :, :sink], self.full_values[:, :, ring], values], 2)
        self._write(keys, values, self.cumulative_length)
        self.cumulative_length.add_(count)
        return CompactKV(
            layout=self.layout,
            full_keys=full_keys,
            full_values=full_values,
            sink_size=sink,
            num_recent=start + count - first,
            recent_start=first,
            mid_keys=self.middle.keys,
            mid_values=self.middle.values,
            mid_cap=self.mid_cap,
            num_mid=windows.boundary(start + count - 1) - sink,
            pad=self.pad,
            query_start=start,
            boundaries=tuple(windows.boundary(position) for position in range(start, start + count)),
            mid_key_scales=self.middle.key_scales,
            mid_value_scales=self.middle.value_scales,
            from_cache=True,
        )

    # -------------------------------------------------------- Cache protocol
    def get_seq_length(self) -> torch.Tensor | int:
        return self.cumulative_length if self.is_initialized else 0

    def get_max_length(self) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def reset(self) -> None:
        """Forget every token (buffers are kept, so compiled graphs stay valid); the next update is a prompt."""
        if self.is_initialized:
            for tensor in (self.full_keys, self.full_values, self.pad, self.counters):
                tensor.zero_()
            self.middle.zero_()
            self.cumulative_length.zero_()
        self._pending = None
        self._decoding = False

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` tokens (a negative count; at most `flush_size` after a flush)."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"Calling `crop` with a positive value (`{tokens_to_remove}`) is not supported. "
                "Please use a negative integer to remove that number of tokens from the cache instead."
            )
        if tokens_to_remove == 0 or not self._decoding:
            return
        if -tokens_to_remove > self.windows.flush_size:
            raise LeanKUsageError(
                f"a LeanKStaticCache removes at most `flush_size` ({self.windows.flush_size}) tokens at once, got "
                f"{-tokens_to_remove}: older ones may have left its recent window"
            )
        self.cumulative_length.sub_(-tokens_to_remove).clamp_(min=0)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the batch rows in place (beam search); addresses stay fixed."""
        if not self.is_initialized:
            return
        for tensor in (self.full_keys, self.full_values, self.pad):
            tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))
        self.middle.copy_batch_(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a LeanKStaticCache has a fixed batch size; use LeanKCache to drop batch rows")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            raise NotImplementedError("a LeanKStaticCache has a fixed batch size once it holds tokens")

    def offload(self) -> None:
        raise NotImplementedError("LeanKStaticCache layers do not support offloading")

    def prefetch(self) -> None:
        raise NotImplementedError("LeanKStaticCache layers do not support offloading, hence nothing to prefetch")

    # ---------------------------------------------------------------- memory
    def memory_footprint(self) -> MemoryFootprint:
        """Bytes per region: allocated (the whole preallocated layer), used, and a `DynamicLayer`'s for the tokens."""
        if not self._decoding:
            return MemoryFootprint()
        length, sink = int(self.cumulative_length), self.windows.sink_size
        return compact_layer_footprint(
            full_keys=self.full_keys,
            full_values=self.full_values,
            full_slots=min(sink, length) + min(self.ring_size, max(0, length - sink)),
            length=length,
            middle=self.middle,
            num_mid=max(0, self.windows.flushed(length) - sink),
        )


class LeanKStaticCache(LeanKCache):
    """A LeanK cache preallocated for `max_cache_len` tokens, which `torch.compile` and CUDA graphs capture.

    Same semantics as `LeanKCache` (a model switched with `apply_leank`; prompt exact, later tokens read the middle
    with kept channels only); every layer is compileable, so `model.generate(..., past_key_values=cache)`
    auto-compiles the decode step on CUDA, and `torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`
    captures it. Sliding-window layers of mixed models are transformers' `StaticSlidingWindowLayer`. The prompt must
    come in one forward (chunked prefill is refused; `LeanKCache` attends it exactly); later multi-token forwards (a
    new turn) run eagerly. `from_pretrained` and `for_model` (tensor parallelism) work as for `LeanKCache`.

    Args:
        masks (`LeanKMasks`): the keep masks of this model.
        config (`PreTrainedConfig`): the model's config; checked against the masks.
        max_cache_len (`int`): most slots per row (left pads, prompt and new tokens).
        sink_size, recent_size, flush_size (`int`, *optional*): override the masks' windows.
        kv_heads (`KVHeadShard`, *optional*): this rank's KV heads under tensor parallelism (set by `for_model`).
        middle_quant (`str`, *optional*): `"int8"` or `"fp8"`: the middle region in 8 bits, as
            `LeanKCache`'s (the memory allocated up front shrinks with it).

    Example:

    ```python
    >>> cache = LeanKStaticCache(masks, model.config, max_cache_len=inputs.input_ids.shape[1] + 256)
    >>> output = apply_leank(model).generate(**inputs, past_key_values=cache, max_new_tokens=256)
    ```
    """

    _CACHE_ARGUMENTS = ("sink_size", "recent_size", "flush_size", "max_cache_len", "middle_quant")

    def __init__(
        self,
        masks: LeanKMasks,
        config: Any,
        *,
        max_cache_len: int,
        sink_size: int | None = None,
        recent_size: int | None = None,
        flush_size: int | None = None,
        kv_heads: KVHeadShard | None = None,
        middle_quant: str | None = None,
    ):
        if not isinstance(max_cache_len, int) or isinstance(max_cache_len, bool) or max_cache_len < 1:
            raise LeanKUsageError(f"`max_cache_len` must be an int >= 1, got {max_cache_len!r}")
        self._max_cache_len = max_cache_len
        super().__init__(
            masks,
            config,
            sink_size=sink_size,
            recent_size=recent_size,
            flush_size=flush_size,
            kv_heads=kv_heads,
            middle_quant=middle_quant,
        )

    @property
    def max_cache_len(self) -> int:
        """Most slots per row the cache holds."""
        return self._max_cache_len

    def _full_attention_layer(self, layer_mask: torch.Tensor) -> CacheLayerMixin:
        return LeanKStaticLayer(
            layer_mask, windows=self.windows, max_cache_len=self._max_cache_len, middle_quant=self.middle_quant
        )

    def _sliding_layer(self, sliding_window: int) -> CacheLayerMixin:
        return StaticSlidingWindowLayer(max_cache_len=self._max_cache_len, sliding_window=sliding_window)
