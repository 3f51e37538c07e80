"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks").

The server aggregates exactly as FedAvg; the difference is on the worker, whose local objective
becomes  loss(w) + (mu/2) * ||w - w_global||^2. The server tells workers `mu` through the `Fit`
config (key ``proximal_mu``); the worker's training loop adds `fedmq.fl.proximal.proximal_term(...)` to its loss.
"""
from __future__ import annotations

from typing import Any

from fedmq.strategy.fedavg import FedAvg


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
