"""Fault injection: a fit killed (SIGINT, SIGKILL) mid-epoch, during a checkpoint write and during test, then
resumed with `--ckpt_path last`, ends with the unbroken run's metrics and test records; an earlier finished run
of the same config is never touched, and nothing half-written is left looking valid.

The faults are real signals sent by the process to itself from a test-only callback (`Fault`, chosen by the
FTL_TEST_FAULT environment variable), so they land where the test says and every run is reproducible.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from tests.helpers import ROOT, default_sigint

QUALITY_EXCLUDED = ("/runtime", "/samples_per_sec", "/steps_per_sec", "/tokens_per_sec", "/tflops", "/mfu")


class Fault(L.Callback):
    """Sends a signal to its own process at the point FTL_TEST_FAULT names ("SIGINT:mid_epoch", ...)."""

    def __init__(self) -> None:
        name, self.point = os.environ["FTL_TEST_FAULT"].split(":")
        self.signal = getattr(signal, name)

    def _fire(self) -> None:
        os.kill(os.getpid(), self.signal)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.point != "checkpoint_write" or stage != "fit":
            return
        io_plugin = trainer.strategy.checkpoint_io
        save = io_plugin.save_checkpoint

        def half_then_kill(checkpoint, path, storage_options=None):
            # the second epoch's last.ckpt: half its bytes reach the disk, then the process dies
            if trainer.current_epoch == 1 and os.path.basename(path).startswith(".last"):
                import torch

                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                with open(path, "wb") as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                self._fire()
            return save(checkpoint, path, storage_options)

        io_plugin.save_checkpoint = half_then_kill

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == {"mid_epoch": 2, "late_epoch": 5}.get(self.point):
            self._fire()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.point == "test":
            self._fire()


def fit_args(tiny_data_dir: Path, tiny_bert: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "48", "--data.batch_size", "8",
            "--model.learning_rate", "1e-3", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--runs_root", str(root), "--run_name", "task", *extra]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, tiny_data_dir, tiny_bert) -> Path:
    from tests.helpers import run_cli

    root = tmp_path_factory.mktemp("unbroken")
    run_cli(*fit_args(tiny_data_dir, tiny_bert, root))
    (run,) = (root / "task").iterdir()
    return run


def killed_fit(fault: str, args: list[str]) -> subprocess.CompletedProcess:
    """`ftl <args>` in a fresh process that sends itself `fault` ("SIGKILL:test"...) through `Fault`."""
    env = dict(os.environ, FTL_TEST_FAULT=fault, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "ftl", *args, "--trainer.callbacks+=tests.test_faults.Fault"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=default_sigint)


def quality(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if not key.endswith(QUALITY_EXCLUDED)}


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def assert_nothing_half_written(run: Path) -> None:
    """Every file a reader would take as an output is complete: checkpoints load, JSON parses, and no temporary
    file of an interrupted write is left."""
    import torch

    for ckpt in run.glob("checkpoints/*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    for name in ("metrics.json", "fit_finished.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    assert not [p for p in run.rglob("*") if p.name.endswith((".tmp", ".link", ".partial"))]


@pytest.mark.parametrize("fault", ["SIGINT:mid_epoch", "SIGKILL:mid_epoch", "SIGKILL:checkpoint_write",
                                   "SIGKILL:test", "SIGINT:test"])
def test_a_killed_fit_resumes_to_the_unbroken_runs_results(fault, tmp_path, tiny_data_dir, tiny_bert, unbroken,
                                                           cli, capsys):
    root = tmp_path / "runs"
    earlier = root / "task" / "20000101-000000"  # a finished run of the same config, made long before
    shutil.copytree(unbroken, earlier)
    before = snapshot(earlier)

    result = killed_fit(fault, fit_args(tiny_data_dir, tiny_bert, root))
    kind, point = fault.split(":")
    (broken,) = [run for run in (root / "task").iterdir() if run != earlier]
    if kind == "SIGKILL":
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        if point == "checkpoint_write":  # the half-written file is the temporary one; last.ckpt is epoch 1's
            assert (broken / "checkpoints" / ".last.ckpt.tmp").is_file()
    else:
        assert result.returncode == 130, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert "Traceback" not in result.stderr
        assert lines[-1].startswith(f"ftl: interrupted; {broken / 'checkpoints' / 'last.ckpt'} holds the state "
                                    "after training step "), lines[-1]
        if point == "mid_epoch":  # the step was finished and saved: epoch 2 (8 steps each), third step or later
            assert "Ctrl-C: finishing this training step" in result.stderr
            step = int(lines[-1].split("after training step ")[1].split()[0])
            assert 8 + 3 <= step < 16 and "(epoch 2)" in lines[-1]
    assert not (broken / "fit_finished.json").exists()
    assert not (broken / "metrics.json").exists() or "test/loss" not in quality(broken)
    for ckpt in broken.glob("checkpoints/*.ckpt"):  # what is there is whole
        import torch

        torch.load(ckpt, map_location="cpu", weights_only=True)

    capsys.readouterr()
    cli(*fit_args(tiny_data_dir, tiny_bert, root, "--ckpt_path", "last"))
    assert f"resuming the interrupted run {broken}" in capsys.readouterr().err
    assert sorted((root / "task").iterdir()) == sorted([earlier, broken])  # continued in its own folder

    assert (broken / "fit_finished.json").is_file()
    done, reference = quality(broken), quality(unbroken)
    assert {"test/loss", "test/accuracy", "val/loss", "train/loss"} <= set(reference)
    assert set(done) == set(reference)
    differ = {key: (done[key], value) for key, value in reference.items() if abs(done[key] - value) > 1e-6}
    assert not differ, differ
    assert (broken / "test_predictions.csv").read_text() == (unbroken / "test_predictions.csv").read_text()
    assert (broken / "hf_model" / "config.json").is_file()
    assert_nothing_half_written(broken)
    assert snapshot(earlier) == before  # the earlier run was never touched


# EarlyStopping that stops at the first validation (val/loss is always under 100), with room for 4 epochs
EARLY_STOP = ("--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping", "--trainer.callbacks.monitor",
              "val/loss", "--trainer.callbacks.stopping_threshold", "100", "--trainer.max_epochs", "4")
# 2 batches per optimizer step: a Ctrl-C after the third batch of epoch 2 (half a step) waits for the fourth
ACCUMULATE = ("--trainer.accumulate_grad_batches", "2")
# checkpoints halfway through each epoch too (no EarlyStopping: the tiny model's flat val/f1_macro would stop it
# at epoch 2's first validation, before the kill after its sixth batch)
HALVES = ("--trainer.val_check_interval", "0.5", "--trainer.callbacks=[]")


@pytest.mark.parametrize(("options", "fault", "saved_step"), [
    (EARLY_STOP, "SIGKILL:test", 8),  # stopped after epoch 1 (8 steps): the resumed run tests, it does not train
    (ACCUMULATE, "SIGINT:mid_epoch", 4 + 2),  # 4 steps in epoch 1, then batches 1-4 of epoch 2: never half a step
    (HALVES, "SIGKILL:late_epoch", 8 + 4),  # resumed from the validation after batch 4 of epoch 2, not its start
], ids=["early-stopped", "gradient-accumulation", "validation-inside-the-epoch"])
def test_a_killed_fit_resumes_from_where_it_saved_to_the_unbroken_runs_results(
        options, fault, saved_step, tmp_path, tiny_data_dir, tiny_bert, cli):
    import torch

    cli(*fit_args(tiny_data_dir, tiny_bert, tmp_path / "unbroken", *options))
    (unbroken_run,) = (tmp_path / "unbroken" / "task").iterdir()
    root = tmp_path / "runs"
    killed = killed_fit(fault, fit_args(tiny_data_dir, tiny_bert, root, *options))
    assert killed.returncode == (130 if fault.startswith("SIGINT") else -signal.SIGKILL), killed.stderr[-3000:]
    (run,) = (root / "task").iterdir()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_step

    cli(*fit_args(tiny_data_dir, tiny_bert, root, *options, "--ckpt_path", "last"))
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert final == torch.load(unbroken_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert quality(run) == pytest.approx(quality(unbroken_run), abs=1e-6)
    assert (run / "test_predictions.csv").read_text() == (unbroken_run / "test_predictions.csv").read_text()
