"""The 8-bit middle region (`middle_quant`): stored codes and scales, bytes, and generate() against the reference."""

from __future__ import annotations

import pytest
import torch

from leank_hf import LeanKCache, LeanKUsageError, apply_leank, revert_leank
from leank_hf.middle_region import MiddleRegion
from leank_hf.ops.decode_attention.layout import VALUE_TILE, HeadLayout, middle_values_like
from leank_hf.ops.decode_attention.quantization import FORMATS, resolve_quant
from packing import CODE_STORAGE, code_numbers, stored_codes, stored_values
from reference import ReferenceCache, fake_quantize, quantize, random_layer_mask, reference_model
from tiny_models import LLAMA_WIDTHS, random_masks, tiny_model

QUANTS = ["int8", "fp8"]


def _region(widths, head_dim, quant, batch=2, capacity=10, dtype=torch.float32):
    mask = random_layer_mask(widths, head_dim, torch.Generator().manual_seed(0))
    layout = HeadLayout.from_mask(mask)
    return mask, MiddleRegion(layout, layout, batch=batch, capacity=capacity, dtype=dtype, quant=FORMATS[quant])


def _stored(region: MiddleRegion, mask: torch.Tensor, tokens: int) -> tuple[list, list]:
    """Per head in storage order: `(codes, scales)` of the keys `[B, tokens, width]` and values `[B, tokens, D]`."""
    layout = region.layout
    keys, values = [], []
    for slot, head in enumerate(layout.storage_order[: layout.num_value_heads].tolist()):
        width = int(mask[head].sum())
        start = region.capacity * int(layout.offsets[head])
        block = region.keys[:, start : start + region.capacity * width].view(region.batch, region.capacity, width)
        keys.append((block[:, :tokens], region.key_scales[:, slot, :tokens]))
        values.append((stored_values(region.values, tokens)[:, slot], region.value_scales[:, slot, :tokens]))
    return keys, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("quant", QUANTS)
