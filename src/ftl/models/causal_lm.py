"""Causal-LM fine-tuning over any `AutoModelForCausalLM`: token-weighted loss, perplexity, ROUGE on generations.

Batches come from `ftl.data.qa.QADataModule`: `input_ids`/`attention_mask`/`labels` (prompt and padding
marked -100) for the loss, and the prompts alone, left-padded (`prompt_input_ids`/`prompt_attention_mask`),
for generation.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from ftl.errors import FTLError
from ftl.models.base import TaskModule
from ftl.models.outputs import Record

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


def scored_tokens_per_batch(datamodule: Any) -> float | None:
    """Mean answer (label) tokens per training batch of an epoch, from the data module's tokenized train split;
    None when it has none. Counts labels that are not -100 in Arrow, without Python lists of every row."""
    datasets = getattr(datamodule, "datasets", None) or {}
    train, batch_size = datasets.get("train"), getattr(datamodule, "batch_size", None)
    if train is None or not batch_size or "labels" not in train.column_names or len(train) == 0:
        return None
    import pyarrow.compute as pc

    scored = pc.sum(pc.not_equal(pc.list_flatten(train.data.column("labels")), IGNORE_INDEX)).as_py() or 0
    return max(1.0, scored / math.ceil(len(train) / batch_size))


def token_loss_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_loss_sum` per row: (sum of each row's answer-token cross-entropies, its scored tokens)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    losses = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    return losses.sum(-1), (shift_labels != IGNORE_INDEX).sum(-1)


def generated_tokens(new_tokens: torch.Tensor, stop_ids: list[int]) -> int:
    """Tokens generated per row up to and including its first stop token (all of them when it has none), summed:
    what generation produced, not the padding that fills rows which stopped early."""
    stopped = torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device))
    whole = torch.full((len(new_tokens),), new_tokens.shape[1], device=new_tokens.device)
    return int(torch.where(stopped.any(-1), stopped.int().argmax(-1) + 1, whole).sum())


def rouge_per_row(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """Each row's ROUGE-1/2/L F-measure; torchmetrics' `ROUGEScore` of a split is their mean."""
    from torchmetrics.functional.text.rouge import rouge_score

    return [{key: float(value) for key, value in rouge_score(pred, ref, rouge_keys=ROUGE_KEYS).items()
             if key.endswith("_fmeasure")} for pred, ref in zip(predictions, references, strict=True)]


def rouge_metric():
    """ROUGE-1/2/L F-measures. No stemmer and no ROUGE-Lsum: both need nltk (Lsum also downloads punkt
    data), which ftl does not depend on."""
    from torchmetrics.text.rouge import ROUGEScore

    return ROUGEScore(rouge_keys=ROUGE_KEYS)


class CausalLM(TaskModule):
    """Fine-tunes a pretrained decoder on prompt -> answer pairs, scoring answer tokens only.

    Reports the token-weighted loss (summed over every answer token of the epoch, divided by their
    number: not a mean of batch means), `perplexity = exp(loss)`, and ROUGE-1/2/L between generated and
    reference answers on the test split (and on `val_generation_samples` val rows per epoch). Test records
    (`generations.jsonl`) hold each question, its full reference answer and the generated one.
    """

    auto_class = "AutoModelForCausalLM"
    lora_task_type = "CAUSAL_LM"
    reference_name, prediction_name = "reference", "generated"
    records_format, records_file = "jsonl", "generations.jsonl"

    def __init__(
        self,
        pretrained: str = "distilgpt2",
        max_new_tokens: int | None = None,
        eval_do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 1.0,
        num_beams: int = 1,
        generation_seed: int = 0,
        val_generation_samples: int = 0,
        test_generation_samples: int | None = None,
        do_sample: bool | None = None,
        loss_tokens: str = "epoch",
        **kwargs: Any,
    ) -> None:
        """
        Args:
            pretrained: hub id, local folder, or offline alias (`smollm2-135m`) of a causal LM.
            max_new_tokens: most tokens generated per answer. None: the longest completion among the training
                rows as encoded (end-of-turn included, so at most `data.max_length`): answers are never cut
                shorter than those the model was trained to give; 64 without an ftl QA data module.
            eval_do_sample: sample (with `temperature`, `top_p`) instead of greedy/beam search. Off by default:
                greedy answers, and the ROUGE of a test pass, repeat exactly from run to run.
            temperature: sampling temperature.
            top_p: nucleus sampling: keep the most probable tokens up to this total probability.
            num_beams: beams for beam search (with do_sample false).
            generation_seed: sampling seed; each batch draws from `generation_seed + batch index`, so
                generations do not depend on what ran before (training, other batches).
            val_generation_samples: val rows to generate answers for each epoch (val ROUGE); 0 = none.
                The first rows in evaluation order (longest first): generation is slow, whole batches cheaper.
            test_generation_samples: test rows to generate answers for (None = all; 0 = no ROUGE).
            do_sample: the earlier name of `eval_do_sample` (still read from old configs and checkpoints).
            loss_tokens: how a training batch's summed answer-token loss is scaled. "epoch" (default): divided
                by the mean answer tokens per training batch of the epoch (from the data), so every answer token
                weighs the same in whichever batch it falls. "batch": divided by the batch's own answer tokens (a
                per-batch mean, as HF Trainer and TRL do across accumulation windows); with ftl's length-grouped
                batches that gives a short answer's tokens several times a long answer's weight. Measured
                (benchmarks/sft_peer.py, smollm2-135m, 128 MedQuAD pairs, 1 epoch, no clipping): token-weighted
                test loss 2.0661 -> 2.0486 and 2.0689 -> 2.0540 (data seeds 42, 43) going from "batch" to "epoch".
                With gradient clipping (configs/medquad.yaml clips at 1.0) a step whose gradient norm is above the
                clip is rescaled and the choice drops out (clipped, random batches, seeds 42-44: identical losses).
                The logged `train/loss` is the per-batch mean either way.
        """
        if max_new_tokens is not None and max_new_tokens < 1:
            raise FTLError(f"model.max_new_tokens must be a positive integer, got {max_new_tokens}")
        if loss_tokens not in ("batch", "epoch"):
            raise FTLError(f"model.loss_tokens must be 'batch' or 'epoch', got {loss_tokens!r}")
        super().__init__(pretrained=pretrained, **kwargs)
        self.val_loss, self.test_loss = self._mean(), self._mean()
        self.val_rouge, self.test_rouge = rouge_metric(), rouge_metric()
        self._generated = 0
        self._sampling = eval_do_sample if do_sample is None else do_sample
        self._max_new_tokens = max_new_tokens
        self._stop_ids: list[int] | None = None
        self._gen_tokens, self._gen_seconds = 0, 0.0
        self._tokens_per_batch: float | None = None

    @staticmethod
    def _mean():
        from torchmetrics import MeanMetric

        # Updated with (batch mean, number of tokens): the weighted mean is sum of token losses / tokens.
        return MeanMetric()

    # ------------------------------------------------------------------ tokenizer and special ids
    @property
    def tokenizer(self):
        """The data module's tokenizer (one source of truth), else the tokenizer of `pretrained`."""
        from ftl.data.text import TextDataModule

        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, TextDataModule):
            return datamodule.tokenizer
        if getattr(self, "_own_tokenizer", None) is None:
            from ftl.hub import load_tokenizer

            tok = load_tokenizer(self.hparams.pretrained, trust_remote_code=self.hparams.trust_remote_code)
            if tok.pad_token is None:  # as QADataModule does: EOS pads (attention masks hide it)
                tok.pad_token = tok.eos_token
            self._own_tokenizer = tok
        return self._own_tokenizer

    def setup(self, stage: str) -> None:
        """Give the model the tokenizer's pad id and the data's stop tokens (EOS, and the chat template's end of
        turn), so `generate` and a saved model agree with the data; settle `max_new_tokens`."""
        tok = self.tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else self.model.config.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        stops = list(getattr(datamodule, "stop_token_ids", None) or [eos])
        self._stop_ids = stops
        for config in (self.model.config, self.model.generation_config):
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = pad
        current = self.model.generation_config.eos_token_id
        current = [] if current is None else [current] if isinstance(current, int) else list(current)
        self.model.generation_config.eos_token_id = current + [i for i in stops if i not in current] or None
        if stage == "fit" and self.hparams.get("loss_tokens", "epoch") == "epoch":
            self._tokens_per_batch = scored_tokens_per_batch(datamodule)
        if self._max_new_tokens is None:
            longest = datamodule.longest_completion() if hasattr(datamodule, "longest_completion") else None
            self._max_new_tokens = max(1, longest) if longest else 64
            if self._trainer is not None and self.trainer.is_global_zero and stage in ("fit", "test", "validate"):
                print(f"ftl: max_new_tokens {self._max_new_tokens} (the longest training completion"
                      f"{'' if longest else ': none found, default'})")

    @property
    def max_new_tokens(self) -> int:
        """Tokens generated at most per answer (`max_new_tokens`, or the value `setup` derived from the data)."""
        return self._max_new_tokens or 64

    # ------------------------------------------------------------------ forward and loss
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for a loss batch. `use_cache=False`: a loss pass never reuses keys and values, and with a cache
        transformers skips packed-row detection (`masking_utils._preprocess_mask_arguments` only reads
        `position_ids` when there is no cache), so packed sequences attended to each other (measured: logits
        off by 0.22 on the second sequence of a row, equal to 1e-7 without the cache)."""
        if "position_ids" in batch:  # packed rows: the positions mark the sequences, no mask (ftl.data.packing)
            return self.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        total, count = token_loss_sum(self(batch), batch["labels"])
        loss = total / count.clamp(min=1)
        scaled = loss if self._tokens_per_batch is None else total / self._tokens_per_batch
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch["input_ids"].shape[0])
        return scaled

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        if stage == "test":  # per row too: each question's loss is in its record (intervals, paired tests)
            row_sums, row_counts = token_loss_rows(self(batch), batch["labels"])
            total, count = row_sums.sum(), row_counts.sum()
        else:
            total, count = token_loss_sum(self(batch), batch["labels"])
        if count > 0:
            getattr(self, f"{stage}_loss").update(total / count, weight=count)
        limit = self.hparams.val_generation_samples if stage == "val" else self.hparams.test_generation_samples
        room = len(batch["input_ids"]) if limit is None else max(0, limit - self._generated)
        if self.trainer.sanity_checking or (room == 0 and stage != "test"):
            return
        records = self._generate_records(batch, batch_idx, stage, room, every_row=stage == "test")
        generated = [r for r in records if r.prediction is not None]
        self._generated += len(generated)
        if generated:
            getattr(self, f"{stage}_rouge").update([r.prediction for r in generated],
                                                    [r.reference for r in generated])
        if stage == "test":
            for record, scores in zip(generated, rouge_per_row([r.prediction for r in generated],
                                                               [r.reference for r in generated]), strict=True):
                record.metrics.update({key.removesuffix("_fmeasure"): value for key, value in scores.items()})
            for record, row_sum, row_count in zip(records, row_sums.tolist(), row_counts.tolist(), strict=True):
                if row_count > 0:
                    record.metrics["loss"], record.weights["loss"] = row_sum / row_count, float(row_count)
            self._records += records

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int = 0) -> list[str]:
        """Answers to left-padded prompts, decoded without special tokens and surrounding whitespace.

        Batched with the KV cache (transformers' default); stops at any stop token. Counts the tokens generated
        (each row up to and including its stop token) and the time taken, for `<stage>/gen_tokens_per_sec`.
        """
        hp = self.hparams
        tok = self.tokenizer
        stops = self._stop_ids or [tok.eos_token_id]
        options: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self._sampling,
            "num_beams": hp.num_beams,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": stops,
        }
        if self._sampling:  # passing these without sampling makes transformers warn
            options.update(temperature=hp.temperature, top_p=hp.top_p)
        else:  # a checkpoint's generation_config may carry sampling settings; greedy means greedy
            options.update(temperature=None, top_p=None, top_k=None)
        device = input_ids.device
        forked = [device] if device.type != "cpu" else []
        start = time.perf_counter()
        with torch.random.fork_rng(devices=forked, device_type=device.type if forked else "cuda"):
            torch.manual_seed(hp.generation_seed + seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        new_tokens = out[:, input_ids.shape[1]:]
        self._gen_tokens += generated_tokens(new_tokens, stops)
        self._gen_seconds += time.perf_counter() - start
        return [text.strip() for text in tok.batch_decode(new_tokens, skip_special_tokens=True)]

    def _generate_records(self, batch: dict[str, torch.Tensor], batch_idx: int, split: str, n: int,
                          every_row: bool = False) -> list[Record]:
        """Generate for the first `n` rows of the batch: records with question and full reference (from the data
        module, or read back from the tokens without one); with `every_row`, the other rows' records follow,
        without a generated answer (`prediction` None)."""
        ids, mask = batch["prompt_input_ids"][:n], batch["prompt_attention_mask"][:n]
        generated: list[str | None] = []
        if len(ids):
            keep = int(mask.sum(0).nonzero().min()) if mask.any() else 0  # drop columns that are padding in all rows
            generated = list(self.generate(ids[:, keep:], mask[:, keep:], seed=batch_idx))
        if every_row:
            generated += [None] * (len(batch["prompt_input_ids"]) - len(generated))
            ids, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
        records = [Record(prediction=text) for text in generated]
        if self.data_columns(split) == (None, None):  # no ftl data module: decode question and reference
            tok = self.tokenizer
            for record, p, m, lab in zip(records, ids, mask, batch["labels"][: len(records)], strict=True):
                record.inputs = {"question": tok.decode(p[m.bool()], skip_special_tokens=True).strip()}
                record.reference = tok.decode(lab[lab != IGNORE_INDEX], skip_special_tokens=True).strip()
        records = self.index_records(batch, records, split)
        for record in records:
            record.reference = "" if record.reference is None else str(record.reference).strip()
        return records

    def predict_records(self, batch: dict[str, torch.Tensor]) -> list[Record]:
        """The generated answer, per question."""
        texts = self.generate(batch["prompt_input_ids"], batch["prompt_attention_mask"], seed=0)
        return [Record(prediction=text) for text in texts]

    # ------------------------------------------------------------------ epoch-end metrics
    def on_validation_epoch_start(self) -> None:
        self._generated, self._gen_tokens, self._gen_seconds = 0, 0, 0.0

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._generated, self._gen_tokens, self._gen_seconds = 0, 0, 0.0

    def epoch_end(self, stage: str) -> None:
        if stage == "train":
            return
        loss_metric, rouge = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_rouge")
        values: dict[str, float] = {}
        if loss_metric.update_called:
            loss = float(loss_metric.compute())
            values[f"{stage}/loss"] = loss
            values[f"{stage}/perplexity"] = math.exp(loss) if loss < 700 else math.inf
        if rouge.update_called:
            scores = rouge.compute()
            values.update({f"{stage}/{key}": float(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS})
            values[f"{stage}/gen_tokens"] = float(self._gen_tokens)
            values[f"{stage}/gen_tokens_per_sec"] = self._gen_tokens / max(self._gen_seconds, 1e-9)
        loss_metric.reset()
        rouge.reset()
        if values:
            self.log_dict(values, sync_dist=False)  # already synced by torchmetrics
