"""The Triton decode kernel against an independent dense reference and the PyTorch compact path.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (conftest.py sets TRITON_INTERPRET=1 before
anything imports triton). With CUDA the same cases run compiled on the GPU, bf16 included.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

from leank_hf import LeanKMasks
from leank_hf.errors import LeanKUsageError
from leank_hf.ops.decode_attention import launch
from leank_hf.ops.decode_attention import triton as triton_decode
from leank_hf.ops.decode_attention.layout import VALUE_TILE, CompactKV
from leank_hf.ops.decode_attention.naive import leank_decode_torch
from packing import CODE_STORAGE, pack_compact, stored_values
from reference import dense_attention, random_layer_mask, window_start

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not launch.INTERPRETED:
    raise RuntimeError("without CUDA these tests need TRITON_INTERPRET=1 set before triton is imported (conftest.py)")
DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture(autouse=True)
def nan_empty(monkeypatch):
    """Every float tensor from `torch.empty` starts as NaN, so an output or partial nobody writes fails the test."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
        return tensor

    monkeypatch.setattr(torch, "empty", poisoned)


@dataclass
class Case:
    """A decode step over a dense cache of `length` global slots (pads included), packed into the LeanK layout."""

    query: torch.Tensor  # [B, Hq, 1, D]
    keys: torch.Tensor  # [B, H, length, D] dense, fp32 copy of what is stored
    values: torch.Tensor
    mask: torch.Tensor  # [H, D] bool
    pad: torch.Tensor  # [B]
    sink_size: int
    boundary: int
    kv: CompactKV
    key_mask: torch.Tensor | None = None  # [B, >= length] bool: keys attended only where True
    quant: str | None = None  # 8-bit middle format


def make_case(
    *,
    widths: list[int] | torch.Tensor,
    head_dim: int,
    group: int,
    length: int,
    pads: list[int],
    dtype: torch.dtype,
    seed: int,
    sink_size: int = 8,
    recent_size: int = 24,
    flush_size: int = 8,
    mid_past_boundary: int = 0,
    filler: float = float("nan"),
    holes: dict[int, list[int]] | None = None,
    extra: int = 3,
    quant: str | None = None,
    value_gain: float = 1.0,
    zero_values: list[int] | None = None,
) -> Case:
    """A decode step at slot `length - 1`. Stored elements the kernel must not read are `filler` (NaN by default);
    `holes[row]` lists global slots masked by a key mask of `length + extra` slots (stored as `filler` too). Values are
    standard normal times `value_gain`, zero at the global slots `zero_values`."""
    generator = torch.Generator().manual_seed(seed)
    if isinstance(widths, torch.Tensor):
        mask = widths
    else:
        mask = random_layer_mask(widths, head_dim, generator)
    num_heads = mask.shape[0]
    batch = len(pads)
    shape = (batch, num_heads, length, head_dim)
    keys = torch.randn(shape, generator=generator).to(dtype)
    values = (torch.randn(shape, generator=generator) * value_gain).to(dtype)
    if zero_values:
        values[:, :, zero_values] = 0
    query = torch.randn(batch, num_heads * group, 1, head_dim, generator=generator).to(dtype)
    pad = torch.tensor(pads, dtype=torch.int64)
    key_mask = None
    if holes is not None:
        key_mask = torch.ones(batch, length + extra, dtype=torch.bool)
        for b, slots in holes.items():
            key_mask[b, slots] = False
    boundary = window_start(length - 1, sink_size, recent_size, flush_size)
    kv = pack_compact(
        keys, values, mask, pad, sink=sink_size, boundaries=(boundary,), key_mask=key_mask,
        mid_past_boundary=mid_past_boundary, filler=filler, device=DEVICE, quant=quant,
    )  # fmt: skip
    return Case(query.to(DEVICE), keys.float(), values.float(), mask, pad, sink_size, boundary, kv, key_mask, quant)


def dense_reference(case: Case, scale: float) -> torch.Tensor:
    """The LeanK semantics (tests/reference.py) on the dense full-width keys, in float64: `[B, Hq, 1, D]`."""
    return dense_attention(
        case.query.cpu(), case.keys, case.values, case.mask, pad=case.pad, sink=case.sink_size,
        boundaries=(case.boundary,), scale=scale, key_mask=case.key_mask, quant=case.quant,
    )  # fmt: skip


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> None:
    actual = actual.double().cpu()
    assert not actual.isnan().any(), f"{int(actual.isnan().sum())} NaN outputs (unwritten or poisoned reads)"
    torch.testing.assert_close(actual, expected.double(), atol=atol, rtol=rtol)


