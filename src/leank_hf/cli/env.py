"""`leank-hf env`: the versions and devices to paste into a bug report."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata

COMMANDS = {"env": "print versions and devices for bug reports"}
PACKAGES = ("torch", "transformers", "triton", "huggingface_hub", "safetensors", "numpy", "leank_hf")


def register(subparsers: argparse._SubParsersAction) -> None:
    env = subparsers.add_parser("env", help=COMMANDS["env"])
    env.set_defaults(func=_env)


def environment_report() -> dict[str, str]:
    """Python, package versions and CUDA availability, as printable strings."""
    import torch

    report = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            report[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            report[name] = "not installed"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))
        report["cuda"] = f"available (CUDA {torch.version.cuda}): {names}"
    else:
        report["cuda"] = "not available"
    return report


def _env(args: argparse.Namespace) -> int:
    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    return 0
