"""One rank of the tensor-parallel test (tests/test_tensor_parallel.py), run as `torchrun --nproc_per_node 2`.

`python tp_worker.py WORKDIR` loads `WORKDIR/model` with `tp_plan="auto"` (gloo on CPU), runs `run_cases` with
`LeanKCache.for_model` (then greedy with `LeanKStaticCache.for_model` and with the Triton kernel) and saves what it
saw to `WORKDIR/rank{rank}.pt`: the outputs, the KV heads the cache kept, its memory footprint (this rank's and all
ranks'), and the errors of the layouts LeanK refuses. The pytest side runs the same `run_cases` on one process with
`LeanKCache(masks, config)`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from leank_hf import LeanKCache, LeanKError, LeanKMasks, LeanKStaticCache, apply_leank
from leank_hf.footprint import REGIONS, MemoryFootprint
from test_generate import _left_padded, _multi_turn, _prompt

GENERATE = {"max_new_tokens": 12, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


def footprint_bytes(footprint: MemoryFootprint) -> torch.Tensor:
    """`[regions, 3]`: allocated, used and dense bytes of each region."""
    regions = [footprint.regions[name] for name in REGIONS]
    return torch.tensor([[region.allocated, region.used, region.dense] for region in regions])


def _generated(output) -> dict[str, torch.Tensor]:
    return {"sequences": output.sequences, "logits": torch.stack(output.logits)}


def run_cases(model, make_cache: Callable[[], LeanKCache]) -> tuple[dict[str, dict[str, torch.Tensor]], LeanKCache]:
    """Greedy (with its cache's footprint), a left-padded batch, and a cache reused for a second turn.

    Returns the outputs and the cache of the greedy case.
    """
    results = {}
    cache = make_cache()
    greedy = model.generate(_prompt(), past_key_values=cache, **GENERATE)
    padded = model.generate(**_left_padded((40, 31, 7)), past_key_values=make_cache(), **GENERATE)
    second_turn = _multi_turn(model, None, make_cache(), _left_padded((40, 29)), _prompt(2, 7, seed=5))
    for name, output in (("greedy", greedy), ("padded", padded), ("multi_turn", second_turn)):
        results[name] = _generated(output)
    results["greedy"]["footprint"] = footprint_bytes(cache.memory_footprint())
    return results, cache


def _refusal(path: Path, tp_plan: dict[str, str] | str, masks: LeanKMasks) -> str:
    """The message of `LeanKCache.for_model` on the model at `path` loaded with `tp_plan`, or "" if it built."""
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan=tp_plan, dtype=torch.float32)
    try:
        LeanKCache.for_model(model, masks)
    except LeanKError as error:
        return str(error)
    return ""


def main(workdir: Path) -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5.23 prefers `distributed_config`
    model = apply_leank(AutoModelForCausalLM.from_pretrained(workdir / "model", tp_plan="auto", dtype=torch.float32))
    masks = LeanKMasks.from_pretrained(workdir / "masks")
    results, cache = run_cases(model, lambda: LeanKCache.for_model(model, masks))
    results["kv_heads"] = (cache.kv_heads.start, cache.kv_heads.stop)
    results["footprint_all_ranks"] = footprint_bytes(cache.memory_footprint(all_ranks=True))
    static = LeanKStaticCache.for_model(model, masks, max_cache_len=64)
    results["static_greedy"] = _generated(model.generate(_prompt(), past_key_values=static, **GENERATE))
    apply_leank(model, backend="triton")  # Triton's interpreter on CPU
    triton = model.generate(_prompt(), past_key_values=LeanKCache.for_model(model, masks), **GENERATE)
    results["triton_greedy"] = _generated(triton)

    plan = dict(model.tp_plan)
    keys = [key for key in plan if key.endswith(("k_proj", "v_proj"))]
    gathered = {**plan, **dict.fromkeys(keys, "colwise_rep")}
    replicated = {**plan, **dict.fromkeys(keys, "replicate")}  # a style of transformers >= 5.23 (CI's pin)
    try:  # the whole mask on a rank that holds half the heads
        model(_prompt(), past_key_values=LeanKCache(masks, model.config))
        whole_mask = ""
    except LeanKError as error:
        whole_mask = str(error)
    results["refused"] = {
        "whole_mask": whole_mask,
        "uneven": _refusal(workdir / "uneven", "auto", LeanKMasks.from_pretrained(workdir / "uneven_masks")),
        "gathered": _refusal(workdir / "model", gathered, masks),
        "replicated": _refusal(workdir / "model", replicated, masks),
    }
    torch.save(results, workdir / f"rank{torch.distributed.get_rank()}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
