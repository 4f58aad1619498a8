"""The `custom_generate` recipe (`leank_hf.custom_generate_path()`): loaded by transformers from its local path, from
a model folder that ships it, and from a Hub repo it was uploaded to (the fake Hub); equal to `generate()` with a
`LeanKCache` built by hand, and a fresh cache per call, so a pipeline answers every prompt."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from byte_tokenizer import byte_tokenizer
from leank_hf import LeanKCache, LeanKUsageError, apply_leank, custom_generate_path
from tiny_models import ones_masks, random_masks, tiny_model

RECIPE = custom_generate_path()


@pytest.fixture(autouse=True)
def modules_cache(tmp_path, monkeypatch):
    """transformers copies remote code into HF_MODULES_CACHE and puts it on sys.path: both stay in the test."""
    from transformers import dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


def prompts(batch: int = 2, length: int = 40) -> dict[str, torch.Tensor]:
    """A left-padded batch: row 0 full length, the others shorter."""
    input_ids = torch.randint(3, 97, (batch, length))
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, batch):
        attention_mask[row, : 5 * row] = 0
        input_ids[row, : 5 * row] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def by_hand(model, masks, inputs, **options) -> torch.Tensor:
    """What the recipe must equal: the model switched to LeanK by hand, given a new cache."""
    apply_leank(model)
    return model.generate(**inputs, past_key_values=LeanKCache(masks, model.config), **options)


def test_the_recipe_folder_has_the_layout_transformers_loads():
    folder = Path(RECIPE)
    assert (folder / "custom_generate" / "generate.py").is_file()
    assert (folder / "custom_generate" / "requirements.txt").read_text().startswith("leank_hf")
    assert "custom_generate" in (folder / "README.md").read_text()


@pytest.mark.parametrize(
    "options",
    [{"do_sample": False}, {"do_sample": True, "num_return_sequences": 2}, {"num_beams": 2, "do_sample": False}],
    ids=["greedy", "sampling", "beams"],
)
def test_recipe_from_its_local_path_equals_generate_with_a_leank_cache(options):
    model = tiny_model("llama")
    masks = random_masks(model.config)
    inputs = prompts()
    torch.manual_seed(1)
    expected = by_hand(model, masks, inputs, max_new_tokens=12, **options)
    torch.manual_seed(1)
    output = model.generate(
        **inputs, custom_generate=RECIPE, trust_remote_code=True, leank_masks=masks, max_new_tokens=12, **options
    )
    assert torch.equal(output, expected)


def test_recipe_finds_the_masks_saved_next_to_a_local_models_weights(tmp_path):
    model = tiny_model("llama")
    masks = random_masks(model.config)
    model.save_pretrained(tmp_path / "model")
    masks.save_pretrained(tmp_path / "model" / "leank")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    loaded.generation_config.eos_token_id = None
    inputs = prompts()
    expected = by_hand(model, masks, inputs, max_new_tokens=12, do_sample=False)
    output = loaded.generate(**inputs, custom_generate=RECIPE, trust_remote_code=True, max_new_tokens=12)
    assert torch.equal(output, expected)
    # The folder passed as `leank_masks` gives the same; so does LeanKCache.from_pretrained on the folder.
    again = loaded.generate(
        **inputs, custom_generate=RECIPE, trust_remote_code=True, leank_masks=tmp_path / "model", max_new_tokens=12
    )
    assert torch.equal(again, expected)
    cache = LeanKCache.from_pretrained(tmp_path / "model", config=loaded.config)
    assert torch.equal(loaded.generate(**inputs, past_key_values=cache, max_new_tokens=12), expected)


def test_a_model_folder_that_ships_the_recipe_generates_with_leank_in_one_plain_call(tmp_path):
    model = tiny_model("llama")
    masks = random_masks(model.config)
    model.save_pretrained(tmp_path / "model")
    masks.save_pretrained(tmp_path / "model" / "leank")
    shutil.copytree(Path(RECIPE) / "custom_generate", tmp_path / "model" / "custom_generate")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model", trust_remote_code=True).eval()
    loaded.generation_config.eos_token_id = None
    inputs = prompts()
    # `generate` is now the recipe, which calls transformers' own generate (not itself again).
    output = loaded.generate(**inputs, max_new_tokens=12)
    assert torch.equal(output, by_hand(model, masks, inputs, max_new_tokens=12, do_sample=False))


def test_recipe_refuses_a_cache_of_the_callers():
    model = tiny_model("llama")
    masks = random_masks(model.config)
    with pytest.raises(LeanKUsageError, match="fresh LeanKCache for every call.*without `custom_generate`"):
        model.generate(
            **prompts(),
            custom_generate=RECIPE,
            trust_remote_code=True,
            leank_masks=masks,
            past_key_values=LeanKCache(masks, model.config),
        )


def test_a_pipeline_through_the_recipe_answers_each_prompt():
    model = tiny_model("llama", vocab_size=258)
    generator = pipeline("text-generation", model=model, tokenizer=byte_tokenizer())
    texts = ["The first prompt, which is long enough to fill the recent window of the mask.", "Another, shorter one."]
    options = {"max_new_tokens": 10, "do_sample": False, "return_full_text": False}
    expected = [generator(text, **options)[0]["generated_text"] for text in texts]  # unmodified model
    assert expected[0] != expected[1]
    masks = ones_masks(model.config)  # keeps every channel: LeanK must answer as the model does
    recipe = {"custom_generate": RECIPE, "trust_remote_code": True, "leank_masks": masks, "leank_backend": "torch"}
    replies = generator(texts, **recipe, **options)
    assert [reply[0]["generated_text"] for reply in replies] == expected
    assert model.config._attn_implementation == "leank_torch"  # the recipe ran


def test_recipe_uploaded_to_the_hub_loads_from_there(tmp_path, hub, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    hub.add_repo("alice/leank-generate", {})
    HfApi(token="hf_write").upload_folder(
        repo_id="alice/leank-generate", folder_path=custom_generate_path(), ignore_patterns=["**/__pycache__/**"]
    )
    files = hub.repos["alice/leank-generate"]["commits"][hub.repos["alice/leank-generate"]["branches"]["main"]]
    assert sorted(files) == ["README.md", "custom_generate/generate.py", "custom_generate/requirements.txt"]
    model = tiny_model("llama")
    masks = random_masks(model.config)
    inputs = prompts()
    output = model.generate(
        **inputs,
        custom_generate="alice/leank-generate",
        trust_remote_code=True,
        leank_masks=masks,
        max_new_tokens=12,
    )
    assert torch.equal(output, by_hand(model, masks, inputs, max_new_tokens=12, do_sample=False))
