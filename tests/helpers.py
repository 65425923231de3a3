"""Helpers shared by test files (test files import these from here, never from one another or from conftest)."""

from __future__ import annotations

import json
import signal
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- running the CLI
def run_cli(*args: str) -> None:
    """Run the ftl CLI in-process (same code path as `python -m ftl`)."""
    from ftl.commands.cli import main

    main(list(args))


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts: Ctrl-C's default action, whatever the test runner had.
    A shell runs a background job (`cmd &`) with SIGINT ignored and children inherit that, so under such a
    runner the child would never see the SIGINT the test sends (measured: the fit ran to the end, exit 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fit_args(config: str, data_dir: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / f"{config}.yaml"),
        "--model.pretrained", str(model),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(data_dir),
        "--data.max_length", "64",
        "--data.batch_size", "8",
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--run_dir", str(run_dir),
        *extra,
    ]


def cli_args(data_dir: Path, model: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--model.pretrained", str(model),
        "--data.class_path", "ftl.data.classification.TextClassificationDataModule",
        "--data.data_dir", str(data_dir),
        "--data.max_length", "64",
        "--data.batch_size", "8",
        "--trainer.enable_progress_bar", "false",
        "--run_dir", str(run_dir),
        *extra,
    ]


# ---------------------------------------------------------------------------------------------- fixture data
_QA_CONDITIONS = ["asthma", "diabetes", "migraine", "anemia", "eczema", "gout", "psoriasis", "hypertension",
                  "influenza", "bronchitis", "arthritis", "tonsillitis"]
_QA_TEMPLATES = [
    ("information", "What is {c}?", "{C} is a common condition that a doctor can diagnose."),
    ("symptoms", "What are the symptoms of {c}?", "People with {c} often report pain, fatigue and poor sleep."),
    ("treatment", "How is {c} treated?", "Treatment for {c} includes rest, medication and regular follow up."),
    ("susceptibility", "Who is at risk for {c}?",
     "Older adults and people with a family history of {c} are at higher risk."),
]


def tiny_qa_rows() -> list[dict[str, str]]:
    """48 templated health question/answer pairs (12 conditions x 4 question types), deterministic."""
    return [
        {"question": q.format(c=c), "answer": a.format(c=c, C=c.capitalize()), "qtype": qtype}
        for c in _QA_CONDITIONS for qtype, q, a in _QA_TEMPLATES
    ]


# ---------------------------------------------------------------------------------------------- models
def spread_predictions(module, datamodule, seed: int = 0) -> None:
    """Give a tiny random classifier weights whose predictions differ from row to row (a random BERT maps every
    text to almost the same pooled vector, so a trained-for-seconds head predicts one label for all rows):
    let attention dominate the residual stream and sharpen the pooler, so pooled vectors depend on the text,
    then centre and scale a random head on the test rows' pooled vectors."""
    import torch

    module.eval()
    datamodule.prepare_data()
    datamodule.setup("test")
    pooled: list[torch.Tensor] = []
    head = module.model.classifier
    with torch.no_grad():
        for layer in module.model.bert.encoder.layer:
            layer.attention.output.dense.weight.mul_(50)
        module.model.bert.pooler.dense.weight.mul_(20)
        hook = head.register_forward_hook(lambda mod, inputs, out: pooled.append(inputs[0]))
        for batch in datamodule.test_dataloader():
            module(batch)
        hook.remove()
        features = torch.cat(pooled)
        mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(head.out_features, features.shape[1], generator=g) / (std * features.shape[1] ** 0.5)
        head.weight.copy_(weight)
        head.bias.copy_(-weight @ mean)


# ---------------------------------------------------------------------------------------------- W&B offline runs
def read_wandb_run(run_file: Path) -> dict:
    """Config, summary, history keys, files and name stored in an offline run's `.wandb` file.

    wandb >= 0.20 ships no Python reader for its transaction log (the Go `wandb-core` writes it), so this reads
    the LevelDB-style log records (32 KiB blocks; 7-byte header: crc32, length, type) and parses each record
    with wandb's own protobuf `Record`.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            records.append(chunk)
        elif kind == 2:  # first
            pending = chunk
        elif kind == 3:  # middle
            pending += chunk
        elif kind == 4:  # last
            records.append(pending + chunk)

    def put(target: dict, item) -> None:
        keys = list(item.nested_key) or [item.key]
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(item.value_json)

    out = {"config": {}, "summary": {}, "history": [], "files": [], "name": ""}
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            for item in record.run.config.update:
                put(out["config"], item)
            out["name"] = record.run.display_name or out["name"]
        elif kind == "config":
            for item in record.config.update:
                put(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                put(out["summary"], item)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                put(row, item)
            out["history"].append(row)
        elif kind == "files":
            out["files"] += [f.path for f in record.files.files]
    return out


def offline_run(run_dir: Path) -> tuple[Path, dict]:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0], read_wandb_run(next(runs[0].glob("run-*.wandb")))


def wandb_table(folder: Path, key: str) -> dict:
    files = sorted((folder / "files" / "media" / "table").glob(f"{key}_*.table.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())
