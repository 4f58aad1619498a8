"""Entry point of `leank-hf`: each subcommand module exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LeanKError

# Subcommand modules of this package, each with `register(subparsers)` that sets `func` on its parser.
COMMAND_MODULES = ("bench", "demo", "env", "evaluate", "masks_commands", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leank-hf",
        description="LeanK K-cache channel pruning for transformers.",
        epilog="Exit status: 0 on success, 2 on a usage error (a bad argument, a missing or unreadable input, an "
        "unreachable Hub), printed as one `error:` line; `demo` exits 1 when LeanK misses an answer the full model "
        "gets.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LeanKError, FileNotFoundError) as error:
        print(f"leank-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
