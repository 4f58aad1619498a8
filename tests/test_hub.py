"""Masks as a Hub artifact, with no network: local folders, a hand-built Hugging Face cache, and huggingface_hub's own
HTTP client against an in-process fake Hub (`tests/fake_hub.py`, the `hub` fixture) for download and push."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors import safe_open
from safetensors.torch import save_file

from leank_hf import LeanKMasks, MaskError

FILES = ("leank_config.json", "leank_masks.safetensors", "README.md")


def make_masks(**overrides) -> LeanKMasks:
    """Masks with uneven per-head widths (0..16 in steps of 4) and every metadata field set."""
    counts = torch.randint(0, 5, (3, 2)) * 4
    mask = torch.zeros(3, 2, 16, dtype=torch.bool)
    for (layer, head), count in zip(torch.cartesian_prod(torch.arange(3), torch.arange(2)).tolist(), counts.flatten()):
        mask[layer, head, torch.randperm(16)[: int(count)]] = True
    fields = {
        "mask": mask,
        "base_model": "org/tiny-model",
        "base_model_revision": "0123456789abcdef0123456789abcdef01234567",
        "sink_size": 4,
        "recent_size": 32,
        "flush_size": 8,
        "align": 4,
        "target_ratio": 0.6,
        "training_info": {"steps": [100, 20], "seed": 3, "data": "synthetic retrieval", "nested": {"lr": 0.02}},
    }
    return LeanKMasks(**{**fields, **overrides})


@pytest.fixture
def masks() -> LeanKMasks:
    return make_masks()


def saved_files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}


# ------------------------------------------------------------------------------------------------ local folders
@pytest.mark.parametrize("subfolder", [None, "leank"])
def test_round_trip_preserves_every_field_bit_exactly(tmp_path, masks, subfolder):
    target = tmp_path / subfolder if subfolder else tmp_path
    masks.save_pretrained(target)
    assert sorted(path.name for path in target.iterdir()) == sorted(FILES)
    loaded = LeanKMasks.from_pretrained(tmp_path, subfolder=subfolder)
    assert loaded == masks
    assert loaded.mask.dtype == torch.bool
    assert loaded.mask.numpy().tobytes() == masks.mask.numpy().tobytes()


def test_config_file_is_sorted_indented_and_complete(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    text = (tmp_path / "leank_config.json").read_text()
    config = json.loads(text)
    assert text == json.dumps(config, indent=2, sort_keys=True) + "\n"
    from leank_hf import __version__

    assert config == {
        "achieved_ratio": masks.pruned_ratio,
        "align": 4,
        "base_model": "org/tiny-model",
        "base_model_revision": "0123456789abcdef0123456789abcdef01234567",
        "flush_size": 8,
        "format_version": 1,
        "head_dim": 16,
        "leank_version": __version__,
        "num_kv_heads": 2,
        "num_layers": 3,
        "recent_size": 32,
        "sink_size": 4,
        "target_ratio": 0.6,
        "training_info": {"data": "synthetic retrieval", "nested": {"lr": 0.02}, "seed": 3, "steps": [100, 20]},
    }
    assert not (tmp_path / "config.json").exists()


def test_safetensors_holds_a_bool_mask_and_provenance(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "leank_masks.safetensors"), framework="pt") as handle:
        assert list(handle.keys()) == ["mask"]
        assert handle.get_tensor("mask").dtype == torch.bool
        metadata = handle.metadata()
    assert list(metadata) == ["leank_config"]
    assert json.loads(metadata["leank_config"]) == json.loads((tmp_path / "leank_config.json").read_text())


def test_model_card_front_matter_statistics_and_usage(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "leank_hf"
    assert card.data.base_model == "org/tiny-model"
    assert card.data.tags == ["kv-cache", "leank"]
    assert f"| K channels pruned | {masks.pruned_ratio:.2%} (target 60.00%) |" in card.text
    assert f"| KV heads with no kept channel | {int(masks.zero_heads().sum())} / 6" in card.text
    assert f'LeanKMasks.from_pretrained("{tmp_path}")' in card.text
    assert '| nested | {"lr": 0.02} |' in card.text


def test_saving_twice_gives_identical_files(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    first = saved_files(tmp_path)
    masks.save_pretrained(tmp_path)
    assert saved_files(tmp_path) == first


def test_model_card_merges_into_an_existing_readme(tmp_path, masks):
    (tmp_path / "README.md").write_text(
        "---\nlibrary_name: transformers\ntags:\n- text-generation\n---\n\n# My model\n"
    )
    masks.save_pretrained(tmp_path)
    once = (tmp_path / "README.md").read_text()
    card = ModelCard(once)
    assert card.data.library_name == "transformers"  # the model's own card keeps its library
    assert card.data.base_model == "org/tiny-model"
    assert card.data.tags == ["kv-cache", "leank", "text-generation"]
    assert card.text.startswith("\n# My model\n") and card.text.count("# LeanK mask for org/tiny-model") == 1
    make_masks(base_model="org/other").save_pretrained(tmp_path)
    refreshed = ModelCard((tmp_path / "README.md").read_text())
    assert refreshed.text.count("# LeanK mask for") == 1 and "org/other" in refreshed.text
    assert refreshed.data.base_model == "org/tiny-model"  # a foreign card's base_model is not overwritten


def test_training_info_must_be_json(tmp_path):
    with pytest.raises(MaskError, match="JSON-serialisable"):
        make_masks(training_info={"tensor": torch.ones(1)}).save_pretrained(tmp_path)


def test_unknown_config_keys_are_dropped_with_one_warning(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "leank_config.json").read_text())
    config.update(leank_version="9.0.0", future_option=True, another=[1])
    (tmp_path / "leank_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"\['another', 'future_option'\].*9\.0\.0.*upgrade") as record:
        loaded = LeanKMasks.from_pretrained(tmp_path)
    assert len(record) == 1
    assert loaded == masks


# ------------------------------------------------------------------------------------------------ bad files
def rewrite_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "leank_config.json").read_text())
    (directory / "leank_config.json").write_text(json.dumps({**config, **changes}))


def write_mask_file(directory: Path, tensors: dict) -> None:
    save_file(tensors, str(directory / "leank_masks.safetensors"))


def keep_fifteen() -> torch.Tensor:
    mask = torch.ones(3, 2, 16, dtype=torch.bool)
    mask[..., 0] = False
    return mask


BAD_FILES = {
    "no-config": (lambda d, m: (d / "leank_config.json").unlink(), "has no leank_config.json"),
    "no-masks": (lambda d, m: (d / "leank_masks.safetensors").unlink(), "has no leank_masks.safetensors"),
    "config-not-json": (lambda d, m: (d / "leank_config.json").write_text("{ nope"), "corrupt, not valid JSON"),
    "config-not-object": (lambda d, m: (d / "leank_config.json").write_text("[1]"), "must hold a JSON object"),
    "config-not-utf8": (lambda d, m: (d / "leank_config.json").write_bytes(b"\xff\xfe\x00"), "corrupt"),
    "no-version": (lambda d, m: rewrite_config(d, format_version=None), "unknown mask format version None"),
    "future-version": (lambda d, m: rewrite_config(d, format_version=2), "version 2.*upgrade leank_hf"),
    "zero-version": (lambda d, m: rewrite_config(d, format_version=0), "unknown mask format version 0"),
    "string-version": (lambda d, m: rewrite_config(d, format_version="1"), "unknown mask format version '1'"),
    "bad-field": (lambda d, m: rewrite_config(d, sink_size=-1), "sink_size"),
    "shape-mismatch": (lambda d, m: rewrite_config(d, num_layers=4), r"shape \[4, 2, 16\] but .* holds \[3, 2, 16\]"),
    "ratio-mismatch": (lambda d, m: rewrite_config(d, achieved_ratio=0.123), "different saves"),
    "truncated-masks": (
        lambda d, m: (d / "leank_masks.safetensors").write_bytes((d / "leank_masks.safetensors").read_bytes()[:40]),
        "corrupt, not a readable safetensors",
    ),
    "float-mask": (lambda d, m: write_mask_file(d, {"mask": m.mask.float()}), "stores the mask as torch.float32"),
    "extra-tensor": (
        lambda d, m: write_mask_file(d, {"mask": m.mask, "alpha": torch.ones(1)}),
        r"one tensor named 'mask', found \['alpha', 'mask'\]",
    ),
    "rank-2": (lambda d, m: write_mask_file(d, {"mask": m.mask[0]}), "different saves|rank 3"),
    "misaligned": (
        lambda d, m: write_mask_file(d, {"mask": keep_fifteen()}),
        "keeps 15 channels, not a multiple of align=4",
    ),
}


@pytest.mark.parametrize(("damage", "message"), list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_saved_files_get_a_clear_error(tmp_path, masks, damage, message):
    masks.save_pretrained(tmp_path)
    damage(tmp_path, masks)
    with pytest.raises(MaskError, match=message) as error:
        LeanKMasks.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_rank_two_mask_file_is_refused_as_a_rank_error(tmp_path, masks):
    masks.save_pretrained(tmp_path)
    write_mask_file(tmp_path, {"mask": masks.mask[0]})
    config = json.loads((tmp_path / "leank_config.json").read_text())
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        del config[key]
    (tmp_path / "leank_config.json").write_text(json.dumps(config))
    with pytest.raises(MaskError, match="rank 3"):
        LeanKMasks.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------ Hugging Face cache
def build_cache(cache_dir: Path, repo_id: str, files: dict[str, bytes], commit: str = "c" * 40) -> str:
    """A cache folder as huggingface_hub lays it out: `models--org--name/{refs/main, snapshots/<commit>/...}`."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return commit


