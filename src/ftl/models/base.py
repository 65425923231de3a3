"""`TaskModule`: what every ftl task shares, so a task subclass holds only its head, loss, metrics and outputs.

The base does pretrained loading (one resolver, `ftl.hub`), train mode, LoRA, the optimizer/schedule settings
(one typed group, `OptimizerSettings`), parameter counts, `configure_optimizers`, and the task contract
(`ftl.models.outputs`): rows are put back in the data's order here, once, from the batches' `row_idx`, and
every report reads the `TaskOutputs` built here. The CPU speed-ups are applied by device outside the task
(`ftl.speedups.CPUSpeedups`), not by an argument of each module.

A subclass sets `auto_class` (and `lora_task_type`), passes `**kwargs` on to `TaskModule.__init__` (so
`--model.learning_rate` works for every task: jsonargparse follows the kwargs), and implements:
- `model_kwargs()`: extra `from_pretrained` arguments (e.g. `num_labels`);
- `training_step`/`validation_step`/`test_step` as in any LightningModule; `test_step` hands its rows over
  with `self.add_records(batch, [Record(reference=..., prediction=..., scores=...), ...])`;
- `predict_records(batch)`: the same records without references, for `predict`;
- `epoch_end(stage)`: log the epoch's metrics ("train", "val", "test");
- optionally `outputs_for(records)` to add a confusion matrix, and `export_config()` for hf_model/config.json.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch import nn

from ftl.errors import FTLError
from ftl.models.lora import LoraSettings, apply_lora, as_hparam, log_parameter_counts
from ftl.models.optim import OptimizerSettings, SchedulerName, configure_adamw
from ftl.models.outputs import Record, TaskOutputs

STAGES = ("train", "val", "test")
# Batch keys that are bookkeeping or targets, not inputs of the Hugging Face model.
NOT_MODEL_INPUTS = frozenset({"labels", "row_idx"})


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without targets and row positions: what `model(**inputs)` takes."""
    return {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS}


