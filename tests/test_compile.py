"""`--model.compile true`: the compiled model computes what the eager one does, and its weights keep their names
(checkpoints and exports of compiled and eager runs are interchangeable).

The test uses torch.compile's `aot_eager` backend: it captures the model with Dynamo and AOTAutograd (where model
code breaks under compilation) but runs torch's kernels; `inductor`'s code generation takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import torch


def test_a_compiled_classifier_gives_the_eager_loss_and_gradients_and_the_same_state_dict(tiny_bert):
    from ftl.models.classifier import SequenceClassifier

    def build(**extra):
        torch.manual_seed(0)
        return SequenceClassifier(pretrained=str(tiny_bert), num_labels=3, **extra).eval()

    eager, compiled = build(), build(compile=True, compile_backend="aot_eager")
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no `_orig_mod.` prefix
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 40, (4, 12), generator=generator),
             "attention_mask": torch.ones(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 2, 0])}
    losses = []
    for module in (eager, compiled):
        loss = module.loss(module(batch), batch["labels"])
        loss.backward()
        losses.append((loss.item(), module.model.classifier.weight.grad.clone()))
    assert abs(losses[0][0] - losses[1][0]) < 1e-6
    torch.testing.assert_close(losses[0][1], losses[1][1])
