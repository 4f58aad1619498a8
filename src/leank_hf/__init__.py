"""leank_hf: LeanK K-cache channel pruning for Hugging Face transformers."""

from . import bundled
from .errors import LeanKError, LeanKUsageError, MaskError
from .masks import LeanKMasks

__version__ = "0.1.0"

__all__ = [
    "LeanKError",
    "LeanKMasks",
    "LeanKUsageError",
    "MaskError",
    "__version__",
    "bundled",
]
