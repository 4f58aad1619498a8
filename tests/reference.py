"""Independent dense reference of the LeanK semantics (DESIGN.md), for tests.

It never looks at a `LeanKCache`: it runs as a transformers attention function on a plain `DynamicCache`, so it sees
the full-width key/value history, and applies the rules with boolean masks over all keys, in float64:

- prompt forwards are exact attention: with a `ReferenceCache`, the prompt as `LeanKLayer` defines it (the first
  update and every multi-token update right after it, until a single-token update, a crop or a batch reorder);
  with a plain `DynamicCache`, the first forward only (the trainer's semantics: answer rows after a prompt);
- a later query at global slot `q` of row `b` (left pad `pad[b]`, read from the attention mask) reads key `j <= q`
  that its attention mask allows (holes included: never a masked key) with all channels if `j < pad[b] + sink` or
  `j >= boundary(q)`, otherwise with its KV head's kept channels only (the other channels zeroed), and not at all if
  that head keeps no channel;
- `boundary(q) = sink + flush * floor(max(0, q + 1 - sink - recent) / flush)`;
- with an 8-bit middle (`quant`), a middle key is read as its kept channels quantized with one scale per (token, KV
  head) (the largest kept magnitude maps to the format's largest code) and a middle value likewise over all its
  channels; sinks and the recent window stay exact. The rule is per token, so it holds for any query row.

Layers that are not `full_attention` are left to sdpa, as LeanK leaves them to transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

REFERENCE_NAME = "leank_reference"
# Layer index -> whether a `ReferenceCache`'s latest update of that layer is prompt; read once by the attention.
_PROMPT_UPDATES: dict[int, bool] = {}


class ReferenceCache(DynamicCache):
    """A `DynamicCache` that tells the reference which updates are prompt, by `LeanKLayer`'s rule.

    A layer's first update, and each multi-token update right after it, are prompt; a single-token update, a `crop`
    (`crop(0)` too) or a batch reorder / selection / repeat ends the prompt.
    """

    def __init__(self, config):
        super().__init__(config=config)
        self.in_prompt: dict[int, bool] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        fresh = self.get_seq_length(layer_idx) == 0
        prompt = fresh or (key_states.shape[2] > 1 and self.in_prompt.get(layer_idx, False))
        self.in_prompt[layer_idx] = _PROMPT_UPDATES[layer_idx] = prompt
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self.in_prompt.clear()

    def reorder_cache(self, beam_idx) -> None:
        super().reorder_cache(beam_idx)
        self.in_prompt.clear()

    def batch_select_indices(self, indices) -> None:
        super().batch_select_indices(indices)
        self.in_prompt.clear()

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.in_prompt.clear()


def window_start(query_slot: int, sink: int, recent: int, flush: int) -> int:
    """First key slot a query at `query_slot` reads with all channels, past the sink."""
    overflow = query_slot + 1 - sink - recent
    return sink + (flush * (overflow // flush) if overflow > 0 else 0)


# Largest code and code dtype of each 8-bit middle format.
QUANT_FORMATS = {"int8": (127.0, torch.int8), "fp8": (448.0, torch.float8_e4m3fn)}


def quantize(x: torch.Tensor, fmt: str, keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(codes, scale)` of vectors `x [..., D]`: `scale [..., 1]` = largest `|x|` over the channels `keep` allows
    (default all) over the format's largest code, in fp32; codes of every channel, rounded half to even (int8) or cast
    (fp8), clamped to the code range."""
    qmax, dtype = QUANT_FORMATS[fmt]
    x = x.float()
    magnitude = x.abs() if keep is None else x.abs() * keep.float()
    scale = magnitude.amax(-1, keepdim=True) / qmax
    codes = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    if fmt == "int8":
        codes = codes.round()
    return codes.clamp(-qmax, qmax).to(dtype), scale


