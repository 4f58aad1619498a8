"""examples/quickstart.ipynb: stored without outputs, and run end to end on the embedded SmolLM2 with real results."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Appended to the notebook: prints, as one JSON line, the kernel state the assertions below check.
REPORT_CELL = """
import json

print(json.dumps({
    "fact": fact,
    "full_answer": full_answer,
    "leank_answer": leank_answer,
    "full_tokens": full_cache.get_seq_length(),
    "leank_tokens": leank_cache.get_seq_length(),
    "full_bytes": full_bytes,
    "leank_bytes": leank_bytes,
    "itemsize": model.dtype.itemsize,
    "bundled": {"mask": masks.mask.tolist(), "windows": [masks.sink_size, masks.recent_size, masks.flush_size]},
    **{
        name: {
            "mask": m.mask.tolist(),
            "windows": [m.sink_size, m.recent_size, m.flush_size],
            "base_model": m.base_model,
            "target_ratio": m.target_ratio,
            "align": m.align,
        }
        for name, m in (("trained", trained), ("reloaded", reloaded))
    },
}))
"""


def python_kernel(root: Path) -> str:
    """Write a kernel spec that runs this interpreter into `root/kernels`; returns its name (JUPYTER_PATH=root)."""
    spec = root / "kernels" / "leank-quickstart-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "leank test", "language": "python"}))
    return spec.name


def leank_cache_bytes(mask: torch.Tensor, tokens: int, windows: list[int], itemsize: int) -> int:
    """Bytes of a batch-1 LeanK cache while decoding (DESIGN.md): slots [sink, flushed(L)) pruned, the rest full."""
    sink, recent, flush = windows
    middle = flush * (max(0, tokens - sink - recent) // flush)
    layers, heads, dim = mask.shape
    full_token = 2 * layers * heads * dim * itemsize
    middle_token = (int(mask.sum()) + int((mask.sum(-1) > 0).sum()) * dim) * itemsize
    return (tokens - middle) * full_token + middle * middle_token


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}
    for cell in notebook.cells:
        assert cell.metadata == {}, cell.id
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {cell.id} has outputs: strip them"


@pytest.mark.smollm2
@pytest.mark.slow
def test_notebook_runs_and_its_results_hold(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the notebook must not need the Hub
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the training run's temporary folder goes with the test's
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures become image outputs
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = NotebookClient(
        notebook, timeout=600, kernel_name=python_kernel(tmp_path), resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    # The mask heatmap, the memory plot and the trained mask's heatmap.
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3
    report = json.loads("".join(o.text for o in notebook.cells[-1].outputs if o.get("name") == "stdout"))

    # The prompt's seed is one the full model answers; LeanK with the bundled mask answers it too.
    assert report["fact"] in report["full_answer"], report["full_answer"]
    assert report["fact"] in report["leank_answer"], report["leank_answer"]

    bundled = torch.tensor(report["bundled"]["mask"])
    layers, heads, dim = bundled.shape
    assert report["full_bytes"] == report["full_tokens"] * 2 * layers * heads * dim * report["itemsize"]
    expected = leank_cache_bytes(bundled, report["leank_tokens"], report["bundled"]["windows"], report["itemsize"])
    assert report["leank_tokens"] > sum(report["bundled"]["windows"])  # the prompt reaches the pruned middle
    assert report["leank_bytes"] == expected
    assert report["leank_bytes"] < report["full_bytes"]

    trained, reloaded = report["trained"], report["reloaded"]
    mask = torch.tensor(trained["mask"])
    assert mask.shape == bundled.shape
    assert int(mask.sum()) == round(0.3 * mask.numel())  # ratio=0.7: exactly 70% of the channels pruned
    assert (mask.sum(-1) % 16 == 0).all()  # align=16
    assert trained["target_ratio"] == 0.7 and trained["align"] == 16 and trained["windows"] == [64, 256, 64]
    assert trained["base_model"] == BASE_MODEL
    assert reloaded == trained