# (dtype, atol, rtol): the interpreter computes in fp32 on rounded inputs, so only the output rounding counts there.
if HAS_CUDA:
    DTYPES = [
        pytest.param(torch.float32, 2e-5, 2e-5, id="fp32"),
        pytest.param(torch.float16, 3e-3, 3e-3, id="fp16"),
        pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    ]
else:
    DTYPES = [
        pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
        pytest.param(torch.float16, 2e-3, 2e-3, id="fp16"),
        pytest.param(torch.bfloat16, 1e-2, 1e-2, id="bf16"),
    ]

# widths, head_dim, group, length, pads, num_splits
SHAPES = [
    pytest.param([32, 0, 64, 16], 64, 4, 203, [0], 3, id="uneven-g4-splits3"),
    pytest.param([64, 48, 0, 16], 64, 1, 157, [0, 37], 2, id="g1-batch2-pad37"),
    pytest.param([16, 64], 64, 7, 131, [5, 0, 61], 1, id="g7-batch3-pad"),
    pytest.param([0, 0], 64, 2, 77, [3], 2, id="all-zero-width"),
    pytest.param([64, 64, 64], 64, 2, 99, [0, 11], 4, id="all-full-width"),
    pytest.param([32, 16, 0, 32], 64, 2, 140, [0, 9], 2, id="widest-32-of-64"),  # loops only up to MAX_WIDTH 32
]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("widths, head_dim, group, length, pads, num_splits", SHAPES)
def test_kernel_matches_dense_reference(widths, head_dim, group, length, pads, num_splits, dtype, atol, rtol):
    case = make_case(widths=widths, head_dim=head_dim, group=group, length=length, pads=pads, dtype=dtype, seed=length)
    assert case.kv.layout.max_width == max(widths)  # the kernel compiles middle loops up to this width
    scale = head_dim**-0.5
    out = triton_decode.leank_decode_fwd(case.query, case.kv, scale, num_splits=num_splits, block_n=16)
    assert out.shape == case.query.shape and out.dtype == dtype
    assert_close(out, dense_reference(case, scale), atol, rtol)


@pytest.mark.parametrize(
    "length, pads, mid_past_boundary",
    [
        pytest.param(5, [0, 2], 0, id="shorter-than-sink"),
        pytest.param(30, [0, 17], 0, id="no-middle-yet"),
        pytest.param(30, [0, 5], 0, id="sink-straddles-boundary"),
        pytest.param(41, [0, 39], 0, id="pad-covers-middle"),
        pytest.param(48, [0, 40], 0, id="pad-beyond-sink"),
        pytest.param(70, [0, 9], 6, id="middle-stored-past-boundary"),
    ],
)
def test_short_and_heavily_padded_rows(length, pads, mid_past_boundary):
    case = make_case(
        widths=[32, 0, 16], head_dim=32, group=2, length=length, pads=pads, dtype=torch.float32, seed=7,
        mid_past_boundary=mid_past_boundary,
    )  # fmt: skip
    out = triton_decode.leank_decode_fwd(case.query, case.kv, 0.3, num_splits=2, block_n=16)
    assert_close(out, dense_reference(case, 0.3), 1e-5, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_key_mask_holes_are_never_read(dtype, atol, rtol):
    """Masked slots that are not left padding (in a sink, the middle, the recent window) are skipped, not read."""
    holes = {0: [2, 20, 21, 22, 23, 24, 25, 66], 1: [12, *range(30, 38), 45, 46]}
    case = make_case(
        widths=[32, 0, 16], head_dim=32, group=2, length=70, pads=[0, 9], dtype=dtype, seed=13, holes=holes
    )
    assert case.boundary == 40
    out = triton_decode.leank_decode_fwd(case.query, case.kv, 0.3, num_splits=2, block_n=16)
    assert_close(out, dense_reference(case, 0.3), atol, rtol)


def llama_layer_masks(layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Layers of the authors' Llama-3.1-8B mask, as bundled with leank_hf: `[8, 128]` each."""
    masks = LeanKMasks.from_pretrained("meta-llama/Llama-3.1-8B-Instruct").mask
    return [masks[layer] for layer in layers]


@pytest.mark.parametrize("layer", [0, 13, 31])
def test_llama_mask_layers(layer):
    (mask,) = llama_layer_masks((layer,))
    # head_dim 128 with the real per-head kept channels; 2 of the 8 KV heads keep the test small.
    heads = mask.sum(-1).argsort(descending=True)[[0, -1]]
    case = make_case(
        widths=mask[heads], head_dim=128, group=4, length=301, pads=[0, 19], dtype=torch.float16, seed=layer
    )
    out = triton_decode.leank_decode_fwd(case.query, case.kv, 128**-0.5, num_splits=3, block_n=32)
    assert_close(out, dense_reference(case, 128**-0.5), 2e-3, 2e-3)


def test_default_split_choice_and_larger_context():
    case = make_case(
        widths=[48, 16, 0], head_dim=64, group=3, length=587, pads=[0, 100], dtype=torch.float32, seed=3,
        sink_size=16, recent_size=64, flush_size=32,
    )  # fmt: skip
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=0.125)
    assert_close(out, dense_reference(case, 0.125), 1e-5, 1e-5)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_matches_torch_path(dtype, atol, rtol):
    # The PyTorch path multiplies zero weights into the stored values of invalid slots: fill them finitely.
    case = make_case(
        widths=[64, 0, 32, 16], head_dim=64, group=4, length=233, pads=[0, 29], dtype=dtype, seed=11, filler=7.0,
        mid_past_boundary=5,
    )  # fmt: skip
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=0.125)
    expected = leank_decode_torch(case.query, case.kv, scale=0.125)
    assert_close(out, expected.double().cpu(), atol, rtol)
    assert_close(out, dense_reference(case, 0.125), atol, rtol)


