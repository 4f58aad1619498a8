"""argparse `type=` callables shared by every command: a bad value ends the parse with one `error:` line, exit 2.

Each raises `argparse.ArgumentTypeError` naming the value and what is expected; argparse prefixes the option.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from pathlib import Path


def _number(text: str, kind: type, what: str, accept: Callable[[int | float], bool]) -> int | float:
    """`kind(text)` if it parses, is finite and `accept`s, else an `ArgumentTypeError` saying `expected {what}`."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not finite)")
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(text, int, "an integer >= 1", lambda value: value >= 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(text, int, "an integer >= 0", lambda value: value >= 0)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, float, "a finite number > 0", lambda value: value > 0)


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, float, "a finite number >= 0", lambda value: value >= 0)


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return _number(text, float, "a number strictly between 0 and 1", lambda value: 0 < value < 1)


def unit_interval(text: str) -> float:
    """A number between 0 and 1, both included."""
    return _number(text, float, "a number between 0 and 1", lambda value: 0 <= value <= 1)


def sizes(text: str) -> list[int]:
    """Comma-separated token counts >= 1, `k` meaning 1024: `"8k,16384"` -> `[8192, 16384]`."""
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        scale, digits = (1024, item[:-1]) if item.endswith("k") else (1, item)
        if not digits.isdigit() or int(digits) < 1:
            raise argparse.ArgumentTypeError(f"expected comma-separated counts >= 1 such as 8k,16384, got {text!r}")
        values.append(int(digits) * scale)
    return values


def size(text: str) -> int:
    """One count >= 1, `k` meaning 1024 (`"32k"` -> 32768)."""
    values = sizes(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one count such as 32k, got {text!r}")
    return values[0]


def indices(text: str) -> list[int]:
    """Comma-separated integers >= 0 (`"0,5,31"`)."""
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0 such as 0,5,31, got {text!r}")
    return [int(item) for item in items]


def names(known: Iterable[str], *, allow_none: bool = False) -> Callable[[str], list[str]]:
    """A parser of comma-separated names out of `known` (and `"none"` for an empty list if `allow_none`)."""
    known = tuple(known)

    def parse(text: str) -> list[str]:
        if allow_none and text.strip() == "none":
            return []
        chosen = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in chosen if item not in known]
        if unknown or not chosen:
            options = ", ".join(known) + (", or 'none'" if allow_none else "")
            raise argparse.ArgumentTypeError(f"unknown name(s) {unknown or [text]}; choose from {options}")
        return chosen

    return parse


def device(text: str) -> str:
    """A torch device string (`cpu`, `cuda`, `cuda:1`, `mps`, ...)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use e.g. cpu, cuda or cuda:0") from None
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise argparse.ArgumentTypeError(f"{text!r} is not available here ({found}); use cpu or an existing cuda:N")
    return text


def existing_file(text: str) -> str:
    """A path to an existing file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; pass a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file {text!r}")
    return text


def existing_dir(text: str) -> str:
    """A path to an existing folder."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no folder {text!r}")
    return text


def output_dir(text: str) -> str:
    """A folder to write to: missing (created later) or a folder, never a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder; pass a new or existing folder")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise argparse.ArgumentTypeError(f"{text!r} is inside a file; pass a folder path")
    return text


def output_file(text: str) -> str:
    """A file to write to: missing or a file, never a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; pass a file path")
    output_dir(str(path.parent))
    return text


def plot_file(text: str) -> str:
    """An image file to write with matplotlib (which must be installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise argparse.ArgumentTypeError(
            "plotting needs matplotlib: pip install 'leank_hf[plot]' (or pip install matplotlib)"
        ) from None
    return output_file(text)


def repo_id(text: str) -> str:
    """A syntactically valid Hub repo id (`user/name`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Hub repo id ({error}); use user/name") from None
    return text
