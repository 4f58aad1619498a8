"""LeanKCache under transformers' tensor parallelism: one `torchrun --nproc_per_node 2` launch (gloo, CPU) of
tests/tp_worker.py on a tiny Llama loaded with `tp_plan="auto"`, against the same cases on one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leank_hf import LeanKCache, apply_leank
from tiny_models import random_masks, tiny_model
from tp_worker import run_cases

pytestmark = [
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with the gloo backend",
    ),
    pytest.mark.slow,  # a torchrun launch of two processes
]

ATOL = 1e-5  # fp32: the ranks' partial o_proj / down_proj outputs are summed in another order than one matmul
# Kept channels of the tiny Llama's 2 KV heads (head_dim 32) per layer; rank 0 holds head 0, rank 1 head 1: uneven
# widths on each rank, and a zero-channel head on rank 0 (layer 0) and on rank 1 (layer 1).
WIDTHS = ((0, 16), (16, 0), (32, 16))  # multiples of 16, as the Triton kernel needs
RANKS = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """The single-process results and each rank's results (one torchrun launch for the module)."""
    workdir = tmp_path_factory.mktemp("tensor_parallel")
    model = tiny_model("llama")
    masks = random_masks(model.config, align=16, widths=WIDTHS)
    model.save_pretrained(workdir / "model")
    masks.save_pretrained(workdir / "masks")
    uneven = tiny_model("llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=3)  # 3 KV heads on 2 ranks
    uneven.save_pretrained(workdir / "uneven")
    random_masks(uneven.config).save_pretrained(workdir / "uneven_masks")

    worker = Path(__file__).with_name("tp_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "1"}  # CPU: gloo
    done = subprocess.run([*command, str(worker), str(workdir)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    apply_leank(model)
    single, _ = run_cases(model, lambda: LeanKCache(masks, model.config))
    return single, [torch.load(workdir / f"rank{rank}.pt") for rank in range(RANKS)]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("greedy", "greedy"),
        ("padded", "padded"),
        ("multi_turn", "multi_turn"),
        ("triton_greedy", "greedy"),
        ("static_greedy", "greedy"),
    ],
)
def test_tensor_parallel_equals_one_process(runs: tuple[dict, list[dict]], case: str, expected: str) -> None:
    """Each rank's tokens and logits equal one process's (PyTorch path); `triton_greedy` ran the Triton kernel,
    `static_greedy` a `LeanKStaticCache` (its own PyTorch path)."""
    single, ranks = runs
    for rank, results in enumerate(ranks):
        torch.testing.assert_close(results[case]["sequences"], single[expected]["sequences"], rtol=0, atol=0)
        torch.testing.assert_close(
            results[case]["logits"],
            single[expected]["logits"],
            rtol=0,
            atol=ATOL,
            msg=lambda m, rank=rank: f"rank {rank}: {m}",
        )


def test_each_rank_caches_its_kv_heads(runs: tuple[dict, list[dict]]) -> None:
    single, ranks = runs
    assert [results["kv_heads"] for results in ranks] == [(0, 1), (1, 2)]
    whole = single["greedy"]["footprint"]
    per_rank = [results["greedy"]["footprint"] for results in ranks]
    torch.testing.assert_close(sum(per_rank), whole, rtol=0, atol=0)
    for results, own in zip(ranks, per_rank):
        torch.testing.assert_close(results["footprint_all_ranks"], whole, rtol=0, atol=0)
        assert own[:, 1].sum() < whole[:, 1].sum() and own[:, 2].sum() * RANKS == whole[:, 2].sum()


def test_layouts_leank_cannot_follow_are_refused(runs: tuple[dict, list[dict]]) -> None:
    for results in runs[1]:
        refused = results["refused"]
        assert "LeanKCache.for_model(model, masks)" in refused["whole_mask"]
        assert "3 KV heads" in refused["uneven"] and "over 2 ranks" in refused["uneven"]
        assert "'model.layers.*.self_attn.k_proj': 'colwise'" in refused["uneven"]
        assert "replicated" in refused["gathered"] and "'colwise_rep'" in refused["gathered"]
        assert (
            "tp_size=2): KV heads are replicated" in refused["replicated"] and "all 2 KV heads" in refused["replicated"]
        )


def test_one_process_model_gets_the_whole_mask() -> None:
    model = apply_leank(tiny_model("llama"))
    masks = random_masks(model.config, align=16, widths=WIDTHS)
    cache = LeanKCache.for_model(model, masks)
    assert cache.kv_heads is None
    model(torch.randint(1, 97, (2, 30)), past_key_values=cache)
    assert cache.memory_footprint(all_ranks=True) == cache.memory_footprint()
    assert [layer.host_layout.num_kv_heads for layer in cache.layers] == [2, 2, 2]
