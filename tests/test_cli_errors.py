"""Bad input gives one `error:` line and exit status 2, never a traceback: a sweep of the CLI's arguments, the
trainer's refusals (Python API and CLI), a corrupt .pth and Hub failures (offline, no network, refused)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook

from byte_tokenizer import byte_tokenizer
from fake_hub import http
from leank_hf import LeanKMasks, train_masks
from leank_hf.cli.main import main
from leank_hf.errors import HubError, LeanKUsageError, MaskError
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """A tiny model folder, a saved mask folder, a run folder, a text file, a non-UTF-8 file and a folder."""
    root = tmp_path_factory.mktemp("cli_errors")
    tiny_model("llama", vocab_size=258).save_pretrained(root / "model")
    byte_tokenizer().save_pretrained(root / "model")
    LeanKMasks.from_pretrained("qwen2.5-7b-instruct").save_pretrained(root / "mask")
    (root / "text.txt").write_text("hello\nnot a tensor\n")
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "answer": "x"}\n'.encode("latin-1"))
    (root / "folder").mkdir()
    files = {"text": "text.txt", "latin1": "latin1.jsonl", "new": "new", "missing": "missing"}
    return {key: str(root / files.get(key, key)) for key in ("model", "mask", "folder", *files)}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of `main(argv)` in-process (argparse errors exit, later errors return 2)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def assert_one_line_error(code: int, err: str, expected: str) -> None:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2, err
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert errors[0].startswith("leank-hf") and expected in errors[0], err


TRAIN = ["train", "--model", "{model}", "--output", "{new}", "--device", "cpu"]
EVAL = ["eval", "--model", "{model}", "--device", "cpu"]
CONVERT = ["convert", "{text}", "{new}", "--base-model", "org/tiny"]
BAD_ARGUMENTS = [
    # train: numbers
    (TRAIN + ["--ratio", "1.5"], "argument --ratio"),
    (TRAIN + ["--ratio", "nan"], "argument --ratio"),
    (TRAIN + ["--align", "0"], "argument --align"),
    (TRAIN + ["--sink-size", "-1"], "argument --sink-size"),
    (TRAIN + ["--recent-size", "0"], "argument --recent-size"),
    (TRAIN + ["--flush-size", "0"], "argument --flush-size"),
    (TRAIN + ["--stage1-steps", "-1"], "argument --stage1-steps"),
    (TRAIN + ["--stage2-steps", "x"], "argument --stage2-steps"),
    (TRAIN + ["--lr", "nan"], "argument --lr"),
    (TRAIN + ["--lr", "0"], "argument --lr"),
    (TRAIN + ["--stage2-lr", "inf"], "argument --stage2-lr"),
    (TRAIN + ["--l1-weight", "inf"], "argument --l1-weight"),
    (TRAIN + ["--l1-weight", "-0.1"], "argument --l1-weight"),
    (TRAIN + ["--max-grad-norm", "nan"], "argument --max-grad-norm"),
    (TRAIN + ["--min-length", "0"], "argument --min-length"),
    (TRAIN + ["--max-length", "-5"], "argument --max-length"),
    (TRAIN + ["--questions-per-sample", "0"], "argument --questions-per-sample"),
    (TRAIN + ["--steps-per-sample", "0"], "argument --steps-per-sample"),
    (TRAIN + ["--checkpoint-every", "0"], "argument --checkpoint-every"),
    (TRAIN + ["--checkpoint-every", "-3"], "argument --checkpoint-every"),
    (TRAIN + ["--max-steps", "0"], "argument --max-steps"),
    (TRAIN + ["--max-steps", "-1"], "argument --max-steps"),
    (TRAIN + ["--threads", "-1"], "argument --threads"),
    (TRAIN + ["--seed", "x"], "argument --seed"),
    # train: devices, paths, modes
    (TRAIN + ["--device", "banana"], "argument --device"),
    (TRAIN + ["--device", "cuda:99"], "argument --device"),
    (TRAIN + ["--dtype", "int8"], "argument --dtype"),
    (TRAIN + ["--data", "{folder}"], "argument --data"),
    (TRAIN + ["--data", "{missing}"], "argument --data"),
    (TRAIN + ["--data", "{latin1}"], "not UTF-8"),
    (TRAIN + ["--resume", "--overwrite"], "not allowed with argument"),
    (["train", "--model", "{model}", "--output", "{text}"], "argument --output"),
    (["train", "--model", "{mask}", "--output", "{new}", "--device", "cpu"], "is a LeanK mask folder, not a model"),
    # eval
    (EVAL + ["--tasks", "bogus"], "argument --tasks"),
    (EVAL + ["--baselines", "random,bogus"], "argument --baselines"),
    (EVAL + ["--lengths", "abc"], "argument --lengths"),
    (EVAL + ["--lengths", "1024,0"], "argument --lengths"),
    (EVAL + ["--samples", "0"], "argument --samples"),
    (EVAL + ["--verify-deployed", "-1"], "argument --verify-deployed"),
    (EVAL + ["--threads", "-1"], "argument --threads"),
    (EVAL + ["--device", "banana"], "argument --device"),
    (EVAL + ["--output", "{folder}"], "argument --output"),
    (EVAL + ["--output", "{text}/report.json"], "argument --output"),
    (EVAL + ["--plot", "{folder}"], "argument --plot"),
    (EVAL + ["--middle-quant", "int4"], "argument --middle-quant"),
    (["eval", "--model", "{mask}", "--device", "cpu"], "is a LeanK mask folder, not a model"),
    # demo
    (["demo", "--length", "0"], "argument --length"),
    (["demo", "--length", "-8"], "argument --length"),
    (["demo", "--model", "{mask}"], "is a LeanK mask folder, not a model"),
    # bench
    (["bench", "memory", "--tokens", "0", "--no-save"], "argument --tokens"),
    (["bench", "memory", "--tokens", "8k,abc", "--no-save"], "argument --tokens"),
    (["bench", "memory", "--device", "banana"], "argument --device"),
    (["bench", "memory", "--output-dir", "{text}"], "argument --output-dir"),
    (["bench", "memory", "--middle-quant", "int4"], "argument --middle-quant"),
    (["bench", "decode", "--steps", "0"], "argument --steps"),
    (["bench", "decode", "--warmup", "-1"], "argument --warmup"),
    (["bench", "decode", "--threads", "-1"], "argument --threads"),
    (["bench", "decode", "--layers", "0"], "argument --layers"),
    (["bench", "decode", "--contexts", "-1k"], "argument --contexts"),
    (["bench", "kernel", "--rep-ms", "0"], "argument --rep-ms"),
    (["bench", "kernel", "--batches", "0"], "argument --batches"),
    (["bench", "kernel", "--layers", "-1"], "argument --layers"),
    (["bench", "kernel", "--middle-quant", "int4"], "argument --middle-quant"),
    (["bench", "generate", "--contexts", "0"], "argument --contexts"),
    (["bench", "generate", "--contexts", "8k,abc"], "argument --contexts"),
    (["bench", "generate", "--methods", "sdpa,bogus"], "argument --methods"),
    (["bench", "generate", "--new-tokens", "0"], "argument --new-tokens"),
    (["bench", "generate", "--num-layers", "0"], "argument --num-layers"),
    # inspect, convert, push
    (["inspect", "{mask}", "--plot", "{folder}"], "argument --plot"),
    (CONVERT, "not a tensor file"),
    (["convert", "{folder}", "{new}", "--base-model", "org/tiny"], "argument pth"),
    (["convert", "{missing}", "{new}", "--base-model", "org/tiny"], "argument pth"),
    (["convert", "{text}", "{text}", "--base-model", "org/tiny"], "argument out_dir"),
    (CONVERT + ["--align", "0"], "argument --align"),
    (CONVERT + ["--sink-size", "-1"], "argument --sink-size"),
    (CONVERT + ["--flush-size", "0"], "argument --flush-size"),
    (CONVERT + ["--target-ratio", "2"], "argument --target-ratio"),
    (["push", "{missing}", "org/x"], "argument dir"),
    (["push", "{text}", "org/x"], "argument dir"),
    (["push", "{mask}", "not a//repo id"], "argument repo_id"),
    (["bench", "bogus"], "argument benchmark"),
    (["bogus"], "argument command"),
]


@pytest.mark.parametrize(
    ("argv", "expected"), BAD_ARGUMENTS, ids=lambda row: " ".join(row) if isinstance(row, list) else None
)
def test_bad_argument_is_one_line_error_with_status_2(argv, expected, paths, capsys):
    code, err = run_cli([item.format(**paths) for item in argv], capsys)
    assert_one_line_error(code, err, expected)
    assert not Path(paths["new"]).exists()


def test_plot_without_matplotlib_names_the_extra(paths, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for argv in (["inspect", paths["mask"], "--plot", "x.png"], ["eval", "--model", paths["model"], "--plot", "x.png"]):
        code, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "pip install 'leank_hf[plot]'")


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "2 on a usage error" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------------------------------ trainer
KW = dict(ratio=0.5, align=8, sink_size=4, recent_size=8, flush_size=3, stage1_steps=2, stage2_steps=1, progress=False)
DATA = [("The code is 41. What is the code?", "41")] * 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": math.nan}, "`lr` must be a finite number > 0"),
        ({"lr": math.inf}, "`lr` must be a finite number > 0"),
        ({"stage2_lr": math.nan}, "`stage2_lr` must be a finite number > 0"),
        ({"max_grad_norm": math.nan}, "`max_grad_norm` must be a finite number > 0"),
        ({"l1_weight": math.inf}, "`l1_weight` must be a finite number >= 0"),
        ({"l1_weight": math.nan}, "`l1_weight` must be a finite number >= 0"),
        ({"warmup_fraction": math.nan}, "`warmup_fraction` must be in [0, 1]"),
        ({"max_steps": 0}, "`max_steps` must be >= 1"),
        ({"max_steps": -2}, "`max_steps` must be >= 1"),
        ({"checkpoint_every": 0}, "`checkpoint_every` must be >= 1"),
        ({"checkpoint_every": -1}, "`checkpoint_every` must be >= 1"),
        ({"resume": True, "overwrite": True}, "pass only one"),
    ],
)
def test_train_masks_refuses_settings_that_cannot_train(overrides, message, tmp_path):
    with pytest.raises(LeanKUsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        train_masks(
            tiny_model("llama", vocab_size=258),
            byte_tokenizer(),
            data=DATA,
            output_dir=tmp_path / "run",
            **KW | overrides,
        )
    assert not (tmp_path / "run").exists()


def test_train_masks_refuses_a_folder_holding_a_run_unless_resume_or_overwrite(tmp_path):
    model, tokenizer = tiny_model("llama", vocab_size=258), byte_tokenizer()
    first = train_masks(model, tokenizer, data=DATA, output_dir=tmp_path, max_steps=1, **KW)
    log = (tmp_path / "training_log.csv").read_text()
    with pytest.raises(LeanKUsageError, match="already holds a run.*--resume.*--overwrite"):
        train_masks(model, tokenizer, data=DATA, output_dir=tmp_path, **KW)
    assert (tmp_path / "training_log.csv").read_text() == log  # nothing touched
    assert LeanKMasks.from_pretrained(tmp_path) == first
    resumed = train_masks(model, tokenizer, data=DATA, output_dir=tmp_path, resume=True, **KW)
    assert resumed.training_info["completed_steps"] == 3
    with pytest.raises(LeanKUsageError, match="before the checkpoint's step 3"):
        train_masks(model, tokenizer, data=DATA, output_dir=tmp_path, resume=True, max_steps=2, **KW)
    fresh = train_masks(model, tokenizer, data=DATA, output_dir=tmp_path, overwrite=True, max_steps=1, **KW)
    assert fresh == first  # the same run again from step 0
    assert len((tmp_path / "training_log.csv").read_text().splitlines()) == 2  # header + one step
    state = torch.load(tmp_path / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1


def test_cli_train_refuses_an_existing_run_folder_and_overwrites_on_request(paths, tmp_path, capsys):
    common = ["train", "--model", paths["model"], "--output", str(tmp_path), "--align", "8", "--device", "cpu"]
    common += ["--sink-size", "4", "--recent-size", "8", "--flush-size", "3", "--stage1-steps", "1"]
    common += ["--stage2-steps", "1", "--min-length", "300", "--max-length", "400"]
    assert main([*common, "--max-steps", "1"]) == 0
    assert "stopped at step 1/2; continue with --resume" in capsys.readouterr().out
    log = (tmp_path / "training_log.csv").read_text()
    code, err = run_cli(common, capsys)
    assert_one_line_error(code, err, "already holds a run")
    assert (tmp_path / "training_log.csv").read_text() == log
    assert main([*common, "--overwrite"]) == 0
    assert "finished" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------- corrupt .pth
@pytest.mark.parametrize("content", [b"hello\nnot a tensor\n", b'{"a": 1}', b"", b"PK\x03\x04garbage"])
def test_corrupt_pth_is_a_mask_error(content, tmp_path):
    path = tmp_path / "mask.pth"
    path.write_bytes(content)
    with pytest.raises(MaskError, match="not a tensor file") as error:
        LeanKMasks.from_minference(path, base_model="org/tiny")
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- the Hub
@pytest.fixture
def no_network(monkeypatch):
    """Every Hub request fails to connect, as on a machine without network (huggingface_hub's backoff not waited)."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)

    def refuse(request):
        raise http.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    set_client_factory(lambda: http.Client(transport=http.MockTransport(refuse)))
    yield
    set_client_factory(default_client_factory)


def test_push_without_network_says_so(paths, capsys, no_network):
    code, err = run_cli(["push", paths["mask"], "org/x"], capsys)
    assert_one_line_error(code, err, "could not reach the Hub (no network?")
    assert "HF_HUB_OFFLINE" not in err


def test_load_without_network_says_so_not_offline_mode(tmp_path, no_network):
    with pytest.raises(HubError, match="could not reach the Hub") as error:
        LeanKMasks.from_pretrained("org/absent", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE" not in str(error.value)


def test_push_in_offline_mode_says_so(paths, capsys, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hooks = {"request": [hf_request_event_hook]}  # the default client's offline guard
    set_client_factory(lambda: http.Client(transport=http.MockTransport(hub), event_hooks=hooks))
    code, err = run_cli(["push", paths["mask"], "org/x"], capsys)
    assert_one_line_error(code, err, "offline mode is on (HF_HUB_OFFLINE=1)")
    assert hub.calls() == []


def test_push_refused_by_the_hub_names_the_token(paths, capsys, hub, monkeypatch):
    monkeypatch.setattr(hub, "_create_repo", lambda payload: http.Response(401, json={"error": "Invalid token"}))
    code, err = run_cli(["push", paths["mask"], "org/x", "--token", "hf_bad"], capsys)
    assert_one_line_error(code, err, "HTTP 401")
    assert "hf auth login" in err
