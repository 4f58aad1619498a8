"""Host time of one LeanK decode-kernel launch on a CUDA machine, split into the launcher's own work and Triton's.

    python benchmarks/launch_host_cost.py [--context 32768] [--batch 1] [--middle-quant int8] [--calls 2000]

Times three things per call on one layer of the bundled Llama mask, as a cache layer hands its steps to the kernel
(`CompactKV.from_cache`): the whole `leank_decode_triton` call; the same call with the kernel launch replaced by a
no-op (the launcher's checks, buffers and arguments); and Triton's launch alone, given the arguments the launcher
built. Each is the host time per call of a loop of calls (`tools.benchmarks.kernel.host_us_per_call`), so it is the
host's cost only while the GPU keeps up: keep the problem small (batch 1) for the numbers to mean host time.
"""

from __future__ import annotations

import argparse
import functools

import torch

from leank_hf.masks import LeanKMasks
from leank_hf.ops.decode_attention import triton as triton_decode
from leank_hf.tools.benchmarks import MASK_ID
from leank_hf.tools.benchmarks.kernel import _as_cache_steps, _layer_caches, host_us_per_call


class _RecordLaunch:
    """Stands in for the Triton kernel: a launch records its grid and arguments and does nothing."""

    def __init__(self) -> None:
        self.launch: tuple = ()

    def __getitem__(self, grid: tuple[int, ...]):
        def record(*args, **kwargs):
            self.launch = (grid, args, kwargs)

        return record


def measure(context: int, batch: int, middle_quant: str | None, calls: int) -> dict[str, float]:
    """Host microseconds per call: `whole`, `launcher` (launch stubbed out) and `triton_launch`."""
    masks = LeanKMasks.from_pretrained(MASK_ID)
    query = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    (kv,) = _as_cache_steps(query, _layer_caches(masks, [0], context, batch, torch.bfloat16, middle_quant))
    call = functools.partial(triton_decode.leank_decode_triton, query, kv, scale=0.1)
    kernel, recorder = triton_decode._leank_decode_kernel, _RecordLaunch()
    triton_decode._leank_decode_kernel = recorder
    try:
        launcher = host_us_per_call(call, calls)
    finally:
        triton_decode._leank_decode_kernel = kernel
    grid, args, kwargs = recorder.launch
    return {
        "whole": host_us_per_call(call, calls),
        "launcher": launcher,
        "triton_launch": host_us_per_call(lambda: kernel[grid](*args, **kwargs), calls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--middle-quant", choices=["none", "int8", "fp8"], default="none")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    quant = None if args.middle_quant == "none" else args.middle_quant
    costs = measure(args.context, args.batch, quant, args.calls)
    print(
        f"{args.middle_quant} middle, {args.context} tokens, batch {args.batch}: "
        + ", ".join(f"{name} {us:.1f} us" for name, us in costs.items())
    )


if __name__ == "__main__":
    main()
