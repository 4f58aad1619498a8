"""`LeanKCache`: a transformers `Cache` whose full-attention layers (`LeanKLayer`) store middle-region keys with
kept channels only; sliding-window layers of mixed models stay transformers' own."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicSlidingWindowLayer

from .cache_layer import LeanKLayer
from .contract import FULL_ATTENTION, SLIDING_ATTENTION, ModelShape, Windows
from .errors import LeanKUsageError
from .footprint import REGIONS, MemoryFootprint, RegionBytes, dense_footprint
from .masks import LeanKMasks
from .ops.decode_attention.quantization import check_quant_name
from .tensor_parallel import KVHeadShard, kv_head_shard


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
        middle_quant (`str`, *optional*):
            Store the middle region's kept key channels and values in 8 bits, with one fp32 scale per (token, KV
            head): `"int8"` (more accurate than FP8 at the same bytes, README "8-bit middle region") or `"fp8"`
            (FP8 e4m3; CPU, or GPUs of compute capability 8.9 or newer); `"none"` keeps the model's dtype. Sinks
            and recent window stay in the model's dtype. Defaults to the masks' recommended `middle_quant` (none for
            masks without one).

    Example:

    ```python
    >>> from leank_hf import LeanKCache, LeanKMasks, apply_leank
    >>> model = apply_leank(AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B-Instruct"))
    >>> cache = LeanKCache(LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct"), model.config)
    >>> output = model.generate(**inputs, past_key_values=cache, max_new_tokens=64)
    >>> cache.memory_footprint().used
    ```
    """

    _CACHE_ARGUMENTS: tuple[str, ...] = ("sink_size", "recent_size", "flush_size", "chunked_prefill", "middle_quant")

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
        middle_quant: str | None = None,
    ):
        self.chunked_prefill = chunked_prefill
        if not isinstance(masks, LeanKMasks):
            raise LeanKUsageError(f"`masks` must be a LeanKMasks, got {type(masks).__name__}")
        check_quant_name(middle_quant)
        self.middle_quant = masks.middle_quant if middle_quant is None else middle_quant
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
            middle_quant=self.middle_quant,
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
                total = total + dense_footprint(layer.keys, layer.values)
        if not all_ranks or self.kv_heads is None:
            return total
        fields = ("allocated", "used", "dense")
        summed = iter(self.kv_heads.sum_over_ranks([getattr(total.regions[n], f) for n in REGIONS for f in fields]))
        return MemoryFootprint({name: RegionBytes(*(next(summed) for _ in fields)) for name in REGIONS})
