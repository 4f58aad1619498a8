"""`leank-hf train --report-to` through the command-line entry: `csv` logs every step, `none` writes no log."""

from __future__ import annotations

import csv

import pytest

from byte_tokenizer import byte_tokenizer
from leank_hf import LeanKMasks
from leank_hf.cli.main import main
from tiny_models import tiny_model


@pytest.mark.parametrize("report_to", ["csv", "none"])
def test_report_to_from_the_command_line(tmp_path, capsys, report_to: str) -> None:
    model_dir, out = tmp_path / "model", tmp_path / "mask"
    tiny_model("llama", vocab_size=258).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    argv = ["train", "--model", str(model_dir), "--output", str(out), "--ratio", "0.5", "--align", "8"]
    argv += ["--sink-size", "4", "--recent-size", "8", "--flush-size", "3", "--stage1-steps", "2"]
    argv += ["--stage2-steps", "1", "--min-length", "200", "--max-length", "250", "--device", "cpu"]
    assert main([*argv, "--report-to", report_to]) == 0
    assert "finished: pruned 50.0%" in capsys.readouterr().out
    assert LeanKMasks.from_pretrained(out).training_info["completed_steps"] == 3
    log = out / "training_log.csv"
    if report_to == "none":
        assert not log.exists()
        return
    with open(log, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["stage"]) for row in rows] == [("0", "1"), ("1", "1"), ("2", "2")]
    assert all(float(row["loss"]) >= 0 for row in rows)
