"""`leank-hf train`: learn a LeanK mask for a model (two stages, resumable, CSV log, mask folder with model card)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import LeanKUsageError
from . import arguments as arg

COMMANDS = {"train": "learn a LeanK mask for a model"}
# `--dtype` choices: names of torch dtypes.
DTYPES = ("bfloat16", "float16", "float32")


def register(subparsers: argparse._SubParsersAction) -> None:
    import torch

    parser = subparsers.add_parser(
        "train",
        help=COMMANDS["train"],
        description="Learn a LeanK K-channel mask (stage 1: L1-regularised scales, stage 2: the binary mask as "
        "deployed). Checkpoints, a CSV log and the final mask go to --output; --resume continues a run.",
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id, or 'embedded' (SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--output", required=True, type=arg.output_dir, help="folder for checkpoints, training_log.csv and the mask"
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    existing.add_argument("--overwrite", action="store_true", help="start a new run over the one saved in --output")
    parser.add_argument("--ratio", type=arg.fraction, default=0.7, help="fraction of K channels to prune (%(default)s)")
    parser.add_argument(
        "--align", type=arg.positive_int, default=16, help="kept channels per head in multiples of (%(default)s)"
    )
    parser.add_argument(
        "--sink-size", type=arg.non_negative_int, default=64, help="sink tokens kept in full (%(default)s)"
    )
    parser.add_argument(
        "--recent-size", type=arg.positive_int, default=256, help="recent tokens kept in full (%(default)s)"
    )
    parser.add_argument(
        "--flush-size", type=arg.positive_int, default=64, help="recent-window flush chunk (%(default)s)"
    )
    parser.add_argument("--stage1-steps", type=arg.non_negative_int, default=300, help="stage-1 steps (%(default)s)")
    parser.add_argument("--stage2-steps", type=arg.non_negative_int, default=60, help="stage-2 steps (%(default)s)")
    parser.add_argument("--lr", type=arg.positive_float, default=0.02, help="AdamW learning rate (%(default)s)")
    parser.add_argument("--stage2-lr", type=arg.positive_float, help="stage-2 learning rate (default: --lr)")
    parser.add_argument(
        "--l1-weight", type=arg.non_negative_float, default=0.06, help="stage-1 lambda of mean|alpha| (%(default)s)"
    )
    parser.add_argument("--max-grad-norm", type=arg.positive_float, default=1.0, help="gradient clipping (%(default)s)")
    parser.add_argument("--min-length", type=arg.positive_int, default=1024, help="shortest synthetic prompt, tokens")
    parser.add_argument("--max-length", type=arg.positive_int, default=4096, help="longest synthetic prompt, tokens")
    parser.add_argument(
        "--questions-per-sample", type=arg.positive_int, default=4, help="questions per synthetic context"
    )
    parser.add_argument(
        "--steps-per-sample", type=arg.positive_int, default=1, help="steps sharing one context's prefill"
    )
    parser.add_argument(
        "--data",
        type=arg.existing_file,
        help='JSONL file of {"prompt": ..., "answer": ...} lines instead of synthetic data',
    )
    parser.add_argument("--seed", type=int, default=0, help="data seed (%(default)s)")
    parser.add_argument(
        "--checkpoint-every", type=arg.positive_int, default=10, help="steps between checkpoints (%(default)s)"
    )
    parser.add_argument("--max-steps", type=arg.positive_int, help="stop at this step (resume later with --resume)")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute the student's attention in backward"
    )
    parser.add_argument(
        "--report-to",
        nargs="+",
        choices=("csv", "tensorboard", "none"),  # training.reporting.REPORT_TO, not imported: it loads transformers
        default=["csv"],
        help="where step metrics go: csv (training_log.csv), tensorboard (--output/runs), or none (default: csv)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model dtype (%(default)s)")
    parser.add_argument(
        "--device", type=arg.device, default="cuda" if torch.cuda.is_available() else "cpu", help="model device"
    )
    parser.add_argument("--threads", type=arg.positive_int, help="torch CPU threads")
    parser.set_defaults(func=_train)


def _read_pairs(path: str) -> list[tuple[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LeanKUsageError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8 JSONL"
        ) from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            pairs.append((item["prompt"], item["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise LeanKUsageError(
                f"{path}:{number}: expected a JSON object with 'prompt' and 'answer' ({error})"
            ) from None
    return pairs


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..tools.models import load_model
    from ..training import PromptAnswerData, SyntheticRetrievalData, train_masks
    from ..training.trainer import check_run_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        # Launched by torchrun: one process per device (or per CPU process with gloo); alpha gradients are averaged.
        use_cuda = device.startswith("cuda")
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    check_run_folder(args.output, resume=args.resume, overwrite=args.overwrite)  # before the model loads
    pairs = _read_pairs(args.data) if args.data else None
    model, tokenizer = load_model(args.model, getattr(torch, args.dtype), device)
    if pairs is not None:
        data = PromptAnswerData(tokenizer, pairs, name=Path(args.data).name)
    else:
        data = SyntheticRetrievalData(
            tokenizer,
            min_length=args.min_length,
            max_length=args.max_length,
            seed=args.seed,
            questions_per_sample=args.questions_per_sample,
        )
    masks = train_masks(
        model,
        tokenizer,
        ratio=args.ratio,
        align=args.align,
        sink_size=args.sink_size,
        recent_size=args.recent_size,
        flush_size=args.flush_size,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        data=data,
        output_dir=args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        seed=args.seed,
        lr=args.lr,
        stage2_lr=args.stage2_lr,
        l1_weight=args.l1_weight,
        max_grad_norm=args.max_grad_norm,
        steps_per_sample=args.steps_per_sample,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        report_to=args.report_to,
    )
    done = masks.training_info["completed_steps"]
    total = args.stage1_steps + args.stage2_steps
    state = "finished" if done == total else f"stopped at step {done}/{total}; continue with --resume"
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(f"{state}: pruned {masks.pruned_ratio:.1%} of K channels, mask saved to {args.output}")
    return 0
