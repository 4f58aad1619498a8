"""`leank-hf demo`: full model vs LeanK on a long retrieval prompt, side by side."""

from __future__ import annotations

import argparse

from . import arguments as arg

COMMANDS = {"demo": "full model vs LeanK on a long-context retrieval prompt"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help=COMMANDS["demo"])
    parser.add_argument("--model", default="embedded", help="model folder, or 'embedded' (SmolLM2-135M-Instruct)")
    parser.add_argument("--masks", default=None, help="mask folder, Hub repo or bundled id (default: the model's)")
    parser.add_argument("--length", type=arg.positive_int, default=2048, help="prompt length in tokens (default 2048)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic prompt")
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace):
    import torch

    from ..masks import LeanKMasks
    from ..tools.demo import EMBEDDED_BASE_MODEL
    from ..tools.models import load_model

    if args.model == "embedded":
        print("Loading SmolLM2-135M-Instruct (embedded; converted and cached on first use)...")
    model, tokenizer = load_model(args.model, torch.float32)
    default_masks = EMBEDDED_BASE_MODEL if args.model == "embedded" else model.config._name_or_path
    masks = LeanKMasks.from_pretrained(args.masks or default_masks)
    masks.check_compatible(model.config)
    return model, tokenizer, masks


def run(args: argparse.Namespace) -> int:
    from ..tools.demo import run_demo

    model, tokenizer, masks = _load(args)
    print(
        f"Mask: {masks.base_model}, {masks.pruned_ratio:.1%} of K channels pruned, "
        f"windows sink {masks.sink_size} / recent {masks.recent_size} / flush {masks.flush_size}"
    )
    print(f"Running a {args.length}-token retrieval prompt twice (full model, then LeanK)...")
    question, fact, runs = run_demo(model, tokenizer, masks, length=args.length, seed=args.seed, progress=True)
    full, leank = runs["full"], runs["leank"]
    print(f"\nQuestion: {question}   (expected: {fact})\n")
    rows = [
        ("answer", full.answer, leank.answer),
        ("correct", str(full.correct), str(leank.correct)),
        (
            "KV cache",
            f"{full.kv_bytes / 2**20:.2f} MiB",
            f"{leank.kv_bytes / 2**20:.2f} MiB ({1 - leank.kv_bytes / full.kv_bytes:.1%} saved)",
        ),
        ("prefill", f"{full.prefill_tokens_per_s:.0f} tok/s", f"{leank.prefill_tokens_per_s:.0f} tok/s"),
        ("decode", f"{full.decode_tokens_per_s:.1f} tok/s", f"{leank.decode_tokens_per_s:.1f} tok/s"),
    ]
    width = max(len(r[1]) for r in rows) + 2
    print(f"{'':10}{'full model':{width}}LeanK")
    for name, a, b in rows:
        print(f"{name:10}{a:{width}}{b}")
    return 0 if leank.correct or not full.correct else 1
