"""Cost of one trainer step (shared prefix: prompt once, answer rows twice) vs two full forward passes per question.

    python benchmarks/train_step_cost.py --length 2048 --questions 4 --repeats 2

"Two full passes" is what a trainer without the shared prefix does per question: the teacher runs prompt + answer
without gradients, the student runs prompt + answer with gradients (its scaled attention on every row; only the cost
is compared here) and backpropagates. Median seconds over `--repeats` runs after one warm-up, on the embedded
SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from leank_hf.tools.benchmarks import BenchmarkResult
from leank_hf.tools.models import load_embedded_model
from leank_hf.training.attention import MiddleKeyScaling, scaled_middle_keys, training_attention_enabled
from leank_hf.training.data import make_multikey_sample, tokenize_sample
from leank_hf.training.trainer import distillation_step


def _median_seconds(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--output-dir",
        default="benchmarks/results",
        help="folder for train_step_cost.json and .md (default: %(default)s, relative to the current directory)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_embedded_model()
    model.requires_grad_(False)
    group = tokenize_sample(
        tokenizer,
        make_multikey_sample(
            tokenizer, args.length, seed=1, num_needles=args.questions + 2, num_questions=args.questions
        ),
    )
    alpha = torch.full((30, 3, 64), 0.5, requires_grad=True)

    def scaling():
        return MiddleKeyScaling(alpha, None, 64, 256, 64)

    def shared_prefix_step():
        alpha.grad = None
        distillation_step(model, group, scaling)

    def two_full_passes():
        alpha.grad = None
        for question in group.questions:
            ids = torch.cat([group.prefix_ids, question.suffix_ids, question.answer_ids[:-1]])[None]
            rows = len(question.answer_ids) - 1
            with torch.no_grad():
                teacher = model.base_model(input_ids=ids).last_hidden_state[:, -rows:]
            with scaled_middle_keys(scaling()):
                student = model.base_model(input_ids=ids).last_hidden_state[:, -rows:]
            torch.nn.functional.mse_loss(student, teacher).backward()

    with training_attention_enabled(model):
        ours = _median_seconds(shared_prefix_step, args.repeats)
        full = _median_seconds(two_full_passes, args.repeats)
    prompt = group.prompt_lengths[0]
    result = BenchmarkResult(
        name="train_step_cost",
        title="Mask trainer: cost of one step on CPU (SmolLM2-135M-Instruct)",
        columns=["method", "prompt tokens", "questions", "seconds per step", "seconds per question", "speed-up"],
        rows=[
            [
                "shared prefix (ours)",
                prompt,
                args.questions,
                f"{ours:.2f}",
                f"{ours / args.questions:.2f}",
                f"{full / ours:.1f}x",
            ],
            [
                "two full passes per question",
                prompt,
                args.questions,
                f"{full:.2f}",
                f"{full / args.questions:.2f}",
                "1.0x",
            ],
        ],
        data=[{"method": "shared_prefix", "seconds": ours}, {"method": "two_full_passes", "seconds": full}],
        settings={
            "length": args.length,
            "questions": args.questions,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
        },
        notes=["Median of the repeats after one warm-up; CPU timings on a shared machine are noisy."],
    )
    print(result.table())
    result.save(args.output_dir, command="python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