def accepted_arguments(cls: type) -> set[str]:
    """Names the `__init__` of a `TaskModule` subclass and its bases up to `TaskModule` take by name.

    LightningCLI records every linked value (`num_labels`, `label_counts`...) in a module's hparams, also those
    its `__init__` does not take; kept, they would be passed back to `__init__` by `load_from_checkpoint` and
    `compare`, and fail.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            for name, param in inspect.signature(init).parameters.items():
                if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and name != "self":
                    names.add(name)
        if klass is TaskModule:
            break
    return names


class TaskModule(L.LightningModule):
    """Base of every ftl task: fine-tunes a pretrained `transformers` model, reports through `TaskOutputs`."""

    auto_class: ClassVar[str] = "AutoModel"  # the transformers Auto class `pretrained` is loaded with
    lora_task_type: ClassVar[str | None] = None  # peft's task type, e.g. "SEQ_CLS", "CAUSAL_LM"
    reference_name: ClassVar[str] = "reference"  # column names of Record.reference / .prediction in files
    prediction_name: ClassVar[str] = "prediction"
    records_format: ClassVar[Literal["csv", "jsonl"]] = "csv"
    records_file: ClassVar[str] = "test_predictions.csv"

    def __init__(
        self,
        pretrained: str = "minilm-l6",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        scheduler: SchedulerName = "linear",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        lora: LoraSettings | None = None,
        trust_remote_code: bool = False,
        compile: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder (written by save_pretrained) or offline alias (`minilm-l6`,
                `smollm2-135m`) of the model to fine-tune; linked into `data.tokenizer` by the CLI.
            learning_rate: AdamW's peak learning rate.
            weight_decay: AdamW weight decay (not applied to biases and normalisation weights).
            betas: AdamW's (beta1, beta2).
            eps: AdamW's epsilon.
            scheduler: learning-rate schedule after warmup: linear decay to 0, cosine, or constant.
            warmup_steps: optimizer steps of linear warmup (wins over warmup_ratio when > 0).
            warmup_ratio: share of all optimizer steps used for warmup.
            lora: train LoRA adapters instead of every weight (`r`, `alpha`, `dropout`, `target_modules`);
                the export merges them into a plain model.
            trust_remote_code: allow a hub model's own code to run (off: only transformers' code runs).
            compile: `torch.compile` the model (in place: weights, checkpoints and the export are unchanged). The
                first steps pay for the compilation (minutes for a small model on 2 CPU cores); it is meant for
                long GPU runs.
            compile_backend: torch.compile's backend: `inductor` (generated kernels, the fast one), or
                `aot_eager` (traces the model but runs torch's own kernels: a quick check that it compiles).
        """
        super().__init__()
        self.save_hyperparameters()
        self._clean_hparams()
        hp = self.hparams
        self.optim = OptimizerSettings(learning_rate=hp.learning_rate, weight_decay=hp.weight_decay,
                                       betas=tuple(hp.betas), eps=hp.eps, scheduler=hp.scheduler,
                                       warmup_steps=hp.warmup_steps, warmup_ratio=hp.warmup_ratio)
        self._check_labels()
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout would be off during training (HF Trainer calls model.train() for the same reason).
        self.model = self.load_pretrained().train()
        if hp.lora:
            if self.lora_task_type is None:
                raise FTLError(f"{type(self).__name__} does not support LoRA: remove model.lora")
            self.model = apply_lora(self.model, hp.lora, task_type=self.lora_task_type)
        if hp.get("compile"):
            # nn.Module.compile, not torch.compile(model): the wrapper torch.compile returns prefixes every
            # state-dict key with `_orig_mod.`, which no checkpoint or export of an eager run would then match
            self.model.compile(backend=hp.get("compile_backend", "inductor"))
        self.test_outputs: TaskOutputs | None = None
        self._records: list[Record] = []
        self._split_columns: dict[str, tuple[list[dict[str, Any]] | None, list[Any] | None]] = {}
        self._unindexed_rows = 0

    def _clean_hparams(self) -> None:
        """hparams hold exactly the init arguments, as plain values (checkpoints load with weights_only=True)."""
        accepted = accepted_arguments(type(self))
        for key in list(self.hparams):
            if key not in accepted and not key.startswith("_"):
                del self.hparams[key]
        if "lora" in self.hparams:
            self.hparams["lora"] = as_hparam(self.hparams["lora"])
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _check_labels(self) -> None:
        hp = self.hparams
        names, num = hp.get("label_names"), hp.get("num_labels")
        if names is not None and num is not None and len(names) != num:
            raise FTLError(f"{len(names)} label_names for num_labels={num}: give one name per label")

    # ------------------------------------------------------------------ the model
    @property
    def label_names(self) -> list[str] | None:
        """The task's label names (from the data, linked by the CLI); None for tasks without labels."""
        hp = self.hparams
        if hp.get("num_labels") is None:
            return None
        names = hp.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(hp.num_labels)]

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments for `from_pretrained` (e.g. `num_labels`, `id2label`)."""
        return {}

    def load_pretrained(self) -> nn.Module:
        """`auto_class.from_pretrained(pretrained, **model_kwargs())` through ftl's one resolver (`ftl.hub`)."""
        import transformers

        from ftl.hub import load_model

        return load_model(getattr(transformers, self.auto_class), self.hparams.pretrained,
                          trust_remote_code=self.hparams.trust_remote_code, **self.model_kwargs())

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**model_inputs(batch)).logits

    def export_config(self) -> dict[str, Any]:
        """Extra entries for the exported `config.json` (e.g. a tuned decision threshold, for the record)."""
        return {}

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    def configure_optimizers(self) -> dict:
        return configure_adamw(self.model, self.optim, int(self.trainer.estimated_stepping_batches))

    # ------------------------------------------------------------------ per-row outputs (the task contract)
    def predict_records(self, batch: dict[str, torch.Tensor]) -> list[Record]:
        """One `Record` (prediction, scores) per row of a predict batch."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict_records")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[Record]:
        return self.index_records(batch, self.predict_records(batch), "predict")

    def add_records(self, batch: dict[str, torch.Tensor], records: list[Record]) -> None:
        """Hand over one test batch's rows (in batch order); the base puts them in the data's order."""
        self._records += self.index_records(batch, records, "test")

    def index_records(self, batch: dict[str, Any], records: list[Record], split: str) -> list[Record]:
        """Give each record its row position (the batch's `row_idx`, first rows first when there are fewer
        records than rows) and its inputs (and reference, where the task left it empty) from the data module."""
        index = batch.get("row_idx") if isinstance(batch, Mapping) else None  # (BatchEncoding is no dict)
        if index is None:  # a data module that does not number its rows: records stay in loader order
            if not self._unindexed_rows:
                print(f"ftl: warning: {split} batches carry no row_idx, so records are written in loader order; "
                      "subclass ftl.data.text.TextDataModule (it numbers rows) to keep the data's order",
                      file=sys.stderr)
            positions = list(range(self._unindexed_rows, self._unindexed_rows + len(records)))
            self._unindexed_rows += len(records)
        else:
            positions = [int(i) for i in index.tolist()][: len(records)]
        inputs, references = self.data_columns(split)
        for record, position in zip(records, positions, strict=True):
            record.index = position
            if inputs is not None:
                record.inputs = {**inputs[position], **record.inputs}
            if record.reference is None and references is not None and split != "predict":
                record.reference = references[position]
        return records

    def data_columns(self, split: str) -> tuple[list[dict[str, Any]] | None, list[Any] | None]:
        """(inputs, references) of every row of `split`, from an ftl data module; (None, None) otherwise."""
        if split not in self._split_columns:
            from ftl.data.text import TextDataModule

            datamodule = self._trainer.datamodule if self._trainer is not None else None
            if isinstance(datamodule, TextDataModule) and datamodule.has_split(split):
                self._split_columns[split] = (datamodule.row_inputs(split), datamodule.row_references(split))
            else:
                self._split_columns[split] = (None, None)
        return self._split_columns[split]

    def outputs_for(self, records: list[Record]) -> TaskOutputs:
        """The `TaskOutputs` of a test's records (override to add a confusion matrix or a positive label)."""
        return self.plain_outputs(records)

    def plain_outputs(self, records: list[Record]) -> TaskOutputs:
        """Records with the task's names and formats, nothing computed (what `predict` writes)."""
        return TaskOutputs(records=records, label_names=self.label_names, reference_name=self.reference_name,
                           prediction_name=self.prediction_name, records_format=self.records_format,
                           records_file=self.records_file)

    # ------------------------------------------------------------------ epochs
    def epoch_end(self, stage: str) -> None:
        """Log the epoch's metrics of `stage` ("train", "val" or "test")."""

    def on_train_epoch_end(self) -> None:
        self.epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self.epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._records, self.test_outputs, self._unindexed_rows = [], None, 0
        self._split_columns.pop("test", None)

    def on_predict_epoch_start(self) -> None:
        self._unindexed_rows = 0
        self._split_columns.pop("predict", None)

    def on_test_epoch_end(self) -> None:
        self.epoch_end("test")
        self.test_outputs = self.outputs_for(gather_records(self._records))
        self._records = []


def gather_records(records: list[Record]) -> list[Record]:
    """Every process's records (DDP shards the rows), in the data's order, each row once."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
        records = [record for part in parts for record in part]
    unique = {record.index: record for record in records}
    return [unique[i] for i in sorted(unique)]
