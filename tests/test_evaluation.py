"""Retrieval evaluation on a tiny model: baselines' shapes and choices, a keep-all mask equals the full model."""

from __future__ import annotations

import pytest
import torch

from byte_tokenizer import byte_tokenizer
from leank_hf import LeanKMasks
from leank_hf.tools.evaluation import (
    baseline_masks,
    eval_seed,
    evaluate_retrieval,
    format_table,
    random_channel_mask,
    rope_low_frequency_mask,
    verify_deployed,
)
from tiny_models import random_masks, tiny_model


def peaked_byte_model():
    """A tiny Llama over byte tokens with peaked attention, so what the middle region holds changes the replies."""
    model = tiny_model("llama", vocab_size=258)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    return model


def test_rope_baseline_keeps_the_slowest_pairs():
    mask = rope_low_frequency_mask((2, 3, 32), ratio=0.5, align=8)
    expected = torch.zeros(32, dtype=torch.bool)
    expected[8:16] = expected[24:32] = True  # pairs j = 8..15 rotate slowest (theta^(-2j/D))
    assert bool((mask == expected).all())


def test_random_baseline_is_seeded_and_uniform_per_head():
    a, b = random_channel_mask((3, 2, 32), 0.75, 8, seed=1), random_channel_mask((3, 2, 32), 0.75, 8, seed=1)
    assert torch.equal(a, b) and bool((a.sum(-1) == 8).all())


def test_baselines_copy_ratio_align_and_windows():
    model = tiny_model("llama", vocab_size=258)
    mask = torch.zeros(3, 2, 32, dtype=torch.bool)
    mask[..., :8] = True
    mask[0, 0, 8:24] = True
    reference = LeanKMasks(mask, align=8, sink_size=4, recent_size=8, flush_size=3)
    baselines = baseline_masks(model, byte_tokenizer(), reference, seed=0)
    assert set(baselines) == {"random", "key_norm", "rope_low_freq"}
    for masks in baselines.values():
        assert masks.pruned_ratio == pytest.approx(reference.pruned_ratio)
        assert bool((masks.kept_counts() % 8 == 0).all())
        assert (masks.sink_size, masks.recent_size, masks.flush_size) == (4, 8, 3)


def test_keep_all_mask_replies_exactly_like_the_full_model():
    model, tokenizer = peaked_byte_model(), byte_tokenizer()
    windows = dict(align=8, sink_size=4, recent_size=8, flush_size=3)
    keep_all = LeanKMasks(torch.ones(3, 2, 32, dtype=torch.bool), **windows)
    none = LeanKMasks(torch.zeros(3, 2, 32, dtype=torch.bool), **windows)
    report = evaluate_retrieval(
        model,
        tokenizer,
        {"keep_all": keep_all, "none": none},
        lengths=(700,),
        samples=1,
        judge_all=True,
        progress=False,
    )
    questions = report["questions"]
    assert len(questions) == 4 and report["per_length"][0]["questions"] == 4
    assert all(q["replies"]["keep_all"] == q["replies"]["full"] for q in questions)
    assert any(q["replies"]["none"] != q["replies"]["full"] for q in questions)  # the mask does act
    assert "| 700 | 4 |" in format_table(report)


def test_eval_seeds_are_held_out_from_training_seeds():
    assert eval_seed(0, "multikey", 1024, 0) >= 1 << 40
    assert eval_seed(0, "multikey", 1024, 1) != eval_seed(0, "multivalue", 1024, 1)


def test_evaluation_replies_match_the_deployed_leank_cache():
    model, tokenizer = peaked_byte_model(), byte_tokenizer()
    masks = random_masks(model.config, align=8, sink_size=4, recent_size=8, flush_size=3)
    report = evaluate_retrieval(
        model, tokenizer, {"leank": masks}, lengths=(300,), samples=1, judge_all=True, progress=False
    )
    matches, checked = verify_deployed(model, tokenizer, masks, report, "leank", limit=3)
    assert checked == 3 and matches == 3


def test_quantized_methods_decode_through_the_deployed_cache():
    """With `middle_quant=None` the deployed path (one dense context, a copy per question) replies exactly as the
    evaluation's own attention; an 8-bit method is scored, with its retention against the unquantized mask."""
    model, tokenizer = peaked_byte_model(), byte_tokenizer()
    masks = random_masks(model.config, align=8, sink_size=4, recent_size=8, flush_size=3)
    quantized = {"deployed": (masks, None), "leank+int8": (masks, "int8")}
    report = evaluate_retrieval(
        model,
        tokenizer,
        {"leank": masks},
        lengths=(300,),
        samples=1,
        judge_all=True,
        progress=False,
        quantized=quantized,
    )
    questions = report["questions"]
    assert all(q["replies"]["deployed"] == q["replies"]["leank"] for q in questions)
    assert all("leank+int8" in q["replies"] for q in questions)
    assert report["methods"]["leank+int8"]["middle_quant"] == "int8"
    if report["methods"]["deployed"]["answers_leank_correct"]:
        assert report["methods"]["deployed"]["retention_vs_leank"] == 1.0
    assert "leank+int8 (where full ok)" in format_table(report)
