"""The public names of leank_hf, pinned: export or remove a name together with `PUBLIC` (sorted, as RUF022 wants)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import leank_hf

# Exactly `leank_hf.__all__`, in order: adding or removing a public name fails here until this list follows.
PUBLIC = [
    "LeanKCache",
    "LeanKError",
    "LeanKMasks",
    "LeanKStaticCache",
    "LeanKUsageError",
    "MaskError",
    "MaskTrainer",
    "TrainSettings",
    "__version__",
    "apply_leank",
    "bundled",
    "custom_generate_path",
    "revert_leank",
    "train_masks",
]
MASK_METHODS = {
    "check_compatible",
    "dense_kv_bytes_per_token",
    "from_minference",
    "from_pretrained",
    "kept_counts",
    "kept_fraction_per_head",
    "kept_fraction_per_layer",
    "kv_bytes_per_token",
    "kv_bytes_saved_per_token",
    "plot",
    "push_to_hub",
    "save_pretrained",
    "summary",
    "width_histogram",
    "zero_heads",
}


def test_all_is_exactly_the_public_api_and_importable():
    assert leank_hf.__all__ == PUBLIC
    assert set(PUBLIC) <= set(dir(leank_hf))
    for name in leank_hf.__all__:
        assert getattr(leank_hf, name) is not None, name
    namespace: dict = {}
    exec(f"from leank_hf import {', '.join(PUBLIC)}", namespace)  # the `from leank_hf import ...` path
    assert all(namespace[name] is getattr(leank_hf, name) for name in PUBLIC)


def test_unknown_name_is_an_attribute_error():
    assert not hasattr(leank_hf, "not_a_public_name")


def test_package_and_ops_import_without_transformers():
    # A fresh interpreter: importing the package, the contract and the ops loads neither transformers nor the trainer.
    code = (
        "import sys, leank_hf, leank_hf.contract, leank_hf.ops.decode_attention\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] == 'transformers'"
        " or name.startswith(('leank_hf.training', 'leank_hf.attention', 'leank_hf.cache')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_errors_are_user_errors():
    assert issubclass(leank_hf.MaskError, leank_hf.LeanKError) and issubclass(leank_hf.MaskError, ValueError)
    assert issubclass(leank_hf.LeanKUsageError, leank_hf.LeanKError)


def test_mask_api_is_present():
    assert MASK_METHODS <= set(dir(leank_hf.LeanKMasks))
    assert {"kept_fraction", "pruned_ratio", "num_layers", "num_kv_heads", "head_dim"} <= set(dir(leank_hf.LeanKMasks))
    assert callable(leank_hf.bundled.available) and callable(leank_hf.bundled.find)


def test_version_matches_the_installed_metadata():
    assert leank_hf.__version__ == importlib.metadata.version("leank_hf")


def test_library_never_imports_the_tools():
    """DESIGN.md's layers: only `cli/` (lazily) and `tools/` itself import `leank_hf.tools`."""
    import ast
    from pathlib import Path

    package = Path(leank_hf.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] in ("tools", "cli"):
            continue
        depth = len(relative.parts) - 1  # `from ..tools` in a subpackage, `from .tools` at the root
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
                absolute = node.level == 0 and (node.module or "").startswith("leank_hf.tools")
                relative_hit = node.level == depth + 1 and any(n == "tools" or n.startswith("tools.") for n in names)
                if absolute or relative_hit:
                    offenders.append(str(relative))
            elif isinstance(node, ast.Import) and any(a.name.startswith("leank_hf.tools") for a in node.names):
                offenders.append(str(relative))
    assert not offenders
