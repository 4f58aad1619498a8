"""LeanKLayer / LeanKCache storage: what is stored where, growth, memory accounting, cache operations, errors."""

from __future__ import annotations

import logging
import logging.handlers

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from leank_hf import LeanKCache, LeanKMasks, LeanKUsageError, MaskError, apply_leank
from leank_hf.cache_layer import LeanKLayer
from leank_hf.cache_states import LeanKStates
from leank_hf.contract import Windows
from leank_hf.footprint import REGIONS
from packing import stored_values
from reference import random_layer_mask
from tiny_models import FLUSH, RECENT, SINK, random_masks, tiny_model


def _layer_mask(widths=(16, 0, 8, 24, 8), head_dim=24 + 8, seed=0) -> torch.Tensor:
    return random_layer_mask(widths, head_dim, torch.Generator().manual_seed(seed))


def _feed(layer: LeanKLayer, keys: torch.Tensor, values: torch.Tensor, cuts: list[int], pad=None) -> list:
    """Feed `keys[:, :, a:b]` for consecutive cuts; the first chunk is the prompt. Returns the CompactKV of each."""
    results = []
    for start, stop in zip(cuts, cuts[1:]):
        states, same = layer.update(keys[:, :, start:stop], values[:, :, start:stop])
        assert states is same and isinstance(states, LeanKStates)
        if start == 0:
            layer.finish_prefill(pad)
        else:
            results.append(states.payload)
    return results


def _check_storage(layer: LeanKLayer, mask: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pad) -> None:
    """Compare the stored regions with the dense history, head by head (independent of the layout's index math)."""
    sink, length = layer.sink_size, layer.length
    pad = [0] * keys.shape[0] if pad is None else pad.tolist()
    for row, row_pad in enumerate(pad):
        for slot in range(sink):
            if row_pad + slot < length:
                torch.testing.assert_close(layer.full_keys[row, :, slot], keys[row, :, row_pad + slot], rtol=0, atol=0)
                torch.testing.assert_close(
                    layer.full_values[row, :, slot], values[row, :, row_pad + slot], rtol=0, atol=0
                )
    recent = layer.num_recent
    stored = layer.full_keys[:, :, sink : sink + recent]
    torch.testing.assert_close(stored, keys[:, :, layer.recent_start : length], rtol=0, atol=0)
    stored = layer.full_values[:, :, sink : sink + recent]
    torch.testing.assert_close(stored, values[:, :, layer.recent_start : length], rtol=0, atol=0)

    middle = keys[:, :, sink : sink + layer.num_mid]
    order = layer.host_layout.storage_order.tolist()
    offset, value_slot = 0, 0
    for head in order:
        kept = mask[head].nonzero().flatten()
        width = len(kept)
        block = layer.middle.keys[:, layer.middle.capacity * offset : layer.middle.capacity * (offset + width)]
        block = block.view(keys.shape[0], layer.middle.capacity, width)[:, : layer.num_mid]
        torch.testing.assert_close(block, middle[:, head][..., kept], rtol=0, atol=0)
        if width:
            kept_values = stored_values(layer.middle.values, layer.num_mid)[:, value_slot]
            torch.testing.assert_close(kept_values, values[:, head, sink : sink + layer.num_mid], rtol=0, atol=0)
            value_slot += 1
        offset += width
    assert value_slot == layer.middle.values.shape[1]


