"""The side-by-side demo: one long-context retrieval prompt, full model vs LeanK, answers, KV bytes and speed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.utils.logging import tqdm

from ..attention import apply_leank
from ..cache import LeanKCache
from ..masks import LeanKMasks
from ..training.data import chat_prompt_ids, make_multikey_sample
from .greedy import greedy_decode, next_token

EMBEDDED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class DemoRun:
    """What one method produced on the demo prompt."""

    answer: str
    correct: bool
    kv_bytes: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


def kv_cache_bytes(cache: Any) -> int:
    """Bytes a cache holds: `memory_footprint().used` for a `LeanKCache`, the K/V tensors for a `DynamicCache`."""
    if isinstance(cache, LeanKCache):
        return cache.memory_footprint().used
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.is_initialized)


@contextmanager
def layer_progress(model: Any, desc: str, enabled: bool = True) -> Iterator[Any]:
    """Show a progress bar that advances as each decoder layer of `model` finishes its forward pass.

    Yields the bar, or `None` when disabled or when the model keeps its decoder layers elsewhere than
    `model.base_model.layers`.
    """
    layers = getattr(model.base_model, "layers", None) if enabled else None
    if layers is None:
        yield None
        return
    bar = tqdm(total=len(layers), desc=desc, unit="layer", leave=False, mininterval=0)  # layers are slow: draw each

    def advance(*_: Any) -> None:  # a forward hook that returned a value would replace the layer's output
        bar.update(1)

    handles = [layer.register_forward_hook(advance) for layer in layers]
    try:
        yield bar
    finally:
        for handle in handles:
            handle.remove()
        bar.close()


def run_method(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    fact: str,
    tokenizer: Any,
    max_new_tokens: int,
    *,
    name: str = "",
    progress: bool = False,
) -> DemoRun:
    """Prefill `input_ids` into `cache`, decode greedily, and time both phases (progress bars named `name`)."""
    start = time.perf_counter()
    with layer_progress(model, f"{name} prefill", progress):
        first = next_token(model, input_ids, cache)
    prefill_s = time.perf_counter() - start
    kv_bytes = kv_cache_bytes(cache)  # after the prompt: what long-context decoding reads each step
    start = time.perf_counter()
    tokens = greedy_decode(
        model,
        cache,
        first,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        progress=f"{name} decode" if progress else None,
    )
    decode_s = time.perf_counter() - start
    answer = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    decode_rate = (len(tokens) - 1) / decode_s if decode_s > 0 and len(tokens) > 1 else float("nan")
    return DemoRun(answer, fact in answer, kv_bytes, input_ids.shape[1] / prefill_s, decode_rate)


def run_demo(
    model: Any,
    tokenizer: Any,
    masks: LeanKMasks,
    *,
    length: int = 2048,
    seed: int = 7,
    max_new_tokens: int = 24,
    progress: bool = False,
) -> tuple[str, str, dict[str, DemoRun]]:
    """Ask one multi-key retrieval question of a `length`-token prompt with a `DynamicCache` and a `LeanKCache`.

    With `progress`, bars show each prefill layer by layer and each decode token by token.

    Returns:
        `(question, expected fact, {"full": DemoRun, "leank": DemoRun})`.
    """
    sample = make_multikey_sample(tokenizer, length, seed, num_needles=4, num_questions=1)
    question = sample.questions[0]
    input_ids = torch.tensor([chat_prompt_ids(tokenizer, f"{sample.context}\n\n{question.question}")])
    apply_leank(model)
    caches = {"full": DynamicCache(config=model.config), "leank": LeanKCache(masks, model.config)}
    runs = {
        name: run_method(
            model, input_ids, cache, question.facts[0], tokenizer, max_new_tokens, name=name, progress=progress
        )
        for name, cache in caches.items()
    }
    return question.question, question.facts[0], runs
