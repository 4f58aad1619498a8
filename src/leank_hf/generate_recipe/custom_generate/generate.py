"""LeanK as a transformers `custom_generate` recipe: one `generate()` call, a fresh `LeanKCache` every time.

    model.generate(**inputs, custom_generate=leank_hf.custom_generate_path(), trust_remote_code=True)

The recipe switches the model to LeanK attention (`apply_leank`), finds its masks, builds a new `LeanKCache` for
this call only and runs transformers' own generation with it, so a pipeline over many prompts never reuses one
prompt's cache for another. Masks: `leank_masks=` (a `LeanKMasks`, a folder, a bundled base model id or a Hub repo),
else `LeanKMasks.from_pretrained(model.config.name_or_path)` (the folder or Hub id the model was loaded from): masks
saved in the model's folder or repo (`leank/`), or the mask shipped with leank_hf for that base model id.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import GenerationMixin, PreTrainedModel

from leank_hf import LeanKCache, LeanKMasks, LeanKUsageError, apply_leank


def generate(
    model: PreTrainedModel,
    *args: Any,
    leank_masks: LeanKMasks | str | os.PathLike | None = None,
    leank_backend: str = "auto",
    **kwargs: Any,
) -> Any:
    """`model.generate(*args, **kwargs)` with a new `LeanKCache` built from the model's masks for this call.

    Args:
        model (`PreTrainedModel`):
            The model; switched to LeanK attention in place (it keeps working with any other cache).
        leank_masks (`LeanKMasks`, `str` or `os.PathLike`, *optional*):
            The masks, or where to load them from; defaults to the model's own folder or Hub id
            (`model.config.name_or_path`).
        leank_backend (`str`, *optional*, defaults to `"auto"`):
            Decode attention backend, as in `apply_leank`.
        args, kwargs:
            What `generate()` takes; `past_key_values` is refused, as the recipe owns the cache.
    """
    if kwargs.get("past_key_values") is not None:
        raise LeanKUsageError(
            "the LeanK recipe builds a fresh LeanKCache for every call and refuses `past_key_values`; to continue "
            "a conversation in one cache, call `model.generate(past_key_values=cache)` without `custom_generate`"
        )
    apply_leank(model, backend=leank_backend)
    if isinstance(leank_masks, LeanKMasks):
        cache = LeanKCache(leank_masks, model.config)
    else:
        cache = LeanKCache.from_pretrained(leank_masks or model.config.name_or_path, config=model.config)
    # The class's own generate: a model whose `generate` was replaced by this recipe does not call it again.
    return GenerationMixin.generate(model, *args, past_key_values=cache, **kwargs)
