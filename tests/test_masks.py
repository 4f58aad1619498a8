"""`LeanKMasks`: validation, statistics against plain-Python recomputation, summary, plot, compatibility checks."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from leank_hf import LeanKMasks, MaskError


def make_mask(counts: list[list[int]], head_dim: int) -> torch.Tensor:
    """A bool mask `[L, H, head_dim]` keeping `counts[l][h]` channels of each head, at random positions."""
    mask = torch.zeros(len(counts), len(counts[0]), head_dim, dtype=torch.bool)
    for layer, row in enumerate(counts):
        for head, count in enumerate(row):
            mask[layer, head, torch.randperm(head_dim)[:count]] = True
    return mask


COUNTS = [[0, 4, 8], [8, 4, 4], [4, 0, 0], [8, 8, 4]]  # 4 layers x 3 KV heads, head_dim 8, align 4


@pytest.fixture
def masks() -> LeanKMasks:
    return LeanKMasks(
        mask=make_mask(COUNTS, 8),
        base_model="org/tiny",
        sink_size=4,
        recent_size=16,
        flush_size=4,
        align=4,
        target_ratio=0.5,
    )


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.uint8])
def test_numeric_zero_one_masks_become_bool(dtype):
    mask = make_mask(COUNTS, 8)
    masks = LeanKMasks(mask=mask.to(dtype), align=4)
    assert masks.mask.dtype == torch.bool
    assert torch.equal(masks.mask, mask)


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.ones(3, 8, dtype=torch.bool), "rank 3"),
        (torch.ones(1, 2, 3, 8, dtype=torch.bool), "rank 3"),
        (torch.full((2, 2, 8), 0.5), "0 or 1"),
        (torch.full((2, 2, 8), float("nan")), "0 or 1"),
        (torch.full((2, 2, 8), 2, dtype=torch.int32), "0 or 1"),
        (torch.ones(2, 2, 8, dtype=torch.complex64), "dtype"),
        ([[[1, 0]]], "torch.Tensor"),
        (torch.ones(0, 2, 8, dtype=torch.bool), "at least one layer"),
    ],
    ids=["rank2", "rank4", "half", "nan", "two", "complex", "list", "empty"],
)
def test_bad_mask_tensor_is_rejected(mask, message):
    with pytest.raises(MaskError, match=message):
        LeanKMasks(mask=mask, align=1)


def test_kept_count_that_breaks_align_names_the_head():
    mask = make_mask([[8, 8], [8, 4]], 8)  # layer 1 head 1 keeps 4, not a multiple of 8
    with pytest.raises(MaskError, match=r"layer 1, KV head 1 keeps 4 channels, not a multiple of align=8"):
        LeanKMasks(mask=mask, align=8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"align": 3}, "does not divide head_dim"),
        ({"align": 0}, ">= 1"),
        ({"sink_size": -1}, "non-negative int"),
        ({"recent_size": 1.5}, "non-negative int"),
        ({"target_ratio": 1.5}, "target_ratio"),
        ({"target_ratio": "0.5"}, "target_ratio"),
        ({"base_model": 7}, "base_model"),
        ({"training_info": ["x"]}, "training_info"),
        ({"format_version": 99}, "newer"),
    ],
)
def test_bad_metadata_is_rejected(kwargs, message):
    with pytest.raises(MaskError, match=message):
        LeanKMasks(mask=torch.ones(2, 2, 8, dtype=torch.bool), **{"align": 4, **kwargs})


def test_equality_covers_mask_and_every_field(masks):
    same = LeanKMasks(**{name: getattr(masks, name) for name in masks.__dataclass_fields__})
    assert same == masks
    flipped = masks.mask.clone()
    flipped[0, 0] = ~flipped[0, 0]  # head keeps 8 instead of 0: still aligned
    assert LeanKMasks(**{**same.__dict__, "mask": flipped}) != masks
    assert LeanKMasks(**{**same.__dict__, "training_info": {"steps": 1}}) != masks
    assert LeanKMasks(**{**same.__dict__, "recent_size": 17}) != masks


# ------------------------------------------------------------------------------------------------ statistics
def test_statistics_match_plain_python(masks):
    rows = masks.mask.tolist()
    counts = [[sum(head) for head in layer] for layer in rows]
    assert counts == COUNTS
    assert masks.kept_counts().tolist() == COUNTS
    total = 4 * 3 * 8
    kept = sum(map(sum, COUNTS))
    assert masks.kept_fraction == pytest.approx(kept / total)
    assert masks.pruned_ratio == pytest.approx(1 - kept / total)
    assert masks.kept_fraction_per_layer().tolist() == pytest.approx([sum(row) / 24 for row in COUNTS])
    assert masks.kept_fraction_per_head().tolist() == [[c / 8 for c in row] for row in COUNTS]  # exact in fp32
    assert masks.zero_heads().tolist() == [[c == 0 for c in row] for row in COUNTS]
    assert masks.width_histogram() == {0: 3, 4: 5, 8: 4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int8])
def test_kv_bytes_per_token(masks, dtype):
    itemsize = torch.tensor([], dtype=dtype).element_size()
    heads = [count for row in COUNTS for count in row]
    dense = sum(2 * 8 * itemsize for _ in heads)  # K and V, all channels
    pruned = sum(count * itemsize + (8 * itemsize if count else 0) for count in heads)
    assert masks.dense_kv_bytes_per_token(dtype) == dense
    assert masks.kv_bytes_per_token(dtype) == pruned
    assert masks.kv_bytes_saved_per_token(dtype) == dense - pruned


def test_kv_bytes_needs_a_torch_dtype(masks):
    with pytest.raises(TypeError, match="torch.dtype"):
        masks.kv_bytes_per_token("bf16")


def test_summary_lists_statistics_and_every_layer(masks):
    text = masks.summary(torch.float16)
    assert "org/tiny" in text
    assert "4 layers x 3 KV heads x 8 channels" in text
    assert f"{masks.pruned_ratio:.2%} (target 50.00%)" in text
    assert "3 / 12 (25.00%)" in text
    assert "0: 3, 4: 5, 8: 4" in text
    assert f"{masks.dense_kv_bytes_per_token(torch.float16):,} dense" in text
    layer_rows = text.split("kept channels per KV head\n")[1].splitlines()
    assert [row.split()[3:] for row in layer_rows] == [[str(c) for c in row] for row in COUNTS]


def test_plot_draws_kept_counts(masks):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = masks.plot()
    image = ax.get_images()[0]
    assert image.get_array().tolist() == COUNTS
    assert "org/tiny" in ax.get_title()
    matplotlib.pyplot.close(ax.figure)


def test_plot_without_matplotlib_says_how_to_install(masks, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"leank_hf\[plot\]"):
        masks.plot()


# ------------------------------------------------------------------------------------------------ compatibility
def tiny_llama(**overrides) -> LlamaConfig:
    # Real model: 32 layers, 32 heads / 8 KV heads, head_dim 128.
    kwargs = {"num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 3, "hidden_size": 48}
    return LlamaConfig(**{**kwargs, **overrides})


def test_check_compatible_accepts_matching_config(masks):
    masks.check_compatible(tiny_llama())


@pytest.mark.parametrize(
    "overrides",
    [{"num_hidden_layers": 5}, {"num_key_value_heads": 2}, {"hidden_size": 96}],
    ids=["layers", "kv_heads", "head_dim"],
)
def test_check_compatible_names_both_shapes(masks, overrides):
    config = tiny_llama(**overrides)
    expected = [config.num_hidden_layers, config.num_key_value_heads, config.hidden_size // 6]
    with pytest.raises(MaskError, match="mask for another model|made for org/tiny") as error:
        masks.check_compatible(config)
    assert "[4, 3, 8]" in str(error.value) and str(expected) in str(error.value)


def test_check_compatible_refuses_pruning_a_sliding_window_layer():
    config = Qwen2Config(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        hidden_size=16,
        layer_types=["full_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=16,
    )
    pruned_second = torch.ones(2, 1, 8, dtype=torch.bool)
    pruned_second[1, 0, :4] = False
    with pytest.raises(MaskError, match="layer 1 is a 'sliding_attention' layer"):
        LeanKMasks(mask=pruned_second, align=4).check_compatible(config)
    pruned_first = torch.ones(2, 1, 8, dtype=torch.bool)
    pruned_first[0, 0, :4] = False
    LeanKMasks(mask=pruned_first, align=4).check_compatible(config)
