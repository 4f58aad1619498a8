"""8-bit storage of the middle region: symmetric codes with one fp32 scale per (token, KV head).

Keys are scaled over the head's kept channels, values over `head_dim`. For a vector `x` (fp32):
`scale = amax(|x|) / qmax` and `code = x / scale` (1 when `scale == 0`), rounded half to even and clamped to
`[-qmax, qmax]` for int8, clamped and cast (round to nearest even) for FP8 e4m3. The stored vector is `code * scale`.
int8 codes are stored offset by 128 in `uint8` (offset binary, `code + 128`): for a 16-bit model the GPU kernels then
read four codes as fp16 `code + 1152` with two byte permutes and take the constant out of the products' sums.

A scale per token factors out of both products attention takes: `q . (s k) = s (q . k)` and `sum_t p_t s_t v_t =
(p * s) @ v`. Readers therefore multiply a tile's scores by the key scales and its probabilities by the value scales,
and never build a dequantized copy of the keys or values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import LeanKUsageError


@dataclass(frozen=True)
class MiddleQuant:
    """An 8-bit format of the middle region.

    Args:
        name (`str`): `"int8"` or `"fp8"` (FP8 e4m3, `torch.float8_e4m3fn`).
        dtype (`torch.dtype`): the storage dtype of the codes.
        qmax (`float`): largest code magnitude (127, or 448 for e4m3).
    """

    name: str
    dtype: torch.dtype
    qmax: float


INT8_OFFSET = 128
FORMATS = {
    "int8": MiddleQuant("int8", torch.uint8, 127.0),  # codes stored offset by INT8_OFFSET
    "fp8": MiddleQuant("fp8", torch.float8_e4m3fn, 448.0),
}
CHOICES = ("none", *FORMATS)


def has_fp8(device: torch.device) -> bool:
    """Whether `device` runs FP8 e4m3 natively (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def resolve_quant(name: str | None, device: torch.device) -> MiddleQuant | None:
    """The format `name` (`None` or `"none"`: no quantization) on `device`. FP8 on a GPU without it is refused (the
    Triton kernels could not read it)."""
    if name is None or name == "none":
        return None
    if name not in FORMATS:
        raise LeanKUsageError(f"`middle_quant` must be None or one of {list(CHOICES)}, got {name!r}")
    if name == "fp8" and device.type == "cuda" and not has_fp8(device):
        raise LeanKUsageError(
            f"`middle_quant='fp8'` needs a GPU of compute capability 8.9 or newer, {device} has "
            f"{torch.cuda.get_device_capability(device)}; use 'int8' (same bytes)"
        )
    return FORMATS[name]


def check_quant_name(name: str | None) -> None:
    """Refuse an unknown `middle_quant` early (before a device is known)."""
    if name is not None and name not in CHOICES:
        raise LeanKUsageError(f"`middle_quant` must be None or one of {list(CHOICES)}, got {name!r}")


def encode(x: torch.Tensor, scale: torch.Tensor, quant: MiddleQuant) -> torch.Tensor:
    """Codes of fp32 `x` for the fp32 `scale` broadcast against it (the module docstring's rule)."""
    codes = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    if quant.name == "int8":
        codes = codes.round()
    codes = codes.clamp(-quant.qmax, quant.qmax)
    offset = code_offset(quant.dtype)
    return (codes + offset if offset else codes).to(quant.dtype)


def code_offset(dtype: torch.dtype) -> int:
    """What a middle stored in `dtype` adds to each code: 128 for int8 codes (`uint8`), else 0."""
    return INT8_OFFSET if dtype == torch.uint8 else 0


def quantize_rows(x: torch.Tensor, quant: MiddleQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """`(codes [..., D], scales [...])` of `x [..., D]`, one scale per vector of the last dimension."""
    x = x.float()
    scale = x.abs().amax(-1) / quant.qmax
    return encode(x, scale[..., None], quant), scale


def quantize_segments(
    x: torch.Tensor, segments: tuple[tuple[int, int], ...], quant: MiddleQuant
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(codes [..., C], scales [..., S])` of `x [..., C]`, one scale per segment of the last dimension.

    `segments` lists `(count, width)` runs in order: `count` consecutive segments of `width` elements each (the kept
    channels of a run of equal-width KV heads), covering `C`. Reshapes only, so a compiled write fuses it.
    """
    x = x.float()
    codes, scales, start = [], [], 0
    for count, width in segments:
        block = x[..., start : start + count * width].unflatten(-1, (count, width))
        scale = block.abs().amax(-1) / quant.qmax
        codes.append(encode(block, scale[..., None], quant).flatten(-2))
        scales.append(scale)
        start += count * width
    return torch.cat(codes, -1), torch.cat(scales, -1)
