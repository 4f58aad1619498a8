"""`DirectLauncher`: a compiled binary is reused only for launches Triton's JIT would have specialized alike.

GPU only (the interpreter always takes Triton's path). The kernel below is wrong if a binary built for one argument
property serves another: a unit stride is compiled in as a constant, a 16-divisible one and 16-byte aligned pointers
let loads widen; the reference is plain PyTorch.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from leank_hf.ops.decode_attention.direct_launch import DirectLauncher

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@triton.jit
def _strided_scale(X, Y, n, stride, factor, ALPHA: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offsets < n
    x = tl.load(X + offsets * stride, mask=valid)
    tl.store(Y + offsets * stride, x * ALPHA * factor, mask=valid)


def _launch(launcher: DirectLauncher, x: torch.Tensor, n: int, stride: int, factor: float, alpha: float) -> None:
    y = torch.zeros_like(x)
    launcher((triton.cdiv(n, 64), 1, 1), (x, y, n, stride, factor), {"ALPHA": alpha, "BLOCK": 64}, num_warps=2)
    expected = torch.zeros_like(x)
    expected[: n * stride : stride] = x[: n * stride : stride] * alpha * factor
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=0)


def test_binaries_follow_the_jit_specialization() -> None:
    launcher = DirectLauncher(_strided_scale)
    base = torch.randn(4096, device="cuda")
    cases = [  # (x, n, stride, factor, alpha, binaries after the launch)
        (base, 1000, 1, 2.0, 1.0, 1),
        (base, 1000, 1, 3.0, 1.0, 1),  # float argument: not specialized, same binary
        (base, 999, 2, 2.0, 1.0, 2),  # stride 2 must not reuse the binary with stride 1 compiled in
        (base, 999, 3, 2.0, 1.0, 2),  # 3 specializes as 2 does
        (base, 100, 16, 2.0, 1.0, 3),  # divisible by 16
        (base[1:], 1000, 1, 2.0, 1.0, 4),  # a pointer 4 bytes past alignment
        (base[4:], 1000, 1, 2.0, 1.0, 4),  # 16 bytes past: aligned again
        (base, 1000, 1, 2.0, 0.5, 5),  # another constexpr
        (base.double(), 1000, 1, 2.0, 1.0, 6),  # another dtype
        (base, 1000, 2, 2.0, 1.0, 6),  # back to an earlier key
    ]
    for x, n, stride, factor, alpha, binaries in cases:
        _launch(launcher, x, n, stride, factor, alpha)
        _launch(launcher, x, n, stride, factor, alpha)  # the second launch of a key runs the stored binary
        assert len(launcher.binaries) == binaries


def test_refuses_a_wrong_argument_count() -> None:
    launcher = DirectLauncher(_strided_scale)
    x = torch.randn(64, device="cuda")
    launcher((1, 1, 1), (x, x, 64, 1, 1.0), {"ALPHA": 1.0, "BLOCK": 64})
    with pytest.raises(TypeError, match="takes 5 arguments, got 4"):
        launcher((1, 1, 1), (x, x, 64, 1), {"ALPHA": 1.0, "BLOCK": 64})
