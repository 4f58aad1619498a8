"""`leank-hf demo` on the embedded SmolLM2: LeanK replies like the full model; the KV saving matches the mask."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as hf_logging

from tiny_models import tiny_model


def test_layer_progress_counts_every_layer_and_leaves_outputs_alone():
    from leank_hf.tools.demo import layer_progress

    model = tiny_model("llama")
    input_ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad():
        expected = model(input_ids).logits
        with layer_progress(model, "prefill") as bar:
            logits = model(input_ids).logits
        with layer_progress(model, "prefill", enabled=False) as no_bar:
            model(input_ids)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert bar.n == model.config.num_hidden_layers and no_bar is None
    assert not any(layer._forward_hooks for layer in model.model.layers)  # hooks removed


def test_layer_progress_obeys_transformers_disable_progress_bar(capfd):
    from leank_hf.tools.demo import layer_progress

    model = tiny_model("llama")
    input_ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.no_grad(), layer_progress(model, "shown prefill"):
        model(input_ids)
    assert "shown prefill" in capfd.readouterr().err
    hf_logging.disable_progress_bar()
    try:
        with torch.no_grad(), layer_progress(model, "hidden prefill"):
            model(input_ids)
    finally:
        hf_logging.enable_progress_bar()
    assert "hidden prefill" not in capfd.readouterr().err


@pytest.mark.parametrize("disabled", ["1", None])
def test_layer_progress_obeys_hf_hub_disable_progress_bars(disabled):
    script = (
        "import torch; from tiny_models import tiny_model; from leank_hf.tools.demo import layer_progress\n"
        "model = tiny_model('llama')\n"
        "with torch.no_grad(), layer_progress(model, 'env prefill'): model(torch.zeros(1, 4, dtype=torch.long))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    if disabled:
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = disabled
    tests = Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tests), env.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert ("env prefill" in run.stderr) == (disabled is None)


@pytest.mark.smollm2
@pytest.mark.slow
def test_demo_answers_like_the_full_model_with_fewer_kv_bytes():
    from leank_hf.masks import LeanKMasks
    from leank_hf.tools.demo import EMBEDDED_BASE_MODEL, run_demo
    from leank_hf.tools.models import load_embedded_model

    model, tokenizer = load_embedded_model(dtype=torch.float32)
    masks = LeanKMasks.from_pretrained(EMBEDDED_BASE_MODEL)
    _, fact, runs = run_demo(model, tokenizer, masks, length=1024, seed=7, max_new_tokens=20)
    # The unmodified model (through DynamicCache + sdpa) is the reference: LeanK must give the same reply.
    assert runs["leank"].answer == runs["full"].answer, runs
    assert runs["leank"].correct == (fact in runs["full"].answer)
    # Middle-region K shrinks by the pruned fraction and V by the zero-head fraction: independent count from the mask.
    prompt_tokens = runs["full"].kv_bytes // (2 * 30 * 3 * 64 * 4)
    middle = prompt_tokens - masks.sink_size - masks.recent_size
    assert middle > 0
    per_token_saved = 30 * 3 * 64 * 4 * (masks.pruned_ratio + masks.zero_heads().float().mean().item())
    saved = runs["full"].kv_bytes - runs["leank"].kv_bytes
    assert abs(saved - middle * per_token_saved) <= 64 * 30 * 3 * 64 * 4 * 2  # within one flush chunk of tokens
