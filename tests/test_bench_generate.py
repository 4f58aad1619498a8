"""The GPU generate benchmark's cache helpers on CPU: every method's cache filled by hand decodes like its twin."""

from __future__ import annotations

import pytest
import torch

from leank_hf.tools.benchmarks.generate_gpu import SEARCHED, fill_random, new_cache, switch_attention
from tiny_models import LLAMA_WIDTHS, random_masks, tiny_model

CONTEXT = 300


def _filled_decode(model, masks, method: str) -> torch.Tensor:
    """Logits of one decode step after `fill_random` (same seed for every method)."""
    switch_attention(model, method)
    config = model.config
    cache = new_cache(method, model, masks, CONTEXT + 2)
    torch.manual_seed(7)
    fill_random(cache, 2, CONTEXT, config.num_key_value_heads, config.head_dim, device="cpu", dtype=torch.float32)
    assert int(cache.get_seq_length()) == CONTEXT
    token = torch.ones(2, 1, dtype=torch.long)
    return model(token, past_key_values=cache, logits_to_keep=1).logits


@pytest.mark.parametrize(("dynamic", "static"), [("sdpa", "static_compiled"), ("leank", "leank_static_compiled")])
def test_filled_static_cache_decodes_like_the_dynamic_one(dynamic: str, static: str) -> None:
    """The largest-batch search fills each method's cache without a prefill: a static cache and its dynamic twin,
    filled with the same keys and values, give the same next-token logits (LeanK: the Triton kernel, interpreted)."""
    assert {dynamic, static} <= set(SEARCHED)
    model = tiny_model("llama128")
    masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)
    expected = _filled_decode(model, masks, dynamic)
    actual = _filled_decode(model, masks, static)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_leank_methods_prune_what_the_dense_ones_read() -> None:
    """The same filled keys read through LeanK (pruned middle) and densely differ: the comparison above is not
    between two dense reads."""
    model = tiny_model("llama128")
    masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)
    dense = _filled_decode(model, masks, "static_compiled")
    pruned = _filled_decode(model, masks, "leank_static_compiled")
    assert (dense - pruned).abs().max() > 1e-3
