"""Where saved masks live and how they move: local folders, the masks shipped in `bundled/`, the Hugging Face Hub.

`MaskHubMixin` gives `LeanKMasks` its `from_pretrained`, `save_pretrained` and `push_to_hub`, as transformers'
`PushToHubMixin` does for its classes; the files themselves are written and read by `serialization.py`. This module
never imports `masks.py`: the class to build comes in as `cls`.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import httpx2 as http  # the HTTP client of huggingface_hub >= 2
except ImportError:  # huggingface_hub 1.x uses httpx, whose exception classes are the same
    import httpx as http
from huggingface_hub import CommitInfo, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import __version__, bundled
from .constants import CONFIG_NAME, LIBRARY_NAME, MASKS_NAME, MODEL_SUBFOLDER
from .errors import HubError, MaskError
from .serialization import MaskT, read_masks, write_masks

if TYPE_CHECKING:
    from .masks import LeanKMasks


class MaskHubMixin:
    """Loading, saving and pushing for `LeanKMasks` (the dataclass that inherits this)."""

    @classmethod
    def from_pretrained(
        cls: type[MaskT],
        path_or_repo_id: str | os.PathLike,
        *,
        subfolder: str | None = None,
        revision: str | None = None,
        **hub_kwargs: Any,
    ) -> MaskT:
        """Load masks from a local folder, a bundled mask, or a Hugging Face Hub repo.

        Resolution order, first match wins:

        1. a local folder: the folder itself, then its `leank/` subfolder (masks saved next to a model's weights);
        2. with neither `subfolder` nor `revision`: a mask shipped with leank_hf whose base model id or name matches
           (`leank_hf.bundled.available()`), with no network;
        3. a Hub repo, through the Hugging Face cache (`HF_HUB_OFFLINE=1` and `local_files_only` are honoured): its
           root, then its `leank/` subfolder.

        A `subfolder` replaces "the root, then `leank/`" in 1 and 3 by that one folder.

        Args:
            path_or_repo_id (`str` or `os.PathLike`):
                Folder with `leank_config.json` and `leank_masks.safetensors` (or a model folder with them in
                `leank/`), a bundled mask's base model id or name, or a Hub repo id (masks or model repo).
            subfolder (`str`, *optional*):
                Folder inside the repo or directory where the masks are, when not at the root or in `leank/`.
            revision (`str`, *optional*):
                Branch, tag or commit of the Hub repo.
            hub_kwargs:
                Passed to `huggingface_hub.hf_hub_download`: `cache_dir`, `token`, `local_files_only`,
                `force_download`, `repo_type`, `endpoint`, `headers`, ...; an unknown name raises `TypeError`.
        """
        accepted = set(inspect.signature(hf_hub_download).parameters) - _OWN_DOWNLOAD_ARGS
        unknown = sorted(set(hub_kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"unexpected keyword arguments {unknown}: besides `subfolder` and `revision`, masks load with the "
                f"keyword arguments of huggingface_hub's hf_hub_download: {sorted(accepted)}"
            )
        folder = Path(path_or_repo_id)
        if folder.is_dir():
            return _load_local(cls, folder, subfolder)
        name = str(path_or_repo_id)
        if subfolder is None and revision is None:
            bundled_folder = bundled.find(name)
            if bundled_folder is not None:
                return _load_folder(cls, bundled_folder, f"bundled mask {bundled_folder.name!r}")
        return _load_hub(cls, name, subfolder, revision, hub_kwargs)

    def save_pretrained(self: LeanKMasks, save_directory: str | os.PathLike) -> None:
        """Write `leank_config.json`, `leank_masks.safetensors` and a `README.md` model card into a folder.

        An existing `README.md` (e.g. of a model saved in the same folder) keeps its text: the mask's section and
        front-matter fields are added or refreshed, so saving twice gives the same files.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write to; created if missing.
        """
        write_masks(self, save_directory)

    def push_to_hub(
        self: LeanKMasks,
        repo_id: str,
        *,
        private: bool | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        subfolder: str | None = None,
    ) -> CommitInfo:
        """Upload the saved files of these masks to a Hub repo in one commit (the repo is created if needed).

        Args:
            repo_id (`str`):
                Target repo, `"user/name"`.
            private (`bool`, *optional*):
                Visibility of a repo that has to be created; an existing repo keeps its own.
            commit_message (`str`, *optional*):
                Message of the commit.
            revision (`str`, *optional*):
                Branch to push to; created from the default branch if missing.
            token (`str` or `bool`, *optional*):
                Hub token with write access; defaults to the logged-in one.
            subfolder (`str`, *optional*):
                Folder inside the repo, e.g. `"leank"` to put masks next to a model's own files.

        Returns:
            `huggingface_hub.CommitInfo`: the commit that was made.
        """
        api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                write_masks(self, tmp, card_name=repo_id, subfolder=subfolder)
                return api.upload_folder(
                    repo_id=repo_id,
                    folder_path=tmp,
                    path_in_repo=subfolder,
                    commit_message=commit_message or f"Upload LeanK mask for {self.base_model or 'a model'}",
                    revision=revision,
                )
        except HFValidationError as error:
            raise HubError(f"{repo_id!r} is not a valid Hub repo id ({error}); use user/name") from error
        except (OfflineModeIsEnabled, HfHubHTTPError, http.TransportError) as error:
            raise _hub_error(f"pushing to {repo_id!r}", error) from error


# `hf_hub_download` arguments that `from_pretrained` sets itself; every other one is passed through.
_OWN_DOWNLOAD_ARGS = frozenset(
    {"repo_id", "filename", "subfolder", "revision", "library_name", "library_version", "dry_run"}
)


def _load_local(cls: type[MaskT], folder: Path, subfolder: str | None) -> MaskT:
    """The folder itself, then its `leank/` subfolder (only `folder / subfolder` when one is named)."""
    if subfolder:
        return _load_folder(cls, folder / subfolder, f"folder {str(folder / subfolder)!r}")
    for candidate in (folder, folder / MODEL_SUBFOLDER):
        if (candidate / CONFIG_NAME).is_file() or (candidate / MASKS_NAME).is_file():
            return _load_folder(cls, candidate, f"folder {str(candidate)!r}")
    raise MaskError(
        f"folder {str(folder)!r} has no {CONFIG_NAME}, and neither has {str(folder / MODEL_SUBFOLDER)!r}: it holds no "
        f"saved LeanK mask; save one next to the model's weights with "
        f"`masks.save_pretrained({str(folder / MODEL_SUBFOLDER)!r})`, or pass the mask's own folder"
    )


def _load_folder(cls: type[MaskT], folder: Path, where: str) -> MaskT:
    for name in (CONFIG_NAME, MASKS_NAME):
        if not (folder / name).is_file():
            raise MaskError(
                f"{where} has no {name}: it is not a saved LeanK mask (expected {CONFIG_NAME} and {MASKS_NAME}, "
                "written by LeanKMasks.save_pretrained or `leank-hf convert`)"
            )
    return read_masks(cls, folder / CONFIG_NAME, folder / MASKS_NAME, where)


def _load_hub(
    cls: type[MaskT], repo_id: str, subfolder: str | None, revision: str | None, hub_kwargs: dict[str, Any]
) -> MaskT:
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
        return read_masks(cls, Path(config_path), Path(masks_path), where)
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
