"""The mask trainer on tiny random Llamas: attention math, mask building, learning, resume, two processes (gloo)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from transformers import DynamicCache
from transformers.utils import logging as hf_logging

from leank_hf import LeanKMasks, MaskTrainer, TrainSettings, train_masks
from leank_hf.errors import LeanKUsageError
from leank_hf.training.attention import (
    MiddleKeyScaling,
    scaled_key_attention,
    scaled_middle_keys,
    training_attention_enabled,
    truncate_cache,
)
from leank_hf.training.data import TokenizedGroup, TokenizedQuestion
from leank_hf.training.masking import binary_mask, straight_through
from leank_hf.training.trainer import distillation_step
from reference import dense_attention, reference_model, window_start
from tiny_models import tiny_model

SINK, RECENT, FLUSH = 4, 8, 3


class RandomTokenData:
    """Deterministic random-token samples: a 37-52 token prefix, 2 questions (3-token suffix, 5-token answer)."""

    def __init__(self, vocab: int = 97, offset: int = 0) -> None:
        self.vocab, self.offset = vocab, offset

    def group(self, index: int) -> TokenizedGroup:
        g = torch.Generator().manual_seed(index + self.offset)
        prefix = torch.randint(0, self.vocab, (int(torch.randint(37, 53, (1,), generator=g)),), generator=g)
        questions = [
            TokenizedQuestion(
                torch.randint(0, self.vocab, (3,), generator=g),
                torch.randint(0, self.vocab, (5,), generator=g),
                "",
                [""],
            )
            for _ in range(2)
        ]
        return TokenizedGroup("random", prefix, questions)

    def describe(self) -> dict:
        return {"kind": "random_tokens", "offset": self.offset}


def peaked_model(seed: int = 0):
    """A tiny Llama whose q/k projections are scaled up, so attention is peaked and key channels matter."""
    model = tiny_model("llama", seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    return model


def dense_scaled_reference(query, key, value, scales, skip, scaling):
    """tests/reference.py's rule with middle keys multiplied channel-wise by `scales`, skipped heads dropping them:
    `[B, n, Hq, D]` in float64."""
    total, n = key.shape[2], query.shape[2]
    output = dense_attention(
        query, key, value, scales, pad=torch.zeros(key.shape[0], dtype=torch.int64), sink=SINK,
        boundaries=[window_start(slot, SINK, RECENT, FLUSH) for slot in range(total - n, total)], scale=scaling,
        skip_heads=skip,
    )  # fmt: skip
    return output.transpose(1, 2)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("n", [1, 5])
def test_scaled_key_attention_matches_dense_reference(dtype, atol, n):
    batch, num_q, num_kv, total, dim = 2, 6, 3, 29, 16
    query = torch.randn(batch, num_q, n, dim).to(dtype)
    key, value = torch.randn(batch, num_kv, total, dim).to(dtype), torch.randn(batch, num_kv, total, dim).to(dtype)
    scales = torch.rand(num_kv, dim)
    skip = torch.tensor([False, True, False])
    out = scaled_key_attention(
        query, key, value, scales, skip, sink_size=SINK, recent_size=RECENT, flush_size=FLUSH, scaling=0.3
    )
    expected = dense_scaled_reference(query, key, value, scales, skip, 0.3)
    assert out.dtype == dtype and out.shape == (batch, n, num_q, dim)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=atol)


def test_binary_student_matches_independent_reference_model():
    """Stage-2 forward (binary mask, kept channels at 1, zero-width heads skipped) == tests/reference.py."""
    model = tiny_model("llama")
    layers, heads, dim = 3, 2, 32
    alpha = torch.rand(layers, heads, dim)
    alpha[1, 0] = 0.0  # a head that will lose all channels at this ratio
    mask = binary_mask(alpha, ratio=0.7, align=8)
    assert not mask[1, 0].any()
    prompt, rows = torch.randint(0, 97, (1, 41)), torch.randint(0, 97, (1, 6))

    def answer_hidden(run_rows):
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model.model(input_ids=prompt, past_key_values=cache, use_cache=True)
            return run_rows(cache)

    with training_attention_enabled(model), torch.no_grad():
        scaling = MiddleKeyScaling(straight_through(alpha, mask), ~mask.any(-1), SINK, RECENT, FLUSH)

        def student(cache):
            with scaled_middle_keys(scaling):
                return model.model(input_ids=rows, past_key_values=cache, use_cache=True).last_hidden_state

        ours = answer_hidden(student)
    with reference_model(model, mask, SINK, RECENT, FLUSH):
        expected = answer_hidden(
            lambda cache: model.model(input_ids=rows, past_key_values=cache, use_cache=True).last_hidden_state
        )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == "sdpa"


def test_student_with_unit_scales_equals_teacher():
    model = tiny_model("llama")
    with training_attention_enabled(model):
        mse = distillation_step(
            model, RandomTokenData().group(0), lambda: MiddleKeyScaling(torch.ones(3, 2, 32), None, SINK, RECENT, FLUSH)
        )
    assert mse < 1e-10


def test_truncate_cache_restores_prompt_state():
    model = tiny_model("llama")
    cache = DynamicCache(config=model.config)
    prompt, more = torch.randint(0, 97, (1, 20)), torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        model.model(input_ids=prompt, past_key_values=cache, use_cache=True)
        keys = cache.layers[0].keys.clone()
        model.model(input_ids=more, past_key_values=cache, use_cache=True)
    truncate_cache(cache, 20)
    assert cache.get_seq_length() == 20 and torch.equal(cache.layers[0].keys, keys)


@pytest.mark.parametrize("shape, ratio, align", [((3, 2, 32), 0.7, 8), ((5, 3, 64), 0.7, 16), ((2, 7, 48), 0.33, 16)])
def test_binary_mask_ratio_and_alignment_exact(shape, ratio, align):
    alpha = torch.rand(shape)
    alpha[0, 0] = 1.0  # ties
    mask = binary_mask(alpha, ratio, align)
    counts = mask.sum(-1)
    assert bool((counts % align == 0).all())
    assert int(counts.sum()) == round((1 - ratio) * alpha.numel() / align) * align
    for layer in range(shape[0]):
        for head in range(shape[1]):
            kept, pruned = alpha[layer, head][mask[layer, head]], alpha[layer, head][~mask[layer, head]]
            if len(kept) and len(pruned):
                assert kept.min() >= pruned.max()
    LeanKMasks(mask, align=align)  # validates alignment itself


def test_straight_through_forward_is_mask_backward_is_identity():
    alpha = torch.rand(2, 2, 16, requires_grad=True)
    mask = binary_mask(alpha, 0.5, 4)
    scales = straight_through(alpha, mask)
    assert torch.equal(scales.detach(), mask.float())
    weights = torch.randn(2, 2, 16)
    (scales * weights).sum().backward()
    assert torch.equal(alpha.grad, weights)


def _log_rows(path):
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


KW_SETTINGS = dict(ratio=0.7, align=8, sink_size=SINK, recent_size=RECENT, flush_size=FLUSH)
KW = dict(**KW_SETTINGS, progress=False)


DEAD_PAIRS = (1, 2, 4, 7, 9, 10, 12, 15)  # RoPE pairs (j, j + 16) whose keys are zero in every KV head


def dead_channel_model():
    """`peaked_model` whose keys are exactly zero on half of every head's channels: pruning those is lossless."""
    model = peaked_model()
    with torch.no_grad():
        for layer in model.model.layers:
            rows = layer.self_attn.k_proj.weight.view(2, 32, -1)
            for pair in DEAD_PAIRS:
                rows[:, pair].zero_()
                rows[:, pair + 16].zero_()
    return model


