"""Tensor parallelism on GPUs: LeanK under `tp_plan="auto"` against one GPU, and decode speed and memory per GPU.

`benchmarks/tp_gpu_run.sh` runs the three stages (WORK holds the model, OUT the results):

    python -m leank_hf.tools.benchmarks.generate_tp reference WORK                       # one GPU
    torchrun --nproc_per_node 2 -m leank_hf.tools.benchmarks.generate_tp check WORK OUT  # tp_check.json / .md
    torchrun --nproc_per_node 2 -m leank_hf.tools.benchmarks.generate_tp bench WORK OUT  # tp_decode.json / .md

`reference` saves a random bf16 Llama with Llama-3.1-8B's attention shape (`generate_gpu.build_model`, fewer layers)
to WORK/model, and the tokens and logits of greedy `generate` (one prompt; a left-padded batch of three) with
DynamicCache + sdpa and with LeanKCache + the Triton kernel (the bundled Llama mask's first layers). `check` loads the
model with `tp_plan="auto"`, repeats them with the caches of `generate_gpu.new_cache` (`LeanKCache.for_model`) and
compares: bf16 logits differ by the ranks' reduction order, so the DynamicCache + sdpa difference sets the scale, and
greedy tokens may part only where the one-GPU run had a near tie. `bench` fills caches with random keys and values
(no prefill) and times decode steps, with each GPU's peak memory and cache bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ...masks import LeanKMasks
from . import BenchmarkResult, llama_masks
from .generate_gpu import DYNAMIC, GIB, build_model, cache_bytes, fill_random, new_cache, switch_attention

# Prompt rows: longer than the bundled mask's sink (128) + recent (768) windows, by several flushes (128).
ROWS = (1500, 1100, 400)
NEW_TOKENS = 24
INTERMEDIATE, VOCAB = 14336, 32000  # Llama-3.1-8B's MLP; a smaller vocabulary (only the LM head's cost depends on it)
WARMUP_STEPS = 2


def _inputs(vocab_size: int, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """`greedy`: the first row alone; `padded`: all rows, left-padded."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.zeros(len(ROWS), max(ROWS), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(ROWS):
        input_ids[row, -length:] = torch.randint(1, vocab_size, (length,), generator=generator)
        attention_mask[row, -length:] = 1
    padded = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    return {"greedy": {name: tensor[:1] for name, tensor in padded.items()}, "padded": padded}


