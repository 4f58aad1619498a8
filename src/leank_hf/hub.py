"""Masks as a Hugging Face Hub artifact: save, load (folder, bundled, Hub cache) and push.

A saved mask is a folder (or a repo, or a `subfolder` of a model's repo) with three files:

- `leank_config.json`: metadata, sorted keys, indent 2 (never `config.json`, which belongs to the model);
- `leank_masks.safetensors`: one bool tensor `mask [num_layers, num_kv_heads, head_dim]`; its metadata repeats the
  config (key `leank_config`) as provenance;
- `README.md`: a model card whose front matter links `base_model` and `library_name: leank_hf`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

try:
    import httpx2 as http  # the HTTP client of huggingface_hub >= 2
except ImportError:  # huggingface_hub 1.x uses httpx, whose exception classes are the same
    import httpx as http
from huggingface_hub import CommitInfo, HfApi, ModelCard, ModelCardData, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .constants import CONFIG_NAME, LIBRARY_NAME, MASK_FORMAT_VERSION, MASKS_NAME, MODEL_CARD_NAME, MODEL_SUBFOLDER
from .errors import HubError, MaskError
from .masks import LeanKMasks

MASK_TENSOR_NAME = "mask"
SAFETENSORS_METADATA_KEY = "leank_config"
CARD_TAGS = ("kv-cache", "leank")
# Config keys derived from the mask or the library; written for readers, checked on load, never passed to the class.
_DERIVED_KEYS = ("achieved_ratio", "head_dim", "leank_version", "num_kv_heads", "num_layers")
_CARD_START = "<!-- leank_hf mask card: start (generated, refreshed by save_pretrained) -->"
_CARD_END = "<!-- leank_hf mask card: end -->"


# --------------------------------------------------------------------------------------------------------- save
def save_masks(
    masks: LeanKMasks, save_directory: str | os.PathLike, *, card_name: str | None = None, subfolder: str | None = None
) -> None:
    """Write the three files of `masks` into `save_directory` (see `LeanKMasks.save_pretrained`).

    Args:
        masks (`LeanKMasks`):
            The masks to save.
        save_directory (`str` or `os.PathLike`):
            Target folder, created if missing.
        card_name (`str`, *optional*):
            Name the model card's usage snippet loads from (a repo id when pushing); defaults to `save_directory`.
        subfolder (`str`, *optional*):
            Subfolder the usage snippet passes along with `card_name`.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = masks_config(masks)
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise MaskError(f"`training_info` must be JSON-serialisable to be saved: {error}") from error
    (directory / CONFIG_NAME).write_text(config_text, encoding="utf-8")
    save_file({MASK_TENSOR_NAME: masks.mask}, str(directory / MASKS_NAME), metadata=_safetensors_metadata(config))
    card_path = directory / MODEL_CARD_NAME
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    card_path.write_text(
        render_model_card(masks, existing, card_name=card_name or str(save_directory), subfolder=subfolder),
        encoding="utf-8",
    )


def masks_config(masks: LeanKMasks) -> dict[str, Any]:
    """The content of `leank_config.json` for `masks`: every field but the tensor, plus derived provenance."""
    from . import __version__

    config = {item.name: getattr(masks, item.name) for item in fields(masks) if item.name != "mask"}
    config.update(
        format_version=MASK_FORMAT_VERSION,
        leank_version=__version__,
        num_layers=masks.num_layers,
        num_kv_heads=masks.num_kv_heads,
        head_dim=masks.head_dim,
        achieved_ratio=masks.pruned_ratio,
    )
    return config


