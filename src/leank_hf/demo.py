"""The side-by-side demo: one long-context retrieval prompt, full model vs LeanK, answers, KV bytes and speed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from .attention import apply_leank
from .cache import LeanKCache
from .masks import LeanKMasks
from .training.data import chat_prompt_ids, make_multikey_sample

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


def run_method(model: Any, input_ids: torch.Tensor, cache: Any, fact: str, tokenizer: Any, max_new_tokens: int):
    """Prefill `input_ids` into `cache`, decode greedily, and time both phases."""
    with torch.no_grad():
        start = time.perf_counter()
        out = model(input_ids, past_key_values=cache, use_cache=True)
        prefill_s = time.perf_counter() - start
        kv_bytes = kv_cache_bytes(cache)  # after the prompt: what long-context decoding reads each step
        token = out.logits[:, -1:].argmax(-1)
        generated = [token]
        start = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            if int(token) == tokenizer.eos_token_id:
                break
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            generated.append(token)
        decode_s = time.perf_counter() - start
    answer = tokenizer.decode(torch.cat(generated, dim=1)[0], skip_special_tokens=True).strip()
    decode_rate = (len(generated) - 1) / decode_s if decode_s > 0 and len(generated) > 1 else float("nan")
    return DemoRun(answer, fact in answer, kv_bytes, input_ids.shape[1] / prefill_s, decode_rate)


def run_demo(
    model: Any, tokenizer: Any, masks: LeanKMasks, *, length: int = 2048, seed: int = 7, max_new_tokens: int = 24
) -> tuple[str, str, dict[str, DemoRun]]:
    """Ask one multi-key retrieval question of a `length`-token prompt with a `DynamicCache` and a `LeanKCache`.

    Returns:
        `(question, expected fact, {"full": DemoRun, "leank": DemoRun})`.
    """
    sample = make_multikey_sample(tokenizer, length, seed, num_needles=4, num_questions=1)
    question = sample.questions[0]
    input_ids = torch.tensor([chat_prompt_ids(tokenizer, f"{sample.context}\n\n{question.question}")])
    apply_leank(model)
    runs = {
        "full": run_method(
            model, input_ids, DynamicCache(config=model.config), question.facts[0], tokenizer, max_new_tokens
        ),
        "leank": run_method(
            model, input_ids, LeanKCache(masks, model.config), question.facts[0], tokenizer, max_new_tokens
        ),
    }
    return question.question, question.facts[0], runs
