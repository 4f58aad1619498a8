"""LeanK caches on a model whose weights accelerate offloads (`device_map` with "disk", `accelerate.cpu_offload`):
tokens and logits equal the same model without offload, and with a keep-everything mask the unmodified model's
(`DynamicCache` + sdpa)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from accelerate import cpu_offload
from transformers import AutoModelForCausalLM, DynamicCache

from leank_hf import LeanKCache, LeanKStaticCache, apply_leank
from tiny_models import ones_masks, random_masks, tiny_model

NEW_TOKENS = 12
# Keep-everything LeanK against the unmodified model: same keys, but LeanK's decode attention sums in another order
# (fp32 partials over sink/recent and middle, one softmax) than sdpa, then rounds to the model's dtype.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# Layer 0 and the embeddings stay in memory; layers 1-2, the final norm and the head go to disk.
DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}


def _device_map_disk(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        folder / "model", dtype=dtype, device_map=DEVICE_MAP, offload_folder=folder / f"offload-{dtype}"
    )
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}
    return model


def _cpu_offload(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=dtype)
    return cpu_offload(model, execution_device=torch.device("cpu"))


OFFLOADS: dict[str, Callable[[Path, torch.dtype], torch.nn.Module]] = {
    "device_map_disk": _device_map_disk,
    "cpu_offload": _cpu_offload,
}


def _inputs() -> dict[str, torch.Tensor]:
    """A left-padded batch of 41- and 33-token prompts: sink, middle and recent regions, flushes while decoding."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 97, (2, 41), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :8], attention_mask[1, :8] = 0, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _generate(model: torch.nn.Module, cache) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(
        **_inputs(),
        past_key_values=cache,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits, 1).float()


def _cache(kind: str, masks, config):
    if kind == "static":
        return LeanKStaticCache(masks, config, max_cache_len=41 + NEW_TOKENS)
    return LeanKCache(masks, config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("offload")
    tiny_model("llama").save_pretrained(folder / "model")
    return folder


def _assert_offloaded(model: torch.nn.Module) -> None:
    """The offload is real: decoder weights of layer 2 live on the meta device, accelerate hooks bring them in."""
    layer = model.model.layers[2]
    assert layer.self_attn.k_proj.weight.device.type == "meta"
    assert any(hasattr(module, "_hf_hook") for module in layer.modules())


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("offload", list(OFFLOADS))
def test_offloaded_model_generates_as_without_offload(saved: Path, offload: str, kind: str) -> None:
    """Random mask: the offloaded model's tokens and logits are bit for bit those of the model held in memory."""
    plain = apply_leank(AutoModelForCausalLM.from_pretrained(saved / "model"))
    offloaded = apply_leank(OFFLOADS[offload](saved, torch.float32))
    _assert_offloaded(offloaded)
    masks = random_masks(plain.config)
    expected = _generate(plain, _cache(kind, masks, plain.config))
    actual = _generate(offloaded, _cache(kind, masks, offloaded.config))
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=0)


def _reference_logits(model: torch.nn.Module, sequences: torch.Tensor) -> torch.Tensor:
    """The unmodified model's next-token logits along `sequences` with a `DynamicCache`: the prompt, then one given
    token per step (teacher forcing, so a near tie decided otherwise in a low-precision dtype cannot derail it)."""
    inputs = _inputs()
    prompt = inputs["input_ids"].shape[1]
    mask = torch.cat([inputs["attention_mask"], torch.ones(len(sequences), NEW_TOKENS, dtype=torch.long)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    logits, start = [], 0
    for stop in range(prompt, prompt + NEW_TOKENS):
        step = slice(start, stop)
        out = model(
            input_ids=sequences[:, step],
            attention_mask=mask[:, :stop],
            position_ids=positions[:, step],
            past_key_values=cache,
        )
        logits.append(out.logits[:, -1].float())
        start = stop
    return torch.stack(logits, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("offload", list(OFFLOADS))
def test_offloaded_keep_all_mask_equals_the_unmodified_model(saved: Path, offload: str, dtype: torch.dtype) -> None:
    """Keep-everything mask: the offloaded LeanK model's logits are the unmodified model's (DynamicCache + sdpa, no
    offload) within the dtype's tolerance, and each token is the reference's greedy choice wherever the reference's
    top two logits are further apart than that tolerance (always, in fp32)."""
    offloaded = apply_leank(OFFLOADS[offload](saved, dtype))
    _assert_offloaded(offloaded)
    sequences, logits = _generate(offloaded, LeanKCache(ones_masks(offloaded.config), offloaded.config))
    reference = AutoModelForCausalLM.from_pretrained(saved / "model", dtype=dtype)
    assert reference.config._attn_implementation == "sdpa"
    expected = _reference_logits(reference, sequences)
    torch.testing.assert_close(logits, expected, rtol=0, atol=ATOL[dtype])
    top2 = expected.topk(2, dim=-1).values
    decided = top2[..., 0] - top2[..., 1] > 2 * ATOL[dtype]
    assert decided.all() or dtype != torch.float32
    tokens = sequences[:, -NEW_TOKENS:]
    torch.testing.assert_close(tokens[decided], expected.argmax(-1)[decided], rtol=0, atol=0)