def test_loss_decreases_and_learned_mask_finds_the_dead_channels(tmp_path):
    model = dead_channel_model()
    masks = train_masks(
        model,
        None,
        stage1_steps=20,
        stage2_steps=4,
        lr=0.05,
        l1_weight=0.05,
        data=RandomTokenData(),
        output_dir=tmp_path,
        **{**KW, "ratio": 0.5},
    )
    stage1 = [float(r["loss"]) for r in _log_rows(tmp_path / "training_log.csv") if r["stage"] == "1"]
    assert sum(stage1[-4:]) < sum(stage1[:4])
    live = torch.ones(32, dtype=torch.bool)
    for pair in DEAD_PAIRS:
        live[pair] = live[pair + 16] = False
    assert torch.equal(masks.mask, live.expand(3, 2, 32))

    held_out = RandomTokenData(offset=10_000)

    def mse_of(mask):
        scaling = MiddleKeyScaling(mask.float(), ~mask.any(-1), SINK, RECENT, FLUSH)
        with training_attention_enabled(model):
            return sum(distillation_step(model, held_out.group(i), lambda: scaling) for i in range(4))

    assert mse_of(masks.mask) < 1e-10 < mse_of(binary_mask(torch.rand(3, 2, 32), 0.5, 8))
    assert all(p.requires_grad for p in model.parameters())  # flags restored after training
    assert model.config._attn_implementation == "sdpa"


