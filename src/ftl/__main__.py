"""`python -m ftl ...` and the `ftl` console script.

The top-level `--help` is answered here without importing Lightning and torch (several seconds on a
small machine); every subcommand goes through `ftl.commands.cli.main`.
"""

from __future__ import annotations

import sys

USAGE = """usage: ftl [-h] {fit,validate,test,predict,compare,export,sweep,mcq} ...

Fine-tune small transformers on healthcare text with Lightning: one YAML per task, every value overridable.

subcommands (`ftl <subcommand> --help` lists every option):
  fit        Train a model (then test the best checkpoint when the data has a test split).
  validate   Evaluate a model on the validation split.
  test       Evaluate a model on the test split.
  predict    Predict labels / answers for data.predict_file (or the test split).
  compare    Base model vs fine-tuned model on the same test split, as a table.
  export     Save a checkpoint as a Hugging Face model folder.
  sweep      Run a W&B sweep file locally (no W&B server needed).
  mcq        Multiple-choice accuracy of a causal LM from a {question, choices, answer} JSONL file.

examples:
  ftl fit --config configs/quickstart.yaml
  ftl fit --config configs/depression.yaml --model.pretrained minilm-l6 --data.data_dir data/ --trainer.max_epochs 1
  ftl fit --config configs/depression.yaml --print_config
"""


def run() -> None:
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        print(USAGE)
        return
    from ftl.commands.cli import main

    main()


if __name__ == "__main__":
    run()
