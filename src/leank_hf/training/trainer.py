"""The two-stage LeanK mask trainer (weights frozen, one fp32 scale per layer, KV head and channel): `MaskTrainer`
and its thin wrapper `train_masks`.

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

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils.logging import tqdm

from ..contract import full_attention_mask_shape
from ..errors import LeanKUsageError
from ..masks import LeanKMasks
from .attention import MiddleKeyScaling, prefill, scaled_middle_keys, training_attention_enabled, truncate_cache
from .checkpoint import check_run_folder, load_checkpoint, rank_and_world, save_checkpoint
from .data import TokenizedGroup, as_training_data
from .masking import binary_mask, straight_through
from .reporting import Reporter
from .settings import TrainSettings


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


class MaskTrainer:
    """Learns a LeanK K-channel mask for `model`, one optimizer step at a time (nothing of the model is copied).

    `step()` runs the next step and returns its metrics, `state_dict()` / `load_state_dict()` snapshot and restore
    the trainer (a restored trainer continues bit for bit), `masks()` gives the current mask and `train()` runs to
    the end with a progress bar, reports, checkpoints and the saved mask. Under `torch.distributed`, every process
    takes its own samples and alpha gradients are averaged with an all-reduce.

    Args:
        model: a transformers causal LM whose layers are all full attention (any dtype and device).
        tokenizer: its tokenizer (chat template used for prompts; unused when `data` is already tokenized).
        settings (`TrainSettings`, *optional*): the options of the run (defaults: `TrainSettings()`).
        data (*optional*): `None` (synthetic retrieval, lengths 1K-4K), a `SyntheticRetrievalData` /
            `PromptAnswerData`, or a list of `(prompt, answer)` pairs.

    Example:
        ```python
        >>> trainer = MaskTrainer(model, tokenizer, TrainSettings(stage1_steps=300, stage2_steps=60))
        >>> metrics = trainer.step()  # {"step": 0, "stage": 1, "loss": ..., "lr": ..., ...}
        >>> masks = trainer.train("my-mask")  # the remaining steps, checkpoints and the saved mask
        ```
    """

    def __init__(self, model, tokenizer=None, settings: TrainSettings | None = None, *, data: Any = None) -> None:
        self.settings = settings = TrainSettings() if settings is None else settings
        shape = full_attention_mask_shape(model, "the trainer")
        if shape[2] % settings.align:
            raise LeanKUsageError(f"`align`={settings.align} must divide the model's head_dim={shape[2]}")
        self.model = model
        self.data = as_training_data(data, tokenizer, settings.seed)
        self.rank, self.world = rank_and_world()
        device = next(model.parameters()).device
        self.alpha = torch.ones(shape, dtype=torch.float32, device=device, requires_grad=True)
        self.alpha_sum = torch.zeros(shape, dtype=torch.float64, device=device)  # tie-break of equal alphas
        self.optimizer = torch.optim.AdamW([self.alpha], lr=settings.lr, weight_decay=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: settings.lr_at(step) / settings.lr
        )
        self.completed_steps = 0
        self.last_mse: float | None = None  # the last step's MSE (None before any step)
        self._prefilled: tuple[int, Any, Any] = (-1, None, None)  # (sample index, group, its prefix cache)

    def step(self) -> dict[str, Any]:
        """Run the next optimizer step (its share of one sample's questions) and return its metrics (a log row)."""
        settings, step = self.settings, self.completed_steps
        if step >= settings.total_steps:
            raise LeanKUsageError(f"the run is complete: all {settings.total_steps} steps are done")
        began = time.perf_counter()
        stage = 1 if step < settings.stage1_steps else 2
        if step == settings.stage1_steps:
            self.optimizer.state.clear()  # stage 2 starts with fresh moments: no drift left over from the L1 term
        self.optimizer.zero_grad(set_to_none=True)
        with self._training_mode():
            group, cache, questions = self._questions(step)
            mse = distillation_step(
                self.model, group, lambda: self._student_scaling(stage), cache=cache, questions=questions
            )
        alpha = self.alpha
        if self.world > 1:
            torch.distributed.all_reduce(alpha.grad)
            alpha.grad /= self.world
            reduced = torch.tensor([mse], dtype=torch.float64)
            torch.distributed.all_reduce(reduced)
            mse = reduced.item() / self.world
        l1 = alpha.mean() if stage == 1 else None
        if l1 is not None and settings.l1_weight > 0:
            (settings.l1_weight * l1).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([alpha], settings.max_grad_norm).item()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            alpha.clamp_(0.0, 1.0)
            self.alpha_sum += alpha
        self.last_mse = mse
        self.completed_steps += 1
        l1_value = 0.0 if l1 is None else l1.item()
        return {
            "step": step,
            "stage": stage,
            "loss": mse + (settings.l1_weight * l1_value if stage == 1 else 0.0),
            "mse": mse,
            "l1": l1_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "mean_alpha": alpha.mean().item(),
            "soft_ratio": (alpha < 0.5).float().mean().item(),
            "mask_ratio": 1.0 - self._mask().float().mean().item(),
            "seconds": time.perf_counter() - began,
        }

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything a resumed run needs (tensors and plain values; the checkpoint file's content)."""
        return copy.deepcopy(
            {
                "alpha": self.alpha.detach().cpu(),
                "alpha_sum": self.alpha_sum.cpu(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.completed_steps,
                "last_mse": self.last_mse,
                "torch_rng": torch.get_rng_state(),
                "settings": self.settings.run_settings(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()`), which must come from a run with the same settings."""
        ours = self.settings.run_settings()
        changed = {name: (state["settings"].get(name), value) for name, value in ours.items()}
        changed = {name: pair for name, pair in changed.items() if pair[0] != pair[1]}
        if changed:
            raise LeanKUsageError(
                f"the saved trainer state was made with other settings (saved, given): {changed}; resume with the "
                "same settings or start a new run in another output_dir"
            )
        with torch.no_grad():
            self.alpha.copy_(state["alpha"])
            self.alpha_sum.copy_(state["alpha_sum"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.completed_steps = int(state["step"])
        self.last_mse = state["last_mse"]
        self._prefilled = (-1, None, None)

    def masks(self) -> LeanKMasks:
        """The binary mask of the current scales, with the run's metadata."""
        settings = self.settings
        own_fields = ("ratio", "align", "sink_size", "recent_size", "flush_size")  # LeanKMasks fields of their own
        return LeanKMasks(
            mask=self._mask().cpu(),
            base_model=getattr(self.model.config, "_name_or_path", None) or None,
            sink_size=settings.sink_size,
            recent_size=settings.recent_size,
            flush_size=settings.flush_size,
            align=settings.align,
            target_ratio=settings.ratio,
            training_info={
                "trainer": "leank_hf.train_masks",
                "completed_steps": self.completed_steps,
                "data": self.data.describe(),
                "world_size": self.world,
                "final_mse": self.last_mse,
                **{k: v for k, v in settings.run_settings().items() if k not in own_fields},
            },
        )

    def train(
        self,
        output_dir: str | os.PathLike | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        report_to: str | Sequence[str] = "csv",
    ) -> LeanKMasks:
        """Run the remaining steps (up to `settings.max_steps`) and return the mask, saved to `output_dir` if given.

        Args:
            output_dir (`str`, *optional*): where checkpoints (`checkpoint/`), the CSV log and the final mask go.
            resume (`bool`, *optional*): continue from `output_dir/checkpoint` (same settings); bit-for-bit
                identical to an uninterrupted run.
            overwrite (`bool`, *optional*): start a new run in an `output_dir` that already holds one (refused
                without `resume` or `overwrite`).
            progress (`bool`, *optional*, defaults to `True`): show a progress bar with loss and achieved ratio.
            report_to (`str` or `list[str]`, *optional*, defaults to `"csv"`): where each step's metrics go: `"csv"`
                (`output_dir/training_log.csv`), `"tensorboard"` (`output_dir/runs`, needs the tensorboard
                package), both, or `"none"`.
        """
        settings = self.settings
        check_run_folder(output_dir, resume=resume, overwrite=overwrite)
        checkpoint_dir = Path(output_dir) / "checkpoint" if output_dir is not None else None
        if resume:
            self.load_state_dict(load_checkpoint(checkpoint_dir))
            if settings.max_steps is not None and settings.max_steps < self.completed_steps:
                raise LeanKUsageError(
                    f"`max_steps`={settings.max_steps} is before the checkpoint's step {self.completed_steps}; "
                    "raise it or drop it"
                )
        stop = settings.total_steps if settings.max_steps is None else min(settings.total_steps, settings.max_steps)
        reporter = Reporter(report_to, output_dir, self.completed_steps if resume else None, active=self.rank == 0)
        bar = tqdm(
            total=settings.total_steps,
            initial=self.completed_steps,
            disable=not progress or self.rank != 0,
            desc="leank train",
        )
        try:
            while self.completed_steps < stop:
                row = self.step()
                reporter.log(row)
                ratio = row["mask_ratio"] if row["stage"] == 2 else row["soft_ratio"]
                bar.set_postfix(
                    stage=row["stage"], loss=f"{row['loss']:.4g}", mse=f"{row['mse']:.3g}", ratio=f"{ratio:.3f}"
                )
                bar.update(1)
                done = self.completed_steps
                if (
                    checkpoint_dir is not None
                    and self.rank == 0
                    and (done % settings.checkpoint_every == 0 or done == stop)
                ):
                    save_checkpoint(checkpoint_dir, self.state_dict())
        finally:
            bar.close()
            reporter.close()
        masks = self.masks()
        if output_dir is not None and self.rank == 0:
            masks.save_pretrained(output_dir)
        return masks

    def _mask(self) -> torch.Tensor:
        return binary_mask(self.alpha, self.settings.ratio, self.settings.align, self.alpha_sum)

    def _questions(self, step: int) -> tuple[TokenizedGroup, Any, list]:
        """The sample of `step` (its prefix prefilled once for all the steps it serves) and the step's questions."""
        per_sample = self.settings.steps_per_sample
        index = (step // per_sample) * self.world + self.rank
        if index != self._prefilled[0]:
            group = self.data.group(index)
            self._prefilled = (index, group, prefill(self.model, group.prefix_ids))
        _, group, cache = self._prefilled
        questions = group.questions[step % per_sample :: per_sample]
        if not questions:
            raise LeanKUsageError(
                f"sample {index} has {len(group.questions)} question(s), fewer than steps_per_sample={per_sample}; "
                "lower steps_per_sample"
            )
        return group, cache, questions

    def _student_scaling(self, stage: int) -> MiddleKeyScaling:
        settings = self.settings
        if stage == 1:
            scales, skip = self.alpha, None
        else:
            mask = self._mask()
            scales, skip = straight_through(self.alpha, mask), ~mask.any(-1)
        return MiddleKeyScaling(
            scales, skip, settings.sink_size, settings.recent_size, settings.flush_size, settings.gradient_checkpointing
        )

    @contextlib.contextmanager
    def _training_mode(self) -> Iterator[None]:
        """The model's weights frozen and its attention switched to `"leank_train"`, both restored afterwards."""
        flags = {name: p.requires_grad for name, p in self.model.named_parameters()}
        self.model.requires_grad_(False)
        try:
            with training_attention_enabled(self.model):
                yield
        finally:
            for name, p in self.model.named_parameters():
                p.requires_grad_(flags[name])


def train_masks(
    model,
    tokenizer,
    *,
    settings: TrainSettings | None = None,
    data: Any = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report_to: str | Sequence[str] = "csv",
    **options: Any,
) -> LeanKMasks:
    """Learn a LeanK K-channel mask for `model`: `MaskTrainer(model, tokenizer, settings, data=data).train(...)`.

    Args:
        model: a transformers causal LM whose layers are all full attention (any dtype and device).
        tokenizer: its tokenizer (chat template used for prompts).
        settings (`TrainSettings`, *optional*): the options of the run (defaults: `TrainSettings()`).
        data, output_dir, resume, overwrite, progress, report_to: as in `MaskTrainer` and `MaskTrainer.train`.
        **options: fields of `TrainSettings` (`ratio=0.5, stage1_steps=100, ...`), overriding those of `settings`.

    Returns:
        `LeanKMasks`, also saved to `output_dir` with full metadata when given.

    Example:
        ```python
        >>> masks = leank_hf.train_masks(model, tokenizer, ratio=0.7, align=16, stage1_steps=300, stage2_steps=60,
        ...                              output_dir="my-mask")
        ```
    """
    settings = dataclasses.replace(TrainSettings() if settings is None else settings, **options)
    trainer = MaskTrainer(model, tokenizer, settings, data=data)
    return trainer.train(output_dir, resume=resume, overwrite=overwrite, progress=progress, report_to=report_to)
