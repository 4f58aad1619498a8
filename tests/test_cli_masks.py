"""`leank-hf inspect | convert | push | env` through the dispatcher, in-process (and once as the installed script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leank_hf import LeanKMasks
from leank_hf.cli.main import main


def float_mask(counts: list[list[int]], head_dim: int) -> torch.Tensor:
    mask = torch.zeros(len(counts), len(counts[0]), head_dim)
    for layer, row in enumerate(counts):
        for head, count in enumerate(row):
            mask[layer, head, torch.randperm(head_dim)[:count]] = 1.0
    return mask


@pytest.fixture
def pth(tmp_path) -> Path:
    path = tmp_path / "release.pth"
    torch.save(float_mask([[0, 32], [64, 32], [32, 0]], 64), path)
    return path


def test_convert_writes_a_loadable_folder(tmp_path, pth, capsys):
    out = tmp_path / "converted"
    code = main(
        ["convert", str(pth), str(out), "--base-model", "org/tiny", "--sink-size", "4", "--info", "license=MIT"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "org/tiny" in printed and f"saved to {out}" in printed
    loaded = LeanKMasks.from_pretrained(out)
    expected = LeanKMasks.from_minference(pth, base_model="org/tiny", sink_size=4, training_info={"license": "MIT"})
    assert loaded == expected
    assert loaded.align == 32


def test_convert_with_explicit_align_that_does_not_fit_fails_cleanly(tmp_path, pth, capsys):
    assert main(["convert", str(pth), str(tmp_path / "x"), "--base-model", "org/tiny", "--align", "64"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("leank-hf convert: error:") and "not a multiple of align=64" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_convert_rejects_malformed_info(tmp_path, pth, capsys):
    assert main(["convert", str(pth), str(tmp_path / "x"), "--base-model", "org/tiny", "--info", "novalue"]) == 2
    assert "--info takes KEY=VALUE" in capsys.readouterr().err


def test_inspect_prints_the_statistics_table(tmp_path, capsys):
    masks = LeanKMasks.from_pretrained("qwen2.5-7b-instruct")
    masks.save_pretrained(tmp_path / "saved")
    for target in (str(tmp_path / "saved"), "Qwen/Qwen2.5-7B-Instruct"):
        assert main(["inspect", target]) == 0
        assert capsys.readouterr().out.strip() == masks.summary()


def test_inspect_subfolder_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    masks = LeanKMasks.from_pretrained("qwen2.5-7b-instruct")
    masks.save_pretrained(tmp_path / "model" / "leank")
    png = tmp_path / "heatmap.png"
    assert main(["inspect", str(tmp_path / "model"), "--subfolder", "leank", "--plot", str(png)]) == 0
    assert "70.98%" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_of_something_missing_is_one_line(tmp_path, capsys, hub):
    assert main(["inspect", "org/absent", "--local-files-only"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("leank-hf inspect: error:") and "not in the local Hugging Face cache" in error
    assert len(error.strip().splitlines()) == 1
    assert hub.calls() == []


def test_push_uploads_the_folder(tmp_path, capsys, hub):
    masks = LeanKMasks.from_pretrained("qwen2.5-7b-instruct")
    masks.save_pretrained(tmp_path / "saved")
    argv = ["push", str(tmp_path / "saved"), "org/qwen-leank", "--private", "--token", "hf_x", "--subfolder", "leank"]
    assert main(argv) == 0
    assert "pushed" in capsys.readouterr().out
    repo = hub.repos["org/qwen-leank"]
    assert repo["private"] is True
    files = repo["commits"][repo["branches"]["main"]]
    assert files["leank/leank_masks.safetensors"] == (tmp_path / "saved" / "leank_masks.safetensors").read_bytes()
    assert all(r.headers["authorization"] == "Bearer hf_x" for r in hub.requests if r.url.path.startswith("/api/m"))


def test_push_of_a_missing_folder_fails_cleanly(tmp_path, capsys, hub):
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(tmp_path / "nothing"), "org/x"])
    assert exit_.value.code == 2 and "no folder" in capsys.readouterr().err
    assert hub.calls() == []


def test_env_reports_versions_and_cuda(capsys):
    assert main(["env"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    import huggingface_hub
    import transformers

    assert lines["torch"] == torch.__version__
    assert lines["transformers"] == transformers.__version__
    assert lines["huggingface_hub"] == huggingface_hub.__version__
    assert lines["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(lines) >= {"triton", "leank_hf", "safetensors", "cuda"}
    assert lines["cuda"].startswith("available" if torch.cuda.is_available() else "not available")


def test_installed_console_script_runs():
    script = Path(sys.executable).parent / "leank-hf"
    result = subprocess.run([str(script), "inspect", "llama-3.1-8b-instruct"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "68.75%" in result.stdout and "47 / 256" in result.stdout
