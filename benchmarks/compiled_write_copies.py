"""Whether a compiled `LeanKStaticCache` decode step copies whole middle-region buffers, on the CPU in a minute.

    python benchmarks/compiled_write_copies.py [--middle-quant none int8 fp8] [--output FILE.json]

A decode step writes one token into the middle region; compiled by inductor, that write must stay a scatter into the
cache's own tensors. Written through a view that inductor cannot reinplace, the compiled step instead copies the whole
region every step (the thirteenth #14 session found 34 us per layer and step at 32K tokens on an H200 with torch 2.11:
the int8 step 2.6 ms slower than bf16 LeanK's). The device kernels do not matter here, so this compiles a tiny random
Llama on the CPU with the decode attention replaced by an opaque op that takes every cache tensor (as the Triton
custom op does), and reports the generated loops long enough to span a middle buffer (`--max-cache-len` slots or more;
no other tensor of the tiny model is that long). Exit status 1 when any is found.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import leank_hf.attention
from leank_hf import LeanKMasks, LeanKStaticCache, apply_leank

_LOOP_BOUND = re.compile(r"<\s*static_cast<int64_t>\((\d+)L\)")
_WIDTHS = (0, 16, 32, 48)  # kept channels of the 4 KV heads of every layer (a zero-width head included)


@torch.library.custom_op("leank_benchmarks::read_cache", mutates_args=())
def _read_cache(query: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return query.clone()


@_read_cache.register_fake
def _(query: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.empty_like(query)


def _opaque_attention(query: torch.Tensor, kv, *, scale: float, backend: str = "auto") -> torch.Tensor:
    tensors = [kv.full_keys, kv.full_values, kv.mid_keys, kv.mid_values, kv.mid_key_scales, kv.mid_value_scales]
    return _read_cache(query, [tensor for tensor in tensors if tensor is not None])


def _model_and_masks() -> tuple[torch.nn.Module, LeanKMasks]:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=128,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=len(_WIDTHS),
        head_dim=64,
        max_position_embeddings=32768,
    )
    model = LlamaForCausalLM(config).eval()
    mask = torch.zeros(config.num_hidden_layers, len(_WIDTHS), config.head_dim, dtype=torch.bool)
    for head, width in enumerate(_WIDTHS):
        mask[:, head, :width] = True
    return apply_leank(model), LeanKMasks(mask, align=16, sink_size=4, recent_size=8, flush_size=3)


def long_loops(middle_quant: str, max_cache_len: int) -> list[int]:
    """Bounds of the loops in the compiled decode step's generated code that span `max_cache_len` elements or more."""
    from torch._inductor.utils import run_and_get_code

    model, masks = _model_and_masks()
    quant = None if middle_quant == "none" else middle_quant
    cache = LeanKStaticCache(masks, model.config, max_cache_len=max_cache_len, middle_quant=quant)
    prompt = torch.randint(1, 97, (1, 40), generator=torch.Generator().manual_seed(0))
    attention = leank_hf.attention.leank_static_decode_attention
    leank_hf.attention.leank_static_decode_attention = _opaque_attention
    try:
        with torch.no_grad():
            token = model(prompt, past_key_values=cache).logits[:, -1:].argmax(-1)
            torch._dynamo.reset()
            forward = torch.compile(model.forward, fullgraph=True)
            position = torch.tensor([[40]])
            _, code = run_and_get_code(forward, input_ids=token, past_key_values=cache, position_ids=position)
    finally:
        leank_hf.attention.leank_static_decode_attention = attention
        torch._dynamo.reset()
    bounds = (int(bound) for bound in _LOOP_BOUND.findall("\n".join(code)))
    return sorted(bound for bound in bounds if bound >= max_cache_len)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--middle-quant", nargs="+", default=["none", "int8", "fp8"], choices=["none", "int8", "fp8"])
    parser.add_argument("--max-cache-len", type=int, default=16384)
    parser.add_argument("--output", type=Path, help="also save the results as JSON")
    args = parser.parse_args(argv)
    results = {quant: long_loops(quant, args.max_cache_len) for quant in args.middle_quant}
    print(f"torch {torch.__version__}, max_cache_len {args.max_cache_len}")
    print("| middle | whole-buffer loops | their bounds |\n|---|---|---|")
    for quant, bounds in results.items():
        print(f"| {quant} | {len(bounds)} | {', '.join(map(str, bounds)) or '-'} |")
    if args.output:
        args.output.write_text(json.dumps({"torch": torch.__version__, "loops": results}, indent=2) + "\n")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
