"""A compiled `LeanKStaticCache` decode step writes its token into the middle region in place: no generated loop
spans a whole middle buffer (`benchmarks/compiled_write_copies.py`, inductor on the CPU). A write through a view of
the stored tensors made inductor copy the region every step (torch 2.11: the 8-bit writes until the thirteenth #14
session; any torch: a transposed view, the control below)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from leank_hf.middle_region import MiddleRegion

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "compiled_write_copies.py"
CAPACITY = 4096  # slots: only middle buffers are this long in the probe's tiny model


def _probe():
    spec = importlib.util.spec_from_file_location("compiled_write_copies", SCRIPT)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dynamo looks traced code up by name
    spec.loader.exec_module(module)
    return module


PROBE = _probe()


@pytest.mark.slow
@pytest.mark.parametrize("middle_quant", ["none", "int8", "fp8"])
def test_compiled_decode_step_writes_the_middle_in_place(middle_quant: str) -> None:
    assert PROBE.long_loops(middle_quant, CAPACITY) == []


@pytest.mark.slow
def test_probe_finds_a_write_through_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    def values_through_a_transposed_view(self, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
        kept = values.index_select(1, self.value_heads)
        self.values.transpose(2, 3).index_copy_(3, index, kept.transpose(2, 3))

    monkeypatch.setattr(MiddleRegion, "write", values_through_a_transposed_view)
    assert PROBE.long_loops("none", CAPACITY)
