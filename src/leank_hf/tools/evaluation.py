"""Retrieval evaluation: the full model vs LeanK masks vs static baselines at the same ratio and alignment.

Samples come from the synthetic generators of `leank_hf.training.data` at held-out seeds (see `eval_seed`). Each
sample's shared context is prefilled once with exact attention; per question, the question suffix is appended
(exact), the first answer token comes from the prompt's last row (exact, as deployed), and every method then decodes
greedily against the same cache, its generated rows reading middle-region keys through its binary mask. That is the
deployed LeanK semantics (DESIGN.md), computed by the trainer's attention in binary mode; `verify_deployed` re-runs
questions through the real `LeanKCache` + `apply_leank` and compares the replies. Methods with an 8-bit middle region
(`quantized`) decode through the real `LeanKCache(middle_quant=...)`: the context is prefilled once per sample into
a cache that keeps its prompt dense (`chunked_prefill=True`), and each question continues a copy of it (exact), so
its decode compacts, quantizes and reads the middle exactly as deployed.

A reply is correct when it contains every fact of the question (the hidden number(s)). Methods are judged on the
questions the full model answers correctly; the full model's own accuracy is reported per length.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils.logging import tqdm

from ..contract import full_attention_mask_shape
from ..errors import LeanKUsageError
from ..masks import LeanKMasks
from ..training.attention import (
    MiddleKeyScaling,
    prefill,
    scaled_middle_keys,
    training_attention_enabled,
    truncate_cache,
)
from ..training.data import make_multikey_sample, make_multivalue_sample, tokenize_sample
from ..training.masking import binary_mask
from .greedy import greedy_decode, next_token

EVAL_TASKS = ("multikey", "multivalue")
BASELINES = ("random", "key_norm", "rope_low_freq")


def eval_seed(seed: int, task: str, length: int, sample: int) -> int:
    """Generator seed of one evaluation sample: at least `2**40`, never reached by training seeds (below `2**40`)."""
    return (1 << 40) + seed * 1_000_003 + EVAL_TASKS.index(task) * 100_003 + length * 101 + sample


def eval_sample(tokenizer: Any, task: str, length: int, seed: int):
    """The evaluation sample of `task`: 4 keys and 4 questions (multi-key), or 2 keys of 3 numbers (multi-value)."""
    if task == "multikey":
        return make_multikey_sample(tokenizer, length, seed, num_needles=4, num_questions=4)
    if task == "multivalue":
        return make_multivalue_sample(tokenizer, length, seed, num_keys=2, values_per_key=3)
    raise LeanKUsageError(f"task has to be one of {list(EVAL_TASKS)} but got {task!r}")


# ------------------------------------------------------------------------------------------------------ baselines
def _uniform_head_mask(within_head_score: torch.Tensor, ratio: float, align: int) -> torch.Tensor:
    """Every head keeps its best channels by score, all heads (almost) the same count (ranks compared globally)."""
    head_dim = within_head_score.shape[-1]
    ranks = within_head_score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    return binary_mask((head_dim - ranks).float(), ratio, align)


def random_channel_mask(shape: tuple[int, int, int], ratio: float, align: int, seed: int = 0) -> torch.Tensor:
    """Random channels, the same count per head."""
    return _uniform_head_mask(torch.rand(shape, generator=torch.Generator().manual_seed(seed)), ratio, align)


def rope_low_frequency_mask(shape: tuple[int, int, int], ratio: float, align: int) -> torch.Tensor:
    """Lowest RoPE frequencies: in the `rotate_half` layout channels `j` and `j + D/2` rotate at `theta^(-2j/D)`,
    so the largest `j` rotate slowest; every head keeps those pairs."""
    head_dim = shape[-1]
    pair = torch.arange(head_dim) % (head_dim // 2)
    return _uniform_head_mask(pair.float().expand(shape).clone(), ratio, align)


def key_norm_mask(key_norms: torch.Tensor, ratio: float, align: int) -> torch.Tensor:
    """Largest mean |k| channels per head (a static ThinK-like criterion), the same count per head."""
    return _uniform_head_mask(key_norms, ratio, align)


def measure_key_norms(model, tokenizer, *, lengths=(1024, 2048), seed: int = 0) -> torch.Tensor:
    """Mean |k| of post-RoPE keys per (layer, KV head, channel), `[L, H, D]`, over calibration prompts.

    The prompts are training-distribution samples (seeds below `2**40`), never evaluation samples.
    """
    totals = torch.zeros(full_attention_mask_shape(model, "the evaluation"), dtype=torch.float64)
    count = 0
    for index, length in enumerate(lengths):
        group = tokenize_sample(tokenizer, eval_sample(tokenizer, EVAL_TASKS[index % 2], length, seed * 7 + index))
        cache = prefill(model, group.prefix_ids)
        for layer_index, layer in enumerate(cache.layers):
            totals[layer_index] += layer.keys[0].abs().double().sum(1).cpu()
        count += len(group.prefix_ids)
    return (totals / count).float()


def baseline_masks(model, tokenizer, reference: LeanKMasks, names=BASELINES, *, seed: int = 0) -> dict[str, LeanKMasks]:
    """Static baselines with the reference mask's ratio, align and windows.

    Args:
        model: the model (for the key norms of `"key_norm"`).
        tokenizer: its tokenizer.
        reference (`LeanKMasks`): the mask whose pruned ratio, align and windows the baselines copy.
        names (`tuple[str, ...]`): any of `"random"`, `"key_norm"`, `"rope_low_freq"`.
        seed (`int`): seed of the random baseline and of the calibration prompts.
    """
    shape = tuple(reference.mask.shape)
    ratio, align = reference.pruned_ratio, reference.align
    builders = {
        "random": lambda: random_channel_mask(shape, ratio, align, seed),
        "key_norm": lambda: key_norm_mask(measure_key_norms(model, tokenizer, seed=seed), ratio, align),
        "rope_low_freq": lambda: rope_low_frequency_mask(shape, ratio, align),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise LeanKUsageError(f"baselines have to be among {list(builders)} but got {unknown}")
    windows = dict(sink_size=reference.sink_size, recent_size=reference.recent_size, flush_size=reference.flush_size)
    return {
        name: LeanKMasks(
            builders[name](),
            align=align,
            target_ratio=ratio,
            training_info={"baseline": name},
            base_model=reference.base_model,
            **windows,
        )
        for name in names
    }


# --------------------------------------------------------------------------------------------------- decoding
def _scaling(masks: LeanKMasks, device) -> MiddleKeyScaling:
    mask = masks.mask.to(device)
    return MiddleKeyScaling(mask.float(), ~mask.any(-1), masks.sink_size, masks.recent_size, masks.flush_size)


def greedy_reply(model, tokenizer, cache, first_token: int, prompt_length: int, *, scaling, facts, max_new_tokens):
    """Decode greedily from `first_token` with generated rows under `scaling` (`None` = exact); stop at the
    end-of-turn token, once all `facts` are in the reply, or after `max_new_tokens`. The cache is cut back after."""
    try:
        with scaled_middle_keys(scaling) if scaling is not None else nullcontext():
            tokens = greedy_decode(
                model,
                cache,
                first_token,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                stop=_answered(tokenizer, facts),
            )
    finally:
        truncate_cache(cache, prompt_length)
    return tokenizer.decode(tokens, skip_special_tokens=True)


def _answered(tokenizer, facts) -> Callable[[list[int]], bool]:
    """The stop rule of a reply: its text contains every fact."""
    return lambda tokens: all(fact in tokenizer.decode(tokens, skip_special_tokens=True) for fact in facts)


@dataclass
class QuestionResult:
    """One question's replies and verdicts per method."""

    task: str
    length: int
    prompt_tokens: int
    facts: list[str]
    replies: dict[str, str] = field(default_factory=dict)
    correct: dict[str, bool] = field(default_factory=dict)


