"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks").

The server aggregates exactly as FedAvg; the difference is on the worker, whose local objective
becomes  loss(w) + (mu/2) * ||w - w_global||^2. The server tells workers `mu` through the `Fit`
config (key ``proximal_mu``); the worker's training loop adds `proximal_term(...)` to its loss.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.strategy.base import Weights
from fedmq.strategy.fedavg import FedAvg


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


class FedProx(FedAvg):
    """FedAvg aggregation; `fit_config` carries ``proximal_mu`` for the workers' loss."""

    def __init__(self, *, proximal_mu: float = 0.01, **base: Any) -> None:
        super().__init__(**base)
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be non-negative, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", proximal_mu={self.proximal_mu})"

    def fit_config(self, round: int, base: dict[str, Any]) -> dict[str, Any]:
        config = super().fit_config(round, base)
        config["proximal_mu"] = self.proximal_mu
        return config
