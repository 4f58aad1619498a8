"""`LeanKStaticCache` with an 8-bit middle: its Triton custom op against its PyTorch path (interpreter on CPU, CUDA
where present), one compiled graph, and on CUDA the auto-compiled generate (int8 and FP8) against the eager PyTorch
path, teacher-forced."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils

from leank_hf import LeanKStaticCache, LeanKUsageError, apply_leank
from leank_hf.contract import Windows
from leank_hf.ops.decode_attention import leank_static_decode_torch
from leank_hf.ops.decode_attention.quantization import FORMATS, has_fp8
from leank_hf.ops.decode_attention.static_triton import leank_static_decode_triton
from leank_hf.static_cache import LeanKStaticLayer
from teacher_forcing import assert_greedy_run_matches, forced_logits
from tiny_models import LLAMA_WIDTHS, random_masks, tiny_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _filled_layer(mask: torch.Tensor, quant: str, dtype: torch.dtype, pads: list[int], steps: int):
    """A static layer with an 8-bit middle after a 50-slot prompt and `steps` decode steps: the last step's view."""
    batch, (heads, dim) = len(pads), mask.shape
    layer = LeanKStaticLayer(mask, windows=Windows(4, 8, 3), max_cache_len=160, middle_quant=quant)
    tokens = {"dtype": dtype, "device": DEVICE}
    scale = torch.linspace(0.1, 8, dim, device=DEVICE, dtype=dtype)  # channels of unequal size, as real keys have
    layer.update(torch.randn(batch, heads, 50, dim, **tokens) * scale, torch.randn(batch, heads, 50, dim, **tokens))
    layer.prompt_attended(torch.tensor(pads))
    for _ in range(steps):
        keys, values = torch.randn(2, batch, heads, 1, dim, **tokens)
        states, _ = layer.update(keys * scale, values)
    return states.payload


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float16, 2e-3)])
@pytest.mark.parametrize("steps", [1, 60])
@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize("block_n", [16, None], ids=["block16", "default-block"])
def test_triton_custom_op_reads_the_8bit_middle(
    quant: str, steps: int, dtype: torch.dtype, atol: float, block_n: int | None
) -> None:
    if quant == "fp8" and DEVICE == "cuda" and not has_fp8(torch.device(DEVICE)):
        pytest.skip("FP8 e4m3 needs compute capability 8.9 or newer")
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[0, :16] = True
    mask[1, :] = True
    kv = _filled_layer(mask, quant, dtype, pads=[0, 7], steps=steps)
    assert kv.mid_keys.dtype == FORMATS[quant].dtype and kv.mid_key_scales is not None
    kv.key_mask = torch.ones(2, 160, dtype=torch.bool, device=DEVICE)
    kv.key_mask[0, 20:31] = False
    query = torch.randn(2, 6, 1, 32, dtype=dtype, device=DEVICE)
    expected = leank_static_decode_torch(query, kv, scale=0.2)
    actual = leank_static_decode_triton(query, kv, scale=0.2, block_n=block_n)  # None: launch.tile_settings
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=atol)
    assert int(kv.counters.abs().sum()) == 0


@pytest.mark.parametrize("quant", ["int8", "fp8"])
def test_triton_custom_op_reads_8bit_values_across_stored_tiles(quant: str) -> None:
    """Pad 20: the default 128-key tile starts at middle index 16, inside a stored 128-token value tile, and its last
    keys lie in the next one (the middle holds ~140 tokens after 100 steps)."""
    if quant == "fp8" and DEVICE == "cuda" and not has_fp8(torch.device(DEVICE)):
        pytest.skip("FP8 e4m3 needs compute capability 8.9 or newer")
    mask = torch.zeros(3, 32, dtype=torch.bool)
    mask[0, :16] = True
    mask[1, :] = True
    kv = _filled_layer(mask, quant, torch.float32, pads=[0, 20], steps=100)
    query = torch.randn(2, 6, 1, 32, device=DEVICE)
    expected = leank_static_decode_torch(query, kv, scale=0.2)
    torch.testing.assert_close(leank_static_decode_triton(query, kv, scale=0.2), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("block_n", [8, 24])
def test_triton_custom_op_refuses_a_tile_length_it_cannot_compile(block_n: int) -> None:
    kv = _filled_layer(torch.ones(2, 32, dtype=torch.bool), "int8", torch.float32, pads=[0], steps=1)
    query = torch.randn(1, 4, 1, 32, device=DEVICE)
    with pytest.raises(LeanKUsageError, match=f"`block_n` must be a power of two >= 16, got {block_n}"):
        leank_static_decode_triton(query, kv, scale=0.2, block_n=block_n)


@pytest.mark.parametrize(
    ("backend", "quant"),
    [
        ("aot_eager", "int8"),
        pytest.param("inductor", "int8", marks=pytest.mark.slow),
        pytest.param("inductor", "fp8", marks=pytest.mark.slow),
    ],
)
def test_quantized_decode_step_compiles_to_one_graph(backend: str, quant: str) -> None:
    """The quantizing write and the 8-bit read inside `torch.compile(fullgraph=True)`: one graph, equal to eager
    (inductor: the 8-bit byte views of the write lower)."""
    model = apply_leank(tiny_model("llama"))
    masks = random_masks(model.config)
    inputs = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 52, dtype=torch.long)

    def decode(forward) -> torch.Tensor:
        cache = LeanKStaticCache(masks, model.config, max_cache_len=52, middle_quant=quant)
        output = model(inputs, attention_mask=mask[:, :40], past_key_values=cache)
        logits = []
        for _ in range(12):
            token = output.logits[:, -1:].argmax(-1)
            output = forward(input_ids=token, attention_mask=mask, past_key_values=cache)
            logits.append(output.logits[:, -1])
        return torch.stack(logits)

    expected = decode(model.forward)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    actual = decode(torch.compile(model.forward, fullgraph=True, backend=backend))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["fp8", "int8"])
def test_gpu_auto_compiled_generate_with_8bit_middle_matches_eager(quant: str) -> None:
    """generate() auto-compiles the 8-bit static cache on CUDA (Triton custom op); its logits are the eager PyTorch
    path's along the same tokens (teacher-forced) within bf16's tolerance, its tokens that path's greedy choices
    wherever it has no near tie (FP8 needs compute capability 8.9+)."""
    if quant == "fp8" and not has_fp8(torch.device("cuda")):
        pytest.skip("FP8 e4m3 needs a GPU of compute capability 8.9 or newer")
    model = tiny_model("llama128").to("cuda", torch.bfloat16)
    masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)
    input_ids = torch.randint(1, 97, (2, 300), device="cuda")
    apply_leank(model, backend="auto")
    cache = LeanKStaticCache(masks, model.config, max_cache_len=340, middle_quant=quant)
    compiled = model.generate(
        input_ids, past_key_values=cache, max_new_tokens=24, do_sample=False, output_logits=True,
        return_dict_in_generate=True,
    )  # fmt: skip
    assert cache.layers[0].middle.keys.dtype == FORMATS[quant].dtype
    apply_leank(model, backend="torch")
    cache = LeanKStaticCache(masks, model.config, max_cache_len=340, middle_quant=quant)
    eager = forced_logits(model, cache, compiled.sequences, torch.ones_like(input_ids))
    assert_greedy_run_matches(compiled, eager, atol=2e-2)