@pytest.mark.parametrize(
    "sink, flush, pad",
    [(SINK, FLUSH, None), (SINK, 1, None), (0, FLUSH, None), (SINK, FLUSH, [0, 6]), (6, 4, [9, 0])],
    ids=["sink4-flush3", "flush1", "no-sink", "padded", "pad-past-sink"],
)
def test_regions_hold_the_right_tokens(sink: int, flush: int, pad) -> None:
    mask = _layer_mask()
    layer = LeanKLayer(mask, sink_size=sink, recent_size=RECENT, flush_size=flush)
    keys, values = torch.randn(2, 5, 90, 32), torch.randn(2, 5, 90, 32)
    pad = None if pad is None else torch.tensor(pad)
    cuts = [0, 11, 12, 13, 20, 21, 22, 23, 24, 40, 41, 60, *range(61, 90)]
    for stop in cuts[1:]:
        if stop == 11:
            _feed(layer, keys, values, [0, 11], pad)
        else:
            (kv,) = _feed(layer, keys, values, [layer.length, stop])
            length = layer.length
            assert kv.num_mid == layer.num_mid == Windows(sink, RECENT, flush).flushed(length) - sink
            assert kv.recent_start == Windows(sink, RECENT, flush).flushed(kv.query_start + 1)
            assert kv.boundaries == tuple(
                Windows(sink, RECENT, flush).flushed(position + 1) for position in range(kv.query_start, length)
            )
        _check_storage(layer, mask, keys, values, pad)


def test_prompt_window_allows_cropping_flush_size_tokens() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=5)
    keys = torch.randn(1, 5, 50, 32)
    _feed(layer, keys, keys, [0, 50])
    assert layer.recent_start == Windows(SINK, RECENT, 5).flushed(46)
    layer.crop(-5)
    with pytest.raises(LeanKUsageError, match=r"at most 4 can be removed now\. .*`prompt_lookup_num_tokens`"):
        layer.crop(-5)


