"""ftl.models.dropout: the CPU dropout keeps torch's statistics and gradients, and the swapped model computes the
same function as the stock one (padding and causal masks included) whenever dropout drops nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftl.models.dropout import ATTENTION_NAME, FastCPUDropout, cpu_dropout, enable_fast_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_scale_match_torch_dropout(p):
    torch.manual_seed(0)
    y = cpu_dropout(torch.ones(2_000_000), p)
    kept = y != 0
    # 2M Bernoulli draws: the standard error of the keep rate is < 0.00036
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.002)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-4)
    # each 64-bit word gives four 16-bit integers: every one of the four lanes must be as random as the others
    lanes = kept.view(-1, 4).float().mean(0)
    assert torch.allclose(lanes, torch.full_like(lanes, 1 - p), atol=0.004)
    assert y.mean().item() == pytest.approx(1.0, abs=0.004)  # unbiased, as torch's inverted dropout


def test_masks_are_independent_of_position_and_between_calls():
    torch.manual_seed(0)
    a, b = cpu_dropout(torch.ones(400_000), 0.5) != 0, cpu_dropout(torch.ones(400_000), 0.5) != 0
    # independent masks agree on half the elements; neighbours are uncorrelated
    assert (a == b).float().mean().item() == pytest.approx(0.5, abs=0.005)
    assert (a[1:] == a[:-1]).float().mean().item() == pytest.approx(0.5, abs=0.005)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)  # numel not a multiple of 4
    y = cpu_dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    kept = (y != 0).float()
    scale = 65536 / (65536 - round(0.3 * 65536))
    assert torch.allclose(x.grad, kept * scale)
    assert torch.allclose(y, x.detach() * kept * scale)


def test_seeded_runs_repeat_and_seeds_differ():
    def draw(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return cpu_dropout(torch.ones(3, 5, 7), 0.5)

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_eval_mode_zero_p_and_p_one():
    x = torch.randn(10, 10)
    layer = FastCPUDropout(0.5).eval()
    assert layer(x) is x
    assert FastCPUDropout(0.0).train()(x) is x
    assert torch.equal(cpu_dropout(x, 1.0), torch.zeros_like(x))
    assert isinstance(layer, nn.Dropout) and "p=0.5" in repr(layer)


def _set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def _stock_and_fast(auto_class, folder, **kwargs):
    torch.manual_seed(0)
    stock = auto_class.from_pretrained(folder, **kwargs).eval()
    torch.manual_seed(0)
    fast = enable_fast_cpu_dropout(auto_class.from_pretrained(folder, **kwargs)).train()
    return stock, fast


def test_classifier_matches_stock_model_with_padding(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    stock, fast = _stock_and_fast(AutoModelForSequenceClassification, tiny_bert, num_labels=3)
    assert fast.config._attn_implementation == ATTENTION_NAME
    assert sum(isinstance(m, FastCPUDropout) for m in fast.modules()) == sum(
        type(m) is nn.Dropout for m in stock.modules()
    ) > 0
    assert stock.state_dict().keys() == fast.state_dict().keys()
    # a p that rounds to "drop nothing" still takes the training paths (custom attention, mask draws)
    _set_dropout(fast, 1e-9)
    enc = AutoTokenizer.from_pretrained(tiny_bert)(
        ["chest pain", "patient reports chest pain and shortness of breath at night"], padding=True, return_tensors="pt"
    )
    assert enc["attention_mask"].min() == 0  # the first row is padded
    with torch.no_grad():
        expected, got = stock(**enc).logits, fast(**enc).logits
    assert (expected - got).abs().max().item() < 1e-5
    # and the padded row's logits are those of the row alone: the padding mask reached the attention
    alone = AutoTokenizer.from_pretrained(tiny_bert)(["chest pain"], return_tensors="pt")
    with torch.no_grad():
        assert (fast(**alone).logits[0] - got[0]).abs().max().item() < 1e-5


def test_causal_lm_matches_stock_model_with_and_without_padding(tiny_gpt2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stock, fast = _stock_and_fast(AutoModelForCausalLM, tiny_gpt2)
    assert fast.config._attn_implementation == ATTENTION_NAME
    _set_dropout(fast, 1e-9)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = ["What is asthma?", "How is gout treated? Treatment for gout includes rest."]
    for enc in (tokenizer(texts[1:], return_tensors="pt"), tokenizer(texts, padding=True, return_tensors="pt")):
        with torch.no_grad():
            expected, got = stock(**enc).logits, fast(**enc).logits
        real = enc["attention_mask"].bool()
        assert (expected[real] - got[real]).abs().max().item() < 1e-5  # causal (no mask) and padded batches


def test_attention_dropout_is_applied_in_training_only(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    stock, fast = _stock_and_fast(
        AutoModelForSequenceClassification, tiny_bert, num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.5, classifier_dropout=0.0,
    )
    ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    with torch.no_grad():
        first, second = fast(input_ids=ids).logits, fast(input_ids=ids).logits
        assert not torch.allclose(first, second)  # only attention dropout is on: it must have dropped something
        assert torch.allclose(fast.eval()(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-6)


def test_speedups_apply_on_cpu_fit_only_and_export_stays_plain(tiny_bert, tmp_path):
    """One place applies the CPU speed-ups, by device and stage: tasks build torch's dropout and SDPA."""
    import json
    from types import SimpleNamespace

    from ftl.models.classifier import SequenceClassifier
    from ftl.reports.export import save_hf_folder
    from ftl.speedups import CPUSpeedups

    def trainer(device: str):
        return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))

    module = SequenceClassifier(pretrained=str(tiny_bert), num_labels=2)
    assert not any(isinstance(m, FastCPUDropout) for m in module.modules())  # a task alone: torch's dropout
    CPUSpeedups().setup(trainer("cpu"), module, "test")
    CPUSpeedups(enabled=False).setup(trainer("cpu"), module, "fit")
    CPUSpeedups().setup(trainer("meta"), module, "fit")  # any other device than a CPU
    assert not any(isinstance(m, FastCPUDropout) for m in module.modules())
    assert module.model.config._attn_implementation == "sdpa"
    CPUSpeedups().setup(trainer("cpu"), module, "fit")
    assert any(isinstance(m, FastCPUDropout) for m in module.modules())
    assert not any(type(m) is torch.nn.Dropout for m in module.modules())
    assert module.model.config._attn_implementation == ATTENTION_NAME
    save_hf_folder(module, tmp_path / "export")
    assert ATTENTION_NAME not in (tmp_path / "export" / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "export" / "config.json").read_text())


def test_dropout_is_live_in_a_cli_fit(tmp_path, tiny_data_dir, tiny_bert, cli):
    """Same seed, same batches: only the dropout masks differ, so the two fits must end apart (were dropout off
    in training, or the option ignored, they would match to the last digit)."""
    import json

    from tests.helpers import fit_args

    losses = []
    for fast in ("true", "false"):
        run_dir = tmp_path / fast
        cli(*fit_args("depression", tiny_data_dir, tiny_bert, run_dir, "--trainer.max_epochs", "1",
                      "--model.learning_rate", "1e-3", "--seed_everything", "7", "--cpu_speedups", fast))
        losses.append(json.loads((run_dir / "metrics.json").read_text())["test/loss"])
    assert losses[0] != losses[1]