def evaluate_retrieval(
    model,
    tokenizer,
    masks: dict[str, LeanKMasks],
    *,
    tasks=("multikey",),
    lengths=(1024, 2048, 3072, 4096),
    samples: int = 4,
    seed: int = 0,
    judge_all: bool = False,
    progress: bool = True,
    quantized: dict[str, tuple[LeanKMasks, str]] | None = None,
) -> dict[str, Any]:
    """Run the retrieval evaluation; returns a JSON-ready report (settings, per-length table, every reply).

    Args:
        model: the causal LM (any dtype/device).
        tokenizer: its tokenizer (chat template).
        masks (`dict[str, LeanKMasks]`): methods to compare with the full model, e.g. `{"leank": m, **baselines}`.
        tasks (`tuple[str, ...]`): `"multikey"` and/or `"multivalue"`.
        lengths (`tuple[int, ...]`): prompt lengths in tokens.
        samples (`int`): contexts per task and length (4 questions per multi-key context, 2 per multi-value one).
        seed (`int`): evaluation seed (held out from training by construction, see `eval_seed`).
        judge_all (`bool`): also decode the masks where the full model fails (slower; more raw accuracy data).
        progress (`bool`): show a progress bar.
        quantized (`dict[str, tuple[LeanKMasks, str]]`, *optional*): methods decoded through the real `LeanKCache`
            with an 8-bit middle, e.g. `{"leank+int8": (m, "int8")}` (name -> masks and `middle_quant`).
    """
    quantized = quantized or {}
    for masks_item in masks.values():
        masks_item.check_compatible(model.config)
    results: list[QuestionResult] = []
    started = time.perf_counter()
    jobs = [(task, length, index) for length in lengths for task in tasks for index in range(samples)]
    bar = tqdm(jobs, disable=not progress, desc="leank eval")
    with training_attention_enabled(model):
        for task, length, index in bar:
            group = tokenize_sample(
                tokenizer, eval_sample(tokenizer, task, length, eval_seed(seed, task, length, index))
            )
            cache = prefill(model, group.prefix_ids)
            for question in group.questions:
                first = next_token(model, question.suffix_ids[None], cache)
                prompt_length = len(group.prefix_ids) + len(question.suffix_ids)
                result = QuestionResult(task, length, prompt_length, list(question.facts))
                budget = len(question.answer_ids) + 8
                methods: list[tuple[str, Any]] = [("full", None)] + [
                    (name, _scaling(m, model.device)) for name, m in masks.items()
                ]
                for name, scaling in methods:
                    if name != "full" and not (judge_all or result.correct["full"]):
                        continue
                    reply = greedy_reply(
                        model,
                        tokenizer,
                        cache,
                        first,
                        prompt_length,
                        scaling=scaling,
                        facts=question.facts,
                        max_new_tokens=budget,
                    )
                    result.replies[name] = reply
                    result.correct[name] = all(fact in reply for fact in question.facts)
                truncate_cache(cache, len(group.prefix_ids))
                results.append(result)
            asked = results[-len(group.questions) :]
            for name, (quant_masks, quant) in quantized.items():
                judged = [judge_all or result.correct["full"] for result in asked]
                replies = deployed_replies(model, tokenizer, group, quant_masks, quant, judged)
                for result, question, reply in zip(asked, group.questions, replies):
                    if reply is not None:
                        result.replies[name] = reply
                        result.correct[name] = all(fact in reply for fact in question.facts)
            bar.set_postfix(done=len(results))
    methods = {**masks, **{name: quant_masks for name, (quant_masks, _) in quantized.items()}}
    report = build_report(
        results,
        methods,
        tasks=tasks,
        lengths=lengths,
        samples=samples,
        seed=seed,
        seconds=time.perf_counter() - started,
    )
    for name, (quant_masks, quant) in quantized.items():
        entry = report["methods"][name]
        entry["middle_quant"] = quant
        # Retention against the same masks decoded unquantized: of the questions those answer, the share kept.
        for base in (base for base, base_masks in masks.items() if base_masks is quant_masks):
            kept = [r for r in results if r.correct.get(base)]
            entry[f"retention_vs_{base}"] = _ratio(sum(r.correct.get(name, False) for r in kept), len(kept))
            entry[f"answers_{base}_correct"] = len(kept)
    return report