def test_write_stores_the_reference_codes_and_scales(quant: str, dtype: torch.dtype) -> None:
    mask, region = _region([16, 0, 40, 8], 40, quant, dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    keys = (torch.randn(2, 4, 7, 40, generator=generator) * torch.linspace(0.01, 30, 40)).to(dtype)
    values = torch.randn(2, 4, 7, 40, generator=generator).to(dtype)
    keys[1, 2, 3] = 0  # an all-zero vector: scale 0, codes 0
    region.write(keys, values, torch.tensor([6, 0, 1, 2, 3, 4, 5]))
    order = [6, 0, 1, 2, 3, 4, 5]
    keys, values = keys[:, :, torch.tensor(order).argsort()], values[:, :, torch.tensor(order).argsort()]
    stored_keys, stored_values = _stored(region, mask, 7)
    heads = region.layout.storage_order[: region.layout.num_value_heads].tolist()
    for (codes, scales), (value_codes, value_scales), head in zip(stored_keys, stored_values, heads):
        want_codes, want_scales = quantize(keys[:, head][..., mask[head]], quant)
        assert codes.dtype == value_codes.dtype == CODE_STORAGE[quant][0]
        torch.testing.assert_close(code_numbers(codes, quant), want_codes.float(), rtol=0, atol=0)
        torch.testing.assert_close(scales, want_scales[..., 0], rtol=0, atol=0)
        want_codes, want_scales = quantize(values[:, head], quant)
        torch.testing.assert_close(code_numbers(value_codes, quant), want_codes.float(), rtol=0, atol=0)
        torch.testing.assert_close(value_scales, want_scales[..., 0], rtol=0, atol=0)
    # Storage error within half a step of the format (fp32 rounding aside): int8 1/254 of the largest magnitude;
    # fp8 2^-4 relative, or half its smallest subnormal step (2^-10 of the scale).
    error = (fake_quantize(values, quant) - values.double()).abs()
    amax = values.double().abs().amax(-1, keepdim=True)
    bound = amax / 254 if quant == "int8" else torch.maximum(values.double().abs() / 16, amax / 448 / 1024)
    assert (error <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("quant", QUANTS)
def test_value_codes_sit_in_tiles_where_the_kernels_read_them(quant: str) -> None:
    """Token t's value codes of channel d are at `[b, slot, t // VALUE_TILE, d, t % VALUE_TILE]` (writes across tile
    edges, in any order); `middle_values_like` converts token-major codes to tiles."""
    mask, region = _region([16, 0, 24], 32, quant, batch=2, capacity=300)
    assert region.values.shape == (2, 2, 3, 32, VALUE_TILE)
    generator = torch.Generator().manual_seed(4)
    index = torch.tensor([299, 0, 127, 128, 255, 256, 5])
    values = torch.randn(2, 3, len(index), 32, generator=generator)
    region.write(torch.randn(2, 3, len(index), 32, generator=generator), values, index)
    for slot, head in enumerate(region.layout.storage_order[:2].tolist()):
        want, _ = quantize(values[:, head], quant)  # [B, n, D]
        for i, t in enumerate(index.tolist()):
            stored = region.values[:, slot, t // VALUE_TILE, :, t % VALUE_TILE]
            torch.testing.assert_close(code_numbers(stored, quant), want[:, i].float(), rtol=0, atol=0)
    codes = stored_codes(torch.randn(2, 3, 200, 32, generator=generator).round(), quant)
    tiles = middle_values_like(codes)
    assert tiles.shape == (2, 3, 2, 32, VALUE_TILE) and middle_values_like(tiles) is tiles
    assert torch.equal(tiles[:, :, 1, :, 199 - VALUE_TILE].float(), codes[:, :, 199].float())
    assert torch.equal(stored_values(tiles, 200).float(), codes.float())


@pytest.mark.parametrize("quant", QUANTS)
def test_resize_batch_changes_and_bytes_keep_the_scales(quant: str) -> None:
    mask, region = _region([16, 0, 24], 32, quant, batch=3, capacity=4)
    generator = torch.Generator().manual_seed(2)
    keys, values = torch.randn(3, 3, 4, 32, generator=generator), torch.randn(3, 3, 4, 32, generator=generator)
    region.write(keys, values, torch.arange(4))
    before = _stored(region, mask, 4)
    grown = region.resized(9, keep=4)
    after = _stored(grown, mask, 4)
    for (codes, scales), (grown_codes, grown_scales) in zip(before[0] + before[1], after[0] + after[1]):
        assert torch.equal(codes.float(), grown_codes.float()) and torch.equal(scales, grown_scales)
    grown.map_batch(lambda tensor: tensor[[2, 0]])
    assert torch.equal(grown.key_scales[:, :, :4], region.key_scales[[2, 0]])
    assert torch.equal(stored_values(grown.values, 4).float(), stored_values(region.values, 4)[[2, 0]].float())
    # Value codes stay in whole contiguous tiles (what the kernels read) through every copy.
    for stored in (region, grown):
        batch = stored.values.shape[0]
        assert stored.values.shape[1:] == (2, 1, 32, VALUE_TILE)
        assert stored.values.stride()[2:] == (32 * VALUE_TILE, VALUE_TILE, 1)
        assert stored.values.untyped_storage().nbytes() == batch * 2 * 32 * VALUE_TILE
    # Bytes: one byte per kept key channel and value channel, 4 per scale (2 scales per token and kept head); the
    # allocation holds one tile of value tokens per head for a capacity of 9.
    assert grown.used_bytes(5) == (2 * 5 * 40 + 2 * 2 * 5 * 4, 2 * 2 * 5 * 32 + 2 * 2 * 5 * 4)
    assert grown.nbytes == (2 * 9 * 40 + 2 * 2 * 9 * 4, 2 * 2 * VALUE_TILE * 32 + 2 * 2 * 9 * 4)


def test_format_names() -> None:
    assert resolve_quant("int8", torch.device("cpu")) is FORMATS["int8"]
    assert resolve_quant("none", torch.device("cpu")) is None
    with pytest.raises(LeanKUsageError, match="middle_quant"):
        resolve_quant("auto", torch.device("cpu"))
    assert resolve_quant(None, torch.device("cpu")) is None
    with pytest.raises(LeanKUsageError, match="middle_quant"):
        LeanKCache(random_masks(tiny_model("llama").config), tiny_model("llama").config, middle_quant="int4")


def _generate(model, masks, inputs, quant: str | None, reference: bool):
    kwargs = {"max_new_tokens": 12, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    if reference:
        windows = (masks.sink_size, masks.recent_size, masks.flush_size)
        with reference_model(model, masks.mask, *windows, quant=quant):
            return model.generate(**inputs, past_key_values=ReferenceCache(model.config), **kwargs)
    apply_leank(model)
    try:
        cache = LeanKCache(masks, model.config, middle_quant=quant)
        return model.generate(**inputs, past_key_values=cache, **kwargs), cache
    finally:
        revert_leank(model)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("family", ["llama", "llama128"])
def test_generate_matches_the_quantizing_reference(family: str, quant: str) -> None:
    """Left-padded batch: tokens equal and logits within 1e-5 (fp32) of the dense reference that quantizes the same
    way; the unquantized LeanK logits differ from both by more than that (the test sees the quantization)."""
    model = tiny_model(family)
    if model.config.head_dim == 128:
        masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)
    else:
        masks = random_masks(model.config)
    input_ids = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(4))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :9] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    expected = _generate(model, masks, inputs, quant, reference=True)
    actual, cache = _generate(model, masks, inputs, quant, reference=False)
    assert all(layer.middle.quant is FORMATS[quant] for layer in cache.layers)
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    for got, want in zip(actual.logits, expected.logits):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    unquantized, _ = _generate(model, masks, inputs, None, reference=False)
    assert max((a - b).abs().max() for a, b in zip(unquantized.logits, actual.logits)) > 1e-4


@pytest.mark.parametrize("quant", QUANTS)
def test_memory_footprint_counts_codes_and_scales(quant: str) -> None:
    from leank_hf.tools.benchmarks.memory import measure

    model = tiny_model("llama")
    masks = random_masks(model.config)
    result = measure(masks, model.config, 50, device="cpu", dtype=torch.float32, middle_quant=quant)
    bf16 = measure(masks, model.config, 50, device="cpu", dtype=torch.float32)["footprint"].regions
    regions = result["footprint"].regions
    kept = masks.mask.sum(-1)  # [L, H]
    channels, value_heads = int(kept.sum()), int((kept > 0).sum())
    num_mid = masks.flush_size * ((51 - masks.sink_size - masks.recent_size) // masks.flush_size)
    assert regions["keys/middle"].used == num_mid * (channels + 4 * value_heads)
    assert regions["values/middle"].used == num_mid * value_heads * (model.config.head_dim + 4)
    assert regions["keys/middle"].dense == bf16["keys/middle"].dense and regions["keys/full"] == bf16["keys/full"]


def test_llama_mask_middle_in_8_bits_is_under_30_percent_of_dense_bf16() -> None:
    """Issue #14's memory target, from real caches of Llama-3.1-8B's shape on the meta device."""
    from leank_hf import LeanKMasks
    from leank_hf.tools.benchmarks.memory import MODELS, measure

    masks = LeanKMasks.from_pretrained(MODELS["Llama-3.1-8B"][0])
    regions = measure(masks, MODELS["Llama-3.1-8B"][1](), 4096, middle_quant="fp8")["footprint"].regions
    keys, values = regions["keys/middle"], regions["values/middle"]
    # 10,240 kept channels + 209 value heads x 128 bytes + 2 x 209 fp32 scales per token, over 32 x 8 x 128 x 2 x 2.
    assert (keys.used + values.used) / (keys.dense + values.dense) == pytest.approx(
        (10240 + 209 * 128 + 2 * 209 * 4) / (32 * 8 * 128 * 4)
    )
    assert (keys.used + values.used) / (keys.dense + values.dense) < 0.30


@pytest.mark.parametrize("quant", QUANTS)
def test_static_cache_matches_the_quantizing_reference_and_the_dynamic_cache(quant: str) -> None:
    """Greedy over a left-padded batch, then a second turn (the eager multi-token path) on the same caches."""
    from leank_hf import LeanKStaticCache

    model = tiny_model("llama128")
    masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)
    input_ids = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(6))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0
    kwargs = {"max_new_tokens": 10, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    windows = (masks.sink_size, masks.recent_size, masks.flush_size)
    with reference_model(model, masks.mask, *windows, quant=quant):
        expected = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    apply_leank(model, backend="torch")
    try:
        outputs = {}
        for name, cache in (
            ("static", LeanKStaticCache(masks, model.config, max_cache_len=80, middle_quant=quant)),
            ("dynamic", LeanKCache(masks, model.config, middle_quant=quant)),
        ):
            outputs[name] = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **kwargs
            )
            # The cache holds 49 slots; the last generated token and 4 more come as one forward.
            follow = torch.cat([outputs[name].sequences, torch.full((2, 4), 7)], 1)
            mask = torch.cat([attention_mask, torch.ones(2, follow.shape[1] - 40, dtype=torch.long)], 1)
            outputs[name + "-turn"] = model(follow[:, 49:], attention_mask=mask, past_key_values=cache).logits
    finally:
        revert_leank(model)
    assert outputs["static"].past_key_values.layers[0].middle.keys.dtype == FORMATS[quant].dtype
    for name in ("static", "dynamic"):
        torch.testing.assert_close(outputs[name].sequences, expected.sequences, rtol=0, atol=0)
        for got, want in zip(outputs[name].logits, expected.logits):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["static-turn"], outputs["dynamic-turn"], rtol=0, atol=1e-5)


