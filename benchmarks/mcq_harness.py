"""Check that `ftl mcq` scores multiple choice exactly as lm-evaluation-harness does (acc, acc_norm).

Installs nothing. Run it with a Python that has both lm-eval and ftl, kept apart from the project's venv
(lm-eval pins its own versions of datasets, transformers, ...); about 1 min on 2 CPU cores, offline:

    python3 -m venv /work/venvs/lmeval && /work/venvs/lmeval/bin/pip install torch==2.13.0 -e . "lm-eval[hf]"
    /work/venvs/lmeval/bin/python benchmarks/mcq_harness.py | tee benchmarks/results/mcq_harness.txt

For two tiny random models built here without downloads (a GPT-2 whose tokenizer adds no BOS, and a Llama
whose tokenizer adds one, so both paths of the harness's tokenization run) and 24 MMLU-style items from the
six MMLU medical subjects, it runs:

- the harness: `simple_evaluate` with `HFLM` on local tasks. The `mmlu` tasks `include` the harness's own
  `mmlu/default/mmlu_<subject>.yaml` (its description and `_default_template_yaml` prompt), with the data
  from a local JSONL in `cais/mmlu`'s export format and `acc_norm` added to the metrics; the `qa` task asks
  "Question: {question}\\nAnswer:" with the choice texts as choices.
- ftl: `ftl.commands.mcq.evaluate` on the same items with `--prompt_format mmlu` / `qa`.

It prints, per model and format, the largest |log-likelihood difference| over all (item, choice) pairs
(next to the smallest gap between an item's best and second-best choice, which a difference would have to
bridge to change an answer), how many (context, continuation) pairs differ once trailing whitespace of the
context is moved to the continuation (as `_encode_pair` does before tokenizing), and acc/acc_norm from each;
it exits 1 unless the log-likelihoods agree within 1e-4, no pair differs, and every item's acc and acc_norm
are equal. Progress and lm-eval's log go to stderr, the results to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_key] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TOLERANCE = 1e-4
SUBJECTS = ["anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
            "professional_medicine"]
# 24 items, 4 per subject, answers spread over A-D; choice lengths vary so acc and acc_norm can disagree.
ITEMS = [
    ("anatomy", "Which bone is the longest in the human body?", ["Femur", "Tibia", "Humerus", "Radius"], 0),
    ("anatomy", "The heart has how many chambers?", ["Two", "Three", "Four", "Five"], 2),
    ("anatomy", "Which organ produces bile?", ["Pancreas", "Liver", "Spleen", "Stomach"], 1),
    ("anatomy", "The diaphragm is innervated by which nerve?",
     ["Vagus nerve", "Intercostal nerves", "Accessory nerve", "Phrenic nerve"], 3),
    ("clinical_knowledge", "What is a normal resting adult heart rate?",
     ["20-40 beats per minute", "60-100 beats per minute", "120-160 beats per minute", "200 beats per minute"], 1),
    ("clinical_knowledge", "Which sign suggests dehydration?",
     ["Moist mucous membranes", "Bradycardia", "Reduced skin turgor and dry mouth", "Polyuria"], 2),
    ("clinical_knowledge", "How long should hands be washed with soap?",
     ["At least 20 seconds", "2 seconds", "5 minutes", "It does not matter"], 0),
    ("clinical_knowledge", "Which blood pressure reading is hypertensive?",
     ["110/70", "100/60", "115/75", "160/100"], 3),
    ("college_biology", "Where does the Krebs cycle take place?",
     ["Nucleus", "Mitochondrial matrix", "Golgi apparatus", "Cell membrane"], 1),
    ("college_biology", "DNA is made of which subunits?", ["Amino acids", "Fatty acids", "Nucleotides", "Sugars"], 2),
    ("college_biology", "Which molecule carries the cell's energy?", ["ATP", "DNA", "RNA", "Glucagon"], 0),
    ("college_biology", "Meiosis produces cells that are",
     ["diploid", "identical to the parent", "polyploid", "haploid and genetically different"], 3),
    ("college_medicine", "Insulin is secreted by which cells?",
     ["Alpha cells", "Beta cells of the pancreatic islets", "Delta cells", "Acinar cells"], 1),
    ("college_medicine", "Which vitamin deficiency causes scurvy?",
     ["Vitamin A", "Vitamin D", "Vitamin C", "Vitamin K"], 2),
    ("college_medicine", "The main buffer of the blood is", ["bicarbonate", "phosphate", "protein", "ammonia"], 0),
    ("college_medicine", "Which hormone lowers blood calcium?", ["Parathyroid hormone", "Cortisol", "Vitamin D",
                                                                  "Calcitonin"], 3),
    ("medical_genetics", "Cystic fibrosis is inherited in which pattern?",
     ["X-linked dominant", "Autosomal recessive", "Autosomal dominant", "Mitochondrial"], 1),
    ("medical_genetics", "Down syndrome is caused by an extra copy of chromosome", ["13", "18", "21", "X"], 2),
    ("medical_genetics", "How many chromosomes does a normal human cell have?", ["46", "23", "44", "48"], 0),
    ("medical_genetics", "Huntington disease is caused by which kind of mutation?",
     ["Point deletion", "Translocation", "Monosomy", "Trinucleotide repeat expansion"], 3),
    ("professional_medicine", "First-line treatment for anaphylaxis is",
     ["oral antihistamine", "intramuscular epinephrine", "inhaled salbutamol", "observation"], 1),
    ("professional_medicine", "A patient with crushing chest pain should first receive", ["antibiotics", "a laxative",
                                                                                         "aspirin", "a diuretic"], 2),
    ("professional_medicine", "The most common cause of iron deficiency anemia in adults is",
     ["chronic blood loss", "excess vitamin C", "sunlight", "high fibre diet"], 0),
    ("professional_medicine", "Which drug reverses opioid overdose?", ["Flumazenil", "Atropine", "Glucagon",
                                                                       "Naloxone"], 3),
]
QA_TASK = """task: ftlbench_qa
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question.strip()}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""
MMLU_TASK = """include: {harness_yaml}
task: ftlbench_mmlu_{subject}
tag: ftlbench_mmlu
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
"""


