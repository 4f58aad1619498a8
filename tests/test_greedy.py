"""`tools/greedy.py`, the one greedy loop of the demo and the evaluation, against transformers' `generate`."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from leank_hf import LeanKCache, apply_leank, revert_leank
from leank_hf.tools.greedy import greedy_decode, next_token
from tiny_models import random_masks, tiny_model

PROMPT_LENGTH, NEW_TOKENS = 23, 15


def _model():
    """A tiny Llama whose greedy continuation varies (larger weights than the default: no single repeated token)."""
    return tiny_model("llama", seed=3, initializer_range=0.3)


def _prompt() -> torch.Tensor:
    return torch.randint(0, 97, (1, PROMPT_LENGTH), generator=torch.Generator().manual_seed(5))


def _generate(model, prompt: torch.Tensor, cache, **kwargs) -> list[int]:
    output = model.generate(prompt, past_key_values=cache, do_sample=False, max_new_tokens=NEW_TOKENS, **kwargs)
    return output[0, PROMPT_LENGTH:].tolist()


def _greedy(model, prompt: torch.Tensor, cache, **kwargs) -> list[int]:
    kwargs = {"max_new_tokens": NEW_TOKENS, "eos_token_id": None, **kwargs}
    return greedy_decode(model, cache, next_token(model, prompt, cache), **kwargs)


def test_greedy_decode_equals_generate():
    model, prompt = _model(), _prompt()
    expected = _generate(model, prompt, DynamicCache(config=model.config))
    assert len(expected) == NEW_TOKENS and len(set(expected)) > 3  # a real continuation, not one repeated token
    cache = DynamicCache(config=model.config)
    assert _greedy(model, prompt, cache) == expected
    assert cache.get_seq_length() == PROMPT_LENGTH + NEW_TOKENS - 1  # the last token is returned, not fed

    # An end-of-sequence token in the middle of the reply: both stop right after it, and keep it.
    eos = expected[6]
    assert eos not in expected[:6]
    with_eos = _generate(model, prompt, DynamicCache(config=model.config), eos_token_id=eos)
    assert _greedy(model, prompt, DynamicCache(config=model.config), eos_token_id=eos) == with_eos == expected[:7]


def test_greedy_decode_through_the_leank_cache_equals_generate():
    model, prompt = _model(), _prompt()
    masks = random_masks(model.config, seed=1)
    apply_leank(model)
    try:
        expected = _generate(model, prompt, LeanKCache(masks, model.config))
        assert _greedy(model, prompt, LeanKCache(masks, model.config)) == expected
    finally:
        revert_leank(model)


def test_stop_rule_and_budget():
    model, prompt = _model(), _prompt()
    full = _greedy(model, prompt, DynamicCache(config=model.config))
    seen: list[list[int]] = []

    def stop(tokens: list[int]) -> bool:
        seen.append(list(tokens))
        return len(tokens) == 4

    assert _greedy(model, prompt, DynamicCache(config=model.config), stop=stop) == full[:4]
    assert seen == [full[:n] for n in range(1, 5)]  # asked before each step, with every token so far
    cache = DynamicCache(config=model.config)
    first = next_token(model, prompt, cache)
    assert greedy_decode(model, cache, first, max_new_tokens=1, eos_token_id=None) == [first] == full[:1]
    assert cache.get_seq_length() == PROMPT_LENGTH  # a budget of one token runs no decode step
