"""The Triton decode kernel against an independent dense reference and the PyTorch compact path.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (conftest.py sets TRITON_INTERPRET=1 before
anything imports triton). With CUDA the same cases run compiled on the GPU, bf16 included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from leank_hf import LeanKMasks
from leank_hf.errors import LeanKUsageError
from leank_hf.ops.decode_attention import triton as triton_decode
from leank_hf.ops.decode_attention.layout import CompactKV, HeadLayout

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not triton_decode._INTERPRETED:
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


def flushed(length: int, sink_size: int, recent_size: int, flush_size: int) -> int:
    """Start of the full recent window when the cache holds `length` slots (DESIGN.md)."""
    moved = flush_size * (max(0, length - sink_size - recent_size) // flush_size)
    return max(sink_size, sink_size + moved)


def mask_from_widths(widths: list[int], head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A random [H, D] keep mask with the given number of kept channels per head."""
    mask = torch.zeros(len(widths), head_dim, dtype=torch.bool)
    for head, width in enumerate(widths):
        mask[head, torch.randperm(head_dim, generator=generator)[:width]] = True
    return mask


def pack_case(
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    pad: torch.Tensor,
    *,
    sink_size: int,
    recent_size: int,
    flush_size: int,
    spare: int = 5,
    mid_past_boundary: int = 0,
    filler: float = float("nan"),
) -> tuple[CompactKV, int]:
    """Pack dense `[B, H, L, D]` keys/values into the CompactKV storage of a decode step at slot `L - 1`.

    Written from the layout contract alone (not from cache.py). Every stored element the kernel must not read
    (pads, each row's sink tokens in the middle, spare capacity, unfilled sink slots) is `filler`, NaN by default.
    `mid_past_boundary` middle slots past the boundary hold real keys the kernel must still skip.
    """
    batch, num_heads, length, head_dim = keys.shape
    layout = HeadLayout.from_mask(mask)
    boundary = flushed(length, sink_size, recent_size, flush_size)
    num_mid = max(0, min(boundary + mid_past_boundary, length) - sink_size)
    num_recent = length - boundary if boundary < length else 0
    recent_start = boundary
    cap_full = sink_size + num_recent + spare
    mid_cap = num_mid + spare

    full_keys = torch.full((batch, num_heads, cap_full, head_dim), filler, dtype=keys.dtype)
    full_values = torch.full_like(full_keys, filler)
    mid_keys = torch.full((batch, mid_cap * layout.total_width), filler, dtype=keys.dtype)
    mid_values = torch.full((batch, layout.num_value_heads, mid_cap, head_dim), filler, dtype=keys.dtype)
    for b in range(batch):
        p = int(pad[b])
        for s in range(sink_size):
            if p + s < min(length, boundary):
                full_keys[b, :, s] = keys[b, :, p + s]
                full_values[b, :, s] = values[b, :, p + s]
        for r in range(num_recent):
            g = recent_start + r
            if g >= p:
                full_keys[b, :, sink_size + r] = keys[b, :, g]
                full_values[b, :, sink_size + r] = values[b, :, g]
        for h in range(num_heads):
            width = int(layout.widths[h])
            if width == 0:
                continue
            kept = layout.channels[h, :width].long()
            block = mid_keys[b, mid_cap * int(layout.offsets[h]) :][: mid_cap * width].view(mid_cap, width)
            slot = int(layout.value_slots[h])
            for t in range(p, num_mid):
                block[t] = keys[b, h, sink_size + t, kept]
                mid_values[b, slot, t] = values[b, h, sink_size + t]
    kv = CompactKV(
        layout=layout,
        full_keys=full_keys,
        full_values=full_values,
        sink_size=sink_size,
        num_recent=num_recent,
        recent_start=recent_start,
        mid_keys=mid_keys,
        mid_values=mid_values,
        mid_cap=mid_cap,
        num_mid=num_mid,
        pad=pad.clone(),
        query_start=length - 1,
        boundaries=(boundary,),
    )
    return kv, boundary


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
) -> Case:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(widths, torch.Tensor):
        mask = widths
    else:
        mask = mask_from_widths(widths, head_dim, generator)
    num_heads = mask.shape[0]
    batch = len(pads)
    shape = (batch, num_heads, length, head_dim)
    keys = torch.randn(shape, generator=generator).to(dtype)
    values = torch.randn(shape, generator=generator).to(dtype)
    query = torch.randn(batch, num_heads * group, 1, head_dim, generator=generator).to(dtype)
    pad = torch.tensor(pads, dtype=torch.int64)
    kv, boundary = pack_case(
        keys,
        values,
        mask,
        pad,
        sink_size=sink_size,
        recent_size=recent_size,
        flush_size=flush_size,
        mid_past_boundary=mid_past_boundary,
        filler=filler,
    )
    kv = to_device(kv, DEVICE)
    return Case(query.to(DEVICE), keys.float(), values.float(), mask, pad, sink_size, boundary, kv)


def to_device(kv: CompactKV, device: str) -> CompactKV:
    fields = {name: getattr(kv, name) for name in kv.__dataclass_fields__}
    for name in ("full_keys", "full_values", "mid_keys", "mid_values", "pad", "key_mask"):
        if fields[name] is not None:
            fields[name] = fields[name].to(device)
    fields["layout"] = kv.layout.to(device)
    return CompactKV(**fields)


