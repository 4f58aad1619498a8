"""`LeanKStaticCache`: the compile-capable cache against the dense reference, the dynamic `LeanKCache`, and itself
compiled; its Triton custom op against its PyTorch path (interpreter on CPU, CUDA when present)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils
from transformers import DynamicCache

from leank_hf import LeanKCache, LeanKStaticCache, LeanKUsageError, apply_leank, revert_leank
from leank_hf.contract import Windows
from leank_hf.ops.decode_attention import leank_static_decode_torch
from leank_hf.ops.decode_attention.static_triton import leank_static_decode_triton
from leank_hf.static_cache import LeanKStaticLayer
from reference import reference_model
from teacher_forcing import assert_greedy_run_matches, forced_logits
from tiny_models import FLUSH, LLAMA_WIDTHS, ones_masks, random_masks, tiny_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ATOL = 1e-5  # fp32 models; the reference runs in float64
GENERATE = {"output_logits": True, "return_dict_in_generate": True}
# compiled Triton against eager PyTorch on CUDA: ~5x the logits' distance from an fp32 run in that dtype (tiny llama128)
GPU_ATOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _masks(model, **windows):
    if model.config.head_dim == 128:
        return random_masks(model.config, align=32, widths=LLAMA_WIDTHS, **windows)
    return random_masks(model.config, **windows)


def _left_padded(lengths: tuple[int, ...], seed: int = 10) -> dict[str, torch.Tensor]:
    longest = max(lengths)
    input_ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, length in enumerate(lengths):
        generator = torch.Generator().manual_seed(seed + row)
        input_ids[row, longest - length :] = torch.randint(1, 97, (length,), generator=generator)
        attention_mask[row, longest - length :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _generate(model, masks, inputs: dict, cache, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return model.generate(**inputs, past_key_values=cache, **{**GENERATE, **kwargs})


def _reference(model, masks, inputs: dict, seed: int = 0, cache=None, **kwargs):
    with reference_model(model, masks.mask, masks.sink_size, masks.recent_size, masks.flush_size):
        return _generate(model, masks, inputs, cache or DynamicCache(config=model.config), seed, **kwargs)


def _assert_same(actual, expected, atol: float = ATOL) -> None:
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    for step, (got, want) in enumerate(zip(actual.logits, expected.logits, strict=True)):
        torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=lambda m, step=step: f"step {step}: {m}")


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3", "llama128"])
@pytest.mark.parametrize("flush", [1, FLUSH])
def test_greedy_left_padded_matches_reference_and_dynamic_cache(family: str, flush: int) -> None:
    model = tiny_model(family)
    masks = _masks(model, flush_size=flush)
    inputs = _left_padded((40, 31, 6))
    expected = _reference(model, masks, inputs, max_new_tokens=14)
    apply_leank(model)
    try:
        static = _generate(
            model, masks, inputs, LeanKStaticCache(masks, model.config, max_cache_len=60), max_new_tokens=14
        )
        dynamic = _generate(model, masks, inputs, LeanKCache(masks, model.config), max_new_tokens=14)
    finally:
        revert_leank(model)
    _assert_same(static, expected)
    _assert_same(static, dynamic)


def test_sampling_with_several_sequences_matches_reference() -> None:
    model = tiny_model("llama")
    masks = _masks(model)
    inputs = _left_padded((30, 24))
    kwargs = {"max_new_tokens": 10, "do_sample": True, "num_return_sequences": 2, "top_k": 0}
    expected = _reference(model, masks, inputs, seed=3, **kwargs)
    apply_leank(model)
    try:
        cache = LeanKStaticCache(masks, model.config, max_cache_len=48)
        actual = _generate(model, masks, inputs, cache, seed=3, **kwargs)
    finally:
        revert_leank(model)
    _assert_same(actual, expected)


def test_multi_turn_reuse_matches_reference() -> None:
    """A second prompt on a cache that already decoded: a multi-token chunk read by the PyTorch path."""
    model = tiny_model("llama")
    masks = _masks(model)
    first = _left_padded((33, 29))
    apply_leank(model)
    try:
        cache = LeanKStaticCache(masks, model.config, max_cache_len=80)
        turn1 = _generate(model, masks, first, cache, max_new_tokens=8)
        extra = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(5))
        second = {
            "input_ids": torch.cat([turn1.sequences, extra], 1),
            "attention_mask": torch.cat([first["attention_mask"], torch.ones(2, 17, dtype=torch.long)], 1),
        }
        turn2 = _generate(model, masks, second, cache, max_new_tokens=6)
    finally:
        revert_leank(model)
    reference_cache = DynamicCache(config=model.config)
    _reference(model, masks, first, cache=reference_cache, max_new_tokens=8)
    _assert_same(turn2, _reference(model, masks, second, cache=reference_cache, max_new_tokens=6))


def test_masked_span_in_the_prompt_matches_the_unmodified_model() -> None:
    """Masked positions that are not left padding stay unread in every decode step (keep-every-channel mask)."""
    model = tiny_model("llama")
    masks = ones_masks(model.config)
    inputs = _left_padded((40, 34))
    inputs["attention_mask"][0, 10:17] = 0
    inputs["attention_mask"][1, 20:22] = 0
    expected = _generate(model, masks, inputs, DynamicCache(config=model.config), max_new_tokens=12)
    apply_leank(model)
    try:
        actual = _generate(
            model, masks, inputs, LeanKStaticCache(masks, model.config, max_cache_len=56), max_new_tokens=12
        )
    finally:
        revert_leank(model)
    _assert_same(actual, expected)


def test_beam_search_matches_reference() -> None:
    model = tiny_model("llama")
    masks = _masks(model)
    inputs = _left_padded((30,))
    kwargs = {"max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2}
    expected = _reference(model, masks, inputs, **kwargs)
    apply_leank(model)
    try:
        actual = _generate(model, masks, inputs, LeanKStaticCache(masks, model.config, max_cache_len=40), **kwargs)
    finally:
        revert_leank(model)
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)


def _decode(forward, model, masks, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill eagerly, then `steps` greedy single-token steps through `forward`; returns tokens and logits."""
    inputs = _left_padded((40, 35))
    mask = torch.cat([inputs["attention_mask"], torch.ones(2, steps, dtype=torch.long)], 1)
    cache = LeanKStaticCache(masks, model.config, max_cache_len=40 + steps)
    output = model(**inputs, past_key_values=cache)
    tokens, logits = [], []
    for _ in range(steps):
        token = output.logits[:, -1:].argmax(-1)
        tokens.append(token)
        output = forward(
            input_ids=token, attention_mask=mask, past_key_values=cache
        )  # fixed shape, as static caches want
        logits.append(output.logits[:, -1])
    return torch.cat(tokens, 1), torch.stack(logits)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_decode_step_compiles_to_one_graph(backend: str) -> None:
    """fullgraph=True (no graph break) and one graph for every step: flushes never recompile."""
    model = apply_leank(tiny_model("llama"))
    masks = _masks(model)
    expected = _decode(model.forward, model, masks, steps=12)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model.forward, fullgraph=True, backend=backend)
    actual = _decode(compiled, model, masks, steps=12)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=ATOL)


