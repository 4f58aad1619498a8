"""peft models: `apply_leank` switches the transformers model inside a `PeftModel`, generation with a `LeanKCache`
runs through the adapters, and adapters on the key projections are warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

from leank_hf import LeanKCache, LeanKUsageError, apply_leank, revert_leank
from tiny_models import ones_masks, random_masks, tiny_model

# peft 0.21 still calls transformers' deprecated `is_gradient_checkpointing` (pyproject turns that into an error).
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def lora_model(target_modules: list[str]):
    """A tiny Llama with a LoRA adapter whose weights are random (not the no-op initialisation)."""
    config = LoraConfig(r=4, target_modules=target_modules, init_lora_weights=False)
    return get_peft_model(tiny_model("llama"), config).eval()


def test_apply_leank_switches_the_model_inside_a_peft_model():
    model = lora_model(["q_proj", "v_proj"])
    input_ids = torch.randint(3, 97, (1, 40))
    with model.disable_adapter():
        without_adapter = model.generate(input_ids=input_ids, max_new_tokens=12, do_sample=False)
    reference = model.generate(input_ids=input_ids, max_new_tokens=12, do_sample=False)  # sdpa, adapter on
    assert not torch.equal(reference, without_adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no adapter on k_proj: nothing to warn about
        assert apply_leank(model) is model
    base = model.get_base_model()
    assert base.config._attn_implementation == "leank"
    cache = LeanKCache(ones_masks(base.config), base.config)  # keeps every channel: the adapted model's answer
    assert torch.equal(model.generate(input_ids=input_ids, past_key_values=cache, max_new_tokens=12), reference)
    pruned = LeanKCache(random_masks(base.config), base.config)
    assert len(model.generate(input_ids=input_ids, past_key_values=pruned, max_new_tokens=12)[0]) == 52
    assert revert_leank(model) is model and base.config._attn_implementation == "sdpa"


def test_an_adapter_on_the_key_projection_is_warned_about():
    model = lora_model(["k_proj", "v_proj"])
    with pytest.warns(UserWarning, match=r"adapters on 3 key projections \(first: .*layers\.0\.self_attn\.k_proj\)"):
        apply_leank(model)


def test_other_objects_are_still_refused():
    with pytest.raises(LeanKUsageError, match="PreTrainedModel or a peft model around one, got Linear"):
        apply_leank(torch.nn.Linear(2, 2))
