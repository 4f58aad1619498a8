"""`leank-hf eval`: retrieval accuracy of the full model vs a LeanK mask vs static baselines (table, JSON, plot)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from . import arguments as arg
from .train import DTYPES

COMMANDS = {"eval": "retrieval accuracy: full model vs LeanK mask vs baselines"}


def register(subparsers: argparse._SubParsersAction) -> None:
    import torch

    from ..tools.evaluation import BASELINES, EVAL_TASKS

    parser = subparsers.add_parser(
        "eval",
        help=COMMANDS["eval"],
        description="Synthetic long-context retrieval at held-out seeds: the full model's accuracy per length, and "
        "each mask's accuracy on the questions the full model answers. Baselines use the mask's ratio and align.",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id, or 'embedded' (SmolLM2-135M-Instruct)")
    parser.add_argument("--masks", help="LeanK masks: folder, Hub id or bundled name (default: the model's own)")
    parser.add_argument(
        "--baselines",
        type=arg.names(BASELINES, allow_none=True),
        default="random,key_norm,rope_low_freq",
        help="comma-separated baselines, or 'none' (%(default)s)",
    )
    parser.add_argument(
        "--tasks",
        type=arg.names(EVAL_TASKS),
        default="multikey",
        help="comma-separated: multikey, multivalue (%(default)s)",
    )
    parser.add_argument(
        "--lengths", type=arg.sizes, default="1024,2048,3072,4096", help="prompt lengths in tokens (%(default)s)"
    )
    parser.add_argument(
        "--samples", type=arg.positive_int, default=4, help="contexts per task and length (%(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed, held out from training (%(default)s)")
    parser.add_argument("--judge-all", action="store_true", help="also decode masks where the full model fails")
    parser.add_argument(
        "--verify-deployed",
        type=arg.non_negative_int,
        default=0,
        metavar="N",
        help="re-decode N questions with the real LeanKCache and compare the replies",
    )
    parser.add_argument(
        "--middle-quant",
        type=arg.names(("int8", "fp8"), allow_none=True),
        default="none",
        help="also decode the LeanK mask through a real LeanKCache with its middle region in 8 bits, one method "
        "per comma-separated format: int8, fp8 (%(default)s)",
    )
    parser.add_argument("--output", type=arg.output_file, help="write the JSON report here")
    parser.add_argument(
        "--plot", type=arg.plot_file, metavar="PNG", help="save a plot of accuracy per length (needs matplotlib)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model dtype (%(default)s)")
    parser.add_argument(
        "--device", type=arg.device, default="cuda" if torch.cuda.is_available() else "cpu", help="model device"
    )
    parser.add_argument("--threads", type=arg.positive_int, help="torch CPU threads")
    parser.set_defaults(func=_evaluate)


def _load_mask(name: str | None, model):
    from ..masks import LeanKMasks

    if name is None:
        name = model.config._name_or_path
    return LeanKMasks.from_pretrained(name)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from .. import __version__
    from ..tools.evaluation import baseline_masks, evaluate_retrieval, format_table, verify_deployed
    from ..tools.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, getattr(torch, args.dtype), args.device)
    leank = _load_mask(args.masks, model)
    methods = {"leank": leank, **baseline_masks(model, tokenizer, leank, args.baselines, seed=args.seed)}
    report = evaluate_retrieval(
        model,
        tokenizer,
        methods,
        tasks=tuple(args.tasks),
        lengths=tuple(args.lengths),
        samples=args.samples,
        seed=args.seed,
        judge_all=args.judge_all,
        quantized={f"leank+{quant}": (leank, quant) for quant in args.middle_quant},
    )
    if args.verify_deployed:
        matches, checked = verify_deployed(model, tokenizer, leank, report, "leank", limit=args.verify_deployed)
        report["deployed_check"] = {"checked": checked, "identical_replies": matches}
    report["command"] = "leank-hf " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("leank-hf") else None
    report["environment"] = {
        "leank_hf": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(model.device),
        "model": model.config._name_or_path,
    }
    print(format_table(report))
    if "deployed_check" in report:
        check = report["deployed_check"]
        print(f"deployed LeanKCache check: {check['identical_replies']}/{check['checked']} replies identical")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.output}")
    if args.plot:
        _plot(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [entry["length"] for entry in report["per_length"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lengths, [entry["full_accuracy"] for entry in report["per_length"]], "k--o", label="full model (raw)")
    for name in report["methods"]:
        ax.plot(lengths, [entry[name] for entry in report["per_length"]], "-o", label=f"{name} (where full ok)")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