def _safetensors_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The whole config under one key, so the tensor file names its origin even alone (and stays byte-stable:
    safetensors writes several metadata keys in no fixed order)."""
    return {SAFETENSORS_METADATA_KEY: json.dumps(config, sort_keys=True)}


# --------------------------------------------------------------------------------------------------- model card
def render_model_card(
    masks: LeanKMasks, existing: str | None = None, *, card_name: str, subfolder: str | None = None
) -> str:
    """The model card text for `masks`, merged into an `existing` README if given.

    The mask's section sits between two HTML comments and is replaced on every save; the rest of an existing card is
    kept. Front matter: `library_name` and `base_model` are set where missing (refreshed on a leank_hf card), tags
    are merged, and a `license` from `training_info` is added where missing. Rendering twice gives the same text.
    """
    card = ModelCard(existing) if existing else None
    data = card.data if card else ModelCardData()
    owned = data.library_name in (None, LIBRARY_NAME)
    if data.library_name is None:
        data.library_name = LIBRARY_NAME
    if masks.base_model and (owned or not data.base_model):
        data.base_model = masks.base_model
    data.tags = sorted(set(data.tags or ()) | set(CARD_TAGS))
    license_name = masks.training_info.get("license")
    if isinstance(license_name, str) and not data.license:
        data.license = license_name.lower()
    section = f"{_CARD_START}\n{_card_section(masks, card_name, subfolder)}{_CARD_END}\n"
    body = card.text if card else ""
    pattern = re.compile(re.escape(_CARD_START) + r".*?" + re.escape(_CARD_END) + r"\n?", re.DOTALL)
    if pattern.search(body):
        body = pattern.sub(lambda _: section, body, count=1)
    else:
        body = f"{body.rstrip()}\n\n{section}" if body.strip() else f"\n{section}"
    return f"---\n{data.to_yaml()}\n---\n{body}"


def _card_section(masks: LeanKMasks, card_name: str, subfolder: str | None) -> str:
    model = masks.base_model or "an unnamed model"
    model_link = f"[`{masks.base_model}`](https://huggingface.co/{masks.base_model})" if masks.base_model else model
    rows = "\n".join(f"| {label} | {value} |" for label, value in masks._statistics_rows())
    subfolder_arg = f", subfolder={json.dumps(subfolder)}" if subfolder else ""
    lines = [
        f"# LeanK mask for {model}",
        "",
        f"A static key-cache channel mask for {model_link}, learned with LeanK "
        "([arXiv 2508.02215](https://arxiv.org/abs/2508.02215)) and stored in the format of the `leank_hf` package. "
        "Generated tokens attend to the keys of the middle of the context through the kept channels only, so the "
        "cache stores and reads fewer bytes; the prompt, the first `sink` and the last `recent` tokens keep every "
        "channel.",
        "",
        "| statistic | value |",
        "|---|---|",
        rows,
        "",
        "## Usage",
        "",
        "```python",
        "from leank_hf import LeanKMasks",
        "",
        f"masks = LeanKMasks.from_pretrained({json.dumps(card_name)}{subfolder_arg})",
        "print(masks.summary())",
        "```",
        "",
        f"From a shell: `leank-hf inspect {card_name}`.",
        "",
    ]
    if masks.training_info:
        lines += ["## Provenance", "", "| key | value |", "|---|---|"]
        for key, value in sorted(masks.training_info.items()):
            shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            lines.append(f"| {key} | {str(shown).replace('|', '&#124;')} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- load
# `hf_hub_download` arguments that `load_masks` sets itself; every other one is passed through.
_OWN_DOWNLOAD_ARGS = frozenset(
    {"repo_id", "filename", "subfolder", "revision", "library_name", "library_version", "dry_run"}
)


def load_masks(
    path_or_repo_id: str | os.PathLike, *, subfolder: str | None = None, revision: str | None = None, **hub_kwargs: Any
) -> LeanKMasks:
    """Load masks from the first place that holds them (see `LeanKMasks.from_pretrained` for the order)."""
    from . import bundled

    accepted = set(inspect.signature(hf_hub_download).parameters) - _OWN_DOWNLOAD_ARGS
    unknown = sorted(set(hub_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"unexpected keyword arguments {unknown}: besides `subfolder` and `revision`, masks load with the keyword "
            f"arguments of huggingface_hub's hf_hub_download: {sorted(accepted)}"
        )
    folder = Path(path_or_repo_id)
    if folder.is_dir():
        return _load_local(folder, subfolder)
    name = str(path_or_repo_id)
    if subfolder is None and revision is None:
        bundled_folder = bundled.find(name)
        if bundled_folder is not None:
            return _load_folder(bundled_folder, f"bundled mask {bundled_folder.name!r}")
    return _load_hub(name, subfolder, revision, hub_kwargs)


def _load_local(folder: Path, subfolder: str | None) -> LeanKMasks:
    """The folder itself, then its `leank/` subfolder (only `folder / subfolder` when one is named)."""
    if subfolder:
        return _load_folder(folder / subfolder, f"folder {str(folder / subfolder)!r}")
    for candidate in (folder, folder / MODEL_SUBFOLDER):
        if (candidate / CONFIG_NAME).is_file() or (candidate / MASKS_NAME).is_file():
            return _load_folder(candidate, f"folder {str(candidate)!r}")
    raise MaskError(
        f"folder {str(folder)!r} has no {CONFIG_NAME}, and neither has {str(folder / MODEL_SUBFOLDER)!r}: it holds no "
        f"saved LeanK mask; save one next to the model's weights with "
        f"`masks.save_pretrained({str(folder / MODEL_SUBFOLDER)!r})`, or pass the mask's own folder"
    )


def _load_folder(folder: Path, where: str) -> LeanKMasks:
    for name in (CONFIG_NAME, MASKS_NAME):
        if not (folder / name).is_file():
            raise MaskError(
                f"{where} has no {name}: it is not a saved LeanK mask (expected {CONFIG_NAME} and {MASKS_NAME}, "
                "written by LeanKMasks.save_pretrained or `leank-hf convert`)"
            )
    return _read_files(folder / CONFIG_NAME, folder / MASKS_NAME, where)


def _load_hub(repo_id: str, subfolder: str | None, revision: str | None, hub_kwargs: dict[str, Any]) -> LeanKMasks:
    """The repo's root, then its `leank/` subfolder (only `subfolder` when one is named), through the HF cache."""
    options = {
        **hub_kwargs,
        "revision": revision,
        "local_files_only": hub_kwargs.get("local_files_only", False) or constants.HF_HUB_OFFLINE,
    }
    at_revision = f" at revision {revision!r}" if revision else ""
    missing: list[EntryNotFoundError] = []
    for candidate in [subfolder] if subfolder else [None, MODEL_SUBFOLDER]:
        where = f"Hub repo {repo_id!r}" + (f" (subfolder {candidate!r})" if candidate else "") + at_revision
        try:
            config_path = _download(repo_id, CONFIG_NAME, candidate, where, options)
        except EntryNotFoundError as error:
            missing.append(error)
            continue
        try:
            masks_path = _download(repo_id, MASKS_NAME, candidate, where, options)
        except EntryNotFoundError as error:
            raise _missing_file(where, MASKS_NAME, error, "it is not a LeanK mask repo") from error
        return _read_files(Path(config_path), Path(masks_path), where)
    if subfolder:
        (error,) = missing
        raise _missing_file(where, CONFIG_NAME, error, "it is not a LeanK mask; check `subfolder=`") from error
    where = (
        f"Hub repo {repo_id!r}{at_revision} (tried its root and its {MODEL_SUBFOLDER!r} subfolder, after finding no "
        "local folder or bundled mask of that name)"
    )
    fix = (
        f"it holds no LeanK mask; push one next to the model's weights with "
        f"`masks.push_to_hub({repo_id!r}, subfolder={MODEL_SUBFOLDER!r})`, or pass the mask's own repo or folder "
        "(with `subfolder=` where it sits elsewhere)"
    )
    # Offline, a file absent from the cache may still be on the Hub: say so rather than "has no".
    error = next((error for error in missing if isinstance(error, LocalEntryNotFoundError)), missing[-1])
    raise _missing_file(where, CONFIG_NAME, error, fix) from error


