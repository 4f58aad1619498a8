"""Benchmark results go exactly where the command says: `--output-dir` (default stated in `--help`), nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from leank_hf.cli.main import main

MEMORY = ["bench", "memory", "--tokens", "2k", "--models", "Qwen2.5-7B"]


def files_under(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty current directory inside `tmp_path`."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--output-dir", "{tmp}/out/deep"], "out/deep"),  # absolute: the current directory plays no part
        (["--output-dir", "relative"], "cwd/relative"),  # relative to the current directory
        ([], "cwd/benchmarks/results"),  # the default `--help` states
    ],
    ids=["absolute", "relative", "default"],
)
def test_results_go_exactly_to_the_output_dir(tmp_path, cwd, capsys, option, expected):
    argv = MEMORY + [part.replace("{tmp}", str(tmp_path)) for part in option]
    assert main(argv) == 0
    assert files_under(tmp_path) == {Path(expected, "memory.json"), Path(expected, "memory.md")}
    printed = capsys.readouterr().out
    assert f"saved {tmp_path / expected / 'memory.json'}" in printed  # the absolute path, whatever the cwd
    assert "Qwen2.5-7B | 2,048" in (tmp_path / expected / "memory.md").read_text()


def test_no_save_writes_nothing(tmp_path, cwd):
    assert main(MEMORY + ["--no-save"]) == 0
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("benchmark", ["memory", "decode", "kernel", "generate"])
def test_every_benchmark_states_its_output_dir_in_help(benchmark, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["bench", benchmark, "--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--output-dir OUTPUT_DIR" in text
    assert "(default: benchmarks/results, relative to the current directory)" in text


def test_results_need_a_folder():
    from leank_hf.tools.benchmarks import BenchmarkResult

    result = BenchmarkResult("x", "x", ["a"], [[1]], [{"a": 1}], {})
    with pytest.raises(TypeError, match="directory"):
        result.save()  # no implicit place


@pytest.mark.parametrize("stage", ["check", "bench"])
def test_tensor_parallel_stages_need_their_results_folder(tmp_path, capsys, stage):
    from leank_hf.tools.benchmarks.generate_tp import main as tp_main

    with pytest.raises(SystemExit) as exit:
        tp_main([stage, str(tmp_path / "work")])
    assert exit.value.code == 2
    assert f"{stage} writes its results to OUT" in capsys.readouterr().err
    assert files_under(tmp_path) == set()
