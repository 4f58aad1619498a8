"""The public names of leank_hf. Add a name to `PUBLIC` when you export it; the sorted-`__all__` rule is RUF022."""

from __future__ import annotations

import importlib.metadata

import leank_hf

# Names other code and the docs rely on; `__all__` may hold more, never fewer.
PUBLIC = {
    "LeanKCache",
    "LeanKError",
    "LeanKMasks",
    "LeanKStaticCache",
    "LeanKUsageError",
    "MaskError",
    "__version__",
    "apply_leank",
    "bundled",
    "custom_generate_path",
    "revert_leank",
    "train_masks",
}
MASK_METHODS = {
    "check_compatible",
    "dense_kv_bytes_per_token",
    "from_minference",
    "from_pretrained",
    "kept_counts",
    "kept_fraction_per_head",
    "kept_fraction_per_layer",
    "kv_bytes_per_token",
    "kv_bytes_saved_per_token",
    "plot",
    "push_to_hub",
    "save_pretrained",
    "summary",
    "width_histogram",
    "zero_heads",
}


def test_all_is_sorted_unique_and_importable():
    assert len(set(leank_hf.__all__)) == len(leank_hf.__all__)
    assert PUBLIC <= set(leank_hf.__all__)
    for name in leank_hf.__all__:
        assert getattr(leank_hf, name) is not None, name


def test_errors_are_user_errors():
    assert issubclass(leank_hf.MaskError, leank_hf.LeanKError) and issubclass(leank_hf.MaskError, ValueError)
    assert issubclass(leank_hf.LeanKUsageError, leank_hf.LeanKError)


def test_mask_api_is_present():
    assert MASK_METHODS <= set(dir(leank_hf.LeanKMasks))
    assert {"kept_fraction", "pruned_ratio", "num_layers", "num_kv_heads", "head_dim"} <= set(dir(leank_hf.LeanKMasks))
    assert callable(leank_hf.bundled.available) and callable(leank_hf.bundled.find)


def test_version_matches_the_installed_metadata():
    assert leank_hf.__version__ == importlib.metadata.version("leank_hf")
