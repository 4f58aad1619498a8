"""`generate()` and plain forward calls with a LeanKCache, against the dense reference of tests/reference.py."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from leank_hf import LeanKCache, LeanKUsageError, apply_leank, revert_leank
from leank_hf.cache_layer import LeanKLayer
from reference import ReferenceCache, reference_model
from tiny_models import FLUSH, LLAMA_WIDTHS, RECENT, SINK, ones_masks, random_masks, tiny_model

ATOL = 1e-5  # fp32 models; the reference runs in float64
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "llama128")


def _masks(model, flush: int = FLUSH, **windows):
    if model.config.head_dim == 128:
        return random_masks(model.config, align=32, widths=LLAMA_WIDTHS, flush_size=flush, **windows)
    return random_masks(model.config, flush_size=flush, **windows)


def _prompt(batch: int = 1, length: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def _left_padded(lengths: tuple[int, ...]) -> dict[str, torch.Tensor]:
    longest = max(lengths)
    input_ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, longest - length :] = _prompt(1, length, seed=10 + row)[0]
        attention_mask[row, longest - length :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _generate_pair(model, masks, inputs: dict, seed: int = 0, **kwargs):
    """Run `generate` with the reference (ReferenceCache) and with LeanK (LeanKCache); return both outputs."""
    kwargs = {"max_new_tokens": 12, "output_logits": True, "return_dict_in_generate": True, **kwargs}
    windows = (masks.sink_size, masks.recent_size, masks.flush_size)
    with reference_model(model, masks.mask, *windows):
        torch.manual_seed(seed)
        expected = model.generate(**inputs, past_key_values=ReferenceCache(model.config), **kwargs)
    apply_leank(model)
    try:
        torch.manual_seed(seed)
        cache = LeanKCache(masks, model.config, chunked_prefill="prefill_chunk_size" in kwargs)
        actual = model.generate(**inputs, past_key_values=cache, **kwargs)
    finally:
        revert_leank(model)
    return expected, actual


def _assert_same_generation(expected, actual) -> None:
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    assert len(actual.logits) == len(expected.logits)
    for step, (got, want) in enumerate(zip(actual.logits, expected.logits)):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m, step=step: f"step {step}: {m}")


def _compact(cache: LeanKCache) -> bool:
    """Every LeanK layer holds its prompt in the compact regions (no dense prompt left), with a middle."""
    layers = [layer for layer in cache.layers if isinstance(layer, LeanKLayer)]
    return all(layer._prompt is None and layer.num_mid > 0 for layer in layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_all_ones_mask_equals_dynamic_cache_with_sdpa(family: str) -> None:
    model = tiny_model(family)
    inputs = {"input_ids": _prompt()}
    kwargs = {"max_new_tokens": 12, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    expected = model.generate(**inputs, past_key_values=DynamicCache(config=model.config), **kwargs)
    apply_leank(model)
    actual = model.generate(**inputs, past_key_values=LeanKCache(ones_masks(model.config), model.config), **kwargs)
    _assert_same_generation(expected, actual)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_reference(family: str) -> None:
    model = tiny_model(family)
    _assert_same_generation(*_generate_pair(model, _masks(model), {"input_ids": _prompt()}, do_sample=False))


def test_reference_differs_from_exact_attention() -> None:
    """The masks used here change the logits noticeably, so matching the reference is not matching exact attention."""
    model = tiny_model("llama")
    masks = _masks(model)
    expected, _ = _generate_pair(model, masks, {"input_ids": _prompt()}, do_sample=False)
    exact = model(expected.sequences[:, :-1]).logits[:, -12:]
    assert (exact.transpose(0, 1)[-1] - expected.logits[-1]).abs().max() > 1e-2


@pytest.mark.parametrize("family, flush", [("llama", 1), ("llama128", FLUSH)])
def test_sampling_with_num_return_sequences(family: str, flush: int) -> None:
    model = tiny_model(family)
    expected, actual = _generate_pair(
        model, _masks(model, flush), {"input_ids": _prompt()}, do_sample=True, num_return_sequences=3, seed=3
    )
    assert actual.sequences.shape[0] == 3
    _assert_same_generation(expected, actual)


@pytest.mark.parametrize("flush", [1, FLUSH])
def test_beam_search(flush: int) -> None:
    model = tiny_model("llama")
    expected, actual = _generate_pair(
        model,
        _masks(model, flush),
        {"input_ids": _prompt()},
        num_beams=3,
        num_return_sequences=2,
        output_scores=True,
        do_sample=False,
    )
    _assert_same_generation(expected, actual)
    torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family, flush", [("llama", 1), ("llama", FLUSH), ("gemma3", FLUSH)])
def test_left_padded_batch_matches_reference(family: str, flush: int) -> None:
    model = tiny_model(family)
    inputs = _left_padded((40, 31, 7))
    _assert_same_generation(*_generate_pair(model, _masks(model, flush), inputs, do_sample=False))


def test_left_padded_row_equals_row_alone() -> None:
    """With flush_size 1 the flush schedule is per token, so a padded row must give what the row gives alone."""
    model = apply_leank(tiny_model("llama"))
    masks = _masks(model, flush=1)
    inputs = _left_padded((40, 23))
    kwargs = {"max_new_tokens": 12, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    batched = model.generate(**inputs, past_key_values=LeanKCache(masks, model.config), **kwargs)
    alone = model.generate(_prompt(1, 23, seed=11), past_key_values=LeanKCache(masks, model.config), **kwargs)
    torch.testing.assert_close(batched.sequences[1:, -12:], alone.sequences[:, -12:], rtol=0, atol=0)
    for got, want in zip(batched.logits, alone.logits):
        torch.testing.assert_close(got[1:], want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("length", [3, 7, SINK + RECENT])
def test_prompt_shorter_than_sink_plus_recent(length: int) -> None:
    model = tiny_model("llama")
    _assert_same_generation(
        *_generate_pair(model, _masks(model), {"input_ids": _prompt(2, length)}, max_new_tokens=20, do_sample=False)
    )


def _multi_turn(model, masks, cache, first: dict, follow_up: torch.Tensor, follow_up_mask: torch.Tensor | None = None):
    kwargs = {"max_new_tokens": 8, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    turn = model.generate(**first, past_key_values=cache, **kwargs)
    input_ids = torch.cat([turn.sequences, follow_up], dim=1)
    attention_mask = torch.cat(
        [first["attention_mask"], torch.ones_like(turn.sequences[:, first["input_ids"].shape[1] :])], 1
    )
    attention_mask = torch.cat(
        [attention_mask, torch.ones_like(follow_up) if follow_up_mask is None else follow_up_mask], 1
    )
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs)


@pytest.mark.parametrize("flush", [1, FLUSH])
def test_cache_reused_across_generate_calls(flush: int) -> None:
    """The second call feeds a multi-token chunk (last answer token + new turn) to an already compact cache."""
    model = tiny_model("llama")
    masks = _masks(model, flush)
    first = _left_padded((40, 29))
    follow_up = _prompt(2, 7, seed=5)
    windows = (masks.sink_size, masks.recent_size, masks.flush_size)
    with reference_model(model, masks.mask, *windows):
        expected = _multi_turn(model, masks, ReferenceCache(model.config), first, follow_up)
    apply_leank(model)
    actual = _multi_turn(model, masks, LeanKCache(masks, model.config), first, follow_up)
    _assert_same_generation(expected, actual)


RESET = "reset"


def _forward_script(model, cache, steps) -> tuple[list[torch.Tensor], list[int]]:
    """Run plain forward calls (tensor steps) and cache operations (callable steps); return logits and lengths."""
    logits, lengths = [], []
    for step in steps:
        if isinstance(step, torch.Tensor):
            logits.append(model(step, past_key_values=cache, use_cache=True).logits)
        elif step == RESET:
            # transformers 5.17's DynamicCache.reset keeps (zeroed) tensors of the old batch: the reference restarts
            if isinstance(cache, LeanKCache):
                cache.reset()
            else:
                cache = ReferenceCache(model.config)
        else:
            step(cache)
        lengths.append(cache.get_seq_length())
    return logits, lengths


def _compare_scripts(model, masks, steps) -> None:
    windows = (masks.sink_size, masks.recent_size, masks.flush_size)
    with reference_model(model, masks.mask, *windows):
        expected, expected_lengths = _forward_script(model, ReferenceCache(model.config), steps)
    apply_leank(model)
    try:
        actual, lengths = _forward_script(model, LeanKCache(masks, model.config), steps)
    finally:
        revert_leank(model)
    assert lengths == expected_lengths
    for call, (got, want) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m, call=call: f"call {call}: {m}")


@pytest.mark.parametrize("family, flush", [("llama", 1), ("llama", FLUSH), ("llama128", FLUSH), ("gemma3", FLUSH)])
def test_forward_calls_with_chunks(family: str, flush: int) -> None:
    """Prefill, decode steps and multi-token chunks of several sizes, each row of a chunk with its own boundary."""
    model = tiny_model(family)
    tokens = _prompt(2, 80, seed=7)
    cuts = [0, 37, 38, 39, 44, 45, 57, 58, 59, 60, 80]
    _compare_scripts(model, _masks(model, flush), [tokens[:, a:b] for a, b in zip(cuts, cuts[1:])])


def test_crop_then_continue() -> None:
    model = tiny_model("llama")
    tokens = _prompt(2, 60, seed=8)
    steps = [tokens[:, :40], tokens[:, 40:41], tokens[:, 41:46], lambda cache: cache.crop(-4), tokens[:, 42:43]]
    steps += [tokens[:, 43:44], tokens[:, 44:50], lambda cache: cache.crop(-6), tokens[:, 44:45]]
    steps += [lambda cache: cache.crop(-1), lambda cache: cache.crop(0), tokens[:, 44:45], tokens[:, 45:46]]
    _compare_scripts(model, _masks(model), steps)


def test_prompt_lookup_decoding_crops_rejected_candidates() -> None:
    """Prompt-lookup decoding feeds candidate chunks, then crops rejected ones (after the prompt: up to flush_size)."""
    model = tiny_model("llama")
    pattern = _prompt(1, 9, seed=4)
    prompt = torch.cat([pattern] * 5, dim=1)
    expected, actual = _generate_pair(
        model, _masks(model), {"input_ids": prompt}, do_sample=False, prompt_lookup_num_tokens=FLUSH
    )
    _assert_same_generation(expected, actual)
    assert _compact(actual.past_key_values)  # its first forward (prompt + candidates) is the only prompt


def test_reset_then_new_batch() -> None:
    model = tiny_model("llama")
    tokens = _prompt(2, 60, seed=9)
    steps = [tokens[:, :40], tokens[:, 40:41], tokens[:, 41:42], RESET]
    steps += [tokens[:1, 5:50], tokens[:1, 50:51], tokens[:1, 51:55]]
    _compare_scripts(model, _masks(model), steps)


def test_batch_select_and_repeat() -> None:
    model = tiny_model("llama")
    tokens = _prompt(3, 60, seed=6)
    steps = [tokens[:, :40], tokens[:, 40:41], lambda cache: cache.batch_select_indices(torch.tensor([2, 0]))]
    steps += [tokens[[2, 0], 41:42], lambda cache: cache.batch_repeat_interleave(2), tokens[[2, 2, 0, 0], 42:43]]
    steps += [lambda cache: cache.reorder_cache(torch.tensor([3, 0, 1, 2])), tokens[[0, 2, 2, 0], 43:47]]
    steps += [tokens[[0, 2, 2, 0], 47:48]]
    _compare_scripts(model, _masks(model), steps)


def test_model_not_switched_fails_clearly() -> None:
    model = tiny_model("llama")
    with pytest.raises(LeanKUsageError, match="apply_leank"):
        model.generate(_prompt(), past_key_values=LeanKCache(_masks(model), model.config), max_new_tokens=2)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_model_switched_back_fails_clearly(implementation: str) -> None:
    model = tiny_model("llama")
    model.set_attn_implementation(implementation)
    apply_leank(model)
    revert_leank(model)
    assert model.config._attn_implementation == implementation
    with pytest.raises(LeanKUsageError, match="apply_leank"):
        model(_prompt(), past_key_values=LeanKCache(_masks(model), model.config))


def test_gemma2_is_refused_clearly() -> None:
    """Gemma 2 softcaps attention logits: refused by `apply_leank` (transformers marks it without sdpa support) or,
    where transformers lets it run sdpa (5.17), at its first LeanK attention call."""
    model = tiny_model("gemma2")
    with pytest.raises(LeanKUsageError, match="does not support transformers' sdpa|softcapping"):
        apply_leank(model)
        model(_prompt(), past_key_values=LeanKCache(ones_masks(model.config), model.config))


@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile_is_refused_clearly(fullgraph: bool) -> None:
    """Dynamo must not reach the compact keys: the error names what is unsupported and the compile-capable cache."""
    model = apply_leank(tiny_model("llama"))
    forward = torch.compile(model.forward, backend="eager", fullgraph=fullgraph)
    cache = LeanKCache(ones_masks(model.config), model.config)
    with pytest.raises(Exception, match="cannot be captured by torch.compile.*LeanKStaticCache") as error:
        forward(_prompt(), past_key_values=cache, use_cache=True)
    assert fullgraph or isinstance(error.value, LeanKUsageError)
    torch._dynamo.reset()


def _with_holes() -> dict[str, torch.Tensor]:
    """Three rows with masked positions that are not left padding: a span in the middle, a hole in a sink (after left
    padding), one in the recent window."""
    inputs = _left_padded((40, 35, 37))
    mask = inputs["attention_mask"]
    mask[0, 12:17] = 0
    mask[1, 20:22] = 0
    mask[2, 4] = mask[2, 36] = 0
    return inputs


def _generate_exact(model, masks, inputs: dict, **kwargs):
    """Run `generate` with DynamicCache + sdpa and with a LeanKCache; return both outputs."""
    kwargs = {
        "max_new_tokens": 12,
        "do_sample": False,
        "output_logits": True,
        "return_dict_in_generate": True,
        **kwargs,
    }
    expected = model.generate(**inputs, past_key_values=DynamicCache(config=model.config), **kwargs)
    apply_leank(model)
    try:
        cache = LeanKCache(masks, model.config, chunked_prefill="prefill_chunk_size" in kwargs)
        actual = model.generate(**inputs, past_key_values=cache, **kwargs)
    finally:
        revert_leank(model)
    return expected, actual


@pytest.mark.parametrize("family, flush", [("llama", 1), ("llama", FLUSH), ("gemma3", FLUSH)])
def test_mask_holes_equal_dynamic_cache_with_sdpa(family: str, flush: int) -> None:
    model = tiny_model(family)
    _assert_same_generation(*_generate_exact(model, ones_masks(model.config, flush_size=flush), _with_holes()))


@pytest.mark.parametrize("family, flush", [("llama", FLUSH), ("llama128", FLUSH)])
def test_mask_holes_match_reference(family: str, flush: int) -> None:
    model = tiny_model(family)
    _assert_same_generation(*_generate_pair(model, _masks(model, flush), _with_holes(), do_sample=False))


@pytest.mark.parametrize("pruned", [False, True], ids=["all-channels", "pruned"])
def test_batched_follow_up_padded_per_row(pruned: bool) -> None:
    """A second turn whose rows are left-padded to one length leaves pads between the first answer and the follow-up."""
    model = tiny_model("llama")
    masks = _masks(model) if pruned else ones_masks(model.config)
    first = _left_padded((40, 29))
    follow_up = _prompt(2, 7, seed=5)
    follow_up_mask = torch.ones_like(follow_up)
    follow_up_mask[1, :3] = 0
    windows = (masks.sink_size, masks.recent_size, masks.flush_size)
    if pruned:
        with reference_model(model, masks.mask, *windows):
            expected = _multi_turn(model, masks, ReferenceCache(model.config), first, follow_up, follow_up_mask)
    else:
        expected = _multi_turn(model, masks, DynamicCache(config=model.config), first, follow_up, follow_up_mask)
    apply_leank(model)
    actual = _multi_turn(model, masks, LeanKCache(masks, model.config), first, follow_up, follow_up_mask)
    _assert_same_generation(expected, actual)


@pytest.mark.parametrize("family, chunk", [("llama", 16), ("llama", 7), ("llama128", 16), ("gemma3", 16)])
def test_chunked_prefill_is_exact(family: str, chunk: int) -> None:
    """`prefill_chunk_size`: every chunk is prompt, attended exactly; the first decode step compacts the cache."""
    model = tiny_model(family)
    masks = _masks(model)
    inputs = _left_padded((40, 31))
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    apply_leank(model)
    whole = model.generate(**inputs, past_key_values=LeanKCache(masks, model.config), **kwargs)
    cache = LeanKCache(masks, model.config, chunked_prefill=True)
    chunked = model.generate(**inputs, past_key_values=cache, prefill_chunk_size=chunk, **kwargs)
    revert_leank(model)
    torch.testing.assert_close(chunked.logits[0], whole.logits[0], rtol=0, atol=ATOL)
    assert _compact(cache)
    exact = model.generate(**inputs, past_key_values=DynamicCache(config=model.config), **kwargs)
    torch.testing.assert_close(chunked.logits[0], exact.logits[0], rtol=0, atol=ATOL)
    _assert_same_generation(*_generate_pair(model, masks, inputs, do_sample=False, prefill_chunk_size=chunk))


def test_chunked_prefill_without_the_option_is_refused_and_the_prompt_compacts_at_once() -> None:
    """By default each layer compacts its prompt right after attending it (peak memory stays LeanK's), so a forward
    that continues the prompt cannot be exact: it is refused, naming the option."""
    model = tiny_model("llama")
    masks = _masks(model)
    inputs = _left_padded((40, 31))
    apply_leank(model)
    try:
        cache = LeanKCache(masks, model.config)
        model(**inputs, past_key_values=cache)
        assert all(layer._prompt is None and layer.num_mid > 0 for layer in cache.layers)
        with pytest.raises(LeanKUsageError, match=r"chunked_prefill=True"):
            model.generate(**inputs, past_key_values=LeanKCache(masks, model.config), prefill_chunk_size=16)
    finally:
        revert_leank(model)


def test_chunked_prefill_with_all_channels_equals_dynamic_cache_with_sdpa() -> None:
    model = tiny_model("llama")
    expected, actual = _generate_exact(model, ones_masks(model.config), _with_holes(), prefill_chunk_size=16)
    _assert_same_generation(expected, actual)
