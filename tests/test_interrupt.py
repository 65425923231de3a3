"""Ctrl-C and a finished run: one line, exit status 130, no empty run folder; `--ckpt_path last` continues only an
interrupted run, never a finished one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import default_sigint

ROOT = Path(__file__).resolve().parents[1]


def fit_command(tiny_data_dir: Path, tiny_bert: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ftl", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "48", "--data.batch_size", "8",
            "--trainer.enable_progress_bar", "false", "--runs_root", str(root), "--run_name", "task", *extra]


def interrupt_when(command: list[str], ready, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `command`, send SIGINT once `ready(stderr so far)` is true, and collect what it printed."""
    import tempfile

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile("w+") as err_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err_file, text=True, env=env,
                                   preexec_fn=default_sigint)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            err_file.seek(0)
            if ready(err_file.read()):
                process.send_signal(signal.SIGINT)
                break
            time.sleep(0.1)
        process.wait(timeout=timeout)
        err_file.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, "", err_file.read())


def test_ctrl_c_during_start_up_is_one_line_and_leaves_no_run_folder(tmp_path, tiny_data_dir, tiny_bert):
    result = interrupt_when(fit_command(tiny_data_dir, tiny_bert, tmp_path), lambda err: "ftl: run directory:" in err)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ftl: interrupted before anything was saved")
    assert not list((tmp_path / "task").glob("*"))  # the empty run folder is gone


def test_ctrl_c_in_training_says_what_was_saved_and_a_finished_run_is_never_resumed(tmp_path, tiny_data_dir,
                                                                                    tiny_bert, cli, capsys):
    cli(*fit_command(tiny_data_dir, tiny_bert, tmp_path, "--trainer.max_epochs", "1")[3:])
    (finished,) = (tmp_path / "task").iterdir()
    assert (finished / "fit_finished.json").is_file()
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}

    # an interrupted second run after its first epoch: the line names its last.ckpt
    def first_epoch_saved(_: str) -> bool:
        return any(run != finished and (run / "checkpoints" / "last.ckpt").is_file()
                   for run in (tmp_path / "task").iterdir())

    result = interrupt_when(fit_command(tiny_data_dir, tiny_bert, tmp_path, "--trainer.max_epochs", "500"),
                            first_epoch_saved)
    assert result.returncode == 130, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ftl: interrupted; ") and "last.ckpt" in last_line and "--ckpt_path last" in last_line
    assert "Traceback" not in result.stderr and "Detected KeyboardInterrupt" not in result.stderr
    # known-harmless library lines are filtered (ftl.commands.quiet): an ad, and the fresh head's LOAD REPORT
    assert "litlogger" not in result.stderr and "LOAD REPORT" not in result.stderr
    (interrupted,) = [run for run in (tmp_path / "task").iterdir() if run != finished]
    assert (interrupted / "checkpoints" / "last.ckpt").is_file() and not (interrupted / "fit_finished.json").exists()

    # --ckpt_path last continues the interrupted run; then, with only finished runs left, it is a one-line error
    cli(*fit_command(tiny_data_dir, tiny_bert, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")[3:])
    assert "resuming the interrupted run" in capsys.readouterr().err
    assert (interrupted / "fit_finished.json").is_file()
    with pytest.raises(SystemExit) as stop:
        cli(*fit_command(tiny_data_dir, tiny_bert, tmp_path, "--ckpt_path", "last")[3:])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith("ftl: error: --ckpt_path last: no interrupted run")
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before  # the finished run was never touched


def test_a_load_report_naming_more_than_the_task_head_still_shows():
    import logging

    from ftl.commands.quiet import _HeadOnlyLoadReport

    def report(*keys: str) -> logging.LogRecord:
        table = "\n".join(f"{key} | MISSING | " for key in keys)
        message = f"BertForSequenceClassification LOAD REPORT from: x\nKey | Status | \n---+---+-\n{table}\n"
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message, None, None)

    keep = _HeadOnlyLoadReport().filter
    assert not keep(report("classifier.weight", "classifier.bias"))  # a fresh head: expected when fine-tuning
    assert keep(report("classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"))  # a real problem