def deployed_replies(model, tokenizer, group, masks: LeanKMasks, quant: str | None, judged: list[bool]) -> list:
    """Greedy replies to the questions of `group` (where `judged`) through a real `LeanKCache(middle_quant=quant)`;
    `None` where not judged. The shared context is prefilled once (kept dense), each question continues a copy."""
    from ..attention import apply_leank, revert_leank
    from ..cache import LeanKCache

    if not any(judged):
        return [None] * len(judged)
    apply_leank(model, backend="torch")
    try:
        context = LeanKCache(masks, model.config, chunked_prefill=True, middle_quant=quant or "none")
        with torch.no_grad():
            model(input_ids=group.prefix_ids.to(model.device)[None], past_key_values=context, use_cache=True)
        return [
            _deployed_reply(
                model, tokenizer, question.suffix_ids.to(model.device)[None], copy.deepcopy(context), question
            )
            if wanted
            else None
            for question, wanted in zip(group.questions, judged)
        ]
    finally:
        revert_leank(model)


def build_report(results: list[QuestionResult], masks: dict[str, LeanKMasks], **settings) -> dict[str, Any]:
    """Per-length accuracy of the full model and, where it succeeds, of every mask; overall retention."""
    names = list(masks)
    table = [
        {"length": length, **_accuracies([r for r in results if r.length == length], names)}
        for length in settings["lengths"]
    ]
    overall = _accuracies(results, names)
    return {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
        "methods": {
            name: {
                "pruned_ratio": m.pruned_ratio,
                "align": m.align,
                "sink_size": m.sink_size,
                "recent_size": m.recent_size,
                "flush_size": m.flush_size,
                "zero_heads": int(m.zero_heads().sum()),
                "source": m.training_info.get("baseline") or m.base_model,
            }
            for name, m in masks.items()
        },
        "per_length": table,
        "overall": overall,
        "questions": [r.__dict__ for r in results],
    }


