"""Compare a greedy run against a reference path along the run's own tokens (teacher forcing), so that a near tie
which two numerically different paths break differently cannot derail the comparison."""

from __future__ import annotations

import torch


def forced_logits(model, cache, sequences: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
    """`[B, new tokens, vocab]` fp32 next-token logits of `model` with `cache` along `sequences`: the (left-padded)
    prompt that `prompt_mask` marks, then one given token per step, positions counted as `generate` counts them."""
    prompt = prompt_mask.shape[1]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(len(sequences), sequences.shape[1] - prompt)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits, start = [], 0
    for stop in range(prompt, sequences.shape[1]):
        out = model(
            input_ids=sequences[:, start:stop],
            attention_mask=mask[:, :stop],
            position_ids=positions[:, start:stop],
            past_key_values=cache,
        )
        logits.append(out.logits[:, -1].float())
        start = stop
    return torch.stack(logits, 1)


def assert_greedy_run_matches(run, reference: torch.Tensor, atol: float) -> None:
    """`run` (a `generate` output with logits) against `reference`, the reference path's logits teacher-forced along
    `run.sequences`: every step's logits within `atol`, and each token the reference's greedy choice wherever the
    reference's top two logits lie more than `2 * atol` apart (closer, either path may pick either)."""
    logits = torch.stack(run.logits, 1).float()
    torch.testing.assert_close(logits, reference, rtol=0, atol=atol)
    top2 = reference.topk(2, dim=-1).values
    decided = top2[..., 0] - top2[..., 1] > 2 * atol
    tokens = run.sequences[:, -reference.shape[1] :]
    torch.testing.assert_close(tokens[decided], reference.argmax(-1)[decided], rtol=0, atol=0)
