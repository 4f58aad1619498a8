"""`apply_leank` / `revert_leank`, the registered attention function and its fallbacks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.masking_utils import sdpa_mask

from leank_hf import LeanKCache, LeanKUsageError, apply_leank, revert_leank
from leank_hf.attention import implementation_name, left_padding
from leank_hf.cache_layer import LeanKLayer
from leank_hf.cache_states import LeanKStates
from tiny_models import ones_masks, random_masks, tiny_model

PROMPT = torch.randint(1, 97, (2, 30), generator=torch.Generator().manual_seed(0))


def test_apply_is_idempotent_and_revert_restores() -> None:
    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    assert apply_leank(model) is model
    assert model.config._attn_implementation == "leank"
    apply_leank(model)
    apply_leank(model, backend="torch")
    assert model.config._attn_implementation == "leank_torch"
    assert revert_leank(model) is model
    assert model.config._attn_implementation == "eager"
    revert_leank(model)  # not switched: nothing to undo
    assert model.config._attn_implementation == "eager"


def test_implementation_names() -> None:
    assert [implementation_name(b) for b in ("auto", "torch", "triton")] == ["leank", "leank_torch", "leank_triton"]
    with pytest.raises(LeanKUsageError, match="has to be one of"):
        apply_leank(tiny_model("llama"), backend="cuda")
    with pytest.raises(LeanKUsageError, match="PreTrainedModel"):
        apply_leank(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_switched_model_without_leank_cache_runs_transformers_sdpa(family: str) -> None:
    model = tiny_model(family)
    attention_mask = torch.ones_like(PROMPT)
    attention_mask[1, :4] = 0
    expected_cache = DynamicCache(config=model.config)
    expected = [
        model(PROMPT, attention_mask=attention_mask, past_key_values=expected_cache).logits,
        model(PROMPT).logits,
    ]
    apply_leank(model)
    cache = DynamicCache(config=model.config)
    actual = [model(PROMPT, attention_mask=attention_mask, past_key_values=cache).logits, model(PROMPT).logits]
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    step = torch.ones(2, 1, dtype=torch.long)
    mask = torch.cat([attention_mask, step], dim=1)
    torch.testing.assert_close(
        model(step, attention_mask=mask, past_key_values=cache).logits,
        revert_leank(model)(step, attention_mask=mask, past_key_values=expected_cache).logits,
        rtol=0,
        atol=0,
    )


def test_from_pretrained_with_attn_implementation_leank(tmp_path) -> None:
    model = tiny_model("llama")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="leank")
    assert loaded.config._attn_implementation == "leank"
    loaded.generation_config.eos_token_id = None
    expected = apply_leank(model).generate(
        PROMPT, past_key_values=LeanKCache(random_masks(model.config), model.config), max_new_tokens=5
    )
    actual = loaded.generate(
        PROMPT, past_key_values=LeanKCache(random_masks(loaded.config), loaded.config), max_new_tokens=5
    )
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@pytest.mark.parametrize("load", ["import leank_hf.attention", "from leank_hf import LeanKCache"])
def test_importing_the_attention_or_a_cache_registers_leank(tmp_path, load: str) -> None:
    # A fresh interpreter: no apply_leank call, yet from_pretrained can pick "leank" once the attention module or a
    # cache is loaded; `import leank_hf` alone does not import transformers, so it registers nothing.
    tiny_model("llama").save_pretrained(tmp_path)
    code = (
        "import sys, leank_hf\n"
        "assert 'transformers' not in sys.modules\n"
        f"{load}\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, attn_implementation='leank')\n"
        "assert model.config._attn_implementation == 'leank'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_backends_agree_on_cpu(backend: str) -> None:
    model = tiny_model("llama")
    masks = random_masks(model.config)
    expected = apply_leank(model, "torch")(PROMPT, past_key_values=LeanKCache(masks, model.config)).logits
    cache = LeanKCache(masks, model.config)
    apply_leank(model, backend)
    actual = model(PROMPT, past_key_values=cache).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert cache.get_seq_length() == PROMPT.shape[1]


def test_left_padding_from_masks() -> None:
    padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    mask = sdpa_mask(batch_size=3, q_length=5, kv_length=5, attention_mask=padding.bool())
    assert left_padding(mask, 3).tolist() == [0, 2, 4]
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    assert left_padding(additive, 3).tolist() == [0, 2, 4]
    assert left_padding(None, 3) is None
    unpadded = sdpa_mask(batch_size=1, q_length=3, kv_length=3, allow_is_causal_skip=False)
    assert left_padding(unpadded, 4).tolist() == [0, 0, 0, 0]


def _attention_call(**kwargs):
    """Call the registered function on a decode step of a real LeanK layer, with extra attention kwargs."""
    from transformers import AttentionInterface

    model = tiny_model("llama")
    masks = ones_masks(model.config)
    layer = LeanKLayer(masks.mask[0], sink_size=4, recent_size=8, flush_size=3)
    keys = torch.randn(1, 2, 20, 32)
    layer.update(keys, keys)
    layer.finish_prefill(None)
    states, _ = layer.update(keys[:, :, :1], keys[:, :, :1])
    function = AttentionInterface()["leank"]
    module = model.model.layers[0].self_attn
    query = torch.randn(1, 4, 1, 32)
    return function(module, query, states, states, None, **kwargs)


def test_attention_returns_transformers_layout() -> None:
    output, weights = _attention_call(scaling=0.2)
    assert output.shape == (1, 1, 4, 32) and output.is_contiguous() and weights is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"softcap": 30.0}, "softcapping"),
        ({"s_aux": torch.zeros(4)}, "s_aux"),
        ({"sliding_window": 16}, "sliding window"),
        ({"dropout": 0.1}, "model.eval"),
    ],
    ids=["softcap", "s_aux", "sliding_window", "dropout"],
)
def test_unsupported_attention_features_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(LeanKUsageError, match=message):
        _attention_call(**kwargs)


def test_leank_states_refuse_every_tensor_use() -> None:
    states = LeanKStates(payload=None)
    for use in (lambda s: s.shape, lambda s: s.dtype, lambda s: s[0], lambda s: len(s)):
        with pytest.raises(LeanKUsageError, match="apply_leank"):
            use(states)