def test_kernel_benchmark_counts_codes_and_scales() -> None:
    """`bench kernel`'s LeanK bytes (hence its bytes-limit speedup and bandwidth) for an 8-bit middle."""
    from leank_hf.tools.benchmarks.kernel import _leank_bytes
    from packing import pack_compact

    mask = random_layer_mask([32, 0, 16, 48, 0, 16, 16, 32], 128, torch.Generator().manual_seed(0))
    keys = torch.randn(1, 8, 40, 128, dtype=torch.bfloat16)
    plain = pack_compact(keys, keys, mask, [0], sink=4, boundaries=(30,))
    quantized = pack_compact(keys, keys, mask, [0], sink=4, boundaries=(30,), quant="fp8")
    full = (8 * (4 + 10) * 128 * 2 + 32 * 128) * 2  # sinks + recent window, K and V, and the query, in bf16
    assert _leank_bytes(plain, 1, 2) == full + 26 * (160 + 6 * 128) * 2
    assert _leank_bytes(quantized, 1, 2) == full + 26 * (160 + 6 * 128) + 2 * 26 * 6 * 4


def test_masks_carry_a_recommended_middle_storage(tmp_path) -> None:
    """Saved in leank_config.json and the model card; caches built without `middle_quant` follow it; files without
    the key (every mask saved before) load with no recommendation."""
    import dataclasses
    import json

    from leank_hf import LeanKMasks, MaskError

    model = tiny_model("llama")
    masks = dataclasses.replace(random_masks(model.config), middle_quant="int8")
    masks.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "leank_config.json").read_text())["middle_quant"] == "int8"
    assert "| recommended middle storage | int8 |" in (tmp_path / "README.md").read_text()
    loaded = LeanKMasks.from_pretrained(str(tmp_path))
    assert loaded == masks and loaded.middle_quant == "int8"
    keys = torch.randn(1, 2, 40, 32)
    for quant, dtype in ((None, torch.uint8), ("none", torch.float32), ("fp8", torch.float8_e4m3fn)):
        cache = LeanKCache(loaded, model.config, middle_quant=quant)
        cache.update(keys, keys, 0)
        cache.layers[0].finish_prefill(None)
        assert cache.layers[0].middle.keys.dtype == dtype
    assert LeanKMasks.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct").middle_quant is None
    with pytest.raises(MaskError, match="middle_quant"):
        dataclasses.replace(masks, middle_quant="int4")


def test_fp8_is_refused_on_a_gpu_without_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(LeanKUsageError, match="compute capability 8.9"):
        resolve_quant("fp8", torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_quant("fp8", torch.device("cuda")) is FORMATS["fp8"]
    assert resolve_quant("fp8", torch.device("cpu")) is FORMATS["fp8"]  # CPU casts FP8 (PyTorch path, interpreter)
