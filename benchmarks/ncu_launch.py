"""Launch the dynamic LeanK decode kernel a few times for a profiler (developer tool, one CUDA GPU).

Usage: `python benchmarks/ncu_launch.py {none,int8,fp8} [--layer 10] [--context 32768] [--batch 8]`, under `ncu`
(`benchmarks/ncu_profile.sh` does that): Llama-3.1-8B attention shape, the bundled Llama mask's layer, random cache
data, default launch settings. Four launches; profile one after the first two (`--launch-skip 2 --launch-count 1`).
"""

from __future__ import annotations

import argparse

import torch

from leank_hf import LeanKMasks
from leank_hf.ops.decode_attention.triton import leank_decode_fwd
from leank_hf.tools.benchmarks.kernel import _layer_caches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("middle", choices=["none", "int8", "fp8"], help="middle storage: the model's dtype or 8-bit")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    masks = LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")
    quant = None if args.middle == "none" else args.middle
    (kv,) = _layer_caches(masks, [args.layer], args.context, args.batch, torch.bfloat16, quant)
    query = torch.randn(args.batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    for _ in range(4):
        leank_decode_fwd(query, kv, 0.1)
    torch.cuda.synchronize()
    print(f"layer {args.layer}: kept widths per KV head {kv.layout.widths.tolist()}")


if __name__ == "__main__":
    main()
