"""`bench kernel`'s random 8-bit middle holds codes as the cache quantizes them: the kernel's speed depends on the
bytes it reads, so unit-scale codes (int8 nearly all in [-4, 4]) would time it on bytes no cache stores."""

from __future__ import annotations

import pytest
import torch

from leank_hf.ops.decode_attention.quantization import FORMATS
from leank_hf.tools.benchmarks.kernel import _random_middle
from packing import code_numbers


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_random_8bit_middle_is_quantized_per_row(quant: str) -> None:
    codes = _random_middle((3, 5 * 32), torch.bfloat16, quant, row=32, device="cpu")
    assert codes.shape == (3, 5 * 32) and codes.dtype == FORMATS[quant].dtype
    largest = code_numbers(codes, quant).view(3, 5, 32).abs().amax(-1)  # every row reaches the format's largest code
    torch.testing.assert_close(largest, torch.full((3, 5), FORMATS[quant].qmax))