QUANT_CASES = [
    pytest.param([32, 0, 64, 16], 64, 4, 203, [0], {}, id="uneven-g4"),
    pytest.param([64, 48, 0, 16], 64, 1, 157, [0, 37], {1: [20, 21, 90, 150]}, id="g1-pad-holes"),
    # pad 150: the default 128-key tiles start at 144, inside a stored value tile, and reach into the next one
    pytest.param([32, 16, 0, 32], 64, 4, 330, [0, 150], {}, id="widest-32-of-64-pad150"),
]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize("widths, head_dim, group, length, pads, holes", QUANT_CASES)
def test_kernel_reads_an_8bit_middle(widths, head_dim, group, length, pads, holes, quant, dtype, atol, rtol):
    """Codes and scales in the middle (NaN scales and NaN or extreme codes wherever nothing may be read): the dense
    reference applies the same quantize-dequantize; the PyTorch path (finite fillers) agrees."""
    case = make_case(
        widths=widths, head_dim=head_dim, group=group, length=length, pads=pads, dtype=dtype, seed=length,
        holes=holes or None, quant=quant, mid_past_boundary=5,
    )  # fmt: skip
    assert case.kv.mid_keys.dtype == CODE_STORAGE[quant][0]
    out = triton_decode.leank_decode_fwd(case.query, case.kv, 0.125, num_splits=3, block_n=16)
    expected = dense_reference(case, 0.125)
    assert_close(out, expected, atol, rtol)
    # the default launch of an 8-bit middle (launch.tile_settings: 128-key tiles)
    assert_close(triton_decode.leank_decode_triton(case.query, case.kv, scale=0.125), expected, atol, rtol)
    finite = make_case(
        widths=widths, head_dim=head_dim, group=group, length=length, pads=pads, dtype=dtype, seed=length,
        holes=holes or None, quant=quant, mid_past_boundary=5, filler=7.0,
    )  # fmt: skip
    assert_close(out, leank_decode_torch(finite.query, finite.kv, scale=0.125).double().cpu(), atol, rtol)


def test_next_power_of_2_matches_triton():
    """The launchers' plain-Python power of two (called on every launch) against Triton's."""
    import triton

    assert [launch.next_power_of_2(n) for n in range(1, 300)] == [triton.next_power_of_2(n) for n in range(1, 300)]


