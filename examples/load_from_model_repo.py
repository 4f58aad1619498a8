"""Use masks that live in a model repo's `leank/` subfolder: one repo id gives weights, tokenizer and LeanK masks.

    python examples/load_from_model_repo.py alice/my-finetuned-model --prompt-file report.txt

Put masks there with `python examples/push_masks.py my-mask alice/my-finetuned-model --subfolder leank`, or save
them next to a model you save yourself: `model.save_pretrained(d)` then `masks.save_pretrained(f"{d}/leank")`
(the same command then works with the folder `d` instead of a repo id).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from leank_hf import LeanKCache, apply_leank


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo_id", help="model repo (or local folder) with the masks in a subfolder")
    parser.add_argument("--subfolder", help="folder of the masks inside the repo (default: the root, then leank/)")
    parser.add_argument("--revision", help="branch, tag or commit")
    parser.add_argument("--prompt-file", required=True, help="text file with a long document")
    parser.add_argument("--question", default="Summarise the text above in one sentence.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.repo_id, revision=args.revision, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.repo_id, revision=args.revision)
    apply_leank(model)
    cache = LeanKCache.from_pretrained(
        args.repo_id, subfolder=args.subfolder, revision=args.revision, config=model.config
    )  # finds `leank/` by itself; checks that the masks fit this model's layers, KV heads and head_dim

    document = Path(args.prompt_file).read_text(encoding="utf-8")
    messages = [{"role": "user", "content": f"{document}\n\n{args.question}"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(device)
    output = model.generate(**inputs, past_key_values=cache, max_new_tokens=args.max_new_tokens, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    saved = cache.memory_footprint()
    print(f"Reply: {reply}\nKV cache: {saved.used / 2**20:.2f} MiB ({1 - saved.used / saved.dense:.1%} saved)")
    return reply


if __name__ == "__main__":
    main()