def fake_quantize(x: torch.Tensor, fmt: str, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The vectors an 8-bit middle stores for `x [..., D]` (see `quantize`), in float64."""
    codes, scale = quantize(x, fmt, keep)
    return codes.double() * scale.double()


def random_layer_mask(widths, head_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A random `[H, head_dim]` keep mask with `widths[h]` kept channels for head `h`."""
    mask = torch.zeros(len(widths), head_dim, dtype=torch.bool)
    for head, width in enumerate(widths):
        mask[head, torch.randperm(head_dim, generator=generator)[:width]] = True
    return mask


def dense_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    keep: torch.Tensor,
    *,
    pad,
    sink: int,
    boundaries,
    scale: float,
    query_start: int | None = None,
    key_mask: torch.Tensor | None = None,
    skip_heads: torch.Tensor | None = None,
    quant: str | None = None,
) -> torch.Tensor:
    """One layer's LeanK attention over dense full-width keys, in float64: `[B, Hq, n, D]`.

    `query [B, Hq, n, D]` holds query rows at global slots `query_start + i` (default: the last `n` key slots) of dense
    `keys`/`values [B, H, T, D]`. Row `i` of batch row `b` reads key `j` if `pad[b] <= j <= query_start + i` and
    `key_mask` allows it (`[B, >= T]`, or `[B, n, >= T]` per query row); with all channels if `j < pad[b] + sink` or
    `j >= boundaries[i]`, otherwise with its KV head's keys multiplied channel-wise by `keep [H, D]` (a boolean mask or
    float scales), and not at all if the head is skipped (`skip_heads [H]`; default: heads whose `keep` is all zero).
    With `quant` ("int8" or "fp8"; `keep` boolean) pruned keys and the values of pruned reads are `fake_quantize`d.
    """
    batch, num_query_heads, num_rows, head_dim = query.shape
    num_heads, total = keys.shape[1], keys.shape[2]
    groups = num_query_heads // num_heads
    device = keys.device
    start = total - num_rows if query_start is None else query_start
    weights = keep.to(device=device, dtype=torch.float64)  # [H, D]
    skip = (weights == 0).all(-1) if skip_heads is None else skip_heads.to(device=device, dtype=torch.bool)
    q = query.to(device=device, dtype=torch.float64).reshape(batch, num_heads, groups, num_rows, head_dim)
    k = keys.to(torch.float64)
    exact = torch.einsum("bhgnd,bhtd->bhgnt", q, k)
    pruned_keys = k * weights[None, :, None, :]
    mid_values = values.to(device=device, dtype=torch.float64)
    if quant is not None:
        pruned_keys = fake_quantize(keys, quant, keep.to(device)[None, :, None, :]) * weights[None, :, None, :]
        mid_values = fake_quantize(values.to(device), quant)
    pruned = torch.einsum("bhgnd,bhtd->bhgnt", q, pruned_keys)

    slots = torch.arange(total, device=device)
    rows = torch.arange(start, start + num_rows, device=device)
    pad = torch.as_tensor(pad, device=device).long().reshape(batch)
    bounds = torch.as_tensor(boundaries, device=device).long().reshape(num_rows)
    full = (slots[None, None, :] < pad[:, None, None] + sink) | (slots[None, None, :] >= bounds[None, :, None])
    readable = (slots[None, None, :] <= rows[None, :, None]) & (slots[None, None, :] >= pad[:, None, None])
    if key_mask is not None:
        key_mask = key_mask[..., :total].to(device=device, dtype=torch.bool)
        readable = readable & (key_mask[:, None, :] if key_mask.dim() == 2 else key_mask)
    full = full[:, None, None]  # [B, 1, 1, n, T]
    readable = readable[:, None, None] & (full | ~skip[None, :, None, None, None])
    scores = torch.where(full, exact, pruned).masked_fill(~readable, float("-inf")) * scale
    probs = torch.softmax(scores, dim=-1)
    output = torch.einsum("bhgnt,bhtd->bhgnd", probs * full, values.to(torch.float64))
    output = output + torch.einsum("bhgnt,bhtd->bhgnd", probs * ~full, mid_values)
    return output.reshape(batch, num_query_heads, num_rows, head_dim)


def reference_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    keep: torch.Tensor,
    sink: int,
    recent: int,
    flush: int,
    scaling: float | None = None,
    quant: str | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """LeanK attention computed densely. `keep` is the model's `[layers, kv_heads, head_dim]` boolean mask."""
    layer = module.layer_idx
    layer_types = getattr(module.config, "layer_types", None)
    batch, _, num_rows, head_dim = query.shape
    total = key.shape[2]
    start = total - num_rows
    prompt = _PROMPT_UPDATES.pop(layer, start == 0)
    if (layer_types is not None and layer_types[layer] != "full_attention") or prompt:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    if attention_mask is None:
        allowed, pad = None, torch.zeros(batch, dtype=torch.int64)
    else:
        allowed = attention_mask[:, 0].expand(batch, num_rows, total)
        pad = allowed[:, -1].int().argmax(-1)  # first key the last row may read
    output = dense_attention(
        query,
        key,
        value,
        keep[layer],
        pad=pad,
        sink=sink,
        boundaries=[window_start(row, sink, recent, flush) for row in range(start, total)],
        scale=scaling if scaling is not None else head_dim**-0.5,
        key_mask=allowed,
        quant=quant,
    )
    return output.to(query.dtype).transpose(1, 2).contiguous(), None


@contextmanager
def reference_model(
    model, keep: torch.Tensor, sink: int, recent: int, flush: int, quant: str | None = None
) -> Iterator:
    """Switch `model` to the dense reference for the duration of the block (use it with a `ReferenceCache`, or a
    `DynamicCache` where only the first forward is prompt); `quant` names an 8-bit middle format."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        return reference_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            keep=keep,
            sink=sink,
            recent=recent,
            flush=flush,
            scaling=scaling,
            quant=quant,
            **kwargs,
        )

    AttentionInterface.register(REFERENCE_NAME, attention)
    AttentionMaskInterface.register(REFERENCE_NAME, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(REFERENCE_NAME)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