def _missing_file(where: str, filename: str, error: EntryNotFoundError, fix: str) -> MaskError:
    if isinstance(error, LocalEntryNotFoundError):
        return MaskError(
            f"{where}: {filename} is not in the local Hugging Face cache and the Hub may not be contacted "
            "(HF_HUB_OFFLINE=1 or local_files_only=True); download it once online or load a local folder"
        )
    return MaskError(f"{where} has no {filename}: {fix}")


def _download(repo_id: str, filename: str, subfolder: str | None, where: str, options: dict[str, Any]) -> str:
    """`hf_hub_download` with its errors as `MaskError`s, except a missing file (`EntryNotFoundError`)."""
    from . import __version__, bundled

    try:
        return hf_hub_download(
            repo_id, filename, subfolder=subfolder, library_name=LIBRARY_NAME, library_version=__version__, **options
        )
    except HFValidationError as error:
        names = ", ".join(mask.name for mask in bundled.available()) or "none"
        raise MaskError(
            f"{repo_id!r} is not a folder, not a bundled mask (bundled: {names}), and not a valid Hub repo id ({error})"
        ) from error
    except RepositoryNotFoundError as error:
        raise MaskError(
            f"{where} does not exist or is not accessible; check the id, or pass `token=` for a private or gated repo"
        ) from error
    except RevisionNotFoundError as error:
        raise MaskError(f"{where}: the revision does not exist") from error
    except LocalEntryNotFoundError as error:
        if not options["local_files_only"]:  # the Hub was allowed but did not answer
            raise _hub_error(where, error.__cause__ or error) from error
        raise  # not in the cache and the Hub may not be contacted: the caller says what it tried
    except EntryNotFoundError:
        raise  # a missing file: the caller tries the next place
    except (HfHubHTTPError, http.TransportError) as error:
        raise _hub_error(where, error) from error


def _hub_error(where: str, error: BaseException) -> HubError:
    """A one-line `HubError` for a failed Hub request: offline mode, no network, refused token, other HTTP error."""
    first_line = next(iter(str(error).splitlines()), "")
    if isinstance(error, OfflineModeIsEnabled):
        return HubError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to reach the Hub")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code
        if status in (401, 403):
            return HubError(
                f"{where}: the Hub refused the request (HTTP {status}); log in with `hf auth login` or pass a token "
                "(`--token` / `token=`) with access to the repo"
            )
        return HubError(f"{where}: the Hub answered HTTP {status} ({first_line}); try again later")
    return HubError(
        f"{where}: could not reach the Hub (no network? {type(error).__name__}: {first_line}); check the connection "
        "or proxy, or use a local folder"
    )


