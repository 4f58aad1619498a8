"""Sweep launch settings of the LeanK decode kernel on a GPU (developer tool; the defaults live in the launcher).

Usage: `python benchmarks/tune_kernel.py [--layers 0,10,20,31]`. Prints the host-side cost of one call, CUDA-graph
timings (no host overhead) of the kernel against SDPA, then one line per (setting, point): mean CUDA-graph kernel time
over the layers, achieved bandwidth and its fraction of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics

import torch
import triton.testing

from leank_hf import LeanKMasks
from leank_hf.ops.decode_attention.launch import TileSettings, middle_chunks, sm_count
from leank_hf.ops.decode_attention.triton import _check_inputs, leank_decode_fwd
from leank_hf.tools.benchmarks.kernel import _bench, _layer_caches, _leank_bytes, copy_bandwidth_gbps, host_us_per_call

POINTS = [(32768, 8), (32768, 1), (131072, 1), (32768, 32)]


def report_host_cost(masks: LeanKMasks) -> None:
    """Host cost of one call on a small problem (the GPU finishes first, so the host time is what is measured)."""
    (kv,) = _layer_caches(masks, [10], 8192, 1, torch.bfloat16)
    query = torch.randn(1, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    call = host_us_per_call(functools.partial(leank_decode_fwd, query, kv, 0.1))
    check = host_us_per_call(functools.partial(_check_inputs, query, kv))
    alloc = host_us_per_call(functools.partial(torch.empty, 4096, device="cuda"))
    print(f"host us/call: leank_decode_fwd {call:.1f}, _check_inputs {check:.1f}, torch.empty {alloc:.1f}", flush=True)


def report_graph_times(masks: LeanKMasks, context: int, batch: int, copy_gbps: float) -> None:
    """Graph-replay (no host overhead) and event times of the kernel on one layer, against SDPA's graph time."""
    (kv,) = _layer_caches(masks, [10], context, batch, torch.bfloat16)
    query = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
    keys = torch.randn(batch, 8, context, 128, device="cuda", dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, query, keys, values, enable_gqa=True)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        sdpa_graph = triton.testing.do_bench_cudagraph(sdpa, rep=50, return_mode="median")
    leank = functools.partial(leank_decode_fwd, query, kv, 0.1)
    leank_graph = triton.testing.do_bench_cudagraph(leank, rep=50, return_mode="median")
    leank_events = _bench(leank, 50)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(20):
            leank()
        torch.cuda.synchronize()
    kernels = {
        event.key: event.device_time_total / event.count for event in profile.key_averages() if "leank" in event.key
    }
    share = _leank_bytes(kv, batch, 2) / (leank_graph * 1e-3) / 1e9 / copy_gbps
    print(
        f"T={context:6d} B={batch:2d} layer 10: graph leank {leank_graph * 1e3:7.1f} us ({100 * share:3.0f}% of copy), "
        f"events {leank_events * 1e3:7.1f} us; graph sdpa {sdpa_graph * 1e3:7.1f} us; "
        f"speedup {sdpa_graph / leank_graph:.2f}x; per kernel us: "
        + ", ".join(f"{name} {us:.1f}" for name, us in kernels.items()),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", default="0,10,20,31")
    parser.add_argument("--block-n", default="32,64,128")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--stages", default="2,3,4")
    parser.add_argument(
        "--chunking", default="equal", help="middle chunks: 'equal' or GUIDED:MIN_KEYS:PROGRAMS_PER_SM, comma-separated"
    )
    parser.add_argument("--full-block-n", default="64", help="full-region slots per tile (at most --block-n)")
    parser.add_argument("--max-registers", default="0", help="per-thread register caps; 0: the compiler's choice")
    parser.add_argument("--points", default=",".join(f"{t}:{b}" for t, b in POINTS), help="context:batch,...")
    parser.add_argument("--no-report", action="store_true", help="skip the host-cost and graph-time report")
    parser.add_argument("--no-sweep", action="store_true", help="only the host-cost and graph-time report")
    parser.add_argument("--middle-quant", choices=["int8", "fp8"], help="sweep an 8-bit middle region (codes + scales)")
    args = parser.parse_args()
    masks = LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")
    layers = [int(x) for x in args.layers.split(",")]
    copy_gbps = copy_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name()}  copy {copy_gbps:.0f} GB/s", flush=True)
    points = [tuple(int(x) for x in point.split(":")) for point in args.points.split(",")]
    if not args.no_report:
        report_host_cost(masks)
        for context, batch in points:
            report_graph_times(masks, context, batch, copy_gbps)
            torch.cuda.empty_cache()
    if args.no_sweep:
        return
    query_scale = 128**-0.5
    settings = list(
        itertools.product(
            [int(x) for x in args.block_n.split(",")],
            [int(x) for x in args.warps.split(",")],
            [int(x) for x in args.stages.split(",")],
            [int(x) for x in args.full_block_n.split(",")],
            [int(x) for x in args.max_registers.split(",")],
        )
    )
    chunkings = args.chunking.split(",")
    for context, batch in points:
        caches = _layer_caches(masks, layers, context, batch, torch.bfloat16, args.middle_quant)
        query = torch.randn(batch, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
        nbytes = statistics.fmean(_leank_bytes(kv, batch, 2) for kv in caches)
        for (block_n, warps, stages, full_block_n, registers), chunking in itertools.product(settings, chunkings):
            tiles = TileSettings(block_n, min(full_block_n, block_n), stages, registers or None)
            label = f"bn={block_n:3d} w={warps} s={stages} fbn={tiles.full_block_n:3d} r={registers:3d} {chunking:>12s}"
            guided, min_keys, per_sm = (float(x) for x in chunking.split(":")) if ":" in chunking else (0, 512, 3)
            chunks = [
                middle_chunks(
                    batch,
                    kv.layout.num_value_heads,
                    kv.num_mid,
                    block_n,
                    sm_count(0),
                    guided=guided,
                    programs_per_sm=int(per_sm),
                    min_keys=int(min_keys),
                )
                for kv in caches
            ]
            try:
                launch = functools.partial(leank_decode_fwd, query, scale=query_scale, num_warps=warps, settings=tiles)
                times = [
                    triton.testing.do_bench_cudagraph(
                        functools.partial(launch, kv, chunks=bounds), rep=20, return_mode="median"
                    )
                    for kv, bounds in zip(caches, chunks)
                ]
            except Exception as error:  # noqa: BLE001 - report settings the compiler rejects and go on
                print(f"T={context} B={batch} {label}: {type(error).__name__}")
                continue
            ms = statistics.fmean(times)
            gbps = nbytes / (ms * 1e-3) / 1e9
            print(
                f"T={context:6d} B={batch:2d} {label} chunks={len(chunks[0]) - 1:3d} "
                f"{ms * 1e3:8.1f} us {gbps:6.0f} GB/s {100 * gbps / copy_gbps:4.0f}%",
                flush=True,
            )
        del caches
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
