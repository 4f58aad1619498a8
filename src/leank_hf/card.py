"""The model card (`README.md`) of a saved mask: front matter for the Hub, a generated section, idempotent merging."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from .constants import LIBRARY_NAME

if TYPE_CHECKING:
    from .masks import LeanKMasks

CARD_TAGS = ("kv-cache", "leank")
_CARD_START = "<!-- leank_hf mask card: start (generated, refreshed by save_pretrained) -->"
_CARD_END = "<!-- leank_hf mask card: end -->"


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
