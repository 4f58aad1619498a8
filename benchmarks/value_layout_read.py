"""Read bandwidth of 8-bit middle values in three storage layouts: does the channel-major layout cost DRAM efficiency?

    python benchmarks/value_layout_read.py [--batch 8] [--heads 6] [--tokens 32768] [--output results.json]

The 8-bit decode kernel reads each tile of values as `[head_dim, block_n]` codes. Stored channel-major (the caches'
layout until the eighth #14 session: `[B, NV, D, tokens]`), a tile is `head_dim` separate `block_n`-byte runs, one per
channel, a whole token row apart; the bf16 middle (token-major) and the keys are read in contiguous blocks. The caches
now store `tile_blocked` with 128-token tiles (`layout.VALUE_TILE`; H200: 91% of copy bandwidth against 81%). This
kernel does nothing but read such tiles (and sum them, so the loads stay) with the same bytes in three layouts. Its
loads are plain 16-byte vector loads (Triton pipelines through shared memory only loads that feed a product) from many
light programs per SM, so it probes how well DRAM serves each access pattern, not the decode kernel's pipeline:

- `channel_major`: `[B, NV, D, T]`, a tile is `D` runs of `block_n` bytes at a stride of `T` bytes;
- `tile_blocked`: `[B, NV, T / block_n, D, block_n]`, a tile is one contiguous block;
- `group_blocked`: `[B, NV, T / 16, D, 16]`, 16-token groups (`layout.CODE_GROUP`, the kernels' read unit)
  contiguous, so a tile is one contiguous block too, read as 16-byte runs.

Each program reads `tokens / chunks` tokens of one (row, head), like one middle chunk. Prints CUDA-graph times, GB/s
and the fraction of device copy bandwidth per layout; every layout's sum of the codes is checked against the buffer's.
Runs on CPU under `TRITON_INTERPRET=1` with small sizes (the sums check the indexing; the times mean nothing there).
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

LAYOUTS = {"channel_major": 0, "tile_blocked": 1, "group_blocked": 2}
GROUP = 16  # tokens per contiguous group of `group_blocked`
TOKEN_GROUP = tl.constexpr(GROUP)


@triton.jit
def _read_value_tiles(
    CODES, SUMS, tokens, tiles_per_program, chunks, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, LAYOUT: tl.constexpr
):
    program = tl.program_id(0)
    stream = program // chunks  # one (row, head): HEAD_DIM x tokens codes
    first_tile = (program % chunks) * tiles_per_program
    p_stream = CODES + stream.to(tl.int64) * HEAD_DIM * tokens
    o_d = tl.arange(0, HEAD_DIM)
    o_n = tl.arange(0, BLOCK_N)
    if LAYOUT == 0:  # [D, T]
        offsets = o_d[:, None] * tokens + o_n[None, :]
    elif LAYOUT == 1:  # [T / BLOCK_N, D, BLOCK_N]
        offsets = o_d[:, None] * BLOCK_N + o_n[None, :]
    else:  # [T / GROUP, D, GROUP]
        offsets = (
            (o_n[None, :] // TOKEN_GROUP) * (HEAD_DIM * TOKEN_GROUP)
            + o_d[:, None] * TOKEN_GROUP
            + o_n[None, :] % TOKEN_GROUP
        )
    step = BLOCK_N if LAYOUT == 0 else HEAD_DIM * BLOCK_N  # from one tile to the next
    p_tile = p_stream + first_tile.to(tl.int64) * step
    total = tl.zeros([HEAD_DIM, BLOCK_N], dtype=tl.int32)
    for _ in range(tiles_per_program):
        total += tl.load(p_tile + offsets).to(tl.int32)
        p_tile += step
    tl.store(SUMS + program, tl.sum(tl.sum(total, 1), 0))


def read_all(
    codes: torch.Tensor, layout: str, streams: int, tokens: int, chunks: int, block_n: int, **launch
) -> torch.Tensor:
    """Per-program sums of the codes, each program reading `tokens / chunks` tokens of one stream."""
    head_dim = codes.numel() // (streams * tokens)
    sums = torch.empty(streams * chunks, dtype=torch.int32, device=codes.device)
    tiles_per_program = tokens // (chunks * block_n)
    _read_value_tiles[(streams * chunks,)](
        codes, sums, tokens, tiles_per_program, chunks, HEAD_DIM=head_dim, BLOCK_N=block_n, LAYOUT=LAYOUTS[layout],
        **launch,
    )  # fmt: skip
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6, help="value heads per row (the Llama mask keeps 6.5 of 8)")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-n", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=16, help="programs per (row, head)")
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--output", help="also save the results as JSON here")
    args = parser.parse_args()
    if args.tokens % (args.chunks * args.block_n) or args.block_n % GROUP:
        parser.error("--tokens must be a multiple of --chunks x --block-n, and --block-n of 16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    streams = args.batch * args.heads
    codes = torch.randint(-128, 128, (streams * args.head_dim * args.tokens,), dtype=torch.int8, device=device)
    expected = int(codes.sum(dtype=torch.int64))
    launch = {"num_warps": args.warps, "num_stages": args.stages} if device == "cuda" else {}
    copy_gbps = None
    if device == "cuda":
        from leank_hf.tools.benchmarks.kernel import copy_bandwidth_gbps

        copy_gbps = copy_bandwidth_gbps()
    rows = []
    for layout in LAYOUTS:

        def call(layout=layout):
            return read_all(codes, layout, streams, args.tokens, args.chunks, args.block_n, **launch)

        got = int(call().sum(dtype=torch.int64))
        if got != expected:
            raise SystemExit(f"{layout}: sum of codes read {got}, expected {expected}: wrong indexing")
        row = {"layout": layout, "bytes": codes.numel()}
        if device == "cuda":
            ms = triton.testing.do_bench_cudagraph(call, rep=50, return_mode="median")
            gbps = codes.numel() / (ms * 1e-3) / 1e9
            row |= {"us": ms * 1e3, "gbps": gbps, "copy_fraction": gbps / copy_gbps}
        rows.append(row)
    print(
        f"{streams} streams x {args.head_dim} x {args.tokens} codes, {args.chunks} programs per stream, block_n "
        f"{args.block_n}, {args.warps} warps, {args.stages} stages; copy bandwidth {copy_gbps or 0:.0f} GB/s"
    )
    print("| layout | us | GB/s | % of copy BW |\n|---|---|---|---|")
    for row in rows:
        if "us" in row:
            print(f"| {row['layout']} | {row['us']:.1f} | {row['gbps']:.0f} | {100 * row['copy_fraction']:.0f}% |")
        else:
            print(f"| {row['layout']} | sums checked | | |")
    if args.output:
        with open(args.output, "w") as file:
            json.dump({"settings": vars(args), "copy_gbps": copy_gbps, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    main()
