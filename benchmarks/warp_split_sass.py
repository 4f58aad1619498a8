"""SASS of a prototype 8-bit middle loop whose warps split the keys (the next step for issue #14; not used by the
library). No GPU needed:

    python benchmarks/warp_split_sass.py

The library's loop (`tiles.attend_middle`) has every warp hold a slice of each 128-key tile's columns, so the row
maximum of the scores and the probabilities' layout change cross warps every tile. Here a tile is `[WARPS, 32]` keys
and both products are batched 3-D dots over the warp axis: each warp runs its own online softmax over its 32 keys and
the warps merge once, after the loop. Kept width 32, head_dim 128, GQA group padded to 16 rows, int8 codes as the
library stores them (keys token-major, values channel-major), per-key scales; tail masking as the library does it.
Prints registers, spills and the loop's instructions and barriers next to `benchmarks/kernel_sass.py`'s numbers.
"""

from __future__ import annotations

import triton
import triton.language as tl
from kernel_sass import disassemble, mma_loops, resource_usage
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from leank_hf.ops.decode_attention.tiles import int8_to_half


@triton.jit
def _warp_split_loop(
    Q, K, V, KS, VS, OUT, T,
    WARPS: tl.constexpr, SUB: tl.constexpr, W: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
):  # fmt: skip
    o_w = tl.arange(0, WARPS)
    o_s = tl.arange(0, SUB)
    o_c = tl.arange(0, W)
    o_d = tl.arange(0, D)
    o_g = tl.arange(0, BLOCK_G)
    q = tl.load(Q + o_g[:, None] * W + o_c[None, :]).to(tl.float16)
    q = tl.broadcast_to(q[None, :, :], (WARPS, BLOCK_G, W))
    m_i = tl.full([WARPS, BLOCK_G], float("-inf"), tl.float32)
    l_parts = tl.zeros([WARPS, BLOCK_G, SUB], tl.float32)
    acc = tl.zeros([WARPS, BLOCK_G, D], tl.float32)
    for start in range(0, T, WARPS * SUB):
        rows = start + o_w[:, None] * SUB + o_s[None, :]  # [WARPS, SUB]: warp w takes keys w * SUB .. of the tile
        valid = rows < T
        k = int8_to_half(tl.load(K + rows[:, :, None] * W + o_c[None, None, :], mask=valid[:, :, None], other=0))
        scores = tl.dot(q, tl.trans(k, (0, 2, 1))) * tl.load(KS + rows, mask=valid, other=0.0)[:, None, :]
        scores = tl.where(valid[:, None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 2))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(scores - m_safe[:, :, None])
        l_parts = l_parts * alpha[:, :, None] + p
        v = int8_to_half(tl.load(V + o_d[None, None, :] * T + rows[:, :, None]))  # whole 16-key groups, unmasked
        w = p * tl.load(VS + rows, mask=valid, other=0.0)[:, None, :]
        acc = acc * alpha[:, :, None] + tl.dot(w.to(tl.float16), v)
        m_i = m_new
    m_all = tl.max(m_i, 0)
    weight = tl.exp2(m_i - m_all[None, :])
    l_all = tl.sum(tl.sum(l_parts, 2) * weight, 0)
    out = tl.sum(acc * weight[:, :, None], 0) / l_all[:, None]
    tl.store(OUT + o_g[:, None] * D + o_d[None, :], out)


def main() -> None:
    signature = {"Q": "*bf16", "K": "*i8", "V": "*i8", "KS": "*fp32", "VS": "*fp32", "OUT": "*fp32", "T": "i32"}
    signature.update(dict.fromkeys(("WARPS", "SUB", "W", "D", "BLOCK_G"), "constexpr"))
    aligned = {(index,): [["tt.divisibility", 16]] for index in range(7)}
    for stages, registers in ((2, None), (3, None), (2, 168)):
        constants = {"WARPS": 4, "SUB": 32, "W": 32, "D": 128, "BLOCK_G": 16}
        source = ASTSource(fn=_warp_split_loop, signature=signature, constexprs=constants, attrs=aligned)
        options = {"num_warps": 4, "num_stages": stages, "maxnreg": registers}
        cubin = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]
        (loop,) = mma_loops(disassemble(cubin))
        print(
            f"stages {stages}, register cap {registers}: {resource_usage(cubin)}; loop per 128-key tile "
            f"{sum(loop.values())} instructions, {loop['BAR']} barriers, {loop['LDL']} spill loads",
            flush=True,
        )


if __name__ == "__main__":
    main()
