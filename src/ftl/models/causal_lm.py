"""Causal-LM fine-tuning over any `AutoModelForCausalLM`: token-weighted loss, perplexity, ROUGE on generations.

Batches come from `ftl.data.qa.QADataModule`: `input_ids`/`attention_mask`/`labels` (prompt and padding
marked -100) for the loss, and the prompts alone, left-padded (`prompt_input_ids`/`prompt_attention_mask`),
for generation.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ftl.models.dropout import enable_fast_cpu_dropout
from ftl.models.lora import LoraSettings, apply_lora, as_hparam, log_parameter_counts
from ftl.models.optim import SchedulerName, configure_module_adamw

IGNORE_INDEX = -100
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropies, number of scored tokens) over positions whose label is not -100.

    Token t is predicted from the logits at t-1, hence the shift. Sum and count (not a mean) so that
    epoch losses can weight every answer token equally, whatever the batch it came in.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )
    return total, (shift_labels != IGNORE_INDEX).sum()


def rouge_metric():
    """ROUGE-1/2/L F-measures. No stemmer and no ROUGE-Lsum: both need nltk (Lsum also downloads punkt
    data), which ftl does not depend on."""
    from torchmetrics.text.rouge import ROUGEScore

    return ROUGEScore(rouge_keys=ROUGE_KEYS)


class CausalLM(L.LightningModule):
    """Fine-tunes a pretrained decoder on prompt -> answer pairs, scoring answer tokens only.

    Reports the token-weighted loss (summed over every answer token of the epoch, divided by their
    number: not a mean of batch means), `perplexity = exp(loss)`, and ROUGE-1/2/L between generated and
    reference answers on the test split (and on `val_generation_samples` val rows per epoch).
    """

    # PredictionWriter (ftl.callbacks) writes predict_step's records beside the questions.
    prediction_format = "jsonl"

    def __init__(
        self,
        pretrained: str = "distilgpt2",
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        scheduler: SchedulerName = "linear",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        max_new_tokens: int = 64,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_p: float = 1.0,
        num_beams: int = 1,
        generation_seed: int = 0,
        val_generation_samples: int = 0,
        test_generation_samples: int | None = None,
        trust_remote_code: bool = False,
        lora: LoraSettings | None = None,
        fast_cpu_dropout: bool = True,
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder, or offline alias (`smollm2-135m`) of a causal LM.
            max_new_tokens: most tokens generated per answer.
            do_sample: sample (with `temperature`, `top_p`) instead of greedy/beam search.
            generation_seed: sampling seed; each batch draws from `generation_seed + batch index`, so
                generations do not depend on what ran before (training, other batches).
            val_generation_samples: val rows to generate answers for each epoch (val ROUGE); 0 = none.
                The first rows in evaluation order (longest first): generation is slow, whole batches cheaper.
            test_generation_samples: test rows to generate answers for (None = all; 0 = no ROUGE).
            lora: train LoRA adapters instead of every weight (`r`, `alpha`, `dropout`, `target_modules`);
                see `ftl.models.lora`. The export merges them into a plain model.
            fast_cpu_dropout: on CPU, draw dropout masks from 16-bit random integers (`ftl.models.dropout`);
                False gives torch's own dropout.
        """
        super().__init__()
        if max_new_tokens < 1:
            from ftl.errors import FTLError

            raise FTLError(f"model.max_new_tokens must be a positive integer, got {max_new_tokens}")
        lora = as_hparam(lora)  # a plain dict in the checkpoint, so it loads with weights_only=True
        self.save_hyperparameters()
        # LightningCLI records every applied argument link in hparams, also `num_labels`/`label_names` that
        # this class does not take; kept, they would be passed back to __init__ when a checkpoint is loaded
        # (`--ckpt_path`, `load_from_checkpoint`) and fail. Keep only real parameters (and Lightning's `_keys`).
        accepted = inspect.signature(type(self).__init__).parameters
        for key in [k for k in self.hparams if k not in accepted and not k.startswith("_")]:
            del self.hparams[key]
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode: without this,
        # dropout would be off during training (HF Trainer calls model.train() for the same reason).
        self.model = self._load_model().train()
        if fast_cpu_dropout:
            self.model = enable_fast_cpu_dropout(self.model)
        if lora:
            self.model = apply_lora(self.model, lora, task_type="CAUSAL_LM")
        self.val_loss, self.test_loss = self._mean(), self._mean()
        self.val_rouge, self.test_rouge = rouge_metric(), rouge_metric()
        self.generations: list[dict[str, Any]] = []
        self._generated = 0

    def _load_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        from ftl.models.hub import load_model

        return load_model(AutoModelForCausalLM, self.hparams.pretrained,
                          trust_remote_code=self.hparams.trust_remote_code)

    @staticmethod
    def _mean():
        from torchmetrics import MeanMetric

        # Updated with (batch mean, number of tokens): the weighted mean is sum of token losses / tokens.
        return MeanMetric()

    # ------------------------------------------------------------------ tokenizer and special ids
    @property
    def tokenizer(self):
        """The data module's tokenizer (one source of truth), else the tokenizer of `pretrained`."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "tokenizer"):
            return datamodule.tokenizer
        if getattr(self, "_own_tokenizer", None) is None:
            from ftl.models.hub import load_tokenizer

            tok = load_tokenizer(self.hparams.pretrained, trust_remote_code=self.hparams.trust_remote_code)
            if tok.pad_token is None:  # as QADataModule does: EOS pads (attention masks hide it)
                tok.pad_token = tok.eos_token
            self._own_tokenizer = tok
        return self._own_tokenizer

    def on_fit_start(self) -> None:
        log_parameter_counts(self)

    def setup(self, stage: str) -> None:
        """Give the model the tokenizer's pad/eos ids, so `generate` and a saved model agree with the data."""
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else self.model.config.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        for config in (self.model.config, self.model.generation_config):
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = pad
        if self.model.generation_config.eos_token_id is None:
            self.model.generation_config.eos_token_id = eos

    # ------------------------------------------------------------------ forward and loss
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = token_loss_sum(self(batch), batch["labels"])
        loss = total / count.clamp(min=1)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        total, count = token_loss_sum(self(batch), batch["labels"])
        if count > 0:
            getattr(self, f"{stage}_loss").update(total / count, weight=count)
        limit = self.hparams.val_generation_samples if stage == "val" else self.hparams.test_generation_samples
        room = len(batch["input_ids"]) if limit is None else max(0, limit - self._generated)
        if room == 0 or self.trainer.sanity_checking:
            return
        rows = self._generate_rows(batch, batch_idx, stage, room)
        self._generated += len(rows)
        getattr(self, f"{stage}_rouge").update([r["generated"] for r in rows], [r["reference"] for r in rows])
        if stage == "test":
            self.generations += rows

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int = 0) -> list[str]:
        """Answers to left-padded prompts, decoded without special tokens and surrounding whitespace."""
        hp = self.hparams
        tok = self.tokenizer
        options: dict[str, Any] = {
            "max_new_tokens": hp.max_new_tokens,
            "do_sample": hp.do_sample,
            "num_beams": hp.num_beams,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
        }
        if hp.do_sample:  # passing these without sampling makes transformers warn
            options.update(temperature=hp.temperature, top_p=hp.top_p)
        device = input_ids.device
        forked = [device] if device.type != "cpu" else []
        with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
            torch.manual_seed(hp.generation_seed + seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        new_tokens = out[:, input_ids.shape[1]:]
        return [text.strip() for text in tok.batch_decode(new_tokens, skip_special_tokens=True)]

    def _generate_rows(self, batch: dict[str, torch.Tensor], batch_idx: int, split: str, n: int) -> list[dict]:
        """Generate for the first `n` rows of the batch; pair each answer with its question and reference."""
        ids, mask = batch["prompt_input_ids"][:n], batch["prompt_attention_mask"][:n]
        keep = int(mask.sum(0).nonzero().min()) if mask.any() else 0  # drop columns that are padding in all rows
        generated = self.generate(ids[:, keep:], mask[:, keep:], seed=batch_idx)
        row_idx = batch["row_idx"][:n].tolist() if "row_idx" in batch else None
        datamodule = getattr(self.trainer, "datamodule", None)
        if row_idx is not None and hasattr(datamodule, "qa_rows"):
            pairs = datamodule.qa_rows(split, row_idx)
        else:  # no data module to ask: read question and reference back from the tokens
            tok = self.tokenizer
            labels = batch["labels"][:n]
            pairs = [(tok.decode(p[m.bool()], skip_special_tokens=True).strip(),
                      tok.decode(lab[lab != IGNORE_INDEX], skip_special_tokens=True).strip())
                     for p, m, lab in zip(ids, mask, labels, strict=True)]
        rows = []
        for i, ((question, reference), text) in enumerate(zip(pairs, generated, strict=True)):
            row = {"question": question, "reference": reference or "", "generated": text}
            if row_idx is not None:
                row["row_idx"] = row_idx[i]
            rows.append(row)
        return rows

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One record per question: the generated answer."""
        texts = self.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"], seed=batch_idx)
        return [{"generated": text} for text in texts]

    # ------------------------------------------------------------------ epoch-end metrics
    def on_validation_epoch_start(self) -> None:
        self._generated = 0

    def on_test_epoch_start(self) -> None:
        self._generated = 0
        self.generations = []

    def _log_epoch_metrics(self, stage: str) -> None:
        loss_metric, rouge = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_rouge")
        values: dict[str, float] = {}
        if loss_metric.update_called:
            loss = float(loss_metric.compute())
            values[f"{stage}/loss"] = loss
            values[f"{stage}/perplexity"] = math.exp(loss) if loss < 700 else math.inf
        if rouge.update_called:
            scores = rouge.compute()
            values.update({f"{stage}/{key}": float(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS})
        loss_metric.reset()
        rouge.reset()
        if values:
            self.log_dict(values, sync_dist=False)  # already synced by torchmetrics

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # rows are spread over ranks
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.generations)
            self.generations = [row for part in parts for row in part]
        self.generations.sort(key=lambda row: row.get("row_idx", 0))
        if self.generations and self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "generations.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [json.dumps({k: row[k] for k in ("question", "reference", "generated")}, ensure_ascii=False)
                     for row in self.generations]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        return configure_module_adamw(self)