def test_choose_splits_fills_the_gpu():
    # batch 1 at 32K: many splits; batch 64: few; no middle: none. Chunks are whole tiles and cover the middle.
    for batch, num_mid in [(1, 32_000), (8, 32_000), (64, 131_000), (3, 100)]:
        splits, split_len = launch.choose_splits(batch, 6, num_mid, 64, 132)
        assert split_len % 64 == 0
        assert (splits - 1) * split_len < num_mid <= splits * split_len
    assert 50 <= launch.choose_splits(1, 6, 32_000, 64, 132)[0] <= launch.MAX_SPLITS
    assert launch.choose_splits(1, 6, 10**7, 64, 132)[0] == launch.MAX_SPLITS  # no length cap
    assert launch.choose_splits(64, 6, 131_000, 64, 132)[0] <= 3
    assert launch.choose_splits(4, 6, 0, 64, 132) == (0, 64)
    # the chunk floor is in keys: 128-key tiles (8-bit middle) split batch 1 at 32K like 64-key tiles
    assert launch.choose_splits(1, 6, 32_000, 128, 132)[0] == launch.choose_splits(1, 6, 32_000, 64, 132)[0]
    assert launch.choose_splits(1, 6, 32_000, 128, 132)[1] % 128 == 0


def test_guided_chunks_shrink_toward_the_end():
    # Llama shape at 32K tokens, batch 8, 6 heads with channels, 128-key tiles, 132 SMs of 3 programs.
    num_mid = 31_872
    chunks = launch.middle_chunks(8, 6, num_mid, 128, 132, guided=1.15, programs_per_sm=3, min_keys=1024)
    lengths = [b - a for a, b in zip(chunks, chunks[1:])]
    assert chunks[0] == 0 and chunks[-1] == num_mid
    assert all(end % 128 == 0 for end in chunks[:-1])  # whole tiles but the last
    assert lengths[:-1] == sorted(lengths[:-1], reverse=True) and min(lengths[:-1]) >= 1024
    # the first chunk: the middle over 1.15 x the 49.5 programs each (row, head) gets at once, rounded up to a tile
    assert lengths[0] == 128 * math.ceil(num_mid / (1.15 * 132 * 3 / 48) / 128)
    # guided 0: choose_splits' equal chunks
    splits, split_len = launch.choose_splits(8, 6, num_mid, 128, 132)
    assert launch.middle_chunks(8, 6, num_mid, 128, 132) == (*range(0, num_mid, split_len), num_mid)
    assert splits == len(range(0, num_mid, split_len))
    assert launch.middle_chunks(8, 0, num_mid, 128, 132, guided=1.15) == (0,)


@pytest.mark.parametrize("guided, min_keys", [(1.15, 16), (0.75, 32), (3.0, 16)])
def test_kernel_reads_guided_chunks(guided, min_keys):
    """Chunks of decreasing lengths (a pad inside them, an 8-bit middle's 16-token groups cut at tile edges)."""
    for quant in (None, "int8"):
        case = make_case(
            widths=[32, 0, 16], head_dim=32, group=2, length=260, pads=[0, 37], dtype=torch.float32, seed=9,
            quant=quant,
        )  # fmt: skip
        chunks = launch.middle_chunks(2, 2, case.kv.num_mid, 16, 8, guided=guided, programs_per_sm=2, min_keys=min_keys)
        assert len({b - a for a, b in zip(chunks, chunks[1:])}) > 1
        out = triton_decode.leank_decode_fwd(case.query, case.kv, 0.3, chunks=chunks, block_n=16)
        assert_close(out, dense_reference(case, 0.3), 1e-5, 1e-5)


def test_rejects_unsupported_inputs():
    case = make_case(widths=[32, 16], head_dim=32, group=2, length=40, pads=[0], dtype=torch.float32, seed=1)
    two_rows = case.query.expand(-1, -1, 2, -1)
    with pytest.raises(LeanKUsageError, match="one query row"):
        triton_decode.leank_decode_triton(two_rows, case.kv, scale=1.0)
    with pytest.raises(LeanKUsageError, match="dtype"):
        triton_decode.leank_decode_triton(case.query.half(), case.kv, scale=1.0)
    odd = make_case(widths=[8, 16], head_dim=32, group=2, length=40, pads=[0], dtype=torch.float32, seed=1)
    with pytest.raises(LeanKUsageError, match="multiples of 16"):
        triton_decode.leank_decode_triton(odd.query, odd.kv, scale=1.0)