def _accuracies(results: list[QuestionResult], names: list[str]) -> dict[str, Any]:
    """The full model's accuracy over `results`, then each method's over the questions the full model solved."""
    solved = [r for r in results if r.correct["full"]]
    entry: dict[str, Any] = {
        "questions": len(results),
        "full_correct": len(solved),
        "full_accuracy": _ratio(len(solved), len(results)),
    }
    for name in names:
        entry[name] = _ratio(sum(r.correct.get(name, False) for r in solved), len(solved))
    return entry


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: full model accuracy per length, then each method's accuracy where the full model succeeds."""
    names = list(report["methods"])
    header = ["length", "questions", "full model"] + [f"{n} (where full ok)" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(value):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"

    for entry in report["per_length"] + [{"length": "all", **report["overall"]}]:
        row = [
            str(entry["length"]),
            str(entry["questions"]),
            f"{cell(entry['full_accuracy'])} ({entry['full_correct']})",
        ] + [cell(entry[n]) for n in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verify_deployed(model, tokenizer, masks: LeanKMasks, report: dict[str, Any], name: str, *, limit: int = 2):
    """Re-decode up to `limit` evaluated questions with the real `LeanKCache` + `apply_leank` (one prompt prefill
    each) and return `(matches, checked)`: how many replies equal the evaluation's reply for method `name`.

    The questions are taken from the first context of each task and length, where method `name` was decoded.
    """
    from ..attention import apply_leank, revert_leank
    from ..cache import LeanKCache

    seed = report["settings"]["seed"]
    checked = matches = 0
    apply_leank(model, backend="torch")
    try:
        for task in report["settings"]["tasks"]:
            for length in report["settings"]["lengths"]:
                sample = eval_sample(tokenizer, task, length, eval_seed(seed, task, length, 0))
                group = tokenize_sample(tokenizer, sample)
                evaluated = [r for r in report["questions"] if r["task"] == task and r["length"] == length]
                for question, expected in zip(group.questions, evaluated):
                    if checked >= limit:
                        return matches, checked
                    if name not in expected["replies"]:
                        continue
                    ids = torch.cat([group.prefix_ids, question.suffix_ids])[None].to(model.device)
                    reply = _deployed_reply(model, tokenizer, ids, LeanKCache(masks, model.config), question)
                    checked += 1
                    matches += reply == expected["replies"][name]
    finally:
        revert_leank(model)
    return matches, checked


def _deployed_reply(model, tokenizer, ids, cache, question) -> str:
    """Greedy reply after feeding `ids` `[1, n]` (a prompt, or its continuation) to `cache`."""
    tokens = greedy_decode(
        model,
        cache,
        next_token(model, ids, cache),
        max_new_tokens=len(question.answer_ids) + 8,
        eos_token_id=tokenizer.eos_token_id,
        stop=_answered(tokenizer, question.facts),
    )
    return tokenizer.decode(tokens, skip_special_tokens=True)