def dense_reference(case: Case, scale: float) -> torch.Tensor:
    """The LeanK semantics (DESIGN.md) on dense full-width keys, in float64: `[B, Hq, 1, D]`."""
    query = case.query.double().cpu()
    keys, values = case.keys.double(), case.values.double()
    batch, num_q_heads, _, head_dim = query.shape
    num_heads, length = keys.shape[1], keys.shape[2]
    group = num_q_heads // num_heads
    q_slot = length - 1
    out = torch.zeros(batch, num_q_heads, 1, head_dim, dtype=torch.float64)
    for b in range(batch):
        pad = int(case.pad[b])
        slots = torch.arange(pad, q_slot + 1)
        if case.key_mask is not None:
            slots = slots[case.key_mask[b, slots].cpu()]
        full = (slots - pad < case.sink_size) | (slots >= case.boundary)
        for hq in range(num_q_heads):
            h = hq // group
            kept = case.mask[h].double()
            channel_mask = torch.where(full[:, None], torch.ones(head_dim, dtype=torch.float64), kept[None, :])
            logits = (keys[b, h, slots] * channel_mask) @ query[b, hq, 0] * scale
            if not case.mask[h].any():
                logits = logits.masked_fill(~full, float("-inf"))
            out[b, hq, 0] = torch.softmax(logits, 0) @ values[b, h, slots]
    return out


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
]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("widths, head_dim, group, length, pads, num_splits", SHAPES)
def test_kernel_matches_dense_reference(widths, head_dim, group, length, pads, num_splits, dtype, atol, rtol):
    case = make_case(widths=widths, head_dim=head_dim, group=group, length=length, pads=pads, dtype=dtype, seed=length)
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


def add_holes(case: Case, holes: dict[int, list[int]], extra: int = 3) -> Case:
    """Mask global slots `holes[row]` with a key mask of `length + extra` slots; their stored keys and values turn NaN,
    so a kernel that reads a masked key fails."""
    kv, layout, sink = case.kv, case.kv.layout, case.sink_size
    key_mask = torch.ones(len(case.pad), case.keys.shape[2] + extra, dtype=torch.bool)
    for b, slots in holes.items():
        pad = int(case.pad[b])
        for g in slots:
            key_mask[b, g] = False
            if g - pad < sink:
                kv.full_keys[b, :, g - pad] = kv.full_values[b, :, g - pad] = float("nan")
            if kv.recent_start <= g < kv.recent_start + kv.num_recent:
                kv.full_keys[b, :, sink + g - kv.recent_start] = float("nan")
                kv.full_values[b, :, sink + g - kv.recent_start] = float("nan")
            if 0 <= g - sink < kv.num_mid:
                t = g - sink
                kv.mid_values[b, :, t] = float("nan")
                for h in range(layout.num_kv_heads):
                    width, start = int(layout.widths[h]), kv.mid_cap * int(layout.offsets[h])
                    kv.mid_keys[b, start + t * width : start + (t + 1) * width] = float("nan")
    case.key_mask = key_mask
    kv.key_mask = key_mask.to(kv.pad.device)
    return case


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_key_mask_holes_are_never_read(dtype, atol, rtol):
    """Masked slots that are not left padding (in a sink, the middle, the recent window) are skipped, not read."""
    case = make_case(widths=[32, 0, 16], head_dim=32, group=2, length=70, pads=[0, 9], dtype=dtype, seed=13)
    assert case.boundary == 40
    case = add_holes(case, {0: [2, 20, 21, 22, 23, 24, 25, 66], 1: [12, *range(30, 38), 45, 46]})
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
    naive = pytest.importorskip("leank_hf.ops.decode_attention.naive")
    # The PyTorch path multiplies zero weights into the stored values of invalid slots: fill them finitely.
    case = make_case(
        widths=[64, 0, 32, 16], head_dim=64, group=4, length=233, pads=[0, 29], dtype=dtype, seed=11, filler=7.0,
        mid_past_boundary=5,
    )  # fmt: skip
    out = triton_decode.leank_decode_triton(case.query, case.kv, scale=0.125)
    expected = naive.leank_decode_torch(case.query, case.kv, scale=0.125)
    assert_close(out, expected.double().cpu(), atol, rtol)
    assert_close(out, dense_reference(case, 0.125), atol, rtol)


def test_choose_splits_fills_the_gpu():
    # batch 1 at 32K: many splits; batch 64: few; no middle: none. Chunks are whole tiles and cover the middle.
    for batch, num_mid in [(1, 32_000), (8, 32_000), (64, 131_000), (3, 100)]:
        splits, split_len = triton_decode._choose_splits(batch, 6, num_mid, 64, 132)
        assert split_len % 64 == 0
        assert (splits - 1) * split_len < num_mid <= splits * split_len
    assert 50 <= triton_decode._choose_splits(1, 6, 32_000, 64, 132)[0] <= triton_decode._MAX_SPLITS
    assert triton_decode._choose_splits(1, 6, 10**7, 64, 132)[0] == triton_decode._MAX_SPLITS  # no length cap
    assert triton_decode._choose_splits(64, 6, 131_000, 64, 132)[0] <= 3
    assert triton_decode._choose_splits(4, 6, 0, 64, 132) == (0, 64)


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
