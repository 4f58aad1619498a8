"""Entry point of `leank-hf`: each subcommand module exposes `COMMANDS` (name -> help) and `register(subparsers)`.

The modules import only the standard library at load time, and `main` registers only the command it runs in full
(the others as name and help), so `leank-hf --help` imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LeanKError

# Subcommand modules of this package, each with `COMMANDS` and `register(subparsers)` that sets `func` on its parsers.
COMMAND_MODULES = ("bench", "demo", "env", "evaluate", "masks_commands", "train")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `leank-hf` parser: every command in full, or only `command` (the others listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="leank-hf",
        description="LeanK K-cache channel pruning for transformers.",
        epilog="Exit status: 0 on success, 2 on a usage error (a bad argument, a missing or unreadable input, an "
        "unreachable Hub), printed as one `error:` line; `demo` exits 1 when LeanK misses an answer the full model "
        "gets.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        if command is None or command in module.COMMANDS:
            module.register(subparsers)
        else:
            for listed, help_text in module.COMMANDS.items():
                subparsers.add_parser(listed, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LeanKError, FileNotFoundError) as error:
        print(f"leank-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
