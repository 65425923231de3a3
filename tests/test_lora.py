"""LoRA (PEFT): only adapters and the head train, checkpoints reload, the merged export equals the adapted model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["patient reports chest pressure radiating to the left arm", "low mood and anxiety for several weeks",
         "wheezing and a productive cough"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_data_dir, tiny_bert):
    from tests.helpers import run_cli

    run = tmp_path_factory.mktemp("lora") / "run"
    run_cli("fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.pretrained", str(tiny_bert),
            "--data.data_dir", str(tiny_data_dir), "--data.max_length", "64", "--data.batch_size", "8",
            "--model.lora.r", "4", "--model.lora.alpha", "8", "--model.lora.dropout", "0.0",
            "--model.learning_rate", "1e-2", "--model.warmup_ratio", "0.0", "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--run_dir", str(run))
    return run


def load(run: Path):
    from ftl.models.classifier import SequenceClassifier

    return SequenceClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu",
                                                   weights_only=True).eval()


def logits_of(model, tiny_bert) -> torch.Tensor:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tiny_bert)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_only_adapters_and_the_head_train(lora_run, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from ftl.models.lora import count_parameters

    module = load(lora_run)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable), trainable
    assert any("lora_A" in name for name in trainable) and any("classifier" in name for name in trainable)
    n_trainable, n_total = count_parameters(module)
    assert n_trainable == sum(p.numel() for p in module.parameters() if p.requires_grad) < n_total / 4
    # the run logged the same count
    hparams = yaml.safe_load((lora_run / "hparams.yaml").read_text())
    assert hparams["trainable_params"] == n_trainable and hparams["total_params"] == n_total
    # training moved the adapters (lora_B starts at zero) but left every base weight as pretrained
    states = dict(module.named_parameters())
    assert any(p.abs().sum() > 0 for name, p in states.items() if "lora_B" in name)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=5)
    for name, value in base.bert.named_parameters():
        prefix, leaf = name.rsplit(".", 1)
        wanted = (f"bert.{name}", f"bert.{prefix}.base_layer.{leaf}")  # adapted layers keep theirs in base_layer
        found = [p for key, p in states.items() if key.endswith(wanted)]
        assert len(found) == 1 and torch.equal(found[0], value), name


def test_merged_export_matches_the_adapted_model(lora_run, tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from ftl.models.lora import is_lora, merged_copy

    module = load(lora_run)
    adapted = logits_of(module.model, tiny_bert)
    merged = merged_copy(module.model).eval()
    assert not is_lora(merged) and is_lora(module.model)  # the module keeps its adapters
    assert torch.allclose(logits_of(merged, tiny_bert), adapted, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()  # no peft involved
    assert not any("lora" in key for key in plain.state_dict())
    assert torch.allclose(logits_of(plain, tiny_bert), adapted, atol=1e-5)


def test_fit_exports_a_merged_hf_model(lora_run, tiny_bert):
    """The run's hf_model/ (written at the end of fit from the best checkpoint) is a plain merged model."""
    from transformers import AutoModelForSequenceClassification

    from ftl.models.classifier import SequenceClassifier

    best = next((lora_run / "checkpoints").glob("best-*.ckpt"))
    module = SequenceClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    exported = AutoModelForSequenceClassification.from_pretrained(lora_run / "hf_model").eval()
    assert not any("lora" in key for key in exported.state_dict())
    assert torch.allclose(logits_of(exported, tiny_bert), logits_of(module.model, tiny_bert), atol=1e-5)


def test_bad_lora_settings_are_one_line_errors(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from ftl.errors import FTLError
    from ftl.models.lora import apply_lora

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    with pytest.raises(FTLError, match="target_modules"):
        apply_lora(model, {"target_modules": ["no_such_layer"]}, "SEQ_CLS")
    with pytest.raises(FTLError, match="use only the keys"):
        apply_lora(model, {"rank": 4}, "SEQ_CLS")


def test_causal_lm_takes_the_same_lora_and_export_merges_it(tiny_gpt2):
    from transformers import AutoModelForCausalLM

    from ftl.models.causal_lm import CausalLM
    from ftl.models.lora import export_model, is_lora

    module = CausalLM(pretrained=str(tiny_gpt2), lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert is_lora(module.model) and module.hparams["lora"]["r"] == 4
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    torch.manual_seed(0)
    for name, param in module.named_parameters():  # lora_B starts at zero: give the merge something to do
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5)
    ids = torch.tensor([[5, 17, 42, 8, 99, 3]])
    module.model.eval()
    with torch.no_grad():
        adapted = module.model(input_ids=ids).logits
        merged = export_model(module).eval()  # what hf_model/ and `ftl export` save
        assert not is_lora(merged)
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
        assert not torch.allclose(base(input_ids=ids).logits, adapted, atol=1e-3)


def test_causal_lm_lora_through_a_cli_fit_exports_a_merged_model(tmp_path, tiny_chat_llama, tiny_qa_dir):
    """`ftl fit --config configs/medquad.yaml --model.lora.r 4`: only the adapters train, the test loss drops, and
    the run's hf_model/ is a plain causal LM (no peft) with the fitted model's logits and greedy answers."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftl.models.causal_lm import CausalLM
    from ftl.models.lora import is_lora
    from tests.helpers import run_cli

    common = ["--config", str(ROOT / "configs" / "medquad.yaml"), "--model.pretrained", str(tiny_chat_llama),
              "--data.data_dir", str(tiny_qa_dir), "--data.max_length", "96", "--data.batch_size", "8",
              "--model.max_new_tokens", "8", "--trainer.enable_progress_bar", "false"]
    run_cli("fit", *common, "--model.lora.r", "4", "--model.lora.alpha", "16", "--model.lora.dropout", "0.0",
            "--model.learning_rate", "5e-2", "--model.warmup_ratio", "0.0", "--trainer.max_epochs", "3",
            "--trainer.accumulate_grad_batches", "1", "--model.val_generation_samples", "0",
            "--run_dir", str(tmp_path / "fit"))
    run_cli("test", *common, "--run_dir", str(tmp_path / "base"))
    fit = tmp_path / "fit"
    hparams = yaml.safe_load((fit / "hparams.yaml").read_text())
    assert 0 < hparams["trainable_params"] < hparams["total_params"] / 4
    tuned, base = (json.loads((tmp_path / run / "metrics.json").read_text())["test/loss"] for run in ("fit", "base"))
    assert tuned < base - 0.03  # 6.008 -> 5.946 when written (12 adapter steps on a random 2-layer model)

    best = next((fit / "checkpoints").glob("best-*.ckpt"))
    module = CausalLM.load_from_checkpoint(best, map_location="cpu", weights_only=True).eval()
    assert is_lora(module.model)
    exported = AutoModelForCausalLM.from_pretrained(fit / "hf_model").eval()
    assert not any("lora" in key for key in exported.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(fit / "hf_model")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What causes a cough?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.allclose(exported(**prompt).logits, module.model(**prompt).logits, atol=1e-5)
        pretrained = AutoModelForCausalLM.from_pretrained(tiny_chat_llama).eval()
        assert not torch.allclose(pretrained(**prompt).logits, exported(**prompt).logits, atol=1e-3)  # merged in
        greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        assert torch.equal(exported.generate(**prompt, **greedy), module.model.generate(**prompt, **greedy))
