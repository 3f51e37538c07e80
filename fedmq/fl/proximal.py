"""FedProx's worker half (Li et al., 2020): the proximal term added to the local loss.

It lives with the worker side of federated training (fedmq/fl/training.py adds it), so workers
never import the server's strategy package; `fedmq.strategy.FedProx` re-exports it.
"""
from __future__ import annotations

from typing import Mapping

import torch

Weights = Mapping[str, torch.Tensor]


def proximal_term(model: torch.nn.Module, global_weights: Weights, mu: float) -> torch.Tensor:
    """(mu/2) * sum over the model's trainable parameters of ||p - p_global||^2.

    Call it in the worker's training loop, each step, on the model being trained and the
    global weights the round started from (a `state_dict`, matched by parameter name):

        loss = criterion(model(x), y) + proximal_term(model, global_weights, mu)
        loss.backward()

    The global weights are constants (detached): gradients flow into `model` only, giving each
    parameter the extra gradient mu * (p - p_global). Returns a 0-dim tensor (0 when mu == 0).
    """
    if mu < 0:
        raise ValueError(f"proximal_mu must be non-negative, got {mu}")
    total = None
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name not in global_weights:
            raise KeyError(f"global weights have no entry for parameter {name!r}")
        anchor = global_weights[name].detach().to(device=param.device, dtype=param.dtype)
        if anchor.shape != param.shape:
            raise ValueError(f"global weights: {name} has shape {tuple(anchor.shape)}, "
                             f"the model has {tuple(param.shape)}")
        term = (param - anchor).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total * (mu / 2)