@pytest.fixture
def cached_repo(tmp_path, masks, hub):
    """A Hub cache holding `org/masks` (masks at the root) and `org/model` (masks in `leank/` beside a config)."""
    masks.save_pretrained(tmp_path / "saved")
    files = saved_files(tmp_path / "saved")
    cache_dir = tmp_path / "cache"
    build_cache(cache_dir, "org/masks", files)
    build_cache(cache_dir, "org/model", {"config.json": b"{}", **{f"leank/{k}": v for k, v in files.items()}})
    return cache_dir


@pytest.mark.parametrize(("repo_id", "subfolder"), [("org/masks", None), ("org/model", "leank")])
def test_load_from_cache_with_local_files_only(cached_repo, masks, hub, repo_id, subfolder):
    loaded = LeanKMasks.from_pretrained(repo_id, subfolder=subfolder, cache_dir=cached_repo, local_files_only=True)
    assert loaded == masks
    assert hub.calls() == []
    by_commit = LeanKMasks.from_pretrained(
        repo_id, subfolder=subfolder, revision="c" * 40, cache_dir=cached_repo, local_files_only=True
    )
    assert by_commit == masks


def test_load_from_cache_honours_hf_hub_offline(cached_repo, masks, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert LeanKMasks.from_pretrained("org/model", subfolder="leank", cache_dir=cached_repo) == masks
    assert hub.calls() == []
    assert LeanKMasks.from_pretrained("org/model", cache_dir=cached_repo) == masks  # found in `leank/`
    with pytest.raises(MaskError, match="'org/absent'.*root and its 'leank'.*not in the local Hugging Face cache"):
        LeanKMasks.from_pretrained("org/absent", cache_dir=cached_repo)
    assert hub.calls() == []


def test_missing_from_cache_offline_is_a_clear_error(cached_repo, hub):
    with pytest.raises(MaskError, match="'org/absent'.*not in the local Hugging Face cache"):
        LeanKMasks.from_pretrained("org/absent", cache_dir=cached_repo, local_files_only=True)


# ------------------------------------------------------------------------------------------------ download over HTTP
def test_download_through_the_real_client(tmp_path, masks, hub):
    masks.save_pretrained(tmp_path / "saved")
    files = saved_files(tmp_path / "saved")
    commit = hub.add_repo("org/model", {"config.json": b"{}", **{f"leank/{k}": v for k, v in files.items()}})
    cache_dir = tmp_path / "cache"
    loaded = LeanKMasks.from_pretrained("org/model", subfolder="leank", cache_dir=cache_dir, token="hf_test")
    assert loaded == masks
    fetched = [(method, path) for method, path in hub.calls()]
    for name in ("leank_config.json", "leank_masks.safetensors"):
        assert ("GET", f"/org/model/resolve/main/leank/{name}") in fetched
    assert all(r.headers.get("authorization") == "Bearer hf_test" for r in hub.requests if "resolve" in r.url.path)
    assert "leank_hf/" in hub.requests[-1].headers["user-agent"]
    snapshot = cache_dir / "models--org--model" / "snapshots" / commit / "leank"
    assert (snapshot / "leank_masks.safetensors").read_bytes() == files["leank_masks.safetensors"]
    # Now cached: loads again with the network refused.
    count = len(hub.calls())
    assert (
        LeanKMasks.from_pretrained("org/model", subfolder="leank", cache_dir=cache_dir, local_files_only=True) == masks
    )
    assert len(hub.calls()) == count


def test_download_errors_are_clear(tmp_path, masks, hub):
    masks.save_pretrained(tmp_path / "saved")
    hub.add_repo("org/model", {"config.json": b"{}"})
    hub.add_repo("org/half", {"leank_config.json": (tmp_path / "saved" / "leank_config.json").read_bytes()})
    cache_dir = tmp_path / "cache"
    with pytest.raises(MaskError, match="'org/model'.*root and its 'leank' subfolder.* has no leank_config.json.*sub"):
        LeanKMasks.from_pretrained("org/model", cache_dir=cache_dir)
    with pytest.raises(MaskError, match="'org/model' \\(subfolder 'masks'\\) has no leank_config.json.*subfolder="):
        LeanKMasks.from_pretrained("org/model", subfolder="masks", cache_dir=cache_dir)
    with pytest.raises(MaskError, match="'org/half' has no leank_masks.safetensors"):
        LeanKMasks.from_pretrained("org/half", cache_dir=cache_dir)
    with pytest.raises(MaskError, match="'org/nothing' does not exist or is not accessible.*token="):
        LeanKMasks.from_pretrained("org/nothing", cache_dir=cache_dir)
    with pytest.raises(MaskError, match="revision 'v9'.*revision does not exist"):
        LeanKMasks.from_pretrained("org/model", revision="v9", cache_dir=cache_dir)
    with pytest.raises(MaskError, match="not a folder, not a bundled mask.*not a valid Hub repo id"):
        LeanKMasks.from_pretrained("./no/such//folder", cache_dir=cache_dir)
    assert all(r.url.host == "huggingface.co" for r in hub.requests)


# ------------------------------------------------------------------------------------------------ push over HTTP
@pytest.mark.parametrize(("subfolder", "revision"), [(None, None), ("leank", "dev")])
def test_push_to_hub_through_the_real_client(tmp_path, masks, hub, subfolder, revision):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "empty commit" or deprecation noise either
        info = masks.push_to_hub(
            "org/pushed", private=True, token="hf_write", subfolder=subfolder, revision=revision, commit_message="m1"
        )
    prefix = f"{subfolder}/" if subfolder else ""
    branch = revision or "main"
    expected_calls = [("POST", "/api/repos/create")]
    expected_calls += [("POST", f"/api/models/org/pushed/branch/{revision}")] if revision else []
    expected_calls += [
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/org/pushed/preupload/{branch}"),
        ("POST", f"/api/models/org/pushed/commit/{branch}"),
    ]
    assert hub.calls() == expected_calls
    create = json.loads(hub.requests[[r.url.path for r in hub.requests].index("/api/repos/create")].content)
    assert create["organization"] == "org" and create["name"] == "pushed" and create["visibility"] == "private"
    assert all(r.headers["authorization"] == "Bearer hf_write" for r in hub.requests if r.url.path.startswith("/api/m"))
    (commit_lines,) = hub.commits
    assert commit_lines[0] == {"key": "header", "value": {"summary": "m1", "description": ""}}
    uploaded = hub.repos["org/pushed"]["commits"][info.oid]
    assert sorted(uploaded) == sorted(prefix + name for name in FILES)
    assert hub.repos["org/pushed"]["branches"][branch] == info.oid
    masks.save_pretrained(tmp_path / "local")
    local = saved_files(tmp_path / "local")
    for name in ("leank_config.json", "leank_masks.safetensors"):
        assert uploaded[prefix + name] == local[name]
    card = ModelCard(uploaded[prefix + "README.md"].decode())
    assert card.data.base_model == "org/tiny-model" and card.data.library_name == "leank_hf"
    subfolder_arg = f', subfolder="{subfolder}"' if subfolder else ""
    assert f'LeanKMasks.from_pretrained("org/pushed"{subfolder_arg})' in card.text
    # What was pushed loads back through the same client.
    loaded = LeanKMasks.from_pretrained("org/pushed", subfolder=subfolder, revision=revision, cache_dir=tmp_path / "c")
    assert loaded == masks


def test_push_to_an_existing_repo_reuses_it(tmp_path, masks, hub):
    hub.add_repo("org/model", {"config.json": b"{}"})
    info = masks.push_to_hub("org/model", subfolder="leank")
    files = hub.repos["org/model"]["commits"][info.oid]
    assert files["config.json"] == b"{}" and "leank/leank_masks.safetensors" in files
    assert hub.repos["org/model"].get("private") is None  # visibility of an existing repo is left alone


def test_bundled_copy_is_preferred_without_subfolder_or_revision(tmp_path, hub):
    masks = LeanKMasks.from_pretrained("Qwen/Qwen2.5-7B-Instruct")
    assert masks.base_model == "Qwen/Qwen2.5-7B-Instruct" and hub.calls() == []
    with pytest.raises(MaskError, match="'Qwen/Qwen2.5-7B-Instruct'"):
        LeanKMasks.from_pretrained("Qwen/Qwen2.5-7B-Instruct", revision="main", cache_dir=tmp_path)
    assert hub.calls()  # with a revision the Hub is asked


def test_loaders_build_the_class_they_are_called_on(tmp_path, masks):
    """The Hub mixin never names `LeanKMasks`: a subclass loads as itself, from a folder and from a bundled mask."""

    class Tagged(LeanKMasks):
        pass

    masks.save_pretrained(tmp_path)
    for loaded in (Tagged.from_pretrained(tmp_path), Tagged.from_pretrained("qwen2.5-7b-instruct")):
        assert type(loaded) is Tagged
    assert Tagged.from_pretrained(tmp_path).mask.equal(masks.mask)


# ------------------------------------------------------------------------------------------------ masks next to weights
def test_masks_in_a_model_folders_leank_subfolder_are_found_without_subfolder(tmp_path, masks):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    masks.save_pretrained(tmp_path / "model" / "leank")
    assert LeanKMasks.from_pretrained(tmp_path / "model") == masks
    masks.save_pretrained(tmp_path / "model")  # masks at the root come first
    root = make_masks(sink_size=8)
    root.save_pretrained(tmp_path / "model")
    assert LeanKMasks.from_pretrained(tmp_path / "model") == root


def test_a_folder_without_masks_names_both_places_and_the_fix(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MaskError) as error:
        LeanKMasks.from_pretrained(tmp_path)
    assert f"folder {str(tmp_path)!r} has no leank_config.json" in str(error.value)
    assert repr(str(tmp_path / "leank")) in str(error.value) and "save_pretrained(" in str(error.value)


def test_masks_in_a_model_repos_leank_subfolder_are_downloaded_without_subfolder(tmp_path, masks, hub):
    masks.save_pretrained(tmp_path / "saved")
    files = saved_files(tmp_path / "saved")
    hub.add_repo("org/model", {"config.json": b"{}", **{f"leank/{k}": v for k, v in files.items()}})
    assert LeanKMasks.from_pretrained("org/model", cache_dir=tmp_path / "cache") == masks
    asked = [path for _, path in hub.calls()]
    assert asked[0] == "/org/model/resolve/main/leank_config.json"  # the root first, then `leank/`
    assert "/org/model/resolve/main/leank/leank_masks.safetensors" in asked
    hub.add_repo("org/masks", files)  # a masks repo: found at its root, `leank/` never asked
    hub.requests.clear()
    assert LeanKMasks.from_pretrained("org/masks", cache_dir=tmp_path / "cache") == masks
    assert not any("/leank/" in path for _, path in hub.calls())


def test_hub_keyword_arguments_pass_through_to_hf_hub_download(tmp_path, masks, hub):
    masks.save_pretrained(tmp_path / "saved")
    hub.add_repo("org/masks", saved_files(tmp_path / "saved"))
    cache_dir = tmp_path / "cache"
    assert LeanKMasks.from_pretrained("org/masks", cache_dir=cache_dir, repo_type="model") == masks
    gets = sum(method == "GET" for method, _ in hub.calls())
    LeanKMasks.from_pretrained("org/masks", cache_dir=cache_dir, headers={"X-Test": "1"})
    assert sum(method == "GET" for method, _ in hub.calls()) == gets  # cached: no second download
    LeanKMasks.from_pretrained("org/masks", cache_dir=cache_dir, force_download=True, headers={"X-Test": "1"})
    assert sum(method == "GET" for method, _ in hub.calls()) == gets + 2
    assert hub.requests[-1].headers["x-test"] == "1"
    with pytest.raises(TypeError, match=r"\['cache_dri'\].*force_download"):
        LeanKMasks.from_pretrained(tmp_path / "saved", cache_dri=cache_dir)  # a typo is refused, even for a folder


def test_cache_from_pretrained_warns_when_the_mask_was_learned_on_another_model(tmp_path, masks):
    from transformers import LlamaConfig

    from leank_hf import LeanKCache

    config = LlamaConfig(num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    masks.save_pretrained(tmp_path / "mask")
    config._name_or_path = "org/tiny-model-finetuned"
    with pytest.warns(UserWarning, match="learned on 'org/tiny-model' but is applied to 'org/tiny-model-finetuned'"):
        LeanKCache.from_pretrained(tmp_path / "mask", config=config)
    for same_or_unknown in ("ORG/tiny-model", "", str(tmp_path)):  # same id, no id, or a local folder's path
        config._name_or_path = same_or_unknown
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            LeanKCache.from_pretrained(tmp_path / "mask", config=config)
