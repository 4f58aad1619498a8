"""The shared rules: window boundary for ints and device tensors, model shape read once from a config."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralConfig

from leank_hf import LeanKCache, LeanKUsageError, MaskError
from leank_hf.contract import ModelShape, Windows, full_attention_mask_shape
from tiny_models import random_masks, tiny_model


def window_start(length: int, sink: int, recent: int, flush: int) -> int:
    """DESIGN.md's `flushed(L)`, written out independently: slots move to the middle in whole flushes."""
    start = sink
    while length - start - flush >= recent:
        start += flush
    return start


@pytest.mark.parametrize("sink, recent, flush", [(0, 1, 1), (4, 8, 3), (5, 7, 1), (64, 256, 64)])
def test_flushed_matches_the_rule_for_ints_and_tensors(sink: int, recent: int, flush: int) -> None:
    windows = Windows(sink, recent, flush)
    lengths = list(range(0, sink + recent + 5 * flush + 3))
    expected = [window_start(length, sink, recent, flush) for length in lengths]
    assert [windows.flushed(length) for length in lengths] == expected
    as_tensor = windows.flushed(torch.tensor(lengths))
    assert as_tensor.dtype == torch.int64 and as_tensor.tolist() == expected
    assert windows.boundary(torch.tensor(7)).item() == windows.flushed(8)


@pytest.mark.parametrize("windows", [(-1, 8, 3), (4, 0, 3), (4, 8, 0), (4, 8.0, 3), (True, 8, 3)])
def test_bad_windows_are_refused(windows: tuple) -> None:
    with pytest.raises(LeanKUsageError, match="must be an int"):
        Windows(*windows)


def test_mistral_sliding_window_without_layer_types_is_refused_up_front() -> None:
    """Such a config makes every layer a sliding layer (as transformers infers): masks, trainer and cache agree."""
    config = MistralConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, sliding_window=16,
    )  # fmt: skip
    config.layer_types = None
    shape = ModelShape.from_config(config)
    assert shape.layer_types == ("sliding_attention",) * 3 and shape.mask_shape == (3, 2, 32)
    masks = random_masks(config)
    with pytest.raises(MaskError, match="sliding-window layer"):
        masks.check_compatible(config)
    with pytest.raises(MaskError, match="sliding-window layer"):
        LeanKCache(masks, config)
    model = tiny_model("mistral", sliding_window=16)
    model.config.layer_types = None
    with pytest.raises(LeanKUsageError, match="all full attention"):
        full_attention_mask_shape(model, "the trainer")


def test_model_shape_reads_head_dim_and_kv_heads_defaults() -> None:
    model = tiny_model("llama")
    shape = ModelShape.from_config(model.config)
    assert shape.mask_shape == (3, 2, 32) and set(shape.layer_types) == {"full_attention"}
    with pytest.raises(MaskError, match=r"does not match .* with \[3, 2, 32\]"):
        shape.check_mask(torch.ones(3, 2, 16, dtype=torch.bool))
