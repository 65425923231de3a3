"""The one optimizer recipe every ftl module uses: AdamW groups without decay on biases and norms, and the
linear / cosine / constant schedules with warmup by steps or by ratio."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ftl.models.optim import OptimizerSettings, configure_adamw, parameter_groups


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Linear(4, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2, bias=False)


def learning_rates(scheduler: str, total: int = 10, **warmup) -> list[float]:
    settings = {"warmup_steps": 0, "warmup_ratio": 0.0, **warmup}
    config = configure_adamw(Block(), OptimizerSettings(learning_rate=1.0, weight_decay=0.1, betas=(0.9, 0.999),
                                                        eps=1e-8, scheduler=scheduler, **settings), total)
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_weight_decay_skips_biases_and_layer_norms():
    model = Block()
    decay, plain = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {"dense.weight", "out.weight"}
    assert {names[id(p)] for p in plain["params"]} == {"dense.bias", "LayerNorm.weight", "LayerNorm.bias"}


def test_frozen_parameters_are_left_out():
    model = Block()
    model.dense.weight.requires_grad_(False)
    groups = parameter_groups(model, 0.1)
    assert all(p is not model.dense.weight for g in groups for p in g["params"])


@pytest.mark.parametrize("warmup", [{"warmup_steps": 2}, {"warmup_ratio": 0.2}])
def test_linear_schedule_warms_up_then_decays_to_zero(warmup):
    rates = learning_rates("linear", **warmup)
    assert rates[:3] == pytest.approx([0.0, 0.5, 1.0])  # 2 warmup steps of 10, by steps or by ratio
    assert rates[3:] == pytest.approx([(10 - s) / 8 for s in range(3, 10)])


def test_cosine_and_constant_schedules():
    cosine = learning_rates("cosine", warmup_steps=2)
    assert cosine[2] == pytest.approx(1.0)
    assert cosine[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    constant = learning_rates("constant", warmup_steps=2)
    assert constant == pytest.approx([0.0, 0.5] + [1.0] * 8)


def test_warmup_longer_than_the_run_is_warned(capsys):
    rates = learning_rates("linear", total=5, warmup_steps=50)
    assert max(rates) < 0.1
    assert "50 warmup steps >= the run's 5 optimizer steps" in capsys.readouterr().err


def test_adamw_takes_the_given_betas_and_eps():
    config = configure_adamw(Block(), OptimizerSettings(learning_rate=3e-4, weight_decay=0.0, betas=(0.8, 0.9),
                                                        eps=1e-6, scheduler="linear"), 4)
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["eps"] == 1e-6
    assert config["lr_scheduler"]["interval"] == "step"


def test_cpu_uses_the_fused_adamw_kernel_with_the_same_update_as_the_loop():
    """Fused AdamW on CPU is what HF Trainer uses by default; it must give the per-tensor loop's update."""
    torch.manual_seed(0)
    models = [Block(), Block()]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0].dense.weight.detach().clone()
    config = configure_adamw(models[0], OptimizerSettings(learning_rate=1e-2, weight_decay=0.1, scheduler="constant"),
                             3)
    fused = config["optimizer"]
    assert fused.defaults["fused"] is True
    loop = torch.optim.AdamW(parameter_groups(models[1], 0.1), lr=1e-2, fused=False, foreach=False)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, optimizer in zip(models, (fused, loop), strict=True):
            optimizer.zero_grad()
            model.out(model.LayerNorm(model.dense(x))).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(models[0].dense.weight, start)  # the steps did move the weights
