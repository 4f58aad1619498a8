"""Masks shipped inside leank_hf, in the saved format, loadable with no network.

Each subfolder is a saved mask (`leank_config.json`, `leank_masks.safetensors`, `README.md` with its attribution).
A mask is found by the base model id recorded in its own `leank_config.json`, or by its folder name; adding a folder
is all it takes to ship another mask. `LeanKMasks.from_pretrained(name)` looks here before the Hub.

Example:

```python
>>> from leank_hf import LeanKMasks, bundled
>>> [mask.base_model for mask in bundled.available()]  # doctest: +SKIP
['meta-llama/Llama-3.1-8B-Instruct', 'Qwen/Qwen2.5-7B-Instruct']
>>> masks = LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..constants import CONFIG_NAME

_ROOT = Path(__file__).parent


class BundledMask(NamedTuple):
    """One shipped mask: folder name, the base model id from its config, and its folder."""

    name: str
    base_model: str | None
    path: Path


def available() -> list[BundledMask]:
    """The masks shipped with this leank_hf, sorted by folder name."""
    masks = []
    for folder in sorted(_ROOT.iterdir()):
        config = folder / CONFIG_NAME
        if config.is_file():
            base_model = json.loads(config.read_text(encoding="utf-8")).get("base_model")
            masks.append(BundledMask(folder.name, base_model, folder))
    return masks


def find(name: str) -> Path | None:
    """Folder of the first shipped mask whose base model id or folder name is `name` (case-insensitive), or None."""
    key = name.lower()
    for mask in available():
        if key in (mask.name.lower(), (mask.base_model or "").lower()):
            return mask.path
    return None
