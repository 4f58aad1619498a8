"""`TrainSettings` and the `leank-hf train` options generated from it: keyword-only, frozen, documented, one default
per field, and the same accepted values in Python and on the command line."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

import pytest

from leank_hf import MaskTrainer, TrainSettings, train_masks
from leank_hf.cli.main import build_parser, main
from leank_hf.errors import LeanKUsageError

FIELDS = dataclasses.fields(TrainSettings)
REQUIRED = ["train", "--model", "some-model", "--output", "some-folder"]


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_settings_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TrainSettings(0.5)  # type: ignore[misc]
    settings = TrainSettings(ratio=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ratio = 0.6  # type: ignore[misc]
    assert dataclasses.replace(settings, lr=0.1) == TrainSettings(ratio=0.5, lr=0.1)


def test_every_field_is_documented_and_its_doc_is_the_cli_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option: no wrapping inside the help texts
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    # Each option's entry: its line up to the next option's (argparse puts a long option's help on the next line).
    out = capsys.readouterr().out
    entries = {entry.split()[0].rstrip(","): " ".join(entry.split()) for entry in re.split(r"\n  (?=-)", out)}
    for item in FIELDS:
        text = item.metadata["help"]
        assert text.endswith(".") and len(text) > 15, item.name
        entry = entries[option(item.name)]
        assert text in entry, entry
        if item.default is not None:
            assert f"{text} (default: {item.default})" in entry


def test_cli_defaults_are_the_settings_defaults():
    args = build_parser("train").parse_args(REQUIRED)
    for item in FIELDS:
        assert getattr(args, item.name) == item.default, item.name
    assert TrainSettings(**{item.name: getattr(args, item.name) for item in FIELDS}) == TrainSettings()


def test_no_other_signature_repeats_a_setting():
    """The defaults live in `TrainSettings` only: the trainer's functions take settings, never the fields."""
    names = {item.name for item in FIELDS}
    for function in (train_masks, MaskTrainer.__init__, MaskTrainer.train):
        assert not names & set(inspect.signature(function).parameters), function


PROBES = [-1, 0, 0.5, 1, 2, 300, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("name", [item.name for item in FIELDS if item.type != "bool"])
def test_cli_and_settings_accept_the_same_values(name, capsys):
    """Every probe value is accepted by both `TrainSettings` and `leank-hf train`, or refused by both."""
    parser = build_parser("train")
    for value in PROBES:
        number = int(value) if math.isfinite(value) and value == int(value) else value
        try:
            TrainSettings(**{name: number})
            python_accepts = True
        except LeanKUsageError as error:
            python_accepts = False
            assert f"`{name}` must be" in str(error)
        try:
            parser.parse_args([*REQUIRED, option(name), str(number)])
            cli_accepts = True
        except SystemExit:
            cli_accepts = False
            assert f"argument {option(name)}" in capsys.readouterr().err
        assert python_accepts == cli_accepts, (name, number)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ratio": 1.0}, "`ratio` must be in (0, 1), got 1.0"),
        ({"align": 8.0}, "`align` must be >= 1 (an integer), got 8.0"),
        ({"seed": "0"}, "`seed` must be an integer, got '0'"),
        ({"gradient_checkpointing": 1}, "`gradient_checkpointing` must be True or False, got 1"),
        ({"sink_size": -1}, "`sink_size` must be an int >= 0"),  # leank_hf.contract.Windows's own rule
        ({"stage1_steps": 0, "stage2_steps": 0}, "need at least one step"),
    ],
)
def test_settings_name_the_bad_value(overrides, message):
    with pytest.raises(LeanKUsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainSettings(**overrides)


def test_run_settings_leave_out_what_may_change_on_resume():
    settings = TrainSettings(lr=0.05)
    assert settings.run_settings()["stage2_lr"] == 0.05  # resolved, as checkpoints have always stored it
    resumed = dataclasses.replace(settings, checkpoint_every=3, max_steps=7, gradient_checkpointing=True)
    assert resumed.run_settings() == settings.run_settings()
    assert dataclasses.replace(settings, seed=1).run_settings() != settings.run_settings()
