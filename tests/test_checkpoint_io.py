"""Checkpoints are streamed to disk: no in-memory copy of the checkpoint, the same file, no half-written file."""

from __future__ import annotations

import tracemalloc

import pytest
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ftl.reports.checkpoint import StreamingCheckpointIO
from tests.helpers import fit_args

MB = 2**20


def _checkpoint() -> dict:
    torch.manual_seed(0)
    return {"state_dict": {f"w{i}": torch.randn(1024, 1024) for i in range(8)}, "epoch": 3}  # 32 MB of tensors


def _traced_peak(save) -> int:
    """Peak Python-heap bytes during `save()` (an `io.BytesIO` of the checkpoint shows up here)."""
    tracemalloc.start()
    try:
        save()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_save_holds_no_copy_of_the_checkpoint_in_memory_and_writes_the_same_file(tmp_path):
    checkpoint = _checkpoint()
    lightning_peak = _traced_peak(lambda: TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "a.ckpt"))
    streamed_peak = _traced_peak(lambda: StreamingCheckpointIO().save_checkpoint(checkpoint, tmp_path / "b.ckpt"))
    assert lightning_peak > 32 * MB  # Lightning 2.6 buffers all of it (this test would see that regression)
    assert streamed_peak < 2 * MB
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.ckpt", "b.ckpt"))
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]


class Unsaveable:
    def __reduce__(self):
        raise RuntimeError("cannot be saved")


def test_a_save_that_fails_leaves_the_earlier_file_and_no_partial_one(tmp_path):
    io = StreamingCheckpointIO()
    io.save_checkpoint(_checkpoint(), tmp_path / "last.ckpt")
    before = (tmp_path / "last.ckpt").read_bytes()
    with pytest.raises(RuntimeError, match="cannot be saved"):  # fails with the file open
        io.save_checkpoint({**_checkpoint(), "extra": Unsaveable()}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_cli_trainer_streams_its_checkpoints(tmp_path, tiny_data_dir, tiny_bert):
    from ftl.commands.cli import FTLCLI

    run = tmp_path / "run"
    cli = FTLCLI(args=fit_args("quickstart", tiny_data_dir, tiny_bert, run, "--trainer.max_epochs", "1",
                               "--test_after_fit", "false"))
    assert type(cli.trainer.strategy.checkpoint_io) is StreamingCheckpointIO
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == cli.trainer.global_step > 0
    assert not [p for p in run.rglob("*") if p.name.endswith((".partial", ".tmp"))]
