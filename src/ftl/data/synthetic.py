"""A small synthetic health-text classification dataset, generated offline from a seed.

Why it exists: the quickstart and the tests need a dataset that is always there (no network, no
licence question, no multi-MB download) and that behaves like a real task -- a bag-of-words model
should do clearly better than chance but not perfectly, so a fine-tuned transformer has something
to show. Sentences are short clinical notes and patient messages built from templates and slot
vocabulary. The classes deliberately share words ("pain", "patient", "weeks", "worse at night",
shared symptoms such as chest pain or nausea, tests like a CBC, home medications and history from
other specialties) and mention other classes' symptoms under negation ("denies chest pain"), so no
single keyword gives the label away.

Everything is drawn from ``random.Random`` instances seeded from the ``seed`` argument (never the
global random state), so the same arguments always give the same rows and the same bytes on disk.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from ftl.data.classification import TextClassificationDataModule
from ftl.data.text import write_csv_splits
from ftl.errors import FTLError
from ftl.hub import cache_root

__all__ = ["LABEL_NAMES", "SyntheticHealthDataModule", "add_label_noise", "make_examples", "write_splits"]

#: Class names; a row's ``label`` is an index into this list.
LABEL_NAMES: list[str] = [
    "cardiovascular",
    "respiratory",
    "gastrointestinal",
    "neurological",
    "mental_health",
]

_CARDIO, _RESP, _GI, _NEURO, _MENTAL = range(len(LABEL_NAMES))
# How much signal a row carries. Tuned so TF-IDF + logistic regression trained on 600 rows scores
# roughly 0.85-0.93 on clean held-out rows: clearly learnable, clearly not solved.
_P_CORE1 = 0.9  # first symptom is class-specific (else a shared one)
_P_CORE2 = 0.6  # same for the second symptom
_P_NEG = 0.35  # add a negated symptom of another class
_P_TEST = 0.8  # an ordered test comes from the row's own class
_P_MED = 0.7  # a medication comes from the row's own class

# Symptoms that point to one class (as far as a single phrase can).
_CORE_SYMPTOMS: dict[int, list[str]] = {
    _CARDIO: [
        "chest pressure radiating to the left arm",
        "swelling in both ankles",
        "an irregular heartbeat",
        "calf pain when walking",
        "trouble breathing when lying flat",
        "high blood pressure readings at home",
        "a racing heartbeat on exertion",
        "jaw pain with exertion",
        "leg swelling by the end of the day",
    ],
    _RESP: [
        "a productive cough",
        "wheezing",
        "green sputum",
        "fever and chills",
        "sharp pain with deep breaths",
        "a sore throat with congestion",
        "coughing up blood",
        "a dry cough at night",
        "noisy breathing",
    ],
    _GI: [
        "abdominal pain",
        "heartburn after meals",
        "bloating",
        "diarrhea",
        "constipation",
        "black tarry stools",
        "cramping in the lower abdomen",
        "trouble swallowing",
        "acid reflux",
        "blood in the stool",
    ],
    _NEURO: [
        "numbness in the left hand",
        "tingling in both feet",
        "blurred vision",
        "slurred speech",
        "migraines with aura",
        "seizures",
        "a tremor in the right hand",
        "memory lapses",
        "weakness on one side",
        "vertigo when turning the head",
    ],
    _MENTAL: [
        "low mood",
        "anxiety",
        "panic attacks",
        "racing thoughts",
        "loss of interest in hobbies",
        "feelings of hopelessness",
        "irritability",
        "constant worry",
        "intrusive thoughts",
        "crying spells",
    ],
}

# Symptoms that fit several classes: a row built only from these is genuinely ambiguous.
_SHARED_SYMPTOMS: dict[str, tuple[int, ...]] = {
    "chest pain": (_CARDIO, _RESP, _GI),
    "chest tightness": (_CARDIO, _RESP, _MENTAL),
    "shortness of breath": (_CARDIO, _RESP, _MENTAL),
    "dizziness": (_CARDIO, _NEURO),
    "fainting spells": (_CARDIO, _NEURO),
    "palpitations": (_CARDIO, _MENTAL),
    "sweating": (_CARDIO, _MENTAL),
    "nausea": (_GI, _NEURO),
    "vomiting": (_GI, _NEURO),
    "headaches": (_NEURO, _MENTAL),
    "trouble concentrating": (_NEURO, _MENTAL),
    "trouble sleeping": (_MENTAL, _RESP),
    "loss of appetite": (_GI, _MENTAL),
    "weight loss": (_GI, _MENTAL),
    "a chronic cough": (_RESP, _GI),
    "fatigue": (_CARDIO, _RESP, _GI, _NEURO, _MENTAL),
    "pain": (_CARDIO, _GI, _NEURO),
}
_SHARED_BY_CLASS: dict[int, list[str]] = {
    c: [s for s, owners in _SHARED_SYMPTOMS.items() if c in owners] for c in range(len(LABEL_NAMES))
}

_TESTS: dict[int, list[str]] = {
    _CARDIO: [
        "an ECG",
        "a troponin",
        "an echocardiogram",
        "a lipid panel",
        "a stress test",
        "a Holter monitor",
    ],
    _RESP: [
        "a chest X-ray",
        "spirometry",
        "pulse oximetry",
        "a sputum culture",
        "a COVID-19 swab",
        "a chest CT",
    ],
    _GI: [
        "an abdominal ultrasound",
        "liver function tests",
        "stool studies",
        "an upper endoscopy",
        "a lipase",
    ],
    _NEURO: ["an MRI of the brain", "a head CT", "an EEG", "a nerve conduction study", "a B12 level"],
    _MENTAL: ["a PHQ-9", "a GAD-7", "a referral to counseling", "a safety screen"],
}
_SHARED_TESTS = ["a CBC", "a basic metabolic panel", "a TSH", "a urinalysis", "vital signs every 4 hours"]

_MEDS: dict[int, list[str]] = {
    _CARDIO: ["aspirin", "metoprolol", "lisinopril", "atorvastatin", "furosemide", "nitroglycerin"],
    _RESP: [
        "an albuterol inhaler",
        "prednisone",
        "amoxicillin",
        "azithromycin",
        "fluticasone",
        "montelukast",
    ],
    _GI: ["omeprazole", "ondansetron", "loperamide", "famotidine", "docusate", "simethicone"],
    _NEURO: ["sumatriptan", "gabapentin", "levetiracetam", "topiramate", "meclizine"],
    _MENTAL: ["sertraline", "fluoxetine", "escitalopram", "bupropion", "hydroxyzine", "lorazepam"],
}
_SHARED_MEDS = ["ibuprofen", "acetaminophen", "a multivitamin", "melatonin", "metformin"]

# Past history: drawn from any class, so it often points at the wrong one (as comorbidities do).
_HISTORY: dict[int, list[str]] = {
    _CARDIO: ["hypertension", "atrial fibrillation", "heart failure", "a prior heart attack"],
    _RESP: ["asthma", "COPD", "recurrent pneumonia", "sleep apnea"],
    _GI: ["GERD", "IBS", "gallstones", "ulcerative colitis"],
    _NEURO: ["migraine", "epilepsy", "a prior stroke", "neuropathy"],
    _MENTAL: ["depression", "generalized anxiety disorder", "PTSD", "bipolar disorder"],
}
_SHARED_HISTORY = ["type 2 diabetes", "obesity", "hypothyroidism", "high cholesterol", "chronic back pain"]

_SEXES = ["man", "woman", "male", "female"]
_UNITS = ["days", "weeks", "months"]
_WORD_NUMBERS = ["two", "three", "four", "five", "six", "several", "a few"]
_MODIFIERS = [
    "worse at night",
    "worse with activity",
    "better with rest",
    "on and off",
    "getting worse",
    "constant",
    "worse in the morning",
    "worse after eating",
    "worse when stressed",
    "not improving",
]
_RELATIONS = ["mother", "father", "husband", "wife", "son", "daughter"]

# Clinical-note templates ({desc} is a capitalised patient descriptor).
_NOTE_TEMPLATES = [
    "{desc} presents with {s1} for {dur}, {mod}.",
    "{desc} reports {s1} and {s2} over {dur}.",
    "{desc} complains of {s1}, {mod}, for {dur}.",
    "Pt c/o {s1} x {dur}, {mod}.",
    "{desc} seen for {s1} and {s2}, {mod}.",
    "Follow-up visit for {s1}, {mod}, ongoing for {dur}.",
]
# Patient-message templates (first person).
_MESSAGE_TEMPLATES = [
    "I've been having {s1} for {dur} and it's {mod}.",
    "I've had {s1} and {s2} for {dur}, {mod}.",
    "Hi, my {rel} has had {s1} for {dur}, {mod}.",
    "For {dur} now I get {s1}, {mod}.",
]


def _descriptor(rng: random.Random) -> str:
    """A patient descriptor; ages and phrasings vary so that texts rarely repeat."""
    age = rng.randint(18, 89)
    sex = rng.choice(_SEXES)
    return rng.choice(
        [
            f"A {age}-year-old {sex}",
            f"{age} y/o {sex}",
            f"This {age}-year-old {sex}",
            "The patient",
            "Patient",
            "Elderly patient" if age >= 70 else "Young adult patient" if age < 30 else "Adult patient",
        ]
    )


def _duration(rng: random.Random) -> str:
    """A duration such as "3 weeks" or "a few days"; words shared by every class."""
    unit = rng.choice(_UNITS)
    if rng.random() < 0.5:
        return f"{rng.randint(2, 12)} {unit}"
    return f"{rng.choice(_WORD_NUMBERS)} {unit}"


def _symptom(rng: random.Random, label: int, p_core: float) -> str:
    """A symptom of ``label``: usually a class-specific one, otherwise one shared with other classes."""
    if rng.random() < p_core:
        return rng.choice(_CORE_SYMPTOMS[label])
    return rng.choice(_SHARED_BY_CLASS[label])


def _pick(
    rng: random.Random,
    label: int,
    own: dict[int, list[str]],
    shared: list[str],
    p_own: float,
    p_shared: float,
) -> str:
    """Draw from this class's list, the shared list or another class's list (realistic cross-talk)."""
    r = rng.random()
    if r < p_own:
        return rng.choice(own[label])
    if r < p_own + p_shared:
        return rng.choice(shared)
    other = rng.choice([c for c in own if c != label])
    return rng.choice(own[other])


def _negated_symptom(rng: random.Random, label: int) -> str:
    """A symptom that is NOT this class's: negations put other classes' words into the text."""
    other = rng.choice([c for c in range(len(LABEL_NAMES)) if c != label])
    if rng.random() < 0.6:
        symptom = rng.choice(_CORE_SYMPTOMS[other])
    else:
        options = [s for s in _SHARED_BY_CLASS[other] if label not in _SHARED_SYMPTOMS[s]]
        symptom = rng.choice(options or _CORE_SYMPTOMS[other])
    return symptom.removeprefix("a ").removeprefix("an ")  # "No a chronic cough" -> "No chronic cough"


def _sentence(rng: random.Random, label: int) -> str:
    """One example text for ``label``: a main template plus optional negation/test/medication/history."""
    message = rng.random() < 0.3
    template = rng.choice(_MESSAGE_TEMPLATES if message else _NOTE_TEMPLATES)
    s1 = _symptom(rng, label, p_core=_P_CORE1)
    s2 = _symptom(rng, label, p_core=_P_CORE2)
    if s2 == s1:
        s2 = rng.choice(_SHARED_BY_CLASS[label])
    if s2 == s1:
        s2 = "fatigue" if s1 != "fatigue" else "pain"
    parts = [
        template.format(
            desc=_descriptor(rng),
            s1=s1,
            s2=s2,
            dur=_duration(rng),
            mod=rng.choice(_MODIFIERS),
            rel=rng.choice(_RELATIONS),
        )
    ]
    if rng.random() < _P_NEG:
        neg = _negated_symptom(rng, label)
        if message:
            parts.append(rng.choice([f"No {neg} though.", f"I don't have {neg}."]))
        else:
            parts.append(rng.choice([f"Denies {neg}.", f"No {neg}.", f"Negative for {neg}."]))
    if rng.random() < 0.45:
        test = _pick(rng, label, _TESTS, _SHARED_TESTS, p_own=_P_TEST, p_shared=0.15)
        if message:
            parts.append(f"The doctor ordered {test}.")
        else:
            parts.append(rng.choice([f"Plan: {test}.", f"Will obtain {test}.", f"Ordered {test}."]))
    if rng.random() < 0.4:
        med = _pick(rng, label, _MEDS, _SHARED_MEDS, p_own=_P_MED, p_shared=0.15)
        if message:
            parts.append(rng.choice([f"I'm taking {med}.", f"I tried {med} but it didn't help."]))
        else:
            parts.append(rng.choice([f"Started on {med}.", f"Currently taking {med}.", f"Tried {med}."]))
    if rng.random() < 0.3:
        history = _pick(rng, label, _HISTORY, _SHARED_HISTORY, p_own=0.3, p_shared=0.3)
        parts.append(f"I also have {history}." if message else f"History of {history}.")
    return " ".join(parts)


def _generate(n: int, rng: random.Random, seen: set[str]) -> list[dict]:
    """``n`` rows with balanced labels and texts not already in ``seen`` (which is updated)."""
    k = len(LABEL_NAMES)
    labels = [i % k for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for label in labels:
        for _ in range(1000):
            text = _sentence(rng, label)
            if text not in seen:
                break
        else:
            raise FTLError(f"could not generate {n} distinct synthetic texts; ask for fewer rows")
        seen.add(text)
        rows.append({"text": text, "label": label})
    return rows


def _check_fraction(label_noise: float) -> None:
    if not 0.0 <= label_noise <= 1.0:
        raise FTLError(f"label_noise must be between 0 and 1, got {label_noise}")


def add_label_noise(rows: list[dict], label_noise: float, seed: int = 0) -> list[dict]:
    """Return a copy of ``rows`` in which exactly ``round(label_noise * len(rows))`` rows get another label.

    Kept as a separate seeded pass (its own ``Random``, independent of text generation) so the same
    seed gives the same texts with and without noise, and the noise can be measured exactly.
    """
    _check_fraction(label_noise)
    out = [dict(row) for row in rows]
    rng = random.Random(f"ftl.synthetic.noise:{seed}")
    k = len(LABEL_NAMES)
    for i in sorted(rng.sample(range(len(out)), round(label_noise * len(out)))):
        out[i]["label"] = rng.choice([c for c in range(k) if c != out[i]["label"]])
    return out


def make_examples(n: int, seed: int = 0, label_noise: float = 0.05) -> list[dict]:
    """Generate ``n`` rows ``{"text": str, "label": int}``, deterministic in ``seed``.

    Clean labels are balanced across classes up to rounding and texts are distinct; then a
    ``label_noise`` fraction of rows is relabelled at random (see ``add_label_noise``) to mimic
    annotation errors, which moves the class counts by at most that many rows.
    """
    if n < 0:
        raise FTLError(f"n must be >= 0, got {n}")
    _check_fraction(label_noise)
    rows = _generate(n, random.Random(seed), set())
    return add_label_noise(rows, label_noise, seed) if label_noise else rows


def write_splits(
    out_dir: str | os.PathLike,
    n_train: int = 600,
    n_val: int = 150,
    n_test: int = 150,
    seed: int = 0,
    label_noise: float = 0.05,
) -> Path:
    """Write ``train.csv``, ``val.csv`` and ``test.csv`` (columns ``text,label,label_name``) to ``out_dir``.

    Same layout as the real datasets under shared/data, so the same loader reads both. Each split
    is class-balanced and no text appears in more than one split. Label noise is applied to the
    TRAIN split only: val and test keep their clean labels, so their scores measure how well a model
    recovers the true classes rather than how well it guesses the noise. Files are fully determined
    by the arguments, so writing twice gives byte-identical files. Returns the folder.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 0:
            raise FTLError(f"{name} must be >= 0, got {value}")
    _check_fraction(label_noise)
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = add_label_noise(_generate(n_train, rng, seen), label_noise, seed)
    rows += _generate(n_val, rng, seen) + _generate(n_test, rng, seen)
    rows = [{"text": row["text"], "label": row["label"], "label_name": LABEL_NAMES[row["label"]]} for row in rows]
    return write_csv_splits(Path(out_dir), rows, (n_train, n_val, n_test), ["text", "label", "label_name"])


class SyntheticHealthDataModule(TextClassificationDataModule):
    """The offline quickstart's data module: writes the synthetic splits once, then reads them like any folder."""

    def __init__(
        self,
        *args: Any,
        n_train: int = 600,
        n_val: int = 150,
        n_test: int = 150,
        data_seed: int = 0,
        label_noise: float = 0.05,
        **kwargs: Any,
    ) -> None:
        if not (kwargs.get("data_dir") or kwargs.get("data_files") or kwargs.get("dataset")):
            name = f"n{n_train}-{n_val}-{n_test}-seed{data_seed}-noise{label_noise}"
            kwargs["data_dir"] = str(
                write_splits(cache_root() / "synthetic" / name, n_train, n_val, n_test, data_seed, label_noise)
            )
        super().__init__(*args, **kwargs)