def texts() -> list[str]:
    out = []
    for subject, question, choices, _ in ITEMS:
        out.append(f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.")
        out.append(f"Question: {question}\nAnswer: " + " ".join(choices))
        out.append("\n".join(f"{letter}. {c}" for letter, c in zip("ABCD", choices, strict=True)) + "\nAnswer: A B C D")
    return out


def build_models(root: Path) -> dict[str, Path]:
    """Two tiny random causal LMs with byte-level BPE tokenizers trained on the items: GPT-2 (no BOS added)
    and Llama (the tokenizer adds <s> in front, as Llama's does)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folders = {}
    for kind in ("gpt2", "llama"):
        folder = root / kind
        bpe = ByteLevelBPETokenizer()
        specials = ["<|endoftext|>"] if kind == "gpt2" else ["<s>", "</s>", "<unk>"]
        bpe.train_from_iterator(texts(), vocab_size=600, min_frequency=2, special_tokens=specials,
                                show_progress=False)
        torch.manual_seed(0)
        if kind == "gpt2":
            eos = "<|endoftext|>"
            tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos,
                                          unk_token=eos, model_max_length=512)
            model = GPT2LMHeadModel(GPT2Config(
                vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=2, n_head=2, initializer_range=0.2,
                bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
        else:
            bpe._tokenizer.post_processor = TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
            tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                          unk_token="<unk>", model_max_length=512)
            model = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        folders[kind] = folder
    return folders


def write_data(root: Path) -> tuple[Path, dict[str, Path]]:
    """All items in one JSONL in `cais/mmlu`'s `to_json` format, and one file per subject for the harness."""
    rows = [{"question": q, "subject": s, "choices": c, "answer": a} for s, q, c, a in ITEMS]
    everything = root / "mmlu_medical.jsonl"
    everything.write_text("".join(json.dumps(r) + "\n" for r in rows))
    per_subject = {}
    for subject in SUBJECTS:
        per_subject[subject] = root / f"{subject}.jsonl"
        per_subject[subject].write_text("".join(json.dumps(r) + "\n" for r in rows if r["subject"] == subject))
    return everything, per_subject


def write_tasks(root: Path, everything: Path, per_subject: dict[str, Path]) -> Path:
    import lm_eval

    harness_mmlu = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "ftlbench_qa.yaml").write_text(QA_TASK.format(data=everything))
    for subject, data in per_subject.items():
        (tasks / f"ftlbench_mmlu_{subject}.yaml").write_text(
            MMLU_TASK.format(harness_yaml=harness_mmlu / f"mmlu_{subject}.yaml", subject=subject, data=data))
    return tasks


