"""Share a mask on the Hugging Face Hub: in a repo of its own, or in a subfolder of the model's repo.

    hf auth login                                                             # a token with write access
    python examples/push_masks.py my-mask alice/SmolLM2-135M-Instruct-LeanK   # a masks-only repo
    python examples/push_masks.py my-mask alice/my-finetuned-model --subfolder leank

One commit adds `leank_config.json`, `leank_masks.safetensors` and a model card (`README.md`) with the mask's
statistics and usage, all inside `--subfolder` when given (the model's own files and card are left alone).
"""

from __future__ import annotations

import argparse

from leank_hf import LeanKMasks


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a saved mask folder (train_mask.py --output, or save_pretrained)")
    parser.add_argument("repo_id", help="target repo, user/name (created if missing)")
    parser.add_argument("--subfolder", help="folder inside the repo, e.g. 'leank' next to a model's weights")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to push to (created from main if missing)")
    args = parser.parse_args(argv)

    masks = LeanKMasks.from_pretrained(args.folder)
    print(masks.summary())
    commit = masks.push_to_hub(
        args.repo_id,
        subfolder=args.subfolder,
        revision=args.revision,
        private=args.private or None,
        commit_message=f"Add LeanK masks ({masks.pruned_ratio:.0%} of K channels pruned)",
    )
    where = f'"{args.repo_id}"' + (f', subfolder="{args.subfolder}"' if args.subfolder else "")
    print(f"Pushed: {commit.commit_url}\nLoad with: LeanKCache.from_pretrained({where}, config=model.config)")
    return commit.commit_url


if __name__ == "__main__":
    main()
