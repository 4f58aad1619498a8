"""Every script in examples/ runs as a user runs it (no network: the Hub is the in-process fake of `fake_hub.py`),
and its replies equal the unmodified model's (transformers' sdpa attention with a `DynamicCache`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def load_example(name: str):
    """Import `examples/<name>.py` as a module (its `main(argv)` is what `python examples/<name>.py` runs)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_script_is_run_here_and_listed_in_its_readme():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == ["generate.py", "load_from_model_repo.py", "push_masks.py", "train_mask.py"]
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"[{name}]({name})" in readme for name in [*scripts, "quickstart.ipynb"])


@pytest.fixture(scope="module")
def embedded():
    from leank_hf.tools.models import load_embedded_model

    return load_embedded_model(dtype=torch.float32)


def reference_reply(embedded, user_text: str, max_new_tokens: int) -> str:
    """Greedy reply of the unmodified model (never switched to LeanK) to a one-turn chat prompt."""
    model, tokenizer = embedded
    messages = [{"role": "user", "content": user_text}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def retrieval_prompt(tokenizer, length: int) -> tuple[str, str, str]:
    from leank_hf.training.data import make_multikey_sample

    sample = make_multikey_sample(tokenizer, length, seed=7, num_needles=4, num_questions=1)
    return sample.context, sample.questions[0].question, sample.questions[0].facts[0]


def test_generate_example_replies_like_the_unmodified_model(embedded, capsys):
    from leank_hf import LeanKMasks

    reply = load_example("generate").main(["--length", "1024", "--max-new-tokens", "16"])
    context, question, _ = retrieval_prompt(embedded[1], 1024)
    assert reply == reference_reply(embedded, f"{context}\n\n{question}", 16)
    printed = capsys.readouterr().out
    used_mib, dense_mib = re.search(r"KV cache: ([\d.]+) MiB with LeanK, ([\d.]+) MiB", printed).groups()
    # Independent count from the mask: middle tokens lose the pruned K channels and the V of zero heads.
    masks = LeanKMasks.from_pretrained(SMOLLM2)
    token_bytes = 30 * 3 * 64 * 4  # K or V of one token, all layers, fp32
    middle = float(dense_mib) * 2**20 / (2 * token_bytes) - masks.sink_size - masks.recent_size
    saved_per_token = token_bytes * (masks.pruned_ratio + masks.zero_heads().float().mean().item())
    saved = (float(dense_mib) - float(used_mib)) * 2**20
    assert middle > 0 and abs(saved - middle * saved_per_token) <= masks.flush_size * 2 * token_bytes


def test_train_example_saves_a_mask_that_loads_and_resumes(tmp_path):
    from leank_hf import LeanKMasks

    train = load_example("train_mask")
    argv = ["--output", str(tmp_path / "mask"), "--stage1-steps", "2", "--stage2-steps", "1"]
    argv += ["--min-length", "320", "--max-length", "400"]
    masks = train.main(argv)
    # 70% of SmolLM2's 30 x 3 x 64 channels pruned, every head keeping a multiple of 16.
    assert int(masks.mask.sum()) == 1728
    assert bool((masks.kept_counts() % 16 == 0).all())
    assert masks.base_model == SMOLLM2
    assert LeanKMasks.from_pretrained(tmp_path / "mask") == masks
    # A finished run resumed from its checkpoint gives the same mask without training further.
    assert train.main([*argv, "--resume"]) == masks


def test_push_then_load_from_the_model_repo_subfolder(embedded, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from leank_hf import LeanKMasks
    from leank_hf.tools.models import embedded_cache_dir

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_example")
    model_files = {p.name: p.read_bytes() for p in embedded_cache_dir().iterdir() if p.is_file()}
    hub.add_repo("alice/smollm2-finetuned", model_files)
    bundled = LeanKMasks.from_pretrained(SMOLLM2)
    bundled.save_pretrained(tmp_path / "my-mask")

    load_example("push_masks").main([str(tmp_path / "my-mask"), "alice/smollm2-finetuned", "--subfolder", "leank"])
    repo = hub.repos["alice/smollm2-finetuned"]
    files = repo["commits"][repo["branches"]["main"]]
    assert {name: files[name] for name in model_files} == model_files  # the model's own files are untouched
    assert {"leank/leank_config.json", "leank/leank_masks.safetensors", "leank/README.md"} <= set(files)

    context, question, _ = retrieval_prompt(embedded[1], 1024)
    (tmp_path / "doc.txt").write_text(context, encoding="utf-8")
    argv = ["alice/smollm2-finetuned", "--prompt-file", str(tmp_path / "doc.txt"), "--question", question]
    reply = load_example("load_from_model_repo").main([*argv, "--max-new-tokens", "16"])
    assert reply == reference_reply(embedded, f"{context}\n\n{question}", 16)
    downloaded = tmp_path / "hf-cache" / "models--alice--smollm2-finetuned" / "snapshots"
    assert LeanKMasks.from_pretrained(next(downloaded.iterdir()) / "leank") == bundled
