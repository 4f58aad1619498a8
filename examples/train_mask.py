"""Train a LeanK mask for a model and save it as a folder to load, evaluate or push to the Hub.

    python examples/train_mask.py --output my-mask                       # embedded SmolLM2-135M-Instruct
    python examples/train_mask.py --output my-mask --resume              # continue an interrupted run
    python examples/train_mask.py --model Qwen/Qwen3-0.6B --output qwen3-mask --max-length 8192

The defaults are the recipe of the shipped SmolLM2 mask (21 minutes on 2 free CPU cores). Weights stay frozen;
the data is synthetic long-context retrieval generated on the fly.
"""

from __future__ import annotations

import argparse

import torch

from leank_hf import train_masks
from leank_hf.tools.models import load_model
from leank_hf.training import SyntheticRetrievalData


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model folder, Hub id, or 'embedded' (SmolLM2)")
    parser.add_argument("--output", required=True, help="folder for checkpoints, the log and the final mask")
    parser.add_argument("--ratio", type=float, default=0.7, help="fraction of K channels to prune")
    parser.add_argument("--stage1-steps", type=int, default=300)
    parser.add_argument("--stage2-steps", type=int, default=60)
    parser.add_argument("--min-length", type=int, default=1024, help="shortest training prompt, in tokens")
    parser.add_argument("--max-length", type=int, default=2048, help="longest training prompt, in tokens")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(args.model, torch.bfloat16 if device == "cuda" else torch.float32, device)
    data = SyntheticRetrievalData(tokenizer, args.min_length, args.max_length, questions_per_sample=8)
    masks = train_masks(
        model,
        tokenizer,
        ratio=args.ratio,
        align=16,  # each head keeps a multiple of 16 channels (the kernel's load width)
        sink_size=64,
        recent_size=256,
        flush_size=64,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        lr=0.04,
        l1_weight=0.3,
        steps_per_sample=2,  # one prefill of a context serves two optimizer steps
        data=data,
        output_dir=args.output,
        resume=args.resume,
    )
    print(masks.summary())
    print(f"Saved to {args.output}. Share it with: python examples/push_masks.py {args.output} <user>/<repo>")
    return masks


if __name__ == "__main__":
    main()