def test_a_cache_built_step_checks_only_the_step_inputs():
    """`from_cache` (set by the cache layers) leaves out the cache-tensor checks, not the step's: same output, and a
    wrong query or key mask is still refused."""
    case = make_case(
        widths=[32, 0, 16], head_dim=32, group=2, length=70, pads=[0, 9], dtype=torch.float32, seed=3, quant="int8",
        holes={1: [12, 45]},
    )  # fmt: skip
    trusted = dataclasses.replace(case.kv, from_cache=True)
    expected = triton_decode.leank_decode_triton(case.query, case.kv, scale=0.3)
    assert torch.equal(triton_decode.leank_decode_triton(case.query, trusted, scale=0.3), expected)
    with pytest.raises(LeanKUsageError, match="one query row"):
        triton_decode.leank_decode_triton(case.query.expand(-1, -1, 2, -1), trusted, scale=0.3)
    with pytest.raises(LeanKUsageError, match="dtype"):
        triton_decode.leank_decode_triton(case.query.half(), trusted, scale=0.3)
    with pytest.raises(LeanKUsageError, match="key_mask"):
        short_mask = dataclasses.replace(trusted, key_mask=trusted.key_mask[:, :10])
        triton_decode.leank_decode_triton(case.query, short_mask, scale=0.3)
    with pytest.raises(LeanKUsageError, match="batch"):
        triton_decode.leank_decode_triton(case.query[:1], dataclasses.replace(trusted, key_mask=None), scale=0.3)


@pytest.mark.parametrize("middle_quant", [None, "int8"])
def test_cache_layers_build_steps_the_kernel_reads(middle_quant):
    """What `from_cache` vouches for: the dynamic layer's decode steps, after batch reordering, selection and
    repetition too, pass every cache-tensor check."""
    from leank_hf.cache_layer import LeanKLayer

    layer = LeanKLayer(
        random_layer_mask([32, 0, 16], 32, torch.Generator().manual_seed(0)), sink_size=8, recent_size=24,
        flush_size=8, middle_quant=middle_quant,
    )  # fmt: skip
    keys = torch.randn(3, 3, 60, 32, device=DEVICE)
    layer.update(keys, keys)
    layer.finish_prefill(torch.tensor([0, 5, 2], device=DEVICE))
    query = torch.randn(3, 6, 1, 32, device=DEVICE)
    steps = []
    for step in range(60, 90):
        if step == 70:
            layer.reorder_cache(torch.tensor([2, 0, 1], device=DEVICE))
        if step == 80:
            layer.batch_select_indices(torch.tensor([0, 2], device=DEVICE))
            layer.batch_repeat_interleave(2)
            query = query[:2].repeat_interleave(2, 0)
        new_keys = torch.randn(query.shape[0], 3, 1, 32, device=DEVICE)
        states, _ = layer.update(new_keys, new_keys)
        steps.append((query, states.payload))
    assert all(kv.from_cache for _, kv in steps) and steps[-1][1].num_mid > 0
    for query, kv in steps:
        triton_decode._check_cache_tensors(query, kv)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_gpu_default_blocks_long_context(dtype, atol, rtol):
    # Default launch (block 64, chosen splits) over a few thousand keys with the real sink/recent/flush sizes.
    (mask,) = llama_layer_masks((17,))
    case = make_case(
        widths=mask, head_dim=128, group=4, length=4099, pads=[0, 333, 1000], dtype=dtype, seed=5,
        sink_size=128, recent_size=768, flush_size=128,
    )  # fmt: skip
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=128**-0.5)
    assert_close(out, dense_reference(case, 128**-0.5), atol, rtol)
    assert math.isfinite(float(out.float().abs().max()))


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize("zeroed", ["some", "all"])
def test_kernel_weighs_all_zero_values(zeroed, quant, dtype, atol, rtol):
    """Tokens whose values are all zero store a value scale of 0, which the 8-bit loop's running maximum (logits plus
    log2 value scales) takes as 2^-100: their probabilities still count in the softmax sum, whether some middle tokens
    or all of them are such."""
    length = 203
    slots = list(range(8, length, 3)) if zeroed == "some" else list(range(8, length))
    case = make_case(
        widths=[32, 0, 64, 16], head_dim=64, group=4, length=length, pads=[0, 17], dtype=dtype, seed=21, quant=quant,
        zero_values=slots,
    )  # fmt: skip
    assert (case.kv.mid_value_scales[0, :, : case.kv.num_mid] == 0).any()
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=0.125)
    assert_close(out, dense_reference(case, 0.125), atol, rtol)