def _filled_layer(mask: torch.Tensor, windows: Windows, dtype: torch.dtype, pads: list[int], steps: int):
    batch, (heads, dim) = len(pads), mask.shape
    layer = LeanKStaticLayer(mask, windows=windows, max_cache_len=160)
    tokens = {"dtype": dtype, "device": DEVICE}
    layer.update(torch.randn(batch, heads, 50, dim, **tokens), torch.randn(batch, heads, 50, dim, **tokens))
    layer.prompt_attended(torch.tensor(pads))
    for _ in range(steps):
        keys, values = torch.randn(2, batch, heads, 1, dim, **tokens)
        states, _ = layer.update(keys, values)
    return states.payload


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("steps", [1, 9, 60])
@pytest.mark.parametrize("with_key_mask", [False, True])
@pytest.mark.parametrize(
    ("windows", "block_n"),
    [(Windows(4, 8, 3), 64), (Windows(4, 40, 3), 16)],  # the second spreads sinks + ring over 2 parts of 2 tiles
    ids=["one-full-part", "full-region-split"],
)
def test_triton_custom_op_matches_torch_path(
    dtype: torch.dtype, atol: float, steps: int, with_key_mask: bool, windows: Windows, block_n: int
) -> None:
    """Uneven widths with an empty head, GQA 2, padding, a masked span; Triton's interpreter on CPU."""
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[0, :16] = True
    mask[1, :] = True
    kv = _filled_layer(mask, windows, dtype, pads=[0, 7], steps=steps)
    if with_key_mask:
        kv.key_mask = torch.ones(2, 160, dtype=torch.bool, device=DEVICE)
        kv.key_mask[0, 20:31] = False
        kv.key_mask[1, 45:49] = False
    query = torch.randn(2, 6, 1, 32, dtype=dtype, device=DEVICE)
    expected = leank_static_decode_torch(query, kv, scale=0.2)
    actual = leank_static_decode_triton(query, kv, scale=0.2, block_n=block_n)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=atol)
    assert int(kv.counters.abs().sum()) == 0  # the merge leaves its counters at zero