def warn_if_made_for_another_model(masks: LeanKMasks, config: Any, stacklevel: int = 3) -> None:
    """Warn when `masks` were learned on another model than the Hub model `config` was loaded from.

    Nothing is said when either id is unknown or the model was loaded from a local folder (its id is a path).
    """
    model_id = getattr(config, "name_or_path", "") or ""
    if not masks.base_model or not model_id or Path(model_id).is_dir():
        return
    if masks.base_model.lower() != model_id.lower():
        warnings.warn(
            f"this LeanK mask was learned on {masks.base_model!r} but is applied to {model_id!r}: another model or a "
            "fine-tune has other keys, so the pruned channels may matter to it; check the answers (`leank-hf eval`) "
            "or train a mask for this model (`leank-hf train`)",
            stacklevel=stacklevel,
        )


def _read_files(config_path: Path, masks_path: Path, where: str) -> LeanKMasks:
    config = _read_config(config_path, where)
    mask = _read_mask(masks_path, where)
    expected_shape = [config.get(key) for key in ("num_layers", "num_kv_heads", "head_dim")]
    if None not in expected_shape and expected_shape != list(mask.shape):
        raise MaskError(
            f"{where}: {CONFIG_NAME} describes a mask of shape {expected_shape} but {MASKS_NAME} holds "
            f"{list(mask.shape)}; the two files come from different saves: save the masks again"
        )
    known = {item.name for item in fields(LeanKMasks)} - {MASK_TENSOR_NAME}
    try:
        masks = LeanKMasks(mask=mask, **{key: value for key, value in config.items() if key in known})
    except MaskError as error:
        raise MaskError(f"{where}: {error}") from error
    achieved = config.get("achieved_ratio")
    if isinstance(achieved, (int, float)) and not math.isclose(achieved, masks.pruned_ratio, abs_tol=1e-9):
        raise MaskError(
            f"{where}: {CONFIG_NAME} records a pruned ratio of {achieved} but {MASKS_NAME} prunes "
            f"{masks.pruned_ratio}; the two files come from different saves: save the masks again"
        )
    return masks


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MaskError(f"{where}: {CONFIG_NAME} is corrupt, not valid JSON ({error}); save it again") from error
    if not isinstance(config, dict):
        raise MaskError(f"{where}: {CONFIG_NAME} must hold a JSON object, got {type(config).__name__}")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MASK_FORMAT_VERSION:
        newer = isinstance(version, int) and version > MASK_FORMAT_VERSION
        raise MaskError(
            f"{where}: unknown mask format version {version!r} in {CONFIG_NAME} (this leank_hf reads version "
            f"{MASK_FORMAT_VERSION})" + ("; upgrade leank_hf" if newer else "")
        )
    known = {item.name for item in fields(LeanKMasks)} | set(_DERIVED_KEYS)
    unknown = sorted(set(config) - known)
    if unknown:
        warnings.warn(
            f"{where}: ignoring {CONFIG_NAME} keys unknown to this leank_hf: {unknown} (written by leank_hf "
            f"{config.get('leank_version', '?')}); upgrade leank_hf to use them",
            stacklevel=2,
        )
    return config


def _read_mask(path: Path, where: str) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = sorted(handle.keys())
            if names != [MASK_TENSOR_NAME]:
                raise MaskError(f"{where}: {MASKS_NAME} must hold one tensor named {MASK_TENSOR_NAME!r}, found {names}")
            mask = handle.get_tensor(MASK_TENSOR_NAME)
    except (SafetensorError, OSError) as error:
        raise MaskError(f"{where}: {MASKS_NAME} is corrupt, not a readable safetensors file ({error})") from error
    if mask.dtype != torch.bool:
        raise MaskError(
            f"{where}: {MASKS_NAME} stores the mask as {mask.dtype}; the format requires bool (True = keep): "
            "rebuild it with LeanKMasks(mask=...).save_pretrained(...)"
        )
    return mask


# --------------------------------------------------------------------------------------------------------- push
def push_masks_to_hub(
    masks: LeanKMasks,
    repo_id: str,
    *,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    subfolder: str | None = None,
) -> CommitInfo:
    """Create the repo if needed and upload the saved files in one commit (see `LeanKMasks.push_to_hub`)."""
    from . import __version__

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_masks(masks, tmp, card_name=repo_id, subfolder=subfolder)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                path_in_repo=subfolder,
                commit_message=commit_message or f"Upload LeanK mask for {masks.base_model or 'a model'}",
                revision=revision,
            )
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id ({error}); use user/name") from error
    except (OfflineModeIsEnabled, HfHubHTTPError, http.TransportError) as error:
        raise _hub_error(f"pushing to {repo_id!r}", error) from error
