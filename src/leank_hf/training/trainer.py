"""`train_masks`: the two-stage LeanK mask trainer (weights frozen, one fp32 scale per layer, KV head and channel).

One step takes one sample (a long context and its questions). The context prefix runs once without gradients into
a `DynamicCache`; per question, its short suffix extends the cache (exact, like the prompt at deployment), then the
answer tokens run twice against that cache: the teacher with exact attention (no gradients), the student with its
middle-region keys scaled (`"leank_train"` attention). The loss compares their final hidden states.

- Stage 1: `scales = alpha` (clamped to [0, 1]); loss = MSE + `l1_weight` * mean(alpha).
- Stage 2: `scales` = the binary mask rebuilt from alpha at every step (global threshold at `ratio`, per-head counts
  multiples of `align`), kept channels at 1 exactly as deployed, heads with no kept channel skipping their middle
  keys as deployed; gradients pass straight through to alpha; loss = MSE.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils.logging import tqdm

from ..constants import CONFIG_NAME
from ..contract import full_attention_mask_shape
from ..errors import LeanKUsageError
from ..masks import LeanKMasks
from .attention import (
    MiddleKeyScaling,
    prefill,
    scaled_middle_keys,
    training_attention_enabled,
    truncate_cache,
)
from .checkpoint import CHECKPOINT_NAME, LOG_NAME, load_checkpoint, save_checkpoint
from .data import TokenizedGroup, as_training_data
from .masking import binary_mask, straight_through
from .reporting import Reporter


@dataclass
class TrainSettings:
    """Everything that defines a run (saved with checkpoints: a resumed run must use the same settings)."""

    ratio: float
    align: int
    sink_size: int
    recent_size: int
    flush_size: int
    stage1_steps: int
    stage2_steps: int
    lr: float
    stage2_lr: float
    l1_weight: float
    warmup_fraction: float
    decay_fraction: float
    min_lr_fraction: float
    max_grad_norm: float
    steps_per_sample: int
    seed: int

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def lr_at(self, step: int) -> float:
        """Learning rate of `step`: per stage, linear warm-up, constant, then linear decay to `min_lr_fraction`."""
        if step < self.stage1_steps:
            base, local, length = self.lr, step, self.stage1_steps
        else:
            base, local, length = self.stage2_lr, step - self.stage1_steps, self.stage2_steps
        warmup = max(1, math.ceil(self.warmup_fraction * length))
        decay = max(1, math.ceil(self.decay_fraction * length))
        if local < warmup:
            return base * (local + 1) / warmup
        into_decay = local - (length - decay)
        if into_decay >= 0:
            return base * (1.0 - (1.0 - self.min_lr_fraction) * (into_decay + 1) / decay)
        return base

    def validate(self) -> None:
        """Raise `LeanKUsageError` for settings that cannot train (out of range, NaN or infinite)."""
        if not 0.0 < self.ratio < 1.0:
            raise LeanKUsageError(f"`ratio` (fraction of K channels to prune) must be in (0, 1), got {self.ratio}")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.total_steps == 0:
            raise LeanKUsageError(
                f"need stage1_steps >= 0, stage2_steps >= 0 and at least one step, got {self.stage1_steps}, "
                f"{self.stage2_steps}"
            )
        if self.sink_size < 0 or self.recent_size < 1 or self.flush_size < 1 or self.align < 1:
            raise LeanKUsageError(
                f"need sink_size >= 0 and recent_size, flush_size, align >= 1, got {self.sink_size}, "
                f"{self.recent_size}, {self.flush_size}, {self.align}"
            )
        if self.steps_per_sample < 1:
            raise LeanKUsageError(f"`steps_per_sample` must be >= 1, got {self.steps_per_sample}")
        for name, positive in (("lr", True), ("stage2_lr", True), ("max_grad_norm", True), ("l1_weight", False)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise LeanKUsageError(f"`{name}` must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
        for name in ("warmup_fraction", "decay_fraction", "min_lr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise LeanKUsageError(f"`{name}` must be in [0, 1], got {getattr(self, name)}")


def check_run_folder(output_dir: str | os.PathLike | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a saved one unless `overwrite`, and `resume` without a folder.

    A folder holds a run when it has a checkpoint, a training log or a saved mask. With `overwrite`, the old
    checkpoint is deleted (a stale one could later be resumed by mistake); the log and the mask are rewritten.
    """
    if resume and overwrite:
        raise LeanKUsageError("`resume` continues the saved run and `overwrite` replaces it: pass only one")
    if output_dir is None:
        if resume:
            raise LeanKUsageError("`resume=True` needs the `output_dir` of the run to continue")
        return
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise LeanKUsageError(f"`output_dir` {str(folder)!r} is a file; pass a new or existing folder")
    held = [name for name in (f"checkpoint/{CHECKPOINT_NAME}", LOG_NAME, CONFIG_NAME) if (folder / name).is_file()]
    if held and not (resume or overwrite):
        raise LeanKUsageError(
            f"{str(folder)!r} already holds a run ({', '.join(held)}); continue it with resume (--resume), "
            "replace it with overwrite (--overwrite), or pick another output folder"
        )
    rank, world = _distributed()
    if overwrite and rank == 0:
        (folder / "checkpoint" / CHECKPOINT_NAME).unlink(missing_ok=True)
    if world > 1:
        torch.distributed.barrier()  # every process has looked before process 0 writes the new run


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _middle_scaling(
    alpha: torch.Tensor, alpha_sum: torch.Tensor, settings: TrainSettings, stage: int, checkpoint: bool
) -> MiddleKeyScaling:
    if stage == 1:
        scales, skip = alpha, None
    else:
        mask = binary_mask(alpha, settings.ratio, settings.align, alpha_sum)
        scales, skip = straight_through(alpha, mask), ~mask.any(-1)
    return MiddleKeyScaling(scales, skip, settings.sink_size, settings.recent_size, settings.flush_size, checkpoint)


