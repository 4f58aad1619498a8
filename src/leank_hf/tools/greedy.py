"""Greedy decoding into an explicit cache, one token per forward: the loop of the demo and of the evaluation.

It produces the tokens of transformers' `generate(do_sample=False)` while leaving the caller the cache (to measure,
reuse or cut it back), the time between the prompt and the first decode step, and an extra stop rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.utils.logging import tqdm


def next_token(model: Any, input_ids: torch.Tensor, cache: Any) -> int:
    """Feed `input_ids` `[1, T]` through `model` into `cache` and return the most likely next token."""
    with torch.no_grad():
        logits = model(
            input_ids=input_ids.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1
        ).logits
    return int(logits[0, -1].argmax())


def greedy_decode(
    model: Any,
    cache: Any,
    first_token: int,
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    stop: Callable[[list[int]], bool] | None = None,
    progress: str | None = None,
) -> list[int]:
    """Continue greedily from `first_token`, the `next_token` of the prompt that `cache` holds.

    Args:
        model: a causal LM.
        cache: the cache holding the prompt; every generated token but the last is written to it.
        first_token (`int`): the first generated token.
        max_new_tokens (`int`): the most tokens returned, `first_token` included.
        eos_token_id (`int`, *optional*): decoding ends after this token.
        stop (`Callable[[list[int]], bool]`, *optional*): decoding also ends once `stop(tokens so far)` is true.
        progress (`str`, *optional*): show a progress bar with this description, one step per token.

    Returns:
        `list[int]`: the generated tokens, starting with `first_token`.
    """
    tokens = [first_token]
    with tqdm(total=max_new_tokens - 1, desc=progress, unit="tok", disable=progress is None, leave=False) as bar:
        while len(tokens) < max_new_tokens and tokens[-1] != eos_token_id and not (stop and stop(tokens)):
            tokens.append(next_token(model, torch.tensor([[tokens[-1]]]), cache))
            bar.update(1)
    return tokens
