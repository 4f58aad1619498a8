"""The package's import structure: no module imports, at run time, a module that imports it back (DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import leank_hf

PACKAGE = Path(leank_hf.__file__).parent


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level or inside functions, not under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        for child in ast.iter_child_nodes(pending.pop()):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            else:
                pending.append(child)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time. The package root is left out: its `__init__` loads its
    names lazily, and `from . import __version__` reads a constant."""
    modules = {_module_name(path, package): path for path in sorted(package.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if node.level:  # `from .x import y` / `from .. import y`: relative to the module's package
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in modules and target not in (name, package.name)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    return next((cycle for module in sorted(graph) if module not in state and (cycle := visit(module))), None)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert {"leank_hf.masks", "leank_hf.hub", "leank_hf.cli.main", "leank_hf.tools.benchmarks"} <= set(graph)
    assert graph["leank_hf.masks"] >= {"leank_hf.hub", "leank_hf.minference"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_sees_a_lazy_import_cycle(tmp_path):
    # masks.py and hub.py as they were before issue #12: a lazy import inside a method closed the circle.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "masks.py").write_text("class Masks:\n    def load(self):\n        from .hub import load\n")
    (package / "hub.py").write_text("from typing import TYPE_CHECKING\nfrom .masks import Masks\n")
    (package / "card.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .hub import x\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.masks": {"pkg.hub"}, "pkg.hub": {"pkg.masks"}, "pkg.card": set()}
    assert find_cycle(graph) == ["pkg.hub", "pkg.masks", "pkg.hub"]


def test_the_file_format_modules_do_not_load_the_mask_class():
    code = (
        "import sys, leank_hf.hub, leank_hf.minference, leank_hf.serialization, leank_hf.card\n"
        "assert 'leank_hf.masks' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