def test_kernel_refuses_8bit_values_without_the_tile_layout():
    """8-bit values must be stored in whole contiguous tiles of VALUE_TILE tokens (the kernels read them so);
    token-major codes, tiles transposed, or too few tiles for the capacity are refused with the fix named."""
    case = make_case(
        widths=[16, 32], head_dim=32, group=2, length=300, pads=[0], dtype=torch.float32, seed=3, quant="int8"
    )
    codes = case.kv.mid_values
    assert codes.shape[2] == -(-case.kv.mid_cap // VALUE_TILE) > 1
    token_major = stored_values(codes, case.kv.mid_cap)
    for wrong in (token_major, codes.transpose(3, 4).contiguous().transpose(3, 4), codes[:, :, :-1]):
        kv = dataclasses.replace(case.kv, mid_values=wrong)
        with pytest.raises(LeanKUsageError, match=f"tiles of {VALUE_TILE} tokens.*new_value_storage"):
            triton_decode.leank_decode_triton(case.query, kv, scale=0.2)


@pytest.mark.parametrize("quant, block_n", [(None, 24), (None, 8), ("int8", 48)])
def test_kernel_refuses_a_tile_length_it_cannot_compile(quant, block_n):
    case = make_case(
        widths=[16, 32], head_dim=32, group=2, length=300, pads=[0], dtype=torch.float32, seed=3, quant=quant
    )
    with pytest.raises(LeanKUsageError, match=f"`block_n` must be a power of two >= 16, got {block_n}"):
        triton_decode.leank_decode_fwd(case.query, case.kv, 0.2, block_n=block_n)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize(
    "query_scale, value_gain",
    [(1.0, 1.0), (2.0**17, 1.0), (1.0, 2.0**-16)],
    ids=["query", "query-beyond-fp16", "values-below-fp16-normals"],
)
def test_gpu_8bit_middle_default_blocks_long_context(quant, query_scale, value_gain):
    """The compiled 8-bit path at its default launch. Scaling the bf16 query by 2^17 (entries past fp16's 65504) and
    the softmax scale by 2^-17 leaves the logits unchanged: no fp16 overflow may show (an fp16 variant returned NaN
    here on an H200, see benchmarks/kernel_notes.md). Values of 2^-16 (value scales far below fp16's smallest normal
    number) must keep their relative precision: the value scales enter the kernel's running maximum, which bounds its
    fp16 value operand to [0, 1], so the output divided by the gain matches the reference to the same tolerance."""
    (mask,) = llama_layer_masks((17,))
    case = make_case(
        widths=mask, head_dim=128, group=4, length=4099, pads=[0, 333, 1000], dtype=torch.bfloat16, seed=5,
        sink_size=128, recent_size=768, flush_size=128, quant=quant, value_gain=value_gain,
    )  # fmt: skip
    case = dataclasses.replace(case, query=case.query * query_scale)
    assert (case.query.abs().max() > 65504) == (query_scale > 1)
    scale = 128**-0.5 / query_scale
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=scale)
    assert_close(out.double() / value_gain, dense_reference(case, scale) / value_gain, 2e-2, 2e-2)


def test_generate_with_triton_backend_matches_torch_backend(monkeypatch):
    """A tiny Llama (head_dim 128, widths of the authors' Llama mask) generating a left-padded batch."""
    from leank_hf import LeanKCache, apply_leank
    from tiny_models import LLAMA_WIDTHS, random_masks, tiny_model

    device = DEVICE
    model = tiny_model("llama128").to(device)
    masks = random_masks(model.config, align=32, widths=LLAMA_WIDTHS)  # sink 4, recent 8, flush 3
    lengths = (33, 7)
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    generator = torch.Generator().manual_seed(5)
    for row, length in enumerate(lengths):
        input_ids[row, -length:] = torch.randint(1, 97, (length,), generator=generator)
        attention_mask[row, -length:] = 1
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
    calls = []

    def counting_kernel(*args, **kwargs):
        calls.append(args[0].shape)
        return triton_decode.leank_decode_fwd(args[0], args[1], kwargs["scale"])

    monkeypatch.setattr(triton_decode, "leank_decode_triton", counting_kernel)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    outputs = {}
    for backend in ("torch", "triton"):
        apply_leank(model, backend=backend)
        cache = LeanKCache(masks, model.config)
        outputs[backend] = model.generate(**inputs, past_key_values=cache, **kwargs)
    expected, actual = outputs["torch"], outputs["triton"]
    assert len(calls) == 3 * 5  # 3 layers x 5 decode steps after the prompt
    torch.testing.assert_close(actual.sequences, expected.sequences, rtol=0, atol=0)
    for got, want in zip(actual.logits, expected.logits):
        assert_close(got, want.double().cpu(), 1e-4, 1e-4)
