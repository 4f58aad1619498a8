"""Benchmarks behind `leank-hf bench`: memory, CPU decode and GPU kernel/generate timings.

A benchmark builds a `BenchmarkResult`, which prints as a markdown table and saves, into the folder its caller names,
`<name>.json` (rows, raw numbers, settings, environment) and `<name>.md` (the table and the command that made it).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...masks import LeanKMasks

# The bundled mask whose shapes (Llama-3.1-8B: 32 layers, 8 KV heads x 128) the kernel and model benchmarks use.
MASK_ID = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class BenchmarkResult:
    """One benchmark run.

    Args:
        name (`str`): file stem of the saved results, e.g. `"memory"`.
        title (`str`): heading of the markdown file.
        columns (`list[str]`): table header.
        rows (`list[list[Any]]`): table cells, already formatted for display.
        data (`list[dict[str, Any]]`): the raw numbers behind the rows, saved to json.
        settings (`dict[str, Any]`): the benchmark's parameters.
        notes (`list[str]`): lines printed under the table.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    data: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The rows as a markdown table."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def markdown(self, command: str) -> str:
        """Heading, command, table and notes, as saved in the `.md` file."""
        parts = [f"## {self.title}", "", f"`{command}`", "", self.table()]
        for note in self.notes:
            parts += ["", note]
        return "\n".join(parts) + "\n"

    def save(self, directory: str | os.PathLike, command: str = "") -> tuple[Path, Path]:
        """Write `<name>.json` and `<name>.md` into `directory` (created if missing); return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, markdown_path = directory / f"{self.name}.json", directory / f"{self.name}.md"
        payload = {"command": command, "environment": environment(), **asdict(self)}
        json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        markdown_path.write_text(self.markdown(command))
        return json_path, markdown_path


def environment() -> dict[str, Any]:
    """Versions, hardware and commit, recorded with every result."""
    import transformers

    from ... import __version__

    info: dict[str, Any] = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "leank_hf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        info["commit"] = commit.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def mib(size: int) -> str:
    """Bytes as MiB with one decimal, for tables."""
    return f"{size / 2**20:,.1f}"


def llama_masks(num_layers: int, *, spread: bool = False) -> LeanKMasks:
    """`num_layers` layers of the bundled `MASK_ID` mask, with its windows and align: its first layers, or with
    `spread` layers evenly spaced over the whole model (`training_info` lists them)."""
    full = LeanKMasks.from_pretrained(MASK_ID)
    if spread:
        layers = torch.linspace(0, full.num_layers - 1, num_layers).round().long().tolist()
    else:
        layers = list(range(num_layers))
    return LeanKMasks(
        full.mask[layers],
        base_model=full.base_model,
        sink_size=full.sink_size,
        recent_size=full.recent_size,
        flush_size=full.flush_size,
        align=full.align,
        training_info={"layers of": MASK_ID, "layers": layers},
    )
