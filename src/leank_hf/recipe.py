"""Where leank_hf's `custom_generate` recipe is installed (`generate_recipe/custom_generate/generate.py`)."""

from __future__ import annotations

from pathlib import Path


def custom_generate_path() -> str:
    """Folder of the LeanK `custom_generate` recipe, for `generate(custom_generate=..., trust_remote_code=True)`.

    The folder is a Hub repo's layout (`custom_generate/generate.py`, `custom_generate/requirements.txt`, a
    `README.md`), so it also uploads as is with `huggingface_hub.upload_folder`.

    Returns:
        `str`: the folder's path.
    """
    return str(Path(__file__).resolve().parent / "generate_recipe")
