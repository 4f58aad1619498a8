"""`leank-hf train` and `leank-hf eval` end to end on a tiny saved model with a byte tokenizer."""

from __future__ import annotations

import json

from byte_tokenizer import byte_tokenizer
from leank_hf import LeanKMasks
from leank_hf.cli.main import main
from tiny_models import tiny_model


def test_train_resume_and_eval_from_the_command_line(tmp_path, capsys):
    model_dir, out = tmp_path / "model", tmp_path / "mask"
    tiny_model("llama", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    common = [
        "train",
        "--model",
        str(model_dir),
        "--output",
        str(out),
        "--ratio",
        "0.5",
        "--align",
        "8",
        "--sink-size",
        "4",
        "--recent-size",
        "8",
        "--flush-size",
        "3",
        "--stage1-steps",
        "3",
        "--stage2-steps",
        "2",
        "--min-length",
        "300",
        "--max-length",
        "400",
        "--device",
        "cpu",
    ]
    assert main([*common, "--max-steps", "2"]) == 0
    assert "stopped at step 2/5" in capsys.readouterr().out
    assert main([*common, "--resume"]) == 0
    assert "finished: pruned 50.0%" in capsys.readouterr().out
    masks = LeanKMasks.from_pretrained(out)
    assert masks.training_info["completed_steps"] == 5 and (out / "training_log.csv").is_file()

    report_path = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--masks",
            str(out),
            "--baselines",
            "random,rope_low_freq",
            "--lengths",
            "300",
            "--samples",
            "1",
            "--judge-all",
            "--output",
            str(report_path),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "| 300 | 4 |" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert set(report["methods"]) == {"leank", "random", "rope_low_freq"}
    assert report["methods"]["random"]["pruned_ratio"] == masks.pruned_ratio


def test_train_with_a_missing_resume_checkpoint_is_one_line_error(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model("llama", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    code = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--output",
            str(tmp_path / "none"),
            "--resume",
            "--align",
            "8",
            "--device",
            "cpu",
        ]
    )
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
