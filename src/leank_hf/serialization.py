"""The saved form of a mask: a folder with three files, written and read here (`hub.py` finds and moves them).

- `leank_config.json`: metadata, sorted keys, indent 2 (never `config.json`, which belongs to the model);
- `leank_masks.safetensors`: one bool tensor `mask [num_layers, num_kv_heads, head_dim]`; its metadata repeats the
  config (key `leank_config`) as provenance;
- `README.md`: a model card whose front matter links `base_model` and `library_name: leank_hf` (`card.py`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .card import render_model_card
from .constants import CONFIG_NAME, MASK_FORMAT_VERSION, MASKS_NAME, MODEL_CARD_NAME
from .errors import MaskError

if TYPE_CHECKING:
    from .masks import LeanKMasks

MaskT = TypeVar("MaskT", bound="LeanKMasks")

MASK_TENSOR_NAME = "mask"
SAFETENSORS_METADATA_KEY = "leank_config"
# Config keys derived from the mask or the library; written for readers, checked on load, never passed to the class.
_DERIVED_KEYS = ("achieved_ratio", "head_dim", "leank_version", "num_kv_heads", "num_layers")


# --------------------------------------------------------------------------------------------------------- write
def write_masks(
    masks: LeanKMasks, directory: str | os.PathLike, *, card_name: str | None = None, subfolder: str | None = None
) -> None:
    """Write the three files of `masks` into `directory` (created if missing).

    Args:
        masks (`LeanKMasks`):
            The masks to save.
        directory (`str` or `os.PathLike`):
            Target folder.
        card_name (`str`, *optional*):
            Name the model card's usage snippet loads from (a repo id when pushing); defaults to `directory`.
        subfolder (`str`, *optional*):
            Subfolder the usage snippet passes along with `card_name`.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = masks_config(masks)
    try:
        config_text = json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise MaskError(f"`training_info` must be JSON-serialisable to be saved: {error}") from error
    (folder / CONFIG_NAME).write_text(config_text, encoding="utf-8")
    # The whole config under one key, so the tensor file names its origin even alone (and stays byte-stable:
    # safetensors writes several metadata keys in no fixed order).
    metadata = {SAFETENSORS_METADATA_KEY: json.dumps(config, sort_keys=True)}
    save_file({MASK_TENSOR_NAME: masks.mask}, str(folder / MASKS_NAME), metadata=metadata)
    card_path = folder / MODEL_CARD_NAME
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    card_path.write_text(
        render_model_card(masks, existing, card_name=card_name or str(directory), subfolder=subfolder),
        encoding="utf-8",
    )


def masks_config(masks: LeanKMasks) -> dict[str, Any]:
    """The content of `leank_config.json` for `masks`: every field but the tensor (`middle_quant` only when set, so
    files without a recommendation stay as they were), plus derived provenance."""
    config = {item.name: getattr(masks, item.name) for item in fields(masks) if item.name != MASK_TENSOR_NAME}
    if masks.middle_quant is None:
        del config["middle_quant"]
    config.update(
        format_version=MASK_FORMAT_VERSION,
        leank_version=__version__,
        num_layers=masks.num_layers,
        num_kv_heads=masks.num_kv_heads,
        head_dim=masks.head_dim,
        achieved_ratio=masks.pruned_ratio,
    )
    return config


# ---------------------------------------------------------------------------------------------------------- read
def read_masks(cls: type[MaskT], config_path: Path, masks_path: Path, where: str) -> MaskT:
    """An instance of `cls` (`LeanKMasks`) from its two files, checked against each other; `where` names the place
    in errors."""
    known = {item.name for item in fields(cls)} - {MASK_TENSOR_NAME}
    config = _read_config(config_path, where, known)
    mask = _read_mask(masks_path, where)
    expected_shape = [config.get(key) for key in ("num_layers", "num_kv_heads", "head_dim")]
    if None not in expected_shape and expected_shape != list(mask.shape):
        raise MaskError(
            f"{where}: {CONFIG_NAME} describes a mask of shape {expected_shape} but {MASKS_NAME} holds "
            f"{list(mask.shape)}; the two files come from different saves: save the masks again"
        )
    try:
        masks = cls(mask=mask, **{key: value for key, value in config.items() if key in known})
    except MaskError as error:
        raise MaskError(f"{where}: {error}") from error
    achieved = config.get("achieved_ratio")
    if isinstance(achieved, (int, float)) and not math.isclose(achieved, masks.pruned_ratio, abs_tol=1e-9):
        raise MaskError(
            f"{where}: {CONFIG_NAME} records a pruned ratio of {achieved} but {MASKS_NAME} prunes "
            f"{masks.pruned_ratio}; the two files come from different saves: save the masks again"
        )
    return masks


def _read_config(path: Path, where: str, known: set[str]) -> dict[str, Any]:
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
    unknown = sorted(set(config) - known - {MASK_TENSOR_NAME, *_DERIVED_KEYS})
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
