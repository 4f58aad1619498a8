"""Which scale granularity an 8-bit middle region needs: measured on SmolLM2-135M-Instruct's real keys and values.

One multi-key retrieval prompt is prefilled with the embedded model; a capturing attention records every layer's
post-RoPE queries, keys and values. For the last `--rows` query rows of each layer and each KV head that keeps a
channel (bundled mask), attention over the middle keys (kept channels only) is computed exactly and with the middle
keys and values stored in 8 bits under each scheme:

- `token`: one scale per (token, KV head) for keys (over the kept channels) and for values (what leank_hf stores);
- `channel`: keys with one scale per kept channel per chunk of `--chunk` tokens (KIVI's key granularity, one chunk =
  one flush), values per token.

Reported per scheme and format: the RMS error of the logits relative to their standard deviation, and the relative
error of the attention output (mean and worst over layers and heads).

    python benchmarks/quant_granularity.py --output benchmarks/results/quant_granularity
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from leank_hf import LeanKMasks
from leank_hf.tools.models import load_embedded_model
from leank_hf.training.data import chat_prompt_ids, make_multikey_sample

FORMATS = {"int8": (127.0, torch.int8), "fp8": (448.0, torch.float8_e4m3fn)}


def fake_quantize(x: torch.Tensor, fmt: str, dim: int) -> torch.Tensor:
    """`x` stored in 8 bits with one scale per slice along `dim` (the largest magnitude maps to the largest code)."""
    qmax, dtype = FORMATS[fmt]
    scale = x.abs().amax(dim, keepdim=True) / qmax
    codes = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    if fmt == "int8":
        codes = codes.round()
    return codes.clamp(-qmax, qmax).to(dtype).float() * scale


def channel_quantize(keys: torch.Tensor, fmt: str, chunk: int) -> torch.Tensor:
    """`keys [T, W]` with one scale per channel per chunk of `chunk` tokens."""
    parts = [fake_quantize(keys[start : start + chunk], fmt, 0) for start in range(0, keys.shape[0], chunk)]
    return torch.cat(parts)


def capture(model, input_ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, ...]]:
    """Post-RoPE `(query, key, value)` of every layer for one prefill."""
    captured = {}

    def attention(module, query, key, value, attention_mask, **kwargs):
        captured[module.layer_idx] = (query[0].float(), key[0].float(), value[0].float())
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("capture", attention)
    AttentionMaskInterface.register("capture", sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("capture")
    try:
        with torch.no_grad():
            model(input_ids)
    finally:
        model.set_attn_implementation(previous)
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--output", type=Path, required=True, help="path stem: writes .json and .md")
    args = parser.parse_args()

    model, tokenizer = load_embedded_model(dtype=torch.bfloat16)
    masks = LeanKMasks.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    sample = make_multikey_sample(tokenizer, args.length, args.seed)
    input_ids = torch.tensor([chat_prompt_ids(tokenizer, f"{sample.context}\n\n{sample.questions[0].question}")])
    layers = capture(model, input_ids)
    sink, recent = masks.sink_size, masks.recent_size
    schemes = [(granularity, fmt) for granularity in ("token", "channel") for fmt in FORMATS]
    errors = {f"{granularity}/{fmt}": {"logits": [], "output": []} for granularity, fmt in schemes}
    for index, (query, key, value) in sorted(layers.items()):
        groups = query.shape[0] // key.shape[0]
        middle = slice(sink, key.shape[1] - recent)
        for head in range(key.shape[0]):
            kept = masks.mask[index, head]
            if not kept.any():
                continue
            q = query[head * groups : (head + 1) * groups, -args.rows :, kept].reshape(-1, int(kept.sum()))
            k, v = key[head, middle][:, kept], value[head, middle]
            scale = query.shape[-1] ** -0.5
            logits = q @ k.T * scale
            output = torch.softmax(logits, -1) @ v
            for granularity, fmt in schemes:
                k_q = fake_quantize(k, fmt, -1) if granularity == "token" else channel_quantize(k, fmt, args.chunk)
                logits_q = q @ k_q.T * scale
                output_q = torch.softmax(logits_q, -1) @ fake_quantize(v, fmt, -1)
                record = errors[f"{granularity}/{fmt}"]
                record["logits"].append(float((logits_q - logits).pow(2).mean().sqrt() / logits.std()))
                record["output"].append(float((output_q - output).norm() / output.norm()))
    summary = {
        name: {
            f"{metric}_{stat}": float(getattr(torch.tensor(values), stat)())
            for metric, values in record.items()
            for stat in ("mean", "max")
        }
        for name, record in errors.items()
    }
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "prompt_tokens": input_ids.shape[1], **summary}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"SmolLM2-135M-Instruct, {input_ids.shape[1]}-token multi-key prompt (seed {args.seed}), bundled mask, last "
        f"{args.rows} query rows, middle keys {sink}..{input_ids.shape[1] - recent}; heads that keep a channel.",
        "",
        "| scheme | format | logit RMS error / logit std, mean (max) | output relative error, mean (max) |",
        "|---|---|---|---|",
    ]
    for name, stats in summary.items():
        granularity, fmt = name.split("/")
        lines.append(
            f"| {granularity} | {fmt} | {stats['logits_mean']:.4f} ({stats['logits_max']:.4f}) | "
            f"{stats['output_mean']:.4f} ({stats['output_max']:.4f}) |"
        )
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
