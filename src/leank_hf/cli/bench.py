"""`leank-hf bench <benchmark>`: run a benchmark, print its table, save json + markdown into `--output-dir`.

Each benchmark is one `add_<name>(benchmarks)` function listed in `BENCHMARKS`. It adds its parser, calls
`add_output_options(parser)` and sets `run` to a function of the parsed arguments that returns a `BenchmarkResult`
(printed and saved by `run_and_save`); a benchmark that reports differently sets its own `func` instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from . import arguments as arg

if TYPE_CHECKING:
    from ..tools.benchmarks import BenchmarkResult

COMMANDS = {"bench": "benchmarks (memory, decode, ...)"}
# Where results go without `--output-dir`: relative to the current directory (the repository root: the saved results).
DEFAULT_OUTPUT_DIR = "benchmarks/results"


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """`--output-dir` and `--no-save`, and `run_and_save` as the command."""
    parser.add_argument(
        "--output-dir",
        type=arg.output_dir,
        default=DEFAULT_OUTPUT_DIR,
        help="folder for <benchmark>.json and <benchmark>.md (default: %(default)s, relative to the current directory)",
    )
    parser.add_argument("--no-save", action="store_true", help="print the table only")
    parser.set_defaults(func=run_and_save)


def add_memory(benchmarks: argparse._SubParsersAction) -> None:
    from ..tools.benchmarks.memory import DEFAULT_TOKENS, MODELS, run_memory_benchmark

    parser = benchmarks.add_parser(
        "memory",
        help="KV-cache bytes, DynamicCache vs LeanKCache, with the shipped masks",
        description="KV-cache bytes of a DynamicCache and a LeanKCache filled with the same tokens (bf16, batch 1) "
        "at real models' attention shapes, per region.",
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--tokens", type=arg.sizes, default=list(DEFAULT_TOKENS), help="e.g. 8k,32k,128k")
    parser.add_argument(
        "--device",
        choices=["meta", "cpu", "cuda"],
        default="meta",
        help="meta: real shapes, no data, no memory (default); cpu/cuda: random values",
    )
    _add_middle_quant(parser, "LeanKCache")
    add_output_options(parser)
    parser.set_defaults(
        run=lambda args: run_memory_benchmark(args.models, args.tokens, args.device, _middle_quants(args))
    )


def add_decode(benchmarks: argparse._SubParsersAction) -> None:
    import torch

    from ..tools.benchmarks.decode_cpu import DEFAULT_CONTEXTS, run_decode_benchmark

    parser = benchmarks.add_parser(
        "decode",
        help="decode-step time, LeanK vs DynamicCache + sdpa, on the same random model",
        description="Decode-step time of LeanK (PyTorch path) and DynamicCache + sdpa at several context lengths.",
    )
    parser.add_argument("--device", choices=["cpu"], default="cpu", help="only cpu here (GPU: `bench kernel`)")
    parser.add_argument("--contexts", type=arg.sizes, default=list(DEFAULT_CONTEXTS), help="e.g. 1k,8k")
    parser.add_argument("--layers", type=arg.positive_int, default=4, help="decoder layers of the random model")
    parser.add_argument("--steps", type=arg.positive_int, default=64, help="measured decode steps per point")
    parser.add_argument("--warmup", type=arg.non_negative_int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument(
        "--threads", type=arg.positive_int, default=None, help="torch threads (default: torch's choice)"
    )
    add_output_options(parser)
    parser.set_defaults(
        run=lambda args: run_decode_benchmark(
            args.contexts, args.layers, args.steps, args.warmup, getattr(torch, args.dtype), args.threads
        )
    )


def add_kernel(benchmarks: argparse._SubParsersAction) -> None:
    from ..tools.benchmarks.kernel import DEFAULT_BATCHES, DEFAULT_CONTEXTS, run_kernel_benchmark

    parser = benchmarks.add_parser(
        "kernel",
        help="GPU decode attention: LeanK Triton kernel vs SDPA (flash), Llama-3.1-8B shapes",
        description="One decode-attention step per layer of the Llama-3.1-8B mask against dense SDPA (flash backend) "
        "and flash_attn_with_kvcache if installed: time, bandwidth, speedup and the bytes-limit speedup. Needs CUDA.",
    )
    parser.add_argument("--contexts", type=arg.sizes, default=list(DEFAULT_CONTEXTS), help="e.g. 8k,32k,128k")
    parser.add_argument("--batches", type=arg.sizes, default=list(DEFAULT_BATCHES), help="e.g. 1,8,32")
    parser.add_argument("--layers", type=arg.indices, default=None, help="mask layers to time (default: all)")
    parser.add_argument("--rep-ms", type=arg.positive_int, default=40, help="milliseconds of repetitions per timing")
    _add_middle_quant(parser, "LeanK")
    add_output_options(parser)
    parser.set_defaults(
        run=lambda args: run_kernel_benchmark(
            args.contexts,
            args.batches,
            layers=args.layers,
            rep_ms=args.rep_ms,
            middle_quants=_middle_quants(args),
        )
    )


def add_generate(benchmarks: argparse._SubParsersAction) -> None:
    from ..tools.benchmarks.generate_gpu import DEFAULT_METHODS, METHODS, run_generate_benchmark

    parser = benchmarks.add_parser(
        "generate",
        help="GPU end-to-end generate: transformers' caches (eager, compiled) vs the LeanK caches, tok/s and memory",
        description="generate() of a random-weight model with Llama-3.1-8B's shapes: decode tokens/s and peak memory "
        "per batch size, and the largest batch each method fits. Needs CUDA.",
    )
    parser.add_argument("--contexts", type=arg.sizes, default=[32768], help="prompt tokens, e.g. 8k,32k,128k")
    parser.add_argument("--new-tokens", type=arg.positive_int, default=256)
    parser.add_argument("--batches", type=arg.sizes, default=[1, 8], help="e.g. 1,8")
    parser.add_argument(
        "--intermediate-size", type=arg.positive_int, default=14336, help="MLP width (Llama-3.1-8B: 14336)"
    )
    parser.add_argument("--vocab-size", type=arg.positive_int, default=32000)
    parser.add_argument("--num-layers", type=arg.positive_int, default=32)
    parser.add_argument(
        "--methods",
        type=arg.names(METHODS),
        default=",".join(DEFAULT_METHODS),
        help=f"comma list of {', '.join(METHODS)} (default: %(default)s)",
    )
    parser.add_argument("--no-max-batch", action="store_true", help="skip the largest-batch search")
    add_output_options(parser)
    parser.set_defaults(
        run=lambda args: run_generate_benchmark(
            contexts=tuple(args.contexts),
            methods=tuple(args.methods),
            new_tokens=args.new_tokens,
            batches=tuple(args.batches),
            intermediate_size=args.intermediate_size,
            vocab_size=args.vocab_size,
            num_layers=args.num_layers,
            search_max_batch=not args.no_max_batch,
            report=lambda line: print(line, flush=True),
        )
    )


BENCHMARKS = (add_memory, add_decode, add_kernel, add_generate)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help=COMMANDS["bench"])
    benchmarks = parser.add_subparsers(dest="benchmark", required=True)
    for add in BENCHMARKS:
        add(benchmarks)


def run_and_save(args: argparse.Namespace) -> int:
    """Run `args.run`, print its table and notes, and save its files unless `--no-save`."""
    result: BenchmarkResult = args.run(args)
    print(result.table())
    for note in result.notes:
        print(f"\n{note}")
    if not args.no_save:
        command = shlex.join(["leank-hf", *sys.argv[1:]])
        for path in result.save(args.output_dir, command=command):
            print(f"saved {path.resolve()}")
    return 0


def _add_middle_quant(parser: argparse.ArgumentParser, cache: str) -> None:
    """`--middle-quant` of the memory and kernel benchmarks: one result row per middle-region storage."""
    parser.add_argument(
        "--middle-quant",
        nargs="+",
        choices=["none", "int8", "fp8"],
        default=["none"],
        help=f"{cache} middle-region storage, one row each: none (bf16, default), int8, fp8 (8 bits + scales)",
    )


def _middle_quants(args: argparse.Namespace) -> list[str | None]:
    """`--middle-quant` as the benchmarks take it: `None` for the model's dtype."""
    return [None if quant == "none" else quant for quant in args.middle_quant]
