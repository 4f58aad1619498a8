"""Import of MInference LeanK `.pth` masks, and the shipped converted copies of the two released masks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from leank_hf import LeanKMasks, MaskError, bundled
from leank_hf.minference import infer_align

# The two released masks, byte for byte, with their provenance (MIT, upstream commit) in README.md beside them.
REFERENCE_DIR = Path(__file__).resolve().parent / "resources" / "minference"

# Facts from that README: (file, base model, shape, pruned ratio, zero heads, heads per kept count, sha256).
RELEASED = [
    pytest.param(
        "llama3.1-8b-instruct.pth",
        "meta-llama/Llama-3.1-8B-Instruct",
        [32, 8, 128],
        0.6875,
        47,
        {0: 47, 32: 120, 64: 67, 96: 22},
        "b254888925227e6efdc470e626c419c261f61fa8916ec15a1f668c5d3881ab57",
        id="llama",
    ),
    pytest.param(
        "qwen2.5-7b-instruct.pth",
        "Qwen/Qwen2.5-7B-Instruct",
        [28, 4, 128],
        0.7098,
        35,
        {0: 35, 32: 34, 64: 33, 96: 10},
        "e28fef532083f9862880311e882cf4bb40662e1b2fdecbb680118a051c2bb0d5",
        id="qwen",
    ),
]


def save_pth(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def float_mask(counts: list[list[int]], head_dim: int) -> torch.Tensor:
    mask = torch.zeros(len(counts), len(counts[0]), head_dim)
    for layer, row in enumerate(counts):
        for head, count in enumerate(row):
            mask[layer, head, torch.randperm(head_dim)[:count]] = 1.0
    return mask


def test_import_keeps_every_channel_and_records_the_source(tmp_path):
    mask = float_mask([[16, 0, 48], [64, 16, 32]], 64)
    path = save_pth(tmp_path / "tiny.pth", mask)
    masks = LeanKMasks.from_minference(path, base_model="org/tiny", training_info={"note": "x"})
    assert torch.equal(masks.mask, mask == 1)
    assert masks.align == 16  # gcd of 16, 48, 64, 32 and head_dim 64
    assert (masks.sink_size, masks.recent_size, masks.flush_size) == (128, 768, 128)
    assert masks.base_model == "org/tiny" and masks.target_ratio is None
    assert masks.training_info == {
        "source_file": "tiny.pth",
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "note": "x",
    }


def test_import_builds_the_class_it_is_called_on(tmp_path):
    class Tagged(LeanKMasks):
        pass

    path = save_pth(tmp_path / "tiny.pth", float_mask([[16, 0]], 64))
    assert type(Tagged.from_minference(path, base_model="org/tiny")) is Tagged


def test_import_with_explicit_windows_and_align(tmp_path):
    path = save_pth(tmp_path / "m.pth", float_mask([[32, 64]], 64))
    masks = LeanKMasks.from_minference(
        path, base_model="org/m", base_model_revision="abc", sink_size=4, recent_size=64, flush_size=8, align=32
    )
    assert (masks.sink_size, masks.recent_size, masks.flush_size, masks.align) == (4, 64, 8, 32)
    assert masks.base_model_revision == "abc"
    with pytest.raises(MaskError, match="not a multiple of align=64"):
        LeanKMasks.from_minference(path, base_model="org/m", align=64)


@pytest.mark.parametrize(
    ("counts", "head_dim", "expected"),
    [([0, 32, 64, 96], 128, 32), ([64, 128], 128, 32), ([0, 16, 48], 128, 16), ([0, 0], 80, 16), ([3], 9, 1)],
)
def test_infer_align(counts, head_dim, expected):
    assert infer_align(torch.tensor(counts), head_dim) == expected


class NotAWeight:
    pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path, "no MInference mask file"),
        (lambda path: save_pth(path, {"mask": torch.ones(2, 2, 8)}), "holds a dict, not a tensor"),
        (lambda path: save_pth(path, torch.ones(2, 8)), "rank 3"),
        (lambda path: save_pth(path, torch.full((2, 2, 8), 0.5)), "0 or 1"),
        (lambda path: save_pth(path, NotAWeight()), "weights_only=True"),
        (lambda path: write(path, b"not a checkpoint"), "weights_only=True"),
        (lambda path: write(path, b""), "weights_only=True"),
    ],
    ids=["missing", "dict", "rank2", "half", "pickled-object", "garbage", "empty"],
)
def test_bad_pth_gets_a_clear_error(tmp_path, make, message):
    path = make(tmp_path / "bad.pth")
    with pytest.raises(MaskError, match=message):
        LeanKMasks.from_minference(path, base_model="org/m")


def test_base_model_is_required(tmp_path):
    path = save_pth(tmp_path / "m.pth", float_mask([[32]], 64))
    with pytest.raises(MaskError, match="base_model"):
        LeanKMasks.from_minference(path, base_model="")


def check_released_statistics(masks, shape, pruned, zero_heads, histogram):
    assert list(masks.mask.shape) == shape
    assert masks.pruned_ratio == pytest.approx(pruned, abs=5e-5)
    assert int(masks.zero_heads().sum()) == zero_heads
    assert masks.width_histogram() == histogram
    assert masks.align == 32
    assert (masks.sink_size, masks.recent_size, masks.flush_size) == (128, 768, 128)


@pytest.mark.parametrize(("name", "base_model", "shape", "pruned", "zero", "histogram", "sha256"), RELEASED)
def test_importer_reproduces_the_released_statistics(name, base_model, shape, pruned, zero, histogram, sha256):
    path = REFERENCE_DIR / name
    masks = LeanKMasks.from_minference(path, base_model=base_model)
    check_released_statistics(masks, shape, pruned, zero, histogram)
    assert masks.training_info["source_sha256"] == sha256
    reference = torch.load(path, weights_only=True)
    assert torch.equal(masks.mask, reference == 1)


@pytest.mark.parametrize(("name", "base_model", "shape", "pruned", "zero", "histogram", "sha256"), RELEASED)
def test_shipped_copy_equals_a_fresh_conversion(name, base_model, shape, pruned, zero, histogram, sha256):
    fresh = LeanKMasks.from_minference(REFERENCE_DIR / name, base_model=base_model)
    shipped = LeanKMasks.from_pretrained(base_model)
    assert torch.equal(shipped.mask, fresh.mask)
    assert {key: shipped.training_info[key] for key in fresh.training_info} == fresh.training_info
    assert LeanKMasks(**{**shipped.__dict__, "training_info": fresh.training_info}) == fresh


@pytest.mark.parametrize(("name", "base_model", "shape", "pruned", "zero", "histogram", "sha256"), RELEASED)
def test_shipped_masks_load_offline_by_base_model_id(name, base_model, shape, pruned, zero, histogram, sha256):
    masks = LeanKMasks.from_pretrained(base_model, local_files_only=True)
    check_released_statistics(masks, shape, pruned, zero, histogram)
    assert masks.base_model == base_model
    info = masks.training_info
    assert info["license"] == "MIT" and "Microsoft" in info["copyright"]
    assert "fb56c917f618e8645f1cfc37535afd7424d78f0d" in info["source"] and info["source_sha256"] == sha256
    folder = bundled.find(base_model)
    card = (folder / "README.md").read_text()
    assert f"base_model: {base_model}" in card and "library_name: leank_hf" in card and "license: mit" in card
    assert "Copyright (c) Microsoft Corporation" in card and "fb56c917f618e8645f1cfc37535afd7424d78f0d" in card
    assert LeanKMasks.from_pretrained(folder.name) == masks
    assert LeanKMasks.from_pretrained(base_model.upper()) == masks


def test_bundled_listing_comes_from_the_folders_metadata():
    listing = bundled.available()
    assert [mask.name for mask in listing] == sorted(mask.name for mask in listing)
    by_model = {mask.base_model: mask for mask in listing}
    assert {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"} <= set(by_model)
    for mask in listing:
        assert bundled.find(mask.base_model) == mask.path
        assert (mask.path / "leank_masks.safetensors").is_file()
    assert bundled.find("org/not-bundled") is None
    assert not list(Path(bundled.__file__).parent.rglob("*.pth"))
