"""Multi-process training with Lightning's `ddp` strategy on CPU (gloo): each evaluation row is scored exactly once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from torch.utils.data import DistributedSampler

from ftl.data.sampling import LengthGroupedSampler, SortedSampler

ROOT = Path(__file__).resolve().parents[1]
N_VAL, N_TEST = 31, 29  # odd: a padding sampler would have to repeat a row to give both processes the same count


class RecordEvalRows(L.Callback):
    """Test-only: every process writes the `row_idx` of each validation/test row it scored into the run dir."""

    def __init__(self) -> None:
        self.rows: dict[str, list[int]] = {}

    def _record(self, trainer: L.Trainer, stage: str, batch: dict) -> None:
        key = f"{stage}-epoch{trainer.current_epoch}" if stage == "val" else stage
        self.rows.setdefault(key, []).extend(int(i) for i in batch["row_idx"])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(trainer, "test", batch)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(trainer.default_root_dir) / f"eval_rows-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, "rows": self.rows}))


def test_training_shards_are_equal_and_cover_every_row():
    from collections import Counter

    lengths = [(i * 7) % 23 + 1 for i in range(37)]
    for weights in (None, [1.0 + (i % 3) for i in range(37)]):
        ranks = [LengthGroupedSampler(lengths, 4, group_batches=2, seed=5, weights=weights, num_replicas=2, rank=r)
                 for r in range(2)]
        shards = [list(s) for s in ranks]
        assert [len(s) for s in shards] == [19, 19] == [len(s) for s in ranks]  # same steps on every process
        assert len(ranks[0].batches()) == len(ranks[1].batches())
        if weights is None:  # 37 rows padded to 38 by repeating one: every row, one of them twice
            counts = Counter(shards[0] + shards[1])
            assert set(counts) == set(range(37)) and sorted(counts.values())[-2:] == [1, 2]
        ranks[0].set_epoch(1)
        assert list(ranks[0]) != shards[0]
        assert all(isinstance(s, DistributedSampler) for s in ranks)  # Lightning leaves these alone


def test_evaluation_shards_score_every_row_once():
    lengths = [(i * 5) % 17 for i in range(N_VAL)]
    shards = [list(SortedSampler(lengths, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(N_VAL)) and [len(s) for s in shards] == [16, 15]
    assert [lengths[i] for i in shards[0]] == sorted((lengths[i] for i in shards[0]), reverse=True)


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory, tiny_data_dir) -> Path:
    folder = tmp_path_factory.mktemp("data") / "odd"
    folder.mkdir()
    for split, n in (("train", None), ("val", N_VAL), ("test", N_TEST)):
        lines = (tiny_data_dir / f"{split}.csv").read_text().splitlines()
        (folder / f"{split}.csv").write_text("\n".join(lines[: None if n is None else n + 1]) + "\n")
    return folder


def common(odd_dir: Path, tiny_bert: Path) -> list[str]:
    return ["--config", str(ROOT / "configs" / "depression.yaml"), "--model.pretrained", str(tiny_bert),
            "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
            "--data.data_dir", str(odd_dir), "--data.max_length", "64", "--data.batch_size", "8",
            "--data.eval_batch_size", "4", "--trainer.logger", "true", "--trainer.enable_progress_bar", "false"]


def test_two_process_ddp_fit_on_cpu_scores_every_validation_row_once(odd_dir, tiny_bert, tmp_path, cli):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "ftl", "fit", *common(odd_dir, tiny_bert),
               "--trainer", str(ROOT / "configs" / "trainer" / "ddp.yaml"), "--trainer.accelerator", "cpu",
               "--trainer.devices", "2", "--trainer.max_epochs", "1", "--model.learning_rate", "1e-3",
               "--trainer.callbacks+=tests.test_ddp.RecordEvalRows", "--run_dir", str(run)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    records = [json.loads((run / f"eval_rows-rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in records] == [2, 2]
    for key, n in (("val-epoch0", N_VAL), ("test", N_TEST)):
        shards = [r["rows"][key] for r in records]
        assert all(shards) and sorted(shards[0] + shards[1]) == list(range(n)), key  # each row once, none twice

    # the same checkpoint validated by one process gives the same validation metrics
    ddp_metrics = json.loads((run / "metrics.json").read_text())
    cli("validate", *common(odd_dir, tiny_bert), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--run_dir", str(tmp_path / "single"))
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for key in ("val/accuracy", "val/f1_macro", "val/precision_macro", "val/recall_macro"):
        assert ddp_metrics[key] == pytest.approx(single[key], abs=1e-6), key
    # the loss is a row-weighted mean over both processes (a repeated or missing row would move it)
    assert ddp_metrics["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)
    # test outputs were gathered from both processes: the confusion matrix counts every test row once
    with open(run / "confusion_matrix.csv", newline="") as f:
        matrix = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    assert sum(map(sum, matrix)) == N_TEST


@pytest.mark.parametrize("preset, expected", [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
    ("gpu-bf16", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
    ("ddp", {"strategy": "ddp", "devices": "auto"}),
    ("fsdp", {"accelerator": "gpu", "precision": "bf16-mixed"}),
])
def test_trainer_presets_merge_into_a_task_config(preset, expected, cli, capsys):
    import yaml

    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--trainer", str(ROOT / "configs" / "trainer" / f"{preset}.yaml"), "--print_config")
    assert exit_info.value.code == 0
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert {key: trainer[key] for key in expected} == expected
    assert trainer["max_epochs"] == 2 and trainer["gradient_clip_val"] == 1.0  # the task config's values stay
    if preset == "fsdp":
        assert trainer["strategy"]["class_path"].endswith("FSDPStrategy")
