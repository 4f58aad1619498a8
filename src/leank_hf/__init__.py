"""leank_hf: LeanK K-cache channel pruning for Hugging Face transformers."""

from . import bundled
from .attention import apply_leank, revert_leank
from .cache import LeanKCache
from .errors import LeanKError, LeanKUsageError, MaskError
from .masks import LeanKMasks
from .recipe import custom_generate_path
from .static_cache import LeanKStaticCache
from .training import train_masks

__version__ = "0.1.0"

__all__ = [
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
]
