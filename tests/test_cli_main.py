"""The `leank-hf` dispatcher: `--help` stays light, and registering one command lists the same commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leank_hf.cli.main import build_parser

COMMANDS = ["bench", "demo", "env", "eval", "inspect", "convert", "push", "train"]


def test_help_imports_neither_torch_nor_transformers():
    # A fresh interpreter runs `python -m leank_hf.cli.main --help`, then lists the heavy modules it loaded.
    code = (
        "import runpy, sys\n"
        "sys.argv = ['leank-hf', '--help']\n"
        "try:\n"
        "    runpy.run_module('leank_hf.cli.main', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers', 'triton')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("[]"), result.stdout[-2000:]
    assert all(name in result.stdout for name in COMMANDS)


@pytest.mark.parametrize("command", ["env", "inspect"])
def test_one_registered_command_lists_the_same_commands(command):
    full = build_parser().format_help()
    assert "{" + ",".join(COMMANDS) + "}" in full
    assert build_parser(command).format_help() == full
