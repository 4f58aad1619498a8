"""The README's Python snippets that build on the embedded SmolLM2 run as written (offline), in a scratch folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    # Self-contained snippets load the embedded model; training for 21 minutes is left to the training tests.
    return [block for block in blocks if "load_embedded_model()" in block and "train_masks(" not in block]


def test_the_readme_has_runnable_snippets() -> None:
    assert len(_snippets()) >= 5


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's own call
@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs_as_written(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_snippets()[index], f"README.md snippet {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    if "print(" in _snippets()[index]:
        assert printed.strip(), "the snippet prints its result"
