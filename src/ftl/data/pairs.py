"""Question-answer relevance pairs built from question/answer data (MedQuAD): does this answer answer this question?

Each question becomes two rows of a binary sentence-pair task: with its own answer (label `relevant`) and with
the answer of another, randomly drawn question of the same split (label `irrelevant`). The draw is seeded
(`data.seed` and the split's name), so the same data and seed give the same pairs. Pairs are made after the
splits are (a split carved out of train keeps every copy of a question on one side, as for QA), so a test
question's negative answer comes from the test split too.

Everything else is `TextClassificationDataModule` with a text pair: question as the first text, answer as the
second, length grouping on the pair's length, records and predictions that show both texts.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from ftl.data.classification import TextClassificationDataModule
from ftl.data.text import column, column_error
from ftl.errors import FTLError

RELEVANCE_LABELS = ["irrelevant", "relevant"]


def _normalised(text: Any) -> str:
    return " ".join(str(text).lower().split())


def relevance_pairs(questions: list[Any], answers: list[Any], seed: str,
                    groups: list[Any] | None = None) -> list[tuple[str, str, int]]:
    """(question, answer, label) rows: each question with its own answer (1) and with the answer of another
    question (0), drawn with `random.Random(seed)`. The other question differs in its normalised text and its
    answer differs from the own answer; with `groups` (e.g. the question type), the other question is drawn from
    the same group when the group has one (harder negatives: a symptoms answer for a symptoms question)."""
    n = len(questions)
    rng = random.Random(seed)
    norm_q = [_normalised(q) for q in questions]
    norm_a = [_normalised(a) for a in answers]
    by_group: dict[Any, list[int]] = {}
    for i in range(n):
        by_group.setdefault(groups[i] if groups is not None else None, []).append(i)
    rows: list[tuple[str, str, int]] = []
    for i in range(n):
        pools = [by_group[groups[i]] if groups is not None else range(n), range(n)]
        other = None
        for pool in pools:
            for _ in range(50):  # almost always the first draw; a pool of one question's copies gives up
                j = pool[rng.randrange(len(pool))]
                if norm_q[j] != norm_q[i] and norm_a[j] != norm_a[i]:
                    other = j
                    break
            if other is not None:
                break
        if other is None:
            raise FTLError(f"cannot find another question's answer for question {i + 1} ('{str(questions[i])[:60]}'): "
                           "relevance pairs need at least two different questions per split")
        rows.append((str(questions[i]), str(answers[i]), 1))
        rows.append((str(questions[i]), str(answers[other]), 0))
    return rows


class QARelevanceDataModule(TextClassificationDataModule):
    """Binary question-answer relevance from question/answer rows (default: the MedQuAD hub copy; offline,
    `data_dir` with train/val/test jsonl such as ../shared/data/medquad).

    `text_column`/`text_pair_column` name the question and answer columns (`Question`/`Answer` are found too);
    `negatives_by` names a column (e.g. `qtype`) whose value the negative answer's question shares, for harder
    negatives. `max_samples` caps every split's pair rows.
    """

    def __init__(
        self,
        *args: Any,
        dataset: str | None = "keivalya/MedQuad-MedicalQnADataset",
        text_column: str = "question",
        text_pair_column: str | None = "answer",
        label_names: list[str] | None = None,
        negatives_by: str | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            dataset: hub id of question/answer data (ignored when data_dir or data_files is set).
            text_column: the question column (the first text of each pair).
            text_pair_column: the answer column (the second text).
            label_names: names of the two labels (default: irrelevant, relevant).
            negatives_by: draw each negative answer from a question with the same value in this column
                (e.g. qtype) when there is one; None: from any other question.
        """
        if not text_pair_column:
            raise FTLError("QARelevanceDataModule needs data.text_pair_column (the answer column)")
        super().__init__(*args, dataset=dataset, text_column=text_column, text_pair_column=text_pair_column,
                         label_names=label_names or RELEVANCE_LABELS, **kwargs)
        if len(self._label_names) != 2:
            raise FTLError(f"relevance has two labels (irrelevant, relevant), got label_names {self._label_names}: "
                           "give two names")
        self.negatives_by = negatives_by

    def group_column(self) -> str | None:
        return self.text_column  # a split made here keeps every copy of a question on one side

    def tokenization_settings(self) -> dict[str, Any]:
        return {**super().tokenization_settings(), "negatives_by": self.negatives_by}

    def _prepare_raw(self, raw):
        """Question/answer columns (case-insensitive fallback, as for QA), rows without either dropped; the
        pairs and their labels are made once the splits exist (`_make_missing_splits`)."""
        import datasets

        out = {}
        for split, ds in raw.items():
            for kind, name, option in (("question", self.text_column, "data.text_column"),
                                       ("answer", self.text_pair_column, "data.text_pair_column"),
                                       ("negatives_by", self.negatives_by, "data.negatives_by")):
                if name is None or name in ds.column_names:
                    continue
                matches = [c for c in ds.column_names if c.lower() == name.lower()]
                if len(matches) != 1:
                    raise column_error(kind, name, split, ds.column_names, option)
                ds = ds.rename_column(matches[0], name)
            keep = [i for i, (q, a) in enumerate(zip(column(ds, self.text_column), column(ds, self.text_pair_column),
                                                     strict=True))
                    if q is not None and str(q).strip() and a is not None and str(a).strip()]
            if len(keep) < len(ds):
                print(f"ftl: dropped {len(ds) - len(keep)} rows without a question or answer from the {split} split")
                ds = ds.select(keep).flatten_indices()
            out[split] = ds
        return datasets.DatasetDict(out)

    def _make_missing_splits(self, raw):
        import datasets
        import pyarrow as pa

        raw = super()._make_missing_splits(raw)
        pairs = {}
        for split, ds in raw.items():
            groups = column(ds, self.negatives_by) if self.negatives_by else None
            rows = relevance_pairs(column(ds, self.text_column), column(ds, self.text_pair_column),
                                   seed=f"{self.seed}-{split}", groups=groups)
            table = pa.table({self.text_column: [q for q, _, _ in rows], self.text_pair_column: [a for _, a, _ in rows],
                              self.label_column: [label for _, _, label in rows]})
            # a fingerprint from the source split and what the pairs depend on, so tokenization is cached
            key = hashlib.sha256(repr((ds._fingerprint, self.seed, split, self.text_column, self.text_pair_column,
                                       self.negatives_by)).encode()).hexdigest()[:32]
            pairs[split] = datasets.Dataset(table, fingerprint=key)
        return TextClassificationDataModule._prepare_raw(self, datasets.DatasetDict(pairs))