def test_resume_continues_bit_for_bit(tmp_path):
    model = peaked_model()
    kw = dict(stage1_steps=5, stage2_steps=4, data=RandomTokenData(), checkpoint_every=2, **KW)
    full = train_masks(model, None, output_dir=tmp_path / "a", **kw)
    train_masks(model, None, output_dir=tmp_path / "b", max_steps=3, **kw)  # checkpoint at step 3 (the stop)
    resumed = train_masks(model, None, output_dir=tmp_path / "b", resume=True, **kw)
    state_a = torch.load(tmp_path / "a" / "checkpoint" / "trainer_state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "b" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert torch.equal(state_a["alpha"], state_b["alpha"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state_a["optimizer"]["state"][0][key], state_b["optimizer"]["state"][0][key])
    assert torch.equal(full.mask, resumed.mask)
    assert _log_rows(tmp_path / "a" / "training_log.csv") == _log_rows(tmp_path / "b" / "training_log.csv")
    saved = LeanKMasks.from_pretrained(tmp_path / "b")
    assert torch.equal(saved.mask, full.mask) and saved.training_info["completed_steps"] == 9
    assert saved.sink_size == SINK and saved.target_ratio == 0.7 and saved.training_info["data"]["kind"]
    assert resumed == full  # mask and metadata, the final MSE included
    # Resuming a finished run trains nothing and returns (and saves) the same mask with the same final MSE.
    assert train_masks(model, None, output_dir=tmp_path / "b", resume=True, **kw) == full


def test_progress_bar_obeys_transformers_disable_progress_bar(capfd):
    model = peaked_model()
    kw = {**KW, "progress": True, "stage1_steps": 1, "stage2_steps": 0, "data": RandomTokenData()}
    train_masks(model, None, **kw)
    assert "leank train" in capfd.readouterr().err
    hf_logging.disable_progress_bar()
    try:
        train_masks(model, None, **kw)
    finally:
        hf_logging.enable_progress_bar()
    assert "leank train" not in capfd.readouterr().err


def test_report_to_csv_none_tensorboard(tmp_path):
    model = peaked_model()
    kw = {**KW, "stage1_steps": 2, "stage2_steps": 0, "data": RandomTokenData()}
    train_masks(model, None, output_dir=tmp_path / "csv", report_to="csv", **kw)
    assert [row["step"] for row in _log_rows(tmp_path / "csv" / "training_log.csv")] == ["0", "1"]
    masks = train_masks(model, None, output_dir=tmp_path / "none", report_to="none", **kw)
    assert not (tmp_path / "none" / "training_log.csv").exists()
    assert torch.equal(LeanKMasks.from_pretrained(tmp_path / "none").mask, masks.mask)
    with pytest.raises(LeanKUsageError, match="report_to"):
        train_masks(model, None, report_to=["csv", "wandb"], **kw)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(LeanKUsageError, match="pip install tensorboard"):
            train_masks(model, None, output_dir=tmp_path / "tb", report_to="tensorboard", **kw)
    else:
        train_masks(model, None, output_dir=tmp_path / "tb", report_to=["csv", "tensorboard"], **kw)
        assert any((tmp_path / "tb" / "runs").iterdir()) and (tmp_path / "tb" / "training_log.csv").is_file()


def test_resume_with_other_settings_is_refused(tmp_path):
    model = tiny_model("llama")
    kw = dict(stage2_steps=1, data=RandomTokenData(), **KW)
    train_masks(model, None, output_dir=tmp_path, stage1_steps=1, **kw)
    with pytest.raises(LeanKUsageError, match="other settings"):
        train_masks(model, None, output_dir=tmp_path, stage1_steps=2, resume=True, **kw)
    with pytest.raises(LeanKUsageError, match="nothing to resume"):
        train_masks(model, None, output_dir=tmp_path / "none", stage1_steps=1, resume=True, **kw)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = peaked_model()
        masks = train_masks(
            model, None, stage1_steps=3, stage2_steps=2, data=RandomTokenData(), output_dir=f"{out_dir}/run", **KW
        )
        state = torch.load(f"{out_dir}/run/checkpoint/trainer_state.pt", weights_only=True) if rank == 0 else None
        torch.save({"mask": masks.mask, "alpha": state["alpha"] if state else None}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_run_averages_gradients(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(rank0["mask"], rank1["mask"])
    single = tmp_path / "single"
    train_masks(peaked_model(), None, stage1_steps=3, stage2_steps=2, data=RandomTokenData(), output_dir=single, **KW)
    alone = torch.load(single / "checkpoint" / "trainer_state.pt", weights_only=True)["alpha"]
    assert not torch.equal(alone, rank0["alpha"])  # the second process's samples changed the update
    assert LeanKMasks.from_pretrained(tmp_path / "run").training_info["world_size"] == 2


def test_gradient_checkpointing_gives_the_same_gradients_and_masks(tmp_path):
    model = peaked_model()
    grads = []
    for checkpoint in (False, True):
        alpha = torch.full((3, 2, 32), 0.5, requires_grad=True)
        with training_attention_enabled(model):
            distillation_step(
                model,
                RandomTokenData().group(0),
                lambda: MiddleKeyScaling(alpha, None, SINK, RECENT, FLUSH, checkpoint=checkpoint),  # noqa: B023
            )
        grads.append(alpha.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-5)
    kw = dict(stage1_steps=3, stage2_steps=2, data=RandomTokenData(), **KW)
    plain = train_masks(model, None, **kw)
    assert torch.equal(train_masks(model, None, gradient_checkpointing=True, **kw).mask, plain.mask)


def reference_lr(settings: TrainSettings, step: int) -> float:
    """The schedule as the trainer has always had it, built as a list per stage: constant at the stage's rate, its
    last `D` steps decaying linearly to `min_lr_fraction` of it, then its first `W` steps warming up (which wins where
    they overlap); `W` and `D` are at least one step."""
    stage1, stage2 = settings.stage1_steps, settings.stage2_steps
    lr2 = settings.lr if settings.stage2_lr is None else settings.stage2_lr
    rates = []
    for rate, length in ((settings.lr, stage1), (lr2, stage2)):
        if not length:
            continue
        warmup = max(1, math.ceil(settings.warmup_fraction * length))
        decay = max(1, math.ceil(settings.decay_fraction * length))
        stage = [rate] * length
        for k in range(1, decay + 1):
            stage[length - decay + k - 1] = rate * (1.0 - (1.0 - settings.min_lr_fraction) * k / decay)
        for k in range(1, warmup + 1):
            stage[k - 1] = rate * k / warmup
        rates += stage
    return rates[step]


@pytest.mark.parametrize("stage1, stage2", [(300, 60), (7, 3), (1, 1), (0, 5), (4, 0), (2, 9)])
@pytest.mark.parametrize(
    "fractions", [(0.2, 0.2, 0.1), (0.0, 0.0, 0.0), (1.0, 1.0, 0.5), (0.6, 0.7, 1.0), (0.05, 0.33, 0.2)]
)
def test_lr_schedule_matches_the_reference(stage1, stage2, fractions):
    warmup, decay, minimum = fractions
    settings = TrainSettings(
        stage1_steps=stage1, stage2_steps=stage2, lr=0.03, stage2_lr=0.007, warmup_fraction=warmup,
        decay_fraction=decay, min_lr_fraction=minimum,
    )  # fmt: skip
    for step in range(settings.total_steps):
        assert settings.lr_at(step) == pytest.approx(reference_lr(settings, step), rel=1e-12, abs=0), step


def _metrics(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_trainer_state_dict_round_trip_continues_bit_for_bit():
    """Train 3 steps, snapshot, train on; a new trainer loading the snapshot makes the same steps, lr included."""
    settings = TrainSettings(stage1_steps=4, stage2_steps=3, steps_per_sample=2, lr=0.05, stage2_lr=0.02, **KW_SETTINGS)
    first = MaskTrainer(peaked_model(), None, settings, data=RandomTokenData())
    rows = [first.step() for _ in range(3)]  # step 3 shares its sample with step 2
    state = first.state_dict()
    rows += [first.step() for _ in range(4)]  # a snapshot is a copy: these steps leave `state` as it was
    with pytest.raises(LeanKUsageError, match="the run is complete"):
        first.step()
    assert [row["lr"] for row in rows] == pytest.approx([reference_lr(settings, step) for step in range(7)], rel=1e-12)

    second = MaskTrainer(peaked_model(), None, settings, data=RandomTokenData())
    second.load_state_dict(state)
    assert second.completed_steps == 3
    assert _metrics([second.step() for _ in range(4)]) == _metrics(rows[3:])
    assert torch.equal(second.alpha, first.alpha) and torch.equal(second.alpha_sum, first.alpha_sum)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(second.optimizer.state[second.alpha][key], first.optimizer.state[first.alpha][key])
    assert second.masks() == first.masks()
    assert second.masks().training_info["completed_steps"] == 7


def test_load_state_dict_refuses_other_settings_and_names_them():
    settings = TrainSettings(stage1_steps=2, stage2_steps=1, **KW_SETTINGS)
    state = MaskTrainer(tiny_model("llama"), None, settings, data=RandomTokenData()).state_dict()
    other = MaskTrainer(tiny_model("llama"), None, dataclasses.replace(settings, lr=0.5), data=RandomTokenData())
    with pytest.raises(LeanKUsageError, match=r"other settings .*'lr': \(0.02, 0.5\)"):
        other.load_state_dict(state)
    free = dataclasses.replace(settings, max_steps=1, checkpoint_every=5, gradient_checkpointing=True)
    MaskTrainer(tiny_model("llama"), None, free, data=RandomTokenData()).load_state_dict(state)  # may change


def test_train_masks_takes_settings_and_keyword_overrides():
    model, data = tiny_model("llama"), RandomTokenData()
    settings = TrainSettings(stage1_steps=2, stage2_steps=1, **KW_SETTINGS)
    by_settings = train_masks(model, None, settings=settings, data=data, progress=False)
    by_keywords = train_masks(model, None, data=data, stage1_steps=2, stage2_steps=1, **KW)
    assert by_settings == by_keywords
    overridden = train_masks(model, None, settings=settings, data=data, progress=False, stage2_steps=2)
    assert overridden.training_info["completed_steps"] == 4 and overridden.training_info["stage2_steps"] == 2
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        train_masks(model, None, settings=settings, data=data, bogus=1)