def test_storage_grows_in_amortised_chunks() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(1, 5, 700, 32)
    _feed(layer, keys, keys, [0, 40, 41])
    full_buffer = layer.full_keys.data_ptr()
    capacities = [layer.middle.capacity]
    for stop in range(42, 700):
        _feed(layer, keys, keys, [stop - 1, stop])
        if layer.middle.capacity != capacities[-1]:
            capacities.append(layer.middle.capacity)
    assert layer.full_keys.data_ptr() == full_buffer  # the full region is never reallocated while decoding
    assert len(capacities) < 20
    growths = [new - old for old, new in zip(capacities, capacities[1:])]
    assert all(min(max(old // 4, FLUSH), 16 * FLUSH) <= growth for old, growth in zip(capacities, growths))
    _check_storage(layer, _layer_mask(), keys[:, :, :700], keys[:, :, :700], None)


def test_decode_path_reads_no_tensor_data_on_the_host() -> None:
    """Cache update and PyTorch attention run on the meta device, where any host read of a value would fail."""
    from leank_hf.ops.decode_attention import leank_decode_torch

    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(2, 5, 40, 32, device="meta")
    layer.update(keys, keys)
    layer.finish_prefill(torch.tensor([0, 3], device="meta"))
    for _ in range(2 * FLUSH + 1):
        states, _ = layer.update(keys[:, :, :1], keys[:, :, :1])
        output = leank_decode_torch(torch.randn(2, 10, 1, 32, device="meta"), states.payload, scale=0.1)
        assert output.shape == (2, 10, 1, 32)
    assert layer.num_mid > 40 - SINK - RECENT


def _held_bytes(cache) -> dict[str, int]:
    totals = {"full": 0, "middle": 0}
    for layer in cache.layers:
        if isinstance(layer, LeanKLayer):
            totals["full"] += layer.full_keys.nbytes + layer.full_values.nbytes
            totals["middle"] += layer.middle.keys.nbytes + layer.middle.values.nbytes
        else:
            totals["full"] += layer.keys.nbytes + layer.values.nbytes
    return totals


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_memory_footprint_matches_tensors_held(family: str) -> None:
    model = tiny_model(family)
    masks = random_masks(model.config)
    text = model.config
    head_dim, num_heads = text.head_dim, text.num_key_value_heads
    cache, dense = LeanKCache(masks, text), DynamicCache(config=text)
    keys = torch.randn(2, num_heads, 70, head_dim)
    for index, layer in enumerate(cache.layers):
        if isinstance(layer, LeanKLayer):
            _feed(layer, keys, keys, [0, 40, *range(41, 71)])
        else:
            layer.update(keys, keys)
        dense.layers[index].update(keys, keys)
    footprint = cache.memory_footprint()
    assert set(footprint.regions) == set(REGIONS)
    held = _held_bytes(cache)
    regions = footprint.regions
    assert regions["keys/full"].allocated + regions["values/full"].allocated == held["full"]
    assert regions["keys/middle"].allocated + regions["values/middle"].allocated == held["middle"]
    assert footprint.dense == sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.layers)

    full_layers = [index for index, layer in enumerate(cache.layers) if isinstance(layer, LeanKLayer)]
    kept = masks.mask[full_layers]
    middle_keys, middle_values = regions["keys/middle"], regions["values/middle"]
    assert middle_keys.used * kept.numel() == middle_keys.dense * int(kept.sum())  # kept fraction x dense, exactly
    heads = kept.any(-1)
    assert middle_values.used * heads.numel() == middle_values.dense * int(heads.sum())
    assert regions["keys/full"].used == regions["keys/full"].dense
    assert footprint.used < footprint.dense


def test_cache_builds_layers_by_type() -> None:
    model = tiny_model("gemma3")
    cache = LeanKCache(random_masks(model.config), model.config)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicSlidingWindowLayer, LeanKLayer, DynamicSlidingWindowLayer, LeanKLayer]
    assert cache.layers[0].sliding_window == 12
    assert not cache.is_compileable
    assert cache.is_sliding == [True, False, True, False]


def test_window_sizes_default_to_the_masks_and_can_be_overridden() -> None:
    model = tiny_model("llama")
    masks = random_masks(model.config, sink_size=5, recent_size=9, flush_size=2)
    cache = LeanKCache(masks, model.config)
    assert (cache.sink_size, cache.recent_size, cache.flush_size) == (5, 9, 2)
    layer = LeanKCache(masks, model.config, sink_size=0, flush_size=7).layers[0]
    assert (layer.sink_size, layer.recent_size, layer.flush_size) == (0, 9, 7)


def test_from_pretrained_loads_the_masks(tmp_path) -> None:
    model = tiny_model("llama")
    masks = random_masks(model.config)
    masks.save_pretrained(tmp_path)
    cache = LeanKCache.from_pretrained(tmp_path, config=model.config, recent_size=11)
    assert torch.equal(cache.masks.mask, masks.mask)
    assert (cache.sink_size, cache.recent_size) == (masks.sink_size, 11)


def test_crop_rules() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(1, 5, 60, 32)
    _feed(layer, keys, keys, [0, 40, 41, 42, 43, 50])
    with pytest.raises(ValueError, match="negative"):
        layer.crop(3)
    # The window of the last chunk starts at 34 (boundary of query 43), which query 41 still reads: 9 removable.
    with pytest.raises(LeanKUsageError, match="already stored with pruned keys; at most 9"):
        layer.crop(-10)
    layer.crop(-7)  # the whole last chunk
    assert layer.length == 43
    layer.crop(-100)
    assert layer.length == 0 and not layer.is_initialized


def test_reset_allows_a_new_batch() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(2, 5, 50, 32)
    _feed(layer, keys, keys, [0, 40, 41])
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.memory_footprint().allocated == 0
    single = torch.randn(1, 5, 50, 32)
    _feed(layer, single, single, [0, 30, 31, 32])
    _check_storage(layer, _layer_mask(), single, single, None)


def test_batch_operations_move_every_tensor() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(3, 5, 50, 32)
    pad = torch.tensor([0, 2, 5])
    _feed(layer, keys, keys, [0, 40, 41, 42])
    layer.batch_select_indices(torch.tensor([2, 0]))
    layer.batch_repeat_interleave(2)
    layer.reorder_cache(torch.tensor([1, 3, 0, 2]))
    rows = torch.tensor([2, 0, 2, 0])  # [2, 2, 0, 0] reordered by [1, 3, 0, 2]
    assert layer.pad.tolist() == [0, 0, 0, 0]
    _check_storage(layer, _layer_mask(), keys[rows], keys[rows], None)
    layer.reset()
    _feed(layer, keys, keys, [0, 40, 41], pad)
    layer.batch_select_indices(torch.tensor([2]))
    assert layer.pad.tolist() == [5]


def test_misuse_is_reported() -> None:
    layer = LeanKLayer(_layer_mask(), sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
    keys = torch.randn(2, 5, 20, 32)
    states, _ = layer.update(keys, keys)
    with pytest.raises(LeanKUsageError, match="apply_leank"):
        _ = states.shape
    with pytest.raises(LeanKUsageError, match="updated twice"):
        layer.update(keys, keys)
    layer.finish_prefill(None)
    with pytest.raises(LeanKUsageError, match="batch size 2"):
        layer.update(keys[:1, :, :1], keys[:1, :, :1])
    with pytest.raises(MaskError, match="KV heads"):
        LeanKLayer(_layer_mask(), sink_size=1, recent_size=1, flush_size=1).update(keys[:, :4], keys[:, :4])
    with pytest.raises(NotImplementedError, match="offloading"):
        layer.offload()


def test_cache_arguments_are_checked() -> None:
    model = tiny_model("llama")
    masks = random_masks(model.config)
    with pytest.raises(MaskError, match="does not match"):
        LeanKCache(random_masks(tiny_model("llama128").config, align=32), model.config)
    with pytest.raises(LeanKUsageError, match="recent_size"):
        LeanKCache(masks, model.config, recent_size=0)
    with pytest.raises(LeanKUsageError, match="flush_size"):
        LeanKCache(masks, model.config, flush_size=2.5)
    with pytest.raises(LeanKUsageError, match="LeanKMasks"):
        LeanKCache(masks.mask, model.config)


def test_unsupported_layer_types_are_refused() -> None:
    model = tiny_model("llama")
    config = model.config
    config.layer_types = ["full_attention", "chunked_attention", "full_attention"]
    with pytest.raises(LeanKUsageError, match="'chunked_attention' layer"):
        LeanKCache(random_masks(model.config), config)


def test_sliding_window_model_with_pruning_mask_is_refused() -> None:
    """A Mistral config with a sliding window makes every layer a sliding layer, which LeanK leaves unpruned."""
    model = tiny_model("mistral", sliding_window=16)
    masks = random_masks(model.config)
    assert masks.mask.shape[0] == 3
    with pytest.raises(MaskError, match="sliding-window layer"):
        LeanKCache(masks, model.config)
    full = LeanKMasks(torch.ones_like(masks.mask), align=32)
    assert all(isinstance(layer, DynamicSlidingWindowLayer) for layer in LeanKCache(full, model.config).layers)


def test_memory_benchmark_cuts_the_middle_by_the_mask(tmp_path) -> None:
    """The bench's numbers, from real caches of Llama-3.1-8B's shape (meta device): 43.6% less middle KV."""
    from leank_hf.cli.main import main
    from leank_hf.tools.benchmarks.memory import MODELS, measure

    masks = LeanKMasks.from_pretrained(MODELS["Llama-3.1-8B"][0])
    result = measure(masks, MODELS["Llama-3.1-8B"][1](), 4096)
    regions = result["footprint"].regions
    assert result["dense"] == 32 * 2 * 8 * 4097 * 128 * 2
    keys, values = regions["keys/middle"], regions["values/middle"]
    assert keys.used * 32 * 8 * 128 == keys.dense * int(masks.mask.sum())
    assert values.used * 256 == values.dense * (256 - 47)
    assert 1 - (keys.used + values.used) / (keys.dense + values.dense) == pytest.approx(0.436, abs=5e-4)
    assert main(["bench", "memory", "--tokens", "2k", "--models", "Qwen2.5-7B", "--output-dir", str(tmp_path)]) == 0
    assert "Qwen2.5-7B | 2,048" in (tmp_path / "memory.md").read_text()


def test_each_layer_allocates_where_its_keys_arrive() -> None:
    """With `device_map="auto"` layers sit on different devices; here layer 1 lives on the meta device."""
    model = tiny_model("llama")
    cache = LeanKCache(random_masks(model.config), model.config)
    for index, device in enumerate(("cpu", "meta", "cpu")):
        keys = torch.randn(2, 2, 40, 32, device=device)
        cache.update(keys, keys, index)
        cache.layers[index].finish_prefill(torch.tensor([0, 3]))
        for _ in range(2):
            cache.update(keys[:, :, :1], keys[:, :, :1], index)
        layer = cache.layers[index]
        tensors = (layer.full_keys, layer.full_values, layer.middle.keys, layer.middle.values, layer.pad)
        assert {tensor.device.type for tensor in tensors} == {device}
    assert cache.get_seq_length() == 42 and cache.memory_footprint().used > 0


@pytest.mark.parametrize("end", ["decode", "crop", "crop(0)", "reorder"])
def test_prompt_stays_dense_until_it_ends(end: str) -> None:
    """Multi-token updates right after the prompt extend it (the whole prompt so far is returned for exact attention);
    a single-token update, a crop (`crop(0)` too) or a batch reorder compacts it."""
    mask, pad = _layer_mask(), torch.tensor([0, 3])
    keys = torch.randn(2, 5, 40, 32)
    layer = LeanKLayer(mask, sink_size=SINK, recent_size=RECENT, flush_size=FLUSH, keep_prompt_dense=True)
    for start, stop in ((0, 16), (16, 30), (30, 37)):
        states, _ = layer.update(keys[:, :, start:stop], keys[:, :, start:stop])
        torch.testing.assert_close(states.payload.keys, keys[:, :, :stop], rtol=0, atol=0)
        layer.prompt_attended(pad)
    assert layer.num_mid == 0 and layer.memory_footprint().regions["keys/full"].used == keys[:, :, :37].nbytes
    if end == "decode":
        layer.update(keys[:, :, 37:38], keys[:, :, 37:38])
    elif end == "reorder":
        layer.reorder_cache(torch.tensor([0, 1]))
    else:
        layer.crop(0 if end == "crop(0)" else -3 * FLUSH)  # a dense prompt loses any number of tokens exactly
    assert layer._prompt is None and layer.num_mid > 0
    assert layer.length == {"decode": 38, "crop": 37 - 3 * FLUSH}.get(end, 37)
    _check_storage(layer, mask, keys, keys, pad)


def test_generate_logs_backend_compaction_and_growth_at_debug_and_nothing_at_warning():
    from leank_hf.ops import decode_attention

    decode_attention._announced.clear()  # choices are logged once per process
    model = apply_leank(tiny_model("llama"))
    cache = LeanKCache(random_masks(model.config), model.config)
    package = logging.getLogger("leank_hf")
    handler, level = logging.handlers.BufferingHandler(capacity=10_000), package.level
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    try:
        prompt = torch.randint(1, model.config.vocab_size, (1, 40))
        model.generate(prompt, past_key_values=cache, max_new_tokens=24, do_sample=False)
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
    messages = [record.getMessage() for record in handler.buffer]
    choice = "dynamic-cache decode attention takes the torch path (backend='auto'; no CUDA)"
    assert any(choice in m for m in messages), messages
    assert sum("compacted a 40-slot prompt" in m for m in messages) == model.config.num_hidden_layers
    assert any("grows its middle region from 0 to" in m for m in messages)
    assert any(m.startswith("LeanKCache layer grows its middle region from") and "from 0 " not in m for m in messages)
    assert sum("decode attention" in m for m in messages) == 1  # once, not per layer and step
    assert all(record.levelno < logging.WARNING for record in handler.buffer)
    assert all(record.name.startswith("leank_hf.") for record in handler.buffer)