def distillation_step(model, group: TokenizedGroup, scaling_fn, *, cache=None, questions=None) -> float:
    """Run a sample's teacher and student passes and backpropagate the mean hidden-state MSE over its questions.

    Args:
        model: a causal LM already switched to the `"leank_train"` attention.
        group (`TokenizedGroup`): shared prefix and questions.
        scaling_fn: returns the `MiddleKeyScaling` of the student (called per question, so each graph is fresh).
        cache (`DynamicCache`, *optional*): the prefix already run by `prefill` (reused across steps); left holding
            exactly the prefix again on return.
        questions (`list[TokenizedQuestion]`, *optional*): the questions to use (default: all of the sample's).

    Returns:
        The mean MSE (a float); gradients are accumulated into whatever the scaling depends on.
    """
    decoder = model.base_model
    device = model.device
    questions = group.questions if questions is None else questions
    cache = prefill(model, group.prefix_ids) if cache is None else cache
    prefix_length = len(group.prefix_ids)
    total = 0.0
    for question in questions:
        rows = question.answer_ids[:-1].to(device)[None]
        with torch.no_grad():
            if len(question.suffix_ids):
                decoder(input_ids=question.suffix_ids.to(device)[None], past_key_values=cache, use_cache=True)
            prompt_length = prefix_length + len(question.suffix_ids)
            teacher = decoder(input_ids=rows, past_key_values=cache, use_cache=True).last_hidden_state
        truncate_cache(cache, prompt_length)
        with scaled_middle_keys(scaling_fn()):
            student = decoder(input_ids=rows, past_key_values=cache, use_cache=True).last_hidden_state
        mse = F.mse_loss(student.float(), teacher.float())
        (mse / len(questions)).backward()
        total += mse.item()
        truncate_cache(cache, prefix_length)
    return total / len(questions)