def test_refusals_name_the_fix() -> None:
    model = apply_leank(tiny_model("llama"))
    masks = _masks(model)
    prompt = torch.randint(1, 97, (1, 30))
    with pytest.raises(LeanKUsageError, match="larger `max_cache_len`"):
        model(prompt, past_key_values=LeanKStaticCache(masks, model.config, max_cache_len=20))
    cache = LeanKStaticCache(masks, model.config, max_cache_len=64)
    model(prompt, past_key_values=cache)
    with pytest.raises(LeanKUsageError, match="chunked prefill"):
        model(prompt[:, :5], past_key_values=cache)
    with pytest.raises(LeanKUsageError, match="must be an int >= 1"):
        LeanKStaticCache(masks, model.config, max_cache_len=0)


def test_memory_footprint_counts_the_compact_middle() -> None:
    model = apply_leank(tiny_model("llama"))
    masks = _masks(model)
    cache = LeanKStaticCache(masks, model.config, max_cache_len=64)
    model.generate(torch.randint(1, 97, (2, 40)), past_key_values=cache, max_new_tokens=5, do_sample=False)
    length, sink, recent, flush = 44, masks.sink_size, masks.recent_size, masks.flush_size  # 5th token not stored
    num_mid = Windows(sink, recent, flush).flushed(length) - sink
    kept = masks.mask.sum(-1)  # [L, H]
    key_bytes = 2 * num_mid * int(kept.sum()) * 4
    value_bytes = 2 * num_mid * int((kept > 0).sum()) * 32 * 4
    footprint = cache.memory_footprint()
    assert footprint.regions["keys/middle"].used == key_bytes
    assert footprint.regions["values/middle"].used == value_bytes
    assert footprint.dense == 2 * 2 * length * 3 * 2 * 32 * 4


def test_teacher_forced_logits_reproduce_generate() -> None:
    """The reference of the GPU generate tests (`teacher_forcing.forced_logits`): forced along a greedy run's own
    tokens, the same path gives the run's logits (left padding and flushes included; fp32, rounding apart)."""
    model = apply_leank(tiny_model("llama"))
    masks = _masks(model)
    inputs = _left_padded((40, 31))
    run = _generate(model, masks, inputs, LeanKStaticCache(masks, model.config, max_cache_len=64), max_new_tokens=12)
    cache = LeanKStaticCache(masks, model.config, max_cache_len=64)
    reference = forced_logits(model, cache, run.sequences, inputs["attention_mask"])
    torch.testing.assert_close(torch.stack(run.logits, 1), reference, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_auto_compiled_generate_matches_eager(dtype: torch.dtype) -> None:
    """generate() auto-compiles the static cache on CUDA (Triton custom op); its logits are the eager PyTorch path's
    along the same tokens (teacher-forced) within the dtype's tolerance, its tokens that path's greedy choices wherever
    it has no near tie."""
    model = tiny_model("llama128").to("cuda", dtype)
    masks = _masks(model)
    inputs = {key: value.cuda() for key, value in _left_padded((300, 260)).items()}
    apply_leank(model, backend="auto")
    torch._dynamo.utils.counters.clear()
    compiled = _generate(
        model, masks, inputs, LeanKStaticCache(masks, model.config, max_cache_len=340), max_new_tokens=24
    )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the decode step was compiled
    apply_leank(model, backend="torch")
    cache = LeanKStaticCache(masks, model.config, max_cache_len=340)
    eager = forced_logits(model, cache, compiled.sequences, inputs["attention_mask"])
    assert_greedy_run_matches(compiled, eager, GPU_ATOL[dtype])
