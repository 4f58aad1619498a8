"""leank_hf: LeanK K-cache channel pruning for Hugging Face transformers.

The public names load on first use (module `__getattr__`), so `import leank_hf` imports neither torch nor
transformers. The "leank" attention is registered with transformers when `leank_hf.attention` is imported, which
loading any name that needs transformers (the caches, `apply_leank`, `train_masks`, ...) does, so
`from_pretrained(..., attn_implementation="leank")` works after `from leank_hf import LeanKCache`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "LeanKCache",
    "LeanKError",
    "LeanKMasks",
    "LeanKStaticCache",
    "LeanKUsageError",
    "MaskError",
    "MaskTrainer",
    "TrainSettings",
    "__version__",
    "apply_leank",
    "bundled",
    "custom_generate_path",
    "revert_leank",
    "train_masks",
]

# Public name -> the submodule that defines it (a submodule itself when the name is the module's own).
_SOURCES = {
    "LeanKCache": "cache",
    "LeanKError": "errors",
    "LeanKMasks": "masks",
    "LeanKStaticCache": "static_cache",
    "LeanKUsageError": "errors",
    "MaskError": "errors",
    "MaskTrainer": "training",
    "TrainSettings": "training",
    "apply_leank": "attention",
    "bundled": "bundled",
    "custom_generate_path": "recipe",
    "revert_leank": "attention",
    "train_masks": "training",
}

# Sources that do not import transformers: loading their names leaves the attention unregistered (and cheap).
_WITHOUT_TRANSFORMERS = {"bundled", "errors", "masks"}

if TYPE_CHECKING:
    from . import bundled
    from .attention import apply_leank, revert_leank
    from .cache import LeanKCache
    from .errors import LeanKError, LeanKUsageError, MaskError
    from .masks import LeanKMasks
    from .recipe import custom_generate_path
    from .static_cache import LeanKStaticCache
    from .training import MaskTrainer, TrainSettings, train_masks


def __getattr__(name: str) -> Any:
    """Import the submodule behind a public name on first access, and cache the name here."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_SOURCES[name]}", __name__)
    if _SOURCES[name] not in _WITHOUT_TRANSFORMERS:
        importlib.import_module(".attention", __name__)  # registers the "leank" attention with transformers
    value = module if name == _SOURCES[name] else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
