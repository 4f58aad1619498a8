"""The PyTorch compact-key attention and the backend dispatcher, on hand-packed `CompactKV`s against dense math."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from leank_hf.ops import decode_attention
from leank_hf.ops.decode_attention import leank_decode_attention, leank_decode_torch
from packing import pack_compact
from reference import dense_attention, random_layer_mask

CASES = {
    # name: (batch, kv heads, groups, head_dim, widths, sink, length, rows, pads, boundaries)
    "decode": (2, 5, 3, 40, (16, 0, 40, 8, 24), 4, 61, 1, (0, 0), (45,)),
    "decode-padded": (3, 5, 2, 40, (16, 0, 40, 8, 24), 4, 61, 1, (0, 7, 30), (45,)),
    "chunk": (2, 4, 2, 32, (8, 0, 24, 8), 4, 64, 6, (3, 0), (45, 45, 48, 48, 48, 51)),
    "short-sequence": (2, 4, 2, 32, (8, 0, 24, 8), 6, 5, 2, (0, 2), (6, 6)),
    "no-sink": (1, 4, 1, 32, (8, 0, 24, 8), 0, 50, 3, (0,), (30, 33, 33)),
    "no-middle": (2, 4, 2, 32, (8, 0, 24, 8), 4, 20, 1, (0, 1), (4,)),
    "all-heads-zero": (2, 3, 2, 16, (0, 0, 0), 4, 40, 2, (0, 5), (20, 24)),
    "all-channels-kept": (1, 3, 4, 16, (16, 16, 16), 4, 40, 1, (0,), (24,)),
}


# The PyTorch path multiplies zero weights into stored elements it must not read: those hold a finite filler.
FILLER = 7.0


def _case(name: str, dtype: torch.dtype, seed: int = 0, holes: bool = False, quant: str | None = None):
    batch, heads, groups, head_dim, widths, sink, length, rows, pads, boundaries = CASES[name]
    generator = torch.Generator().manual_seed(seed)
    mask = random_layer_mask(widths, head_dim, generator)
    keys = torch.randn(batch, heads, length, head_dim, generator=generator).to(dtype)
    values = torch.randn(batch, heads, length, head_dim, generator=generator).to(dtype)
    query = torch.randn(batch, heads * groups, rows, head_dim, generator=generator).to(dtype)
    pad = torch.tensor(pads)
    query_start = length - rows
    key_mask = None
    if holes:  # ~30% of the real keys masked (sinks, middle and recent alike), never a query row's own key
        key_mask = torch.rand(batch, length + 2, generator=generator) > 0.3
        key_mask &= torch.arange(length + 2) >= pad[:, None]
        key_mask[:, query_start:length] = True
    kv = pack_compact(
        keys, values, mask, pad, sink=sink, boundaries=boundaries, query_start=query_start, key_mask=key_mask,
        filler=FILLER, quant=quant,
    )  # fmt: skip
    expected = dense_attention(
        query, keys, values, mask, pad=pad, sink=sink, boundaries=boundaries, scale=head_dim**-0.5,
        query_start=query_start, key_mask=key_mask, quant=quant,
    )  # fmt: skip
    return query, kv, expected, head_dim**-0.5


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 1.6e-2, 1.6e-2)],
    ids=["fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize("holes", [False, True], ids=["no-holes", "holes"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_path_matches_dense_rules(name: str, holes: bool, dtype: torch.dtype, atol: float, rtol: float) -> None:
    query, kv, expected, scale = _case(name, dtype, holes=holes)
    output = leank_decode_torch(query, kv, scale=scale)
    assert output.dtype == dtype and output.shape == query.shape
    torch.testing.assert_close(output.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1.6e-2, 1.6e-2)],
    ids=["fp32", "bf16"],
)
@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize("name", ["decode-padded", "chunk", "no-sink", "all-heads-zero", "all-channels-kept"])
def test_torch_path_reads_an_8bit_middle(name: str, quant: str, dtype: torch.dtype, atol: float, rtol: float) -> None:
    """Codes and scales in the middle: the dense reference applies the same quantize-dequantize to what it reads."""
    query, kv, expected, scale = _case(name, dtype, seed=3, holes=True, quant=quant)
    assert kv.mid_keys.element_size() == 1 and kv.mid_key_scales is not None
    output = leank_decode_torch(query, kv, scale=scale)
    torch.testing.assert_close(output.double(), expected, atol=atol, rtol=rtol)
    if dtype == torch.float32 and kv.num_mid and kv.layout.num_value_heads:  # unquantized math is farther off
        _, _, exact, _ = _case(name, torch.float32, seed=3, holes=True)
        assert (exact - expected).abs().max() > 10 * atol


class _LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any operator allocates (views of existing tensors do not count)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        seen = {tensor.untyped_storage().data_ptr() for tensor in inputs}
        for tensor in tree_flatten(result)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in seen:
                self.largest = max(self.largest, tensor.numel())
        return result


def test_middle_keys_are_never_widened() -> None:
    """No intermediate is as large as the full-width middle keys would be (fp32: the stored tensors are read as is)."""
    batch, heads, head_dim, length = 1, 4, 64, 3000
    mask = torch.zeros(heads, head_dim, dtype=torch.bool)
    mask[0, :16], mask[1, :8], mask[3, :32] = True, True, True
    keys, values = torch.randn(batch, heads, length, head_dim), torch.randn(batch, heads, length, head_dim)
    kv = pack_compact(keys, values, mask, torch.zeros(1), sink=4, boundaries=(length - 20,), filler=FILLER)
    with _LargestAllocation() as recorder:
        leank_decode_torch(torch.randn(batch, 2 * heads, 1, head_dim), kv, scale=0.125)
    assert recorder.largest < batch * heads * kv.num_mid * head_dim // 4


def test_dispatcher_backends_on_cpu() -> None:
    query, kv, expected, scale = _case("chunk", torch.float32)
    for backend in ("auto", "torch"):
        output = leank_decode_attention(query, kv, scale=scale, backend=backend)
        torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has to be one of"):
        leank_decode_attention(query, kv, scale=scale, backend="cuda")


def _import_failing(module: str, missing: str):
    """`importlib.import_module` that fails on `module` as if module `missing` were not installed."""
    real_import = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == module:
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import(name, *args, **kwargs)

    return import_module


def test_triton_backend_falls_back_only_when_its_module_is_absent(monkeypatch) -> None:
    query, kv, _, scale = _case("decode", torch.float32)
    kernel_module = f"{decode_attention.__name__}.triton"
    monkeypatch.setattr(decode_attention.importlib, "import_module", _import_failing(kernel_module, kernel_module))
    assert decode_attention._triton_kernel(required=False) is None
    with pytest.raises(ModuleNotFoundError):
        leank_decode_attention(query, kv, scale=scale, backend="triton")
    # The kernel module is there but cannot import one of its own dependencies: that is an error, not a fallback.
    monkeypatch.setattr(decode_attention.importlib, "import_module", _import_failing(kernel_module, "triton"))
    with pytest.raises(ModuleNotFoundError):
        decode_attention._triton_kernel(required=False)


def test_auto_backend_falls_back_when_the_kernel_refuses_the_inputs(monkeypatch) -> None:
    query, kv, expected, scale = _case("decode", torch.float32)

    def refusing_kernel(query, kv, *, scale):
        raise decode_attention.LeanKUsageError("the kernel needs widths that are multiples of 16")

    monkeypatch.setattr(decode_attention, "_triton_kernel", lambda required: refusing_kernel)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda tensor: True))
    with pytest.warns(UserWarning, match="falls back to the PyTorch attention: the kernel needs"):
        output = leank_decode_attention(query, kv, scale=scale, backend="auto")
    torch.testing.assert_close(output.double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(decode_attention.LeanKUsageError, match="multiples of 16"):
        leank_decode_attention(query, kv, scale=scale, backend="triton")