@torch.inference_mode()
def run_cases(model: Any, masks: LeanKMasks) -> dict[str, dict[str, torch.Tensor]]:
    """`{"method/case": {"sequences", "logits" [steps, B, vocab] fp32}}` on the CPU, for both methods and cases."""
    results = {}
    for method in DYNAMIC:
        switch_attention(model, method)
        for case, inputs in _inputs(model.config.vocab_size, model.device).items():
            output = model.generate(
                **inputs,
                past_key_values=new_cache(method, model, masks),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
            logits = torch.stack(output.logits).float().cpu()
            results[f"{method}/{case}"] = {"sequences": output.sequences.cpu(), "logits": logits}
    return results


def compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tokens and logits of one case against the one-GPU run, over the steps both runs share a prefix."""
    same = got["sequences"][:, -NEW_TOKENS:] == want["sequences"][:, -NEW_TOKENS:]  # [B, steps]
    first = int(same.all(0).int().argmin()) if not bool(same.all()) else NEW_TOKENS
    shared = slice(0, min(first + 1, NEW_TOKENS))  # step `first` is still computed from identical tokens
    max_diff = float((got["logits"][shared] - want["logits"][shared]).abs().max())
    margin = None
    if first < NEW_TOKENS:
        top2 = want["logits"][first].topk(2, dim=-1).values  # [B, 2]
        margin = float((top2[:, 0] - top2[:, 1])[~same[:, first]].min())
    return {"first_divergence": first, "max_logit_diff": max_diff, "margin": margin}


def _load(work: Path) -> Any:
    model = AutoModelForCausalLM.from_pretrained(work / "model", tp_plan="auto", dtype=torch.bfloat16)
    return model.eval()


def reference(work: Path, num_layers: int) -> None:
    """One GPU: save the random model and the outputs of both methods to WORK."""
    model = build_model(INTERMEDIATE, VOCAB, num_layers)
    model.save_pretrained(work / "model")
    torch.save(run_cases(model, llama_masks(num_layers)), work / "reference.pt")
    print(f"saved a {num_layers}-layer random Llama and its outputs to {work}")


def check(work: Path, out: Path) -> bool:
    """Under tensor parallelism: the outputs of both methods against the one-GPU run; rank 0 writes tp_check."""
    model = _load(work)
    masks = llama_masks(model.config.num_hidden_layers)
    results = run_cases(model, masks)
    if torch.distributed.get_rank() != 0:
        return True
    expected = torch.load(work / "reference.pt")
    found = {key: compare(results[key], expected[key]) for key in expected}
    rows, passed = [], True
    for key, numbers in found.items():
        method, case = key.split("/")
        scale = found[f"sdpa/{case}"]["max_logit_diff"]  # what tensor parallelism alone changes
        ok = numbers["max_logit_diff"] <= max(2 * scale, 0.05) and (
            numbers["margin"] is None or numbers["margin"] <= 2 * numbers["max_logit_diff"]
        )
        passed &= ok
        margin = "-" if numbers["margin"] is None else f"{numbers['margin']:.4f}"
        rows.append([method, case, numbers["first_divergence"], f"{numbers['max_logit_diff']:.4f}", margin, ok])
    BenchmarkResult(
        name="tp_check",
        title="LeanK under tensor parallelism (2 GPUs, tp_plan='auto') vs one GPU",
        columns=["method", "case", "tokens equal up to step", "max abs logit diff", "top-2 margin there", "pass"],
        rows=rows,
        data=[{"case": key, **numbers} for key, numbers in found.items()],
        settings={"rows": ROWS, "new_tokens": NEW_TOKENS, "layers": model.config.num_hidden_layers},
        notes=[
            f"{torch.cuda.get_device_name()}, bf16, random weights; leank = LeanKCache.for_model + Triton kernel, "
            "sdpa = DynamicCache + sdpa. Pass: leank's logit difference is at most twice sdpa's (what tensor "
            "parallelism alone changes; at least 0.05), and tokens are equal or part at a near tie (the one-GPU "
            "run's top-2 margin within twice that difference)."
        ],
    ).save(out, command=" ".join(sys.argv))
    print((out / "tp_check.md").read_text())
    return passed


@torch.inference_mode()
def time_decode(model: Any, masks: LeanKMasks, method: str, batch: int, context: int, steps: int) -> torch.Tensor:
    """Seconds for `steps` decode steps after `context` random tokens, peak bytes and cache bytes, `[ranks, 3]`."""
    switch_attention(model, method)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cache = new_cache(method, model, masks)
    heads = model.config.num_key_value_heads // (model.tp_size or 1)
    fill_random(cache, batch, context, heads, model.config.head_dim)
    token = torch.ones(batch, 1, dtype=torch.long, device=model.device)
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            torch.cuda.synchronize()
            torch.distributed.barrier()
            start = time.perf_counter()
        model(token, past_key_values=cache, logits_to_keep=1)
    torch.cuda.synchronize()
    mine = torch.tensor(
        [time.perf_counter() - start, torch.cuda.max_memory_allocated(), cache_bytes(cache)[0]],
        dtype=torch.float64,
        device=model.device,
    )
    del cache
    gathered = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine)
    return torch.stack(gathered).cpu()


def bench(work: Path, out: Path, contexts: list[int], batches: list[int], steps: int) -> None:
    """Decode tok/s and per-GPU memory of both methods under tensor parallelism; rank 0 writes tp_decode."""
    model = _load(work)
    masks = llama_masks(model.config.num_hidden_layers)
    time_decode(model, masks, "leank", 1, 2 * (masks.sink_size + masks.recent_size), 2)  # kernels, libraries
    rows, data = [], []
    for context in contexts:
        for batch in batches:
            for method in DYNAMIC:
                ranks = time_decode(model, masks, method, batch, context, steps)
                seconds = float(ranks[:, 0].max())
                numbers = {
                    "method": method,
                    "context": context,
                    "batch": batch,
                    "decode_tokens_per_s": batch * steps / seconds,
                    "ms_per_step": 1e3 * seconds / steps,
                    "peak_gib_per_gpu": (ranks[:, 1] / GIB).tolist(),
                    "cache_gib_per_gpu": (ranks[:, 2] / GIB).tolist(),
                }
                data.append(numbers)
                if torch.distributed.get_rank() == 0:
                    print(f"{method} context {context} batch {batch}: {numbers['decode_tokens_per_s']:.1f} tok/s")
                peaks = " / ".join(f"{value:.1f}" for value in numbers["peak_gib_per_gpu"])
                caches = " / ".join(f"{value:.2f}" for value in numbers["cache_gib_per_gpu"])
                rows.append(
                    [method, context, batch, f"{numbers['decode_tokens_per_s']:.1f}", f"{numbers['ms_per_step']:.2f}"]
                    + [peaks, caches, f"{float(ranks[:, 2].sum()) / GIB:.2f}"]
                )
    if torch.distributed.get_rank() != 0:
        return
    config, world = model.config, torch.distributed.get_world_size()
    BenchmarkResult(
        name="tp_decode",
        title=f"Decode under tensor parallelism ({world} GPUs): DynamicCache + sdpa vs LeanKCache + Triton",
        columns=["method", "context", "batch", "decode tok/s", "ms/step", "peak GiB per GPU", "cache GiB per GPU"]
        + ["cache GiB total"],
        rows=rows,
        data=data,
        settings={"contexts": contexts, "batches": batches, "steps": steps, "layers": config.num_hidden_layers},
        notes=[
            f"{torch.cuda.get_device_name()} x {world}, tp_plan='auto', bf16, random-weight Llama: "
            f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} q / "
            f"{config.num_key_value_heads} KV heads x {config.head_dim} ({config.num_key_value_heads // world} KV "
            f"heads per GPU), MLP {config.intermediate_size}, vocab {config.vocab_size}; the bundled "
            "Llama-3.1-8B-Instruct mask's first layers. Caches "
            f"filled with random keys and values (no prefill: peaks hold weights, cache and decode activations), "
            f"then {WARMUP_STEPS} + {steps} timed decode steps; tok/s over the slowest rank. sdpa = DynamicCache + "
            "sdpa; leank = LeanKCache.for_model + apply_leank(backend='triton'). Cache bytes scale with the layers.",
        ],
    ).save(out, command=" ".join(sys.argv))
    print((out / "tp_decode.md").read_text())


def _tokens(text: str) -> list[int]:
    return [int(part[:-1]) * 1024 if part.endswith("k") else int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("reference", "check", "bench"))
    parser.add_argument("work", type=Path, help="folder of the saved model and the one-GPU outputs")
    parser.add_argument("out", type=Path, nargs="?", help="results folder (check and bench: required)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers of the random model (reference)")
    parser.add_argument("--contexts", type=_tokens, default=[32768, 131072], help="e.g. 32k,128k (bench)")
    parser.add_argument("--batches", type=_tokens, default=[1, 8], help="e.g. 1,8 (bench)")
    parser.add_argument("--steps", type=int, default=16, help="timed decode steps per point (bench)")
    args = parser.parse_args(argv)
    if args.stage != "reference" and args.out is None:
        parser.error(f"{args.stage} writes its results to OUT: name the folder after WORK")
    if args.stage == "reference":
        args.work.mkdir(parents=True, exist_ok=True)
        reference(args.work, args.layers)
        return 0
    try:
        if args.stage == "check":
            return 0 if check(args.work, args.out) else 1
        bench(args.work, args.out, args.contexts, args.batches, args.steps)
        return 0
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