def train_masks(
    model,
    tokenizer,
    *,
    ratio: float = 0.7,
    align: int = 16,
    sink_size: int = 64,
    recent_size: int = 256,
    flush_size: int = 64,
    stage1_steps: int = 300,
    stage2_steps: int = 60,
    data: Any = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    lr: float = 0.02,
    stage2_lr: float | None = None,
    l1_weight: float = 0.06,
    warmup_fraction: float = 0.2,
    decay_fraction: float = 0.2,
    min_lr_fraction: float = 0.1,
    max_grad_norm: float = 1.0,
    steps_per_sample: int = 1,
    checkpoint_every: int = 10,
    max_steps: int | None = None,
    gradient_checkpointing: bool = False,
    progress: bool = True,
    report_to: str | Sequence[str] = "csv",
) -> LeanKMasks:
    """Learn a LeanK K-channel mask for `model` (two stages, weights frozen, nothing of the model copied).

    Args:
        model: a transformers causal LM whose layers are all full attention (any dtype and device).
        tokenizer: its tokenizer (chat template used for prompts).
        ratio (`float`, *optional*, defaults to 0.7): fraction of K channels to prune.
        align (`int`, *optional*, defaults to 16): every head keeps a multiple of this many channels.
        sink_size (`int`), recent_size (`int`), flush_size (`int`): windows kept in full, as the deployed cache does.
        stage1_steps (`int`), stage2_steps (`int`): optimizer steps of each stage (one sample per step and process).
        data (*optional*): `None` (synthetic retrieval, lengths 1K-4K), a `SyntheticRetrievalData` /
            `PromptAnswerData`, or a list of `(prompt, answer)` pairs.
        output_dir (`str`, *optional*): where checkpoints (`checkpoint/`), the CSV log and the final mask go.
        resume (`bool`, *optional*): continue from `output_dir/checkpoint` (same settings); bit-for-bit identical to
            an uninterrupted run.
        overwrite (`bool`, *optional*): start a new run in an `output_dir` that already holds one (refused without
            `resume` or `overwrite`).
        seed (`int`, *optional*, defaults to 0): seed of the synthetic data (and recorded in the mask).
        lr (`float`, *optional*, defaults to 0.02), stage2_lr (`float`, *optional*, defaults to `lr`): AdamW rates.
        l1_weight (`float`, *optional*, defaults to 0.06): lambda of the stage-1 sparsity term mean|alpha|.
        warmup_fraction (`float`), decay_fraction (`float`), min_lr_fraction (`float`): per-stage schedule.
        max_grad_norm (`float`, *optional*, defaults to 1.0): gradient clipping.
        steps_per_sample (`int`, *optional*, defaults to 1): optimizer steps each sample serves; its questions are
            dealt out over these steps and its prefix runs once for all of them (the prefill is most of a step's
            cost on long contexts).
        checkpoint_every (`int`, *optional*, defaults to 10): steps between checkpoints (with `output_dir`), >= 1.
        max_steps (`int`, *optional*): stop after this global step (time-boxed runs, >= 1); resume later to finish.
        gradient_checkpointing (`bool`, *optional*, defaults to `False`): recompute the student's attention in the
            backward pass (its `[answer rows, keys]` logits are its largest activations on long contexts; weights
            are frozen and the prompt runs without gradients, so nothing else grows with the context). Same
            results, less memory; may be toggled on resume.
        progress (`bool`, *optional*, defaults to `True`): show a progress bar with loss and achieved ratio.
        report_to (`str` or `list[str]`, *optional*, defaults to `"csv"`): where each step's metrics go: `"csv"`
            (`output_dir/training_log.csv`), `"tensorboard"` (`output_dir/runs`, needs the tensorboard package), both,
            or `"none"`.

    Returns:
        `LeanKMasks`, also saved to `output_dir` with full metadata when given. Under `torch.distributed`, every
        process takes its own samples and alpha gradients are averaged with an all-reduce.

    Example:
        ```python
        >>> masks = leank_hf.train_masks(model, tokenizer, ratio=0.7, align=16, stage1_steps=300, stage2_steps=60,
        ...                              output_dir="my-mask")
        ```
    """
    settings = TrainSettings(
        ratio,
        align,
        sink_size,
        recent_size,
        flush_size,
        stage1_steps,
        stage2_steps,
        lr,
        lr if stage2_lr is None else stage2_lr,
        l1_weight,
        warmup_fraction,
        decay_fraction,
        min_lr_fraction,
        max_grad_norm,
        steps_per_sample,
        seed,
    )
    settings.validate()
    shape = full_attention_mask_shape(model, "the trainer")
    if shape[2] % align:
        raise LeanKUsageError(f"`align`={align} must divide the model's head_dim={shape[2]}")
    if checkpoint_every < 1:
        raise LeanKUsageError(f"`checkpoint_every` must be >= 1 (steps between checkpoints), got {checkpoint_every}")
    if max_steps is not None and max_steps < 1:
        raise LeanKUsageError(f"`max_steps` must be >= 1 (or None for the whole run), got {max_steps}")
    check_run_folder(output_dir, resume=resume, overwrite=overwrite)
    stream = as_training_data(data, tokenizer, seed)
    rank, world = _distributed()
    device = next(model.parameters()).device

    alpha = torch.ones(shape, dtype=torch.float32, device=device, requires_grad=True)
    alpha_sum = torch.zeros(shape, dtype=torch.float64, device=device)  # tie-break of equal alphas (channel_ranks)
    optimizer = torch.optim.AdamW([alpha], lr=settings.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: settings.lr_at(step) / settings.lr)
    start = 0
    last_mse: float | None = None  # the last step's MSE (None before any step)
    checkpoint_dir = Path(output_dir) / "checkpoint" if output_dir is not None else None
    if resume:
        state = load_checkpoint(checkpoint_dir)
        if state["settings"] != asdict(settings):
            raise LeanKUsageError(
                f"the checkpoint in {checkpoint_dir} was made with other settings {state['settings']}; resume with "
                "the same arguments or start a new run in another output_dir"
            )
        with torch.no_grad():
            alpha.copy_(state["alpha"])
            alpha_sum.copy_(state["alpha_sum"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        last_mse = state["last_mse"]
        if max_steps is not None and max_steps < start:
            raise LeanKUsageError(
                f"`max_steps`={max_steps} is before the checkpoint's step {start}; raise it or drop it"
            )
    reporter = Reporter(report_to, output_dir, start if resume else None, active=rank == 0)
    stop = settings.total_steps if max_steps is None else min(settings.total_steps, max_steps)
    bar = tqdm(total=settings.total_steps, initial=start, disable=not progress or rank != 0, desc="leank train")

    def checkpoint(step: int) -> None:
        if checkpoint_dir is not None and rank == 0:
            save_checkpoint(
                checkpoint_dir,
                {
                    "alpha": alpha.detach().cpu(),
                    "alpha_sum": alpha_sum.cpu(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "last_mse": last_mse,
                    "torch_rng": torch.get_rng_state(),
                    "settings": asdict(settings),
                },
            )

    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    prefilled: tuple[int, Any, Any] = (-1, None, None)  # (sample index, group, its prefix cache)
    try:
        with training_attention_enabled(model):
            for step in range(start, stop):
                began = time.perf_counter()
                stage = 1 if step < settings.stage1_steps else 2
                if step == settings.stage1_steps:
                    optimizer.state.clear()  # stage 2 starts with fresh moments: no drift left over from the L1 term
                optimizer.zero_grad(set_to_none=True)
                index = (step // settings.steps_per_sample) * world + rank
                if index != prefilled[0]:
                    group = stream.group(index)
                    prefilled = (index, group, prefill(model, group.prefix_ids))
                _, group, cache = prefilled
                part = group.questions[step % settings.steps_per_sample :: settings.steps_per_sample]
                if not part:
                    raise LeanKUsageError(
                        f"sample {index} has {len(group.questions)} question(s), fewer than steps_per_sample="
                        f"{settings.steps_per_sample}; lower steps_per_sample"
                    )
                mse = distillation_step(
                    model,
                    group,
                    functools.partial(_middle_scaling, alpha, alpha_sum, settings, stage, gradient_checkpointing),
                    cache=cache,
                    questions=part,
                )
                if world > 1:
                    torch.distributed.all_reduce(alpha.grad)
                    alpha.grad /= world
                    reduced = torch.tensor([mse], dtype=torch.float64)
                    torch.distributed.all_reduce(reduced)
                    mse = reduced.item() / world
                l1 = alpha.mean() if stage == 1 else None
                if l1 is not None and settings.l1_weight > 0:
                    (settings.l1_weight * l1).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_([alpha], settings.max_grad_norm).item()
                lr_now = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    alpha.clamp_(0.0, 1.0)
                    alpha_sum += alpha
                last_mse = mse
                l1_value = 0.0 if l1 is None else l1.item()
                loss = mse + (settings.l1_weight * l1_value if stage == 1 else 0.0)
                mask_ratio = 1.0 - binary_mask(alpha, settings.ratio, settings.align, alpha_sum).float().mean().item()
                soft_ratio = (alpha < 0.5).float().mean().item()
                row = {
                    "step": step,
                    "stage": stage,
                    "loss": loss,
                    "mse": mse,
                    "l1": l1_value,
                    "lr": lr_now,
                    "grad_norm": grad_norm,
                    "mean_alpha": alpha.mean().item(),
                    "soft_ratio": soft_ratio,
                    "mask_ratio": mask_ratio,
                    "seconds": time.perf_counter() - began,
                }
                reporter.log(row)
                bar.set_postfix(
                    stage=stage,
                    loss=f"{loss:.4g}",
                    mse=f"{mse:.3g}",
                    ratio=f"{mask_ratio if stage == 2 else soft_ratio:.3f}",
                )
                bar.update(1)
                if (step + 1) % checkpoint_every == 0 or step + 1 == stop:
                    checkpoint(step + 1)
    finally:
        bar.close()
        reporter.close()
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])

    masks = LeanKMasks(
        mask=binary_mask(alpha, settings.ratio, settings.align, alpha_sum).cpu(),
        base_model=getattr(model.config, "_name_or_path", None) or None,
        sink_size=sink_size,
        recent_size=recent_size,
        flush_size=flush_size,
        align=align,
        target_ratio=ratio,
        training_info={
            "trainer": "leank_hf.train_masks",
            "completed_steps": stop,
            "data": stream.describe(),
            "world_size": world,
            "final_mse": last_mse,
            **{
                k: v
                for k, v in asdict(settings).items()
                if k not in ("ratio", "align", "sink_size", "recent_size", "flush_size")
            },
        },
    )
    if output_dir is not None and rank == 0:
        masks.save_pretrained(output_dir)
    return masks
