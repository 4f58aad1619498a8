"""`leank-hf train`: learn a LeanK mask for a model (two stages, resumable, CSV log, mask folder with model card)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from ..errors import LeanKUsageError
from . import arguments as arg

COMMANDS = {"train": "learn a LeanK mask for a model"}
# `--dtype` choices: names of torch dtypes.
DTYPES = ("bfloat16", "float16", "float32")
# The argparse `type=` of a `TrainSettings` field, by its value type and bound.
VALIDATORS = {
    (int, None): int,
    (int, ">= 0"): arg.non_negative_int,
    (int, ">= 1"): arg.positive_int,
    (float, "> 0"): arg.positive_float,
    (float, ">= 0"): arg.non_negative_float,
    (float, "(0, 1)"): arg.fraction,
    (float, "[0, 1]"): arg.unit_interval,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    import torch

    from ..training.reporting import REPORT_TO

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
    _add_settings(parser)
    parser.add_argument("--min-length", type=arg.positive_int, default=1024, help="shortest synthetic prompt, tokens")
    parser.add_argument("--max-length", type=arg.positive_int, default=4096, help="longest synthetic prompt, tokens")
    parser.add_argument(
        "--questions-per-sample", type=arg.positive_int, default=4, help="questions per synthetic context"
    )
    parser.add_argument(
        "--data",
        type=arg.existing_file,
        help='JSONL file of {"prompt": ..., "answer": ...} lines instead of synthetic data',
    )
    parser.add_argument(
        "--report-to",
        nargs="+",
        choices=REPORT_TO,
        default=["csv"],
        help="where step metrics go: csv (training_log.csv), tensorboard (--output/runs), or none (default: csv)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model dtype (%(default)s)")
    parser.add_argument(
        "--device", type=arg.device, default="cuda" if torch.cuda.is_available() else "cpu", help="model device"
    )
    parser.add_argument("--threads", type=arg.positive_int, help="torch CPU threads")
    parser.set_defaults(func=_train)


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One option per field of `TrainSettings`: `--kebab-case` name, type and range checks, default, field help."""
    from ..training.settings import TrainSettings, value_type

    group = parser.add_argument_group("training settings", "the fields of leank_hf.TrainSettings")
    for item in dataclasses.fields(TrainSettings):
        kind, bound = value_type(item.name), item.metadata["bound"]
        option = {"default": item.default, "help": item.metadata["help"]}
        if item.default is not None:
            option["help"] += " (default: %(default)s)"
        if kind is bool:
            option["action"] = argparse.BooleanOptionalAction
        else:
            option["type"] = VALIDATORS[kind, bound]
        group.add_argument("--" + item.name.replace("_", "-"), **option)


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
    from ..training import PromptAnswerData, SyntheticRetrievalData, TrainSettings, train_masks
    from ..training.checkpoint import check_run_folder

    settings = TrainSettings(**{item.name: getattr(args, item.name) for item in dataclasses.fields(TrainSettings)})
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
        settings=settings,
        data=data,
        output_dir=args.output,
        resume=args.resume,
        overwrite=args.overwrite,
        report_to=args.report_to,
    )
    done = masks.training_info["completed_steps"]
    total = settings.total_steps
    state = "finished" if done == total else f"stopped at step {done}/{total}; continue with --resume"
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(f"{state}: pruned {masks.pruned_ratio:.1%} of K channels, mask saved to {args.output}")
    return 0
