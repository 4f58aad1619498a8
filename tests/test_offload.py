"""LeanK caches on a model whose weights accelerate offloads (`device_map` with "cpu" / "disk", `cpu_offload`):
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
from teacher_forcing import forced_logits
from tiny_models import ones_masks, random_masks, tiny_model

NEW_TOKENS = 12
PROMPT = 41
# Keep-everything LeanK against the unmodified model: same keys, but LeanK's decode attention sums in another order
# (fp32 partials over sink/recent and middle, one softmax) than sdpa, then rounds to the model's dtype.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
# Layer 0 and the embeddings stay in memory; layers 1-2, the final norm and the head go to disk.
DISK_MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}
# A GPU too small for the model: layer 0 on GPU 0, layer 1 in CPU memory, the rest on disk; all run on GPU 0.
GPU_MAP = {**DISK_MAP, "model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": "cpu"}


def _device_map(device_map: dict[str, int | str]) -> Callable[[Path, torch.dtype], torch.nn.Module]:
    def load(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(
            folder / "model", dtype=dtype, device_map=device_map, offload_folder=folder / f"offload-{dtype}"
        )
        assert set(model.hf_device_map.values()) == set(device_map.values())
        return model

    return load


def _cpu_offload(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=dtype)
    return cpu_offload(model, execution_device=torch.device("cpu"))


# name: (load the offloaded model, the device it computes on)
OFFLOADS = {
    "device_map_disk": pytest.param(_device_map(DISK_MAP), "cpu", id="device_map_disk"),
    "cpu_offload": pytest.param(_cpu_offload, "cpu", id="cpu_offload"),
    "device_map_gpu": pytest.param(_device_map(GPU_MAP), "cuda", id="device_map_gpu", marks=pytest.mark.gpu),
}


def _inputs(device: str) -> dict[str, torch.Tensor]:
    """A left-padded batch of 41- and 33-token prompts: sink, middle and recent regions, flushes while decoding."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 97, (2, PROMPT), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :8], attention_mask[1, :8] = 0, 0
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _generate(model: torch.nn.Module, cache, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    out = model.generate(
        **_inputs(device),
        past_key_values=cache,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.logits, 1).float()


def _cache(kind: str, masks, config):
    if kind == "static":
        return LeanKStaticCache(masks, config, max_cache_len=PROMPT + NEW_TOKENS)
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
@pytest.mark.parametrize("load, device", OFFLOADS.values())
def test_offloaded_model_generates_as_without_offload(saved: Path, load, device: str, kind: str) -> None:
    """Random mask: the offloaded model's tokens and logits are the in-memory model's (bit for bit on CPU)."""
    plain = apply_leank(AutoModelForCausalLM.from_pretrained(saved / "model").to(device))
    offloaded = apply_leank(load(saved, torch.float32))
    _assert_offloaded(offloaded)
    masks = random_masks(plain.config, align=16)  # widths the Triton kernel takes (CUDA)
    expected = _generate(plain, _cache(kind, masks, plain.config), device)
    actual = _generate(offloaded, _cache(kind, masks, offloaded.config), device)
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=0)
    # On CUDA, generate() compiles the static cache's decode step, and the hooks change what inductor fuses.
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=0 if device == "cpu" else ATOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("load, device", OFFLOADS.values())
def test_offloaded_keep_all_mask_equals_the_unmodified_model(saved: Path, load, device: str, dtype) -> None:
    """Keep-everything mask: the offloaded LeanK model's logits are the unmodified model's (DynamicCache + sdpa, no
    offload) within the dtype's tolerance, and each token is the reference's greedy choice wherever the reference's
    top two logits are further apart than that tolerance (always, in fp32)."""
    offloaded = apply_leank(load(saved, dtype))
    _assert_offloaded(offloaded)
    sequences, logits = _generate(offloaded, LeanKCache(ones_masks(offloaded.config), offloaded.config), device)
    reference = AutoModelForCausalLM.from_pretrained(saved / "model", dtype=dtype).to(device)
    assert reference.config._attn_implementation == "sdpa"
    prompt_mask = _inputs(device)["attention_mask"]  # teacher-forced: a near tie cannot derail the reference
    expected = forced_logits(reference, DynamicCache(config=reference.config), sequences, prompt_mask)
    torch.testing.assert_close(logits, expected, rtol=0, atol=ATOL[dtype])
    top2 = expected.topk(2, dim=-1).values
    decided = top2[..., 0] - top2[..., 1] > 2 * ATOL[dtype]
    assert decided.all() or dtype != torch.float32
    tokens = sequences[:, -NEW_TOKENS:]
    torch.testing.assert_close(tokens[decided], expected.argmax(-1)[decided], rtol=0, atol=0)
