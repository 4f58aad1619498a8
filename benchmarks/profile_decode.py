"""Profile generate()'s decode steps on a CUDA GPU with torch.profiler: where a step's time goes.

    python benchmarks/profile_decode.py --method leank_static_compiled --context 32768 --batch 1 --out DIR

Same model, mask and caches as `leank-hf bench generate` (random-weight Llama-3.1-8B shape, bundled Llama mask).
Compiled methods are warmed up first (compilation and CUDA-graph recording are not profiled). The profiler skips the
prefill and two decode steps, then records `--steps` decode steps. Writes DIR/profile_<method>_<context>_b<batch>.txt:
wall ms per step, GPU-busy ms per step (sum of kernel times), kernels per step, and the kernel table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, schedule
from transformers import StoppingCriteria

from leank_hf.tools.benchmarks import llama_masks
from leank_hf.tools.benchmarks.generate_gpu import (
    COMPILED,
    METHODS,
    build_model,
    greedy_generate,
    new_cache,
    switch_attention,
)

WAIT, WARMUP = 2, 2  # profiler steps skipped: the prefill (step 0) and the first decode steps


class _ProfilerStep(StoppingCriteria):
    """Advances the profiler at every generated token and records the token's time; never stops generation."""

    def __init__(self, profiler: Any) -> None:
        self.profiler, self.times = profiler, []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.profiler.step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def profile_decode(method: str, context: int, batch: int, steps: int, num_layers: int) -> str:
    masks = llama_masks(num_layers)
    model = build_model(14336, 32000, num_layers)
    switch_attention(model, method)
    prompt = torch.randint(1, model.config.vocab_size, (batch, context), device="cuda")
    new_tokens = WAIT + WARMUP + steps + 1
    cache = new_cache(method, model, masks, context + new_tokens)
    if method in COMPILED:
        greedy_generate(model, prompt[:, : min(context, 1024)], cache, 4)
        cache.reset()
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, schedule=schedule(wait=WAIT, warmup=WARMUP, active=steps)) as profiler:
        clock = _ProfilerStep(profiler)
        greedy_generate(model, prompt, cache, new_tokens, (clock,))
    wall = [b - a for a, b in zip(clock.times[WAIT + WARMUP - 1 :], clock.times[WAIT + WARMUP :], strict=False)]
    events = profiler.key_averages()
    kernels = [  # device events, less the profiler's and compiled graphs' range annotations
        e
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith(("ProfilerStep", "## "))
    ]
    busy_us = sum(e.self_device_time_total for e in kernels) / steps
    launches = sum(e.count for e in kernels) / steps
    header = (
        f"{method} context {context} batch {batch} ({torch.cuda.get_device_name()}, torch {torch.__version__}): "
        f"{steps} decode steps profiled\n"
        f"wall ms/step: mean {1e3 * sum(wall) / len(wall):.2f} (min {1e3 * min(wall):.2f}, max {1e3 * max(wall):.2f}); "
        f"GPU busy ms/step (sum of kernel times): {busy_us / 1e3:.2f}; kernels/step: {launches:.0f}\n"
    )
    table = events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
    return header + "\n" + table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, default="leank_static_compiled")
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True, help="folder of the report")
    args = parser.parse_args()
    report = profile_decode(args.method, args.context, args.batch, args.steps, args.layers)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{args.method}_{args.context}_b{args.batch}.txt"
    path.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
