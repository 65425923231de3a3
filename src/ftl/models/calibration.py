"""Temperature scaling (Guo et al. 2017): one number T that divides a classifier's logits so its probabilities
match how often it is right. Fitted on validation rows by the classifier (`calibration: temperature`)."""

from __future__ import annotations

import numpy as np


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The one temperature T > 0 that minimises the NLL of softmax(logits / T) on these rows (LBFGS, as in Guo et
    al. 2017); argmax, hence accuracy, is unchanged by any T."""
    import torch

    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())
