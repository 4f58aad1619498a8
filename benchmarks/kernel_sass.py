"""Count the SASS instructions of the dynamic LeanK decode kernel built for sm_90, on any machine (no GPU needed).

    python benchmarks/kernel_sass.py [--block-n 64] [--full-block-n 32] [--stages 2] [--max-registers 128]
                                     [--max-width 96]

Compiles `ops.decode_attention.triton._leank_decode_kernel` with Triton's bundled ptxas for a bf16 query (Llama
shape: head_dim 128, GQA group 4) with a bf16, int8 and FP8 e4m3 middle, disassembles it with Triton's bundled
nvdisasm and prints the registers per thread and spilled bytes, the instruction total, the most frequent opcodes and
the size of each tensor-core loop (one tile per trip: the full region's, then the middle's per kept width) with its
barriers and spill loads. Static counts, not a profile: they show what a
storage adds per tile before any device time is spent.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from leank_hf.ops.decode_attention.launch import TileSettings, query_block, tile_settings
from leank_hf.ops.decode_attention.triton import _leank_decode_kernel

POINTERS = {
    "Q": "bf16", "FULL_K": "bf16", "FULL_V": "bf16", "MID_KS": "fp32", "MID_VS": "fp32", "PAD": "i64",
    "KEY_MASK": "u8", "WIDTHS": "i32", "CHANNELS": "i32", "OFFSETS": "i64", "VALUE_SLOTS": "i32",
    "STORAGE_ORDER": "i64", "CHUNK_STARTS": "i32", "O_PART": "fp32", "LSE_PART": "fp32", "COUNTERS": "i32",
    "OUT": "bf16",
}  # fmt: skip
STORAGES = {"bf16": "bf16", "int8": "u8", "fp8": "fp8e4nv"}  # int8 codes are stored offset by 128 in uint8


def compile_sm90(code_type: str, settings: TileSettings, num_warps: int = 4, max_width: int = 128) -> bytes:
    """The kernel's cubin for a middle stored as `code_type` (a Triton type name), middle loops up to `max_width`."""
    constants = {
        "G": 4, "HEAD_DIM": 128, "BLOCK_G": query_block(4, code_type != "bf16"), "BLOCK_N": settings.block_n,
        "BLOCK_D": 128, "G_POW": 4,
        "MERGE_S": 16, "UPCAST": False, "DOT_PRECISION": "tf32", "HAS_KEY_MASK": False, "QUANT": code_type != "bf16",
        "FULL_BLOCK_N": settings.full_block_n, "MAX_WIDTH": max_width,
    }  # fmt: skip
    signature = {}
    for name in _leank_decode_kernel.arg_names:
        if name in ("MID_K", "MID_V"):
            signature[name] = "*" + code_type
        elif name in POINTERS:
            signature[name] = "*" + POINTERS[name]
        elif name in constants:
            signature[name] = "constexpr"
        else:
            signature[name] = "fp32" if name == "scale_log2" else "i64" if name.startswith("stride") else "i32"
    aligned = {
        (index,): [["tt.divisibility", 16]]
        for index, name in enumerate(_leank_decode_kernel.arg_names)
        if signature[name].startswith("*") or name.startswith("stride")
    }
    source = ASTSource(fn=_leank_decode_kernel, signature=signature, constexprs=constants, attrs=aligned)
    options = {"num_warps": num_warps, "num_stages": settings.num_stages, "maxnreg": settings.max_registers}
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]


def nvidia_tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes) -> str:
    """Registers per thread and stack bytes (register spills) of the kernel, as cuobjdump reports them."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run([nvidia_tool("cuobjdump"), "-res-usage", file.name], capture_output=True, text=True)
    found = re.search(r"REG:(\d+) STACK:(\d+)", listing.stdout)
    return f"{found.group(1)} registers, {found.group(2)} stack bytes" if found else "resource usage not found"


def disassemble(cubin: bytes) -> list[tuple[int, str, str]]:
    """`(address, opcode, operands)` of each instruction; a label line gives its name to the next address."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        listing = subprocess.run(
            [nvidia_tool("nvdisasm"), "-c", file.name], capture_output=True, text=True, check=True
        ).stdout
    instructions, pending = [], []
    for line in listing.splitlines():
        label = re.match(r"^\s*(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        found = re.search(r"/\*([0-9a-f]{4,6})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)[^;]*?([^;]*);", line)
        if found:
            address = int(found.group(1), 16)
            instructions += [(address, f"label:{name}", "") for name in pending]
            pending = []
            instructions.append((address, found.group(2), found.group(3)))
    return instructions


def mma_loops(instructions: list[tuple[int, str, str]]) -> list[collections.Counter]:
    """Opcode counts of each loop (a backward branch's body) that uses tensor cores, in address order: the full
    region's, then the middle's, one per kept width (16, 32, ...)."""
    labels = {name[6:]: address for address, name, _ in instructions if name.startswith("label:")}
    body = [(address, op) for address, op, _ in instructions if not op.startswith("label:")]
    loops = []
    for address, op, operands in instructions:
        target = re.search(r"(\.L_x_\d+)", operands) if op == "BRA" else None
        if target and labels.get(target.group(1), address) < address:
            ops = [name for at, name in body if labels[target.group(1)] <= at <= address]
            if "HMMA" in ops:
                loops.append(collections.Counter(ops))
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-n", type=int, help="keys per middle tile (default: launch.tile_settings)")
    parser.add_argument("--full-block-n", type=int, help="slots per full-region tile")
    parser.add_argument("--stages", type=int, help="load stages")
    parser.add_argument("--max-registers", type=int, help="per-thread register cap; 0: the compiler's choice")
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--max-width", type=int, default=128, help="widest kept width of the layer (multiple of 16)")
    args = parser.parse_args()
    for storage, code_type in STORAGES.items():
        settings = tile_settings(code_type != "bf16")
        settings = TileSettings(
            args.block_n or settings.block_n,
            args.full_block_n or settings.full_block_n,
            args.stages or settings.num_stages,
            settings.max_registers if args.max_registers is None else args.max_registers or None,
        )
        cubin = compile_sm90(code_type, settings, args.warps, args.max_width)
        instructions = disassemble(cubin)
        counts = collections.Counter(op for _, op, _ in instructions if not op.startswith("label:"))
        common = ", ".join(f"{op} {n}" for op, n in counts.most_common(8))
        print(f"{storage:5s} middle, {settings}: {resource_usage(cubin)}", flush=True)
        print(f"      {sum(counts.values()):6d} instructions ({common})")
        loops = mma_loops(instructions)
        print("      tensor-core loops (full region, then middle by kept width), instructions (barriers, spill loads):")
        print("      " + ", ".join(f"{sum(c.values())} ({c['BAR']}, {c['LDL']})" for c in loops))


if __name__ == "__main__":
    main()
