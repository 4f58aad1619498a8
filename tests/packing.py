"""Dense keys/values -> `CompactKV`, written from the storage contract (layout.py) alone, not from cache.py.

The library's `HeadLayout` / `CompactKV` are only the containers filled here; which key is stored where follows the
`CompactKV` docstring. Every stored element no query row may read (left pads, each row's sink tokens in the middle,
masked keys, sink slots past the sequence) holds `filler`; spare capacity always holds NaN. An 8-bit middle
(`quant`) stores the codes and scales of `reference.quantize`, values in tiles as the caches store them; its
unreadable slots hold `filler` scales and the largest code, its spare scales NaN.
"""

from __future__ import annotations

import torch

from leank_hf.ops.decode_attention.layout import VALUE_TILE, CompactKV, HeadLayout, middle_values_like
from reference import QUANT_FORMATS, quantize


def pack_compact(
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    pad,
    *,
    sink: int,
    boundaries,
    query_start: int | None = None,
    key_mask: torch.Tensor | None = None,
    mid_past_boundary: int = 0,
    spare: int = 5,
    filler: float = float("nan"),
    device: torch.device | str | None = None,
    quant: str | None = None,
) -> CompactKV:
    """Store a dense `[B, H, L, D]` history for query rows at global slots `query_start + i` (default: `L - 1`, one
    decode row) whose full windows start at `boundaries[i]` (non-decreasing).

    The recent region starts at `boundaries[0]`; the middle ends at `boundaries[-1] + mid_past_boundary` (middle slots
    past the boundary hold real keys a reader must still skip). `key_mask [B, >= L]` (False: never read) becomes the
    `CompactKV`'s key mask, and its masked keys are stored as `filler`.
    """
    batch, num_heads, length, head_dim = keys.shape
    pad = torch.as_tensor(pad, dtype=torch.int64).reshape(batch)
    layout = HeadLayout.from_mask(mask)
    recent_start = boundaries[0]
    num_recent = max(0, length - recent_start)
    num_mid = max(0, min(boundaries[-1] + mid_past_boundary, length) - sink)
    mid_cap = num_mid + spare
    nan = float("nan")

    def readable(row: int, slot: int) -> bool:
        return key_mask is None or bool(key_mask[row, slot])

    full_keys = torch.full((batch, num_heads, sink + num_recent + spare, head_dim), nan, dtype=keys.dtype)
    full_values = torch.full_like(full_keys, nan)
    full_keys[:, :, : sink + num_recent] = full_values[:, :, : sink + num_recent] = filler
    mid_keys = torch.full((batch, mid_cap * layout.total_width), nan, dtype=keys.dtype)
    mid_values = torch.full((batch, layout.num_value_heads, mid_cap, head_dim), nan, dtype=keys.dtype)
    mid_values[:, :, :num_mid] = filler
    key_scales = torch.full((batch, layout.num_value_heads, mid_cap), nan)
    value_scales = torch.full_like(key_scales, nan)
    key_scales[:, :, :num_mid] = value_scales[:, :, :num_mid] = filler
    for b in range(batch):
        p = int(pad[b])
        for s in range(sink):
            g = p + s
            if g < min(length, boundaries[-1]) and readable(b, g):
                full_keys[b, :, s], full_values[b, :, s] = keys[b, :, g], values[b, :, g]
        for r in range(num_recent):
            g = recent_start + r
            if g >= p and readable(b, g):
                full_keys[b, :, sink + r], full_values[b, :, sink + r] = keys[b, :, g], values[b, :, g]
        for h in range(num_heads):
            width = int(layout.widths[h])
            if width == 0:
                continue
            kept = layout.channels[h, :width].long()
            block = mid_keys[b, mid_cap * int(layout.offsets[h]) :][: mid_cap * width].view(mid_cap, width)
            block[:num_mid] = filler
            slot = int(layout.value_slots[h])
            for t in range(p, num_mid):
                if readable(b, sink + t):
                    block[t] = keys[b, h, sink + t, kept]
                    mid_values[b, slot, t] = values[b, h, sink + t]
                    if quant is not None:
                        codes, key_scales[b, slot, t] = quantize(keys[b, h, sink + t, kept], quant)
                        block[t] = codes.float()  # codes are exact in every float dtype
                        codes, value_scales[b, slot, t] = quantize(values[b, h, sink + t], quant)
                        mid_values[b, slot, t] = codes.float()
    if quant is not None:
        # NaN fillers become the largest code (the NaN scale still poisons a read of it): the kernels load 8-bit
        # values in whole 16-token groups and give the unreadable ones zero weight, which a NaN code would defeat.
        qmax = QUANT_FORMATS[quant][0]
        mid_keys = stored_codes(torch.nan_to_num(mid_keys.float(), nan=qmax), quant)
        mid_values = middle_values_like(stored_codes(torch.nan_to_num(mid_values.float(), nan=qmax), quant))
    kv = CompactKV(
        layout=layout,
        full_keys=full_keys,
        full_values=full_values,
        sink_size=sink,
        num_recent=num_recent,
        recent_start=recent_start,
        mid_keys=mid_keys,
        mid_values=mid_values,
        mid_cap=mid_cap,
        num_mid=num_mid,
        pad=pad.clone(),
        query_start=length - 1 if query_start is None else query_start,
        boundaries=tuple(boundaries),
        key_mask=key_mask,
        mid_key_scales=None if quant is None else key_scales,
        mid_value_scales=None if quant is None else value_scales,
    )
    return kv if device is None else to_device(kv, device)


# How the storage contract (CompactKV) keeps an 8-bit format's codes: dtype and the offset added to a code.
CODE_STORAGE = {"int8": (torch.uint8, 128), "fp8": (torch.float8_e4m3fn, 0)}


def stored_codes(codes: torch.Tensor, quant: str) -> torch.Tensor:
    """Codes (as numbers, any float dtype) as the middle stores them."""
    dtype, offset = CODE_STORAGE[quant]
    return (codes.float() + offset).to(dtype)


def code_numbers(stored: torch.Tensor, quant: str) -> torch.Tensor:
    """The codes (fp32 numbers) of a middle's stored bytes."""
    return stored.float() - CODE_STORAGE[quant][1]


def stored_values(values: torch.Tensor, tokens: int) -> torch.Tensor:
    """The first `tokens` middle values of a cache's `mid_values` as `[B, NV, tokens, D]`, read by the layout
    contract: token-major in the model's dtype; 8-bit token `t`, channel `d` at `[b, slot, t // VALUE_TILE, d,
    t % VALUE_TILE]`."""
    if values.dim() == 4:
        return values[:, :, :tokens]
    t = torch.arange(tokens, device=values.device)
    return values[:, :, t // VALUE_TILE, :, t % VALUE_TILE].permute(1, 2, 0, 3)


def to_device(kv: CompactKV, device: torch.device | str) -> CompactKV:
    """A copy of `kv` with every tensor on `device`."""
    fields = {name: getattr(kv, name) for name in kv.__dataclass_fields__}
    names = (
        "full_keys",
        "full_values",
        "mid_keys",
        "mid_values",
        "pad",
        "key_mask",
        "mid_key_scales",
        "mid_value_scales",
    )
    for name in names:
        if fields[name] is not None:
            fields[name] = fields[name].to(device)
    fields["mid_values"] = middle_values_like(fields["mid_values"])  # a copy keeps strides only when dense
    fields["layout"] = kv.layout.to(device)
    return CompactKV(**fields)
