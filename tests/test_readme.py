"""Every Python snippet of the README runs as written (offline, in a scratch folder), except the ones `NOT_RUN` names
with the reason. Snippets that name Hub repos (`user/...`) or a downloaded file find them prepared by `SETUPS`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from leank_hf import LeanKMasks

README = Path(__file__).resolve().parents[1] / "README.md"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"

# A text each skipped snippet alone contains -> why it is not run here.
NOT_RUN = {
    'tp_plan="auto"': "tensor parallelism: torchrun on 2 GPUs with an 8B model from the Hub; "
    "tests/test_tensor_parallel.py runs the same calls (tp_plan='auto', LeanKCache.for_model, generate) under torchrun "
    "on a tiny Llama",
    "train_masks(": "trains for 21 minutes; tests/test_training.py and tests/test_examples.py train briefly",
}


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def _runnable() -> list[str]:
    return [block for block in _snippets() if not any(text in block for text in NOT_RUN)]


def _hub_repos(hub, cwd: Path) -> None:
    """The repos and folder the "Load" snippet names: a masks repo, a model repo's `leank/` at revision v1, a folder."""
    masks = LeanKMasks.from_pretrained(SMOLLM2)
    masks.save_pretrained(cwd / "my-mask")
    files = {path.name: path.read_bytes() for path in (cwd / "my-mask").iterdir()}
    hub.add_repo("user/llama-leank", files)
    commit = hub.add_repo("user/my-model", {"config.json": b"{}", **{f"leank/{n}": data for n, data in files.items()}})
    hub.repos["user/my-model"]["branches"]["v1"] = commit


def _empty_hub(hub, cwd: Path) -> None:
    """`push_to_hub` uploads to the fake Hub."""


def _minference_file(hub, cwd: Path) -> None:
    """The authors' `.pth` format: float 0/1 `[L, H, D]`; the shipped Llama mask is a conversion of that file."""
    torch.save(LeanKMasks.from_pretrained(LLAMA).mask.float(), cwd / "llama3.1-8b-instruct.pth")


# A text the snippet contains -> what must exist before it runs (receives the fake Hub and the scratch folder).
SETUPS: dict[str, Callable[..., None]] = {
    '"user/llama-leank"': _hub_repos,
    "push_to_hub(": _empty_hub,
    "from_minference(": _minference_file,
}


def test_exactly_the_named_snippets_are_not_run() -> None:
    """Each `NOT_RUN` text picks one snippet, each `SETUPS` text one runnable snippet; everything else runs."""
    snippets = _snippets()
    for text in NOT_RUN:
        assert sum(text in block for block in snippets) == 1, text
    for text in SETUPS:
        assert sum(text in block for block in _runnable()) == 1, text
    assert len(_runnable()) == len(snippets) - len(NOT_RUN) >= 10


def _params() -> list:
    """One param per runnable snippet; those that load the embedded model are `smollm2` and `slow`."""
    params = []
    for index, block in enumerate(_runnable()):
        marks = [pytest.mark.smollm2, pytest.mark.slow] if "load_embedded_model()" in block else []
        params.append(pytest.param(block, id=f"snippet{index}", marks=marks))
    return params


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own call
@pytest.mark.parametrize("snippet", _params())
def test_readme_snippet_runs_as_written(
    snippet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, request: pytest.FixtureRequest
) -> None:
    monkeypatch.chdir(tmp_path)
    setups = [setup for text, setup in SETUPS.items() if text in snippet]
    hub = None
    if setups:
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("HF_TOKEN", "hf_readme")
        hub = request.getfixturevalue("hub")
        for setup in setups:
            setup(hub, tmp_path)
    exec(compile(snippet, "README.md snippet", "exec"), {"__name__": "__readme__"})
    if "print(" in snippet:
        assert capsys.readouterr().out.strip(), "the snippet prints its result"
    if "push_to_hub(" in snippet:
        repo = hub.repos["user/my-model"]
        assert "leank/leank_masks.safetensors" in repo["commits"][repo["branches"]["main"]]
