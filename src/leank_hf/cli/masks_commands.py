"""`leank-hf inspect | convert | push`: look at, import and share masks."""

from __future__ import annotations

import argparse

from ..errors import LeanKUsageError
from . import arguments as arg

COMMANDS = {
    "inspect": "print a mask's metadata and statistics",
    "convert": "import a MInference LeanK .pth mask",
    "push": "upload a saved mask folder to the Hugging Face Hub",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help=COMMANDS["inspect"],
        description="Print a mask's metadata and statistics (overall, per layer, per KV head).",
    )
    inspect.add_argument("mask", help="saved mask folder, Hub repo id, or bundled mask (base model id or name)")
    inspect.add_argument("--subfolder", help="folder inside the repo or directory")
    inspect.add_argument("--revision", help="branch, tag or commit of a Hub repo")
    inspect.add_argument("--local-files-only", action="store_true", help="never contact the Hub")
    inspect.add_argument(
        "--plot", type=arg.plot_file, metavar="PNG", help="also save a heatmap of kept channels (needs matplotlib)"
    )
    inspect.set_defaults(func=_inspect)

    convert = subparsers.add_parser(
        "convert",
        help=COMMANDS["convert"],
        description="Import a mask released with MInference's LeanK (.pth, float 0/1 [layers, KV heads, head_dim]) "
        "and save it as a leank_hf mask folder.",
    )
    convert.add_argument("pth", type=arg.existing_file, help="the .pth file (read with torch.load(weights_only=True))")
    convert.add_argument("out_dir", type=arg.output_dir, help="folder to save the mask to")
    convert.add_argument("--base-model", required=True, help="Hub id of the model the mask was trained for")
    convert.add_argument("--base-model-revision", help="revision of that model")
    convert.add_argument(
        "--align", type=arg.positive_int, help="kept-count granularity (default: inferred, at most 32)"
    )
    convert.add_argument(
        "--sink-size", type=arg.non_negative_int, default=128, help="sink tokens (default: %(default)s)"
    )
    convert.add_argument(
        "--recent-size", type=arg.positive_int, default=768, help="recent-window tokens (default: %(default)s)"
    )
    convert.add_argument("--flush-size", type=arg.positive_int, default=128, help="flush chunk (default: %(default)s)")
    convert.add_argument("--target-ratio", type=arg.fraction, help="pruning ratio the mask was trained for, if known")
    convert.add_argument(
        "--info",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provenance added to training_info (repeatable), e.g. --info license=MIT",
    )
    convert.set_defaults(func=_convert)

    push = subparsers.add_parser(
        "push",
        help=COMMANDS["push"],
        description="Upload a saved mask folder to a Hub repo in one commit (the repo is created if needed).",
    )
    push.add_argument("dir", type=arg.existing_dir, help="saved mask folder")
    push.add_argument("repo_id", type=arg.repo_id, help="target repo, user/name")
    push.add_argument("--private", action="store_true", default=None, help="create the repo as private")
    push.add_argument("--token", help="Hub token with write access (default: the logged-in one)")
    push.add_argument("--subfolder", help="folder inside the repo, e.g. next to a model's weights")
    push.add_argument("--revision", help="branch to push to (created if missing)")
    push.add_argument("--commit-message", help="message of the commit")
    push.set_defaults(func=_push)


def _inspect(args: argparse.Namespace) -> int:
    from ..masks import LeanKMasks

    masks = LeanKMasks.from_pretrained(
        args.mask, subfolder=args.subfolder, revision=args.revision, local_files_only=args.local_files_only
    )
    print(masks.summary())
    if args.plot:
        axes = masks.plot()
        axes.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"\nheatmap saved to {args.plot}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..masks import LeanKMasks

    info = {}
    for item in args.info:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LeanKUsageError(f"--info takes KEY=VALUE, got {item!r}")
        info[key] = value
    masks = LeanKMasks.from_minference(
        args.pth,
        base_model=args.base_model,
        base_model_revision=args.base_model_revision,
        sink_size=args.sink_size,
        recent_size=args.recent_size,
        flush_size=args.flush_size,
        align=args.align,
        target_ratio=args.target_ratio,
        training_info=info,
    )
    masks.save_pretrained(args.out_dir)
    print(masks.summary())
    print(f"\nsaved to {args.out_dir}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..masks import LeanKMasks

    masks = LeanKMasks.from_pretrained(args.dir)
    commit = masks.push_to_hub(
        args.repo_id,
        private=args.private,
        commit_message=args.commit_message,
        revision=args.revision,
        token=args.token,
        subfolder=args.subfolder,
    )
    print(f"pushed {args.dir} to {args.repo_id}: {commit.commit_url}")
    return 0
