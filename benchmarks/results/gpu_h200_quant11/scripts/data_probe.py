"""Does the 8-bit kernel's speed depend on the code bytes it reads? (device probe, eleventh #14 session)

`bench kernel` fills an int8 middle with normal values encoded at unit scale: codes in [-3, 3], stored bytes 125..131.
A cache holds codes quantized per token and head (scale = amax / 127): bytes spread over the range. This times the
kernel over the 32 Llama-mask layers at 32K batch 8 (CUDA-graph medians, as `bench kernel`) with the same caches
refilled with several byte patterns, interleaved, and a 2 GiB uint8 copy of the same patterns.
"""

import functools
import statistics

import torch
import triton.testing

from leank_hf import LeanKMasks
from leank_hf.ops.decode_attention.quantization import FORMATS, encode
from leank_hf.ops.decode_attention.triton import leank_decode_triton
from leank_hf.tools.benchmarks import MASK_ID
from leank_hf.tools.benchmarks.kernel import _as_cache_steps, _layer_caches, _leank_bytes, copy_bandwidth_gbps


def pattern(kind: str, quant: str, shape: tuple[int, ...], row: int) -> torch.Tensor:
    """Stored bytes (uint8) of `shape`: 'bench' = unit-scale codes of N(0, 1); 'quantized' = codes of N(0, 1) rows of
    `row` elements at scale amax / qmax (what the cache stores); 'uniform' = random bytes; 'zero' = code 0."""
    fmt = FORMATS[quant]
    values = torch.randn(*shape[:-1], shape[-1] // row, row, device="cuda")
    if kind == "bench":
        codes = encode(values, torch.ones((), device="cuda"), fmt)
    elif kind == "quantized":
        codes = encode(values, values.abs().amax(-1, keepdim=True) / fmt.qmax, fmt)
    elif kind == "uniform":
        return torch.randint(0, 256, shape, device="cuda", dtype=torch.uint8)
    else:
        codes = encode(torch.zeros_like(values), torch.ones((), device="cuda"), fmt)
    return codes.flatten(-2).view(torch.uint8)


def refill(caches, kind: str, quant: str) -> None:
    for kv in caches:
        keys = kv.mid_keys.view(torch.uint8)
        keys.copy_(pattern(kind, quant, tuple(keys.shape), 32))
        values = kv.mid_values.view(torch.uint8)  # [B, NV, tiles, D, 128]: rows of 128 tokens of one channel
        values.copy_(pattern(kind, quant, tuple(values.shape), 128))


def main() -> None:
    masks = LeanKMasks.from_pretrained(MASK_ID)
    copy = copy_bandwidth_gbps()
    print(f"copy (randn fp32) {copy:.0f} GB/s", flush=True)
    size = 2 << 30
    for kind in ("zero", "bench", "quantized", "uniform"):
        src = pattern(kind, "int8", (size // 128, 128), 128).flatten()
        ms = triton.testing.do_bench(functools.partial(torch.empty_like(src).copy_, src), rep=100, return_mode="median")
        print(f"uint8 copy, int8 {kind:9s} bytes: {2 * size / ms / 1e6:.0f} GB/s", flush=True)
        del src
    query = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    layers = list(range(32))
    results: dict[tuple[str, str], list[float]] = {}
    for quant, kinds in (("int8", ("bench", "quantized", "uniform", "zero")), ("fp8", ("bench", "quantized", "zero"))):
        caches = _as_cache_steps(query, _layer_caches(masks, layers, 32768, 8, torch.bfloat16, quant))
        nbytes = statistics.fmean(_leank_bytes(kv, 8, 2) for kv in caches)
        for rnd in range(2):
            for kind in kinds:
                refill(caches, kind, quant)
                ms = statistics.fmean(
                    triton.testing.do_bench_cudagraph(lambda kv=kv: leank_decode_triton(query, kv, scale=0.088), rep=25)
                    for kv in caches
                )
                gbps = nbytes / ms / 1e6
                results.setdefault((quant, kind), []).append(gbps)
                print(
                    f"{quant} {kind:9s} round {rnd}: {ms * 1e3:6.1f} us, {gbps:5.0f} GB/s, {100 * gbps / copy:4.1f}%",
                    flush=True,
                )
        del caches
        torch.cuda.empty_cache()
    for (quant, kind), values in results.items():
        print(
            f"SUMMARY {quant} {kind:9s} "
            + " ".join(f"{v:.0f}" for v in values)
            + f"  mean {100 * statistics.fmean(values) / copy:.1f}%"
        )


if __name__ == "__main__":
    main()