def normalised(context: str, continuation: str) -> tuple[str, str]:
    """The pair after `_encode_pair` moves the context's trailing whitespace to the continuation (what is
    tokenized): ftl's qa pair ("...Answer: ", "text") and the harness's ("...Answer:", " text") are the same."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def margin(lls: list[float]) -> float:
    """How far the best choice is ahead of the runner-up."""
    top = sorted(lls, reverse=True)
    return top[0] - top[1]


def harness_scores(model_dir: Path, tasks_dir: Path, prompt_format: str) -> dict[tuple[str, str], dict]:
    """(subject, question) -> {lls, acc, acc_norm, arguments} from lm-eval's own logged samples."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=8)
    names = ["ftlbench_qa"] if prompt_format == "qa" else [f"ftlbench_mmlu_{s}" for s in SUBJECTS]
    out = simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(tasks_dir)),
                          bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # simple_evaluate resets it
    scores = {}
    for name in names:
        for sample in out["samples"][name]:
            doc = sample["doc"]
            scores[(doc["subject"], doc["question"])] = {
                "lls": [float(r[0][0]) for r in sample["resps"]],
                "acc": sample["acc"], "acc_norm": sample["acc_norm"],
                "arguments": [tuple(a) for a in sample["arguments"]],
            }
    return scores


def main() -> int:
    import lm_eval
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftl.commands.mcq import choice_requests, evaluate, load_items

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    print(f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else '?'}, torch {torch.__version__}, "
          f"{len(ITEMS)} items x 4 choices from {len(SUBJECTS)} subjects, tolerance {TOLERANCE:g}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        everything, per_subject = write_data(root)
        tasks_dir = write_tasks(root, everything, per_subject)
        items = load_items(everything)  # the MMLU export, read as ftl mcq reads it
        for kind, model_dir in build_models(root).items():
            model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
            tok = AutoTokenizer.from_pretrained(model_dir)
            bos = tok("Answer:")["input_ids"][0] == tok.bos_token_id
            for prompt_format in ("mmlu", "qa"):
                theirs = harness_scores(model_dir, tasks_dir, prompt_format)
                metrics, records = evaluate(model, tok, items, batch_size=8, prompt_format=prompt_format)
                worst, strings, acc_diff, norm_diff, acc_h, norm_h, gap = 0.0, 0, 0, 0, 0.0, 0.0, float("inf")
                for item, record in zip(items, records, strict=True):
                    h = theirs[(item["subject"], item["question"])]
                    worst = max(worst, *(abs(a - b) for a, b in zip(record["logprobs"], h["lls"], strict=True)))
                    mine = [normalised(c, t) for c, t, _ in choice_requests(item, prompt_format)]
                    strings += sum(m != normalised(*a) for m, a in zip(mine, h["arguments"], strict=True))
                    gap = min(gap, margin(h["lls"]))
                    acc_diff += float(record["predicted"] == record["answer"]) != h["acc"]
                    norm_diff += float(record["predicted_norm"] == record["answer"]) != h["acc_norm"]
                    acc_h += h["acc"] / len(items)
                    norm_h += h["acc_norm"] / len(items)
                passed = worst <= TOLERANCE and strings == 0 and acc_diff == 0 and norm_diff == 0
                ok &= passed
                print(f"{kind} (tokenizer adds BOS: {bos}), --prompt_format {prompt_format}: "
                      f"{'OK' if passed else 'MISMATCH'}\n"
                      f"  max |ll ftl - ll harness| {worst:.2e} over {4 * len(items)} (item, choice) pairs; "
                      f"smallest best-vs-runner-up margin {gap:.2e}\n"
                      f"  (context, continuation) pairs that differ: {strings}\n"
                      f"  acc      ftl {metrics['accuracy']:.4f}  harness {acc_h:.4f}  items that differ {acc_diff}\n"
                      f"  acc_norm ftl {metrics['accuracy_norm']:.4f}  harness {norm_h:.4f}  items that differ "
                      f"{norm_diff}")
    print("ftl mcq equals lm-evaluation-harness" if ok else "ftl mcq DIFFERS from lm-evaluation-harness")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
