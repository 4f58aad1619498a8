"""Generate with LeanK: switch a model's attention to LeanK and pass a `LeanKCache` to `generate()`.

    python examples/generate.py                                  # embedded SmolLM2-135M-Instruct, its shipped mask
    python examples/generate.py --model meta-llama/Llama-3.1-8B-Instruct --prompt-file report.txt \
        --question "Summarise the findings."

Without `--prompt-file`, the prompt is a synthetic long document hiding numbers under keys, and the question asks
for one of them, so you can see that the answer survives the pruned keys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from leank_hf import LeanKCache, apply_leank
from leank_hf.tools.models import EMBEDDED_MODEL_ID, load_model
from leank_hf.training.data import make_multikey_sample


def build_prompt(tokenizer, args: argparse.Namespace) -> str:
    """The user's document and question, or a synthetic retrieval prompt of `args.length` tokens."""
    if args.prompt_file:
        return f"{Path(args.prompt_file).read_text(encoding='utf-8')}\n\n{args.question}"
    sample = make_multikey_sample(tokenizer, args.length, seed=7, num_needles=4, num_questions=1)
    print(f"Synthetic prompt; expected answer: {sample.questions[0].facts[0]}")
    return f"{sample.context}\n\n{sample.questions[0].question}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model folder, Hub id, or 'embedded' (SmolLM2)")
    parser.add_argument("--masks", help="mask folder, Hub repo or bundled model id (default: the model's)")
    parser.add_argument("--prompt-file", help="text file with a long document")
    parser.add_argument("--question", default="Summarise the text above in one sentence.")
    parser.add_argument("--length", type=int, default=2048, help="tokens of the synthetic prompt (no --prompt-file)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tokenizer = load_model(args.model, dtype, device)
    messages = [{"role": "user", "content": build_prompt(tokenizer, args)}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(device)

    apply_leank(model)  # the Triton kernel on CUDA, PyTorch on CPU
    # The model's folder or Hub id finds masks saved in its `leank/` subfolder, or the mask shipped for that id.
    masks = args.masks or (EMBEDDED_MODEL_ID if args.model == "embedded" else args.model)
    cache = LeanKCache.from_pretrained(masks, config=model.config)
    output = model.generate(**inputs, past_key_values=cache, max_new_tokens=args.max_new_tokens, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    footprint = cache.memory_footprint()
    print(f"Prompt: {inputs['input_ids'].shape[1]} tokens\nReply: {reply}")
    print(
        f"KV cache: {footprint.used / 2**20:.2f} MiB with LeanK, {footprint.dense / 2**20:.2f} MiB for a "
        f"DynamicCache ({1 - footprint.used / footprint.dense:.1%} saved)"
    )
    return reply


if __name__ == "__main__":
    main()
