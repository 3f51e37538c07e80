"""Adaptive server optimizers: FedAdagrad, FedAdam, FedYogi (Reddi et al., 2021, "Adaptive
Federated Optimization", Algorithm 2).

Each round the sample-weighted average of the workers' models gives the pseudo-gradient
Δ = avg(w_i) − w_global, and the server takes one adaptive step along it:

    m ← β1·m + (1−β1)·Δ
    v ← v + Δ²                                   (FedAdagrad)
    v ← β2·v + (1−β2)·Δ²                         (FedAdam)
    v ← v − (1−β2)·Δ²·sign(v − Δ²)               (FedYogi)
    w ← w + η·m / (√v + τ)

m starts at 0 and v at τ² (the paper's v_{-1} ≥ τ²); no bias correction, as in the paper.
Defaults are Flower's. `eta_l` is the workers' learning rate: `fit_config` offers it as ``lr``
unless the base config already sets one. m, v are float64 and live in `state_dict()`, so a
run resumed from a checkpoint continues with the same numbers.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.strategy.base import (Aggregation, RunningAverage, Strategy, Weights, accumulator,
                                 is_aggregated)


class FedOpt(Strategy):
    """The shared machinery; subclasses define `_second_moment`."""

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.0,
                 beta_2: float = 0.0, tau: float = 1e-9, **base: Any) -> None:
        super().__init__(**base)
        if eta <= 0:
            raise ValueError(f"eta must be positive, got {eta}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{label} must be in [0, 1), got {beta}")
        self.eta, self.eta_l, self.tau = float(eta), float(eta_l), float(tau)
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.m: dict[str, torch.Tensor] | None = None
        self.v: dict[str, torch.Tensor] | None = None
        self.steps = 0

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", eta={self.eta}, eta_l={self.eta_l}, "
                f"beta_1={self.beta_1}, beta_2={self.beta_2}, tau={self.tau})")

    def initialize(self, weights: Weights) -> None:
        self.m = {n: torch.zeros_like(accumulator(t)) for n, t in weights.items()
                  if is_aggregated(t)}
        self.v = {n: torch.full(t.shape, self.tau ** 2, dtype=torch.float64)
                  for n, t in weights.items() if is_aggregated(t)}
        self.steps = 0

    def fit_config(self, round: int, base: dict[str, Any]) -> dict[str, Any]:
        config = super().fit_config(round, base)
        config.setdefault("lr", self.eta_l)
        return config

    def begin_round(self, round: int, global_weights: Weights) -> Aggregation:
        return RunningAverage(round, global_weights)

    def aggregate(self, round: int, global_weights: Weights, aggregation: Aggregation) -> Weights:
        if not isinstance(aggregation, RunningAverage):
            raise TypeError(f"{type(self).__name__} aggregates a RunningAverage (from its own "
                            f"begin_round), got {type(aggregation).__name__}")
        average = aggregation.average()
        if self.m is None or self.v is None:
            self.initialize(global_weights)
        if self.m.keys() != {n for n, t in global_weights.items() if is_aggregated(t)}:
            raise ValueError("the server optimizer's state does not match the model's entries")
        m_new, v_new, out = {}, {}, {}
        for name, current in global_weights.items():
            if not is_aggregated(current):
                out[name] = current.detach().clone()
                continue
            base = accumulator(current)
            delta = accumulator(average[name]).sub_(base)
            square = delta.abs().pow(2)
            m = self.m[name] * self.beta_1 + delta * (1.0 - self.beta_1)
            v = self._second_moment(self.v[name], square)
            m_new[name], v_new[name] = m, v
            out[name] = (base + self.eta * m / (v.sqrt() + self.tau)).to(current.dtype)
        self.m, self.v = m_new, v_new
        self.steps += 1
        return out

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.steps}
        if self.m is not None and self.v is not None:
            state["m"] = {n: t.clone() for n, t in self.m.items()}
            state["v"] = {n: t.clone() for n, t in self.v.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        if "m" in state and "v" in state:
            if state["m"].keys() != state["v"].keys():
                raise ValueError("server optimizer state: m and v name different entries")
            self.m = {n: t.detach().clone() for n, t in state["m"].items()}
            self.v = {n: t.detach().to(torch.float64, copy=True) for n, t in state["v"].items()}
        else:
            self.m = self.v = None


class FedAdagrad(FedOpt):
    """v ← v + Δ² (Flower's defaults: eta=0.1, eta_l=0.1, beta_1=0, tau=1e-9)."""

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.0,
                 tau: float = 1e-9, **base: Any) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=0.0, tau=tau, **base)

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return v + square


class FedAdam(FedOpt):
    """v ← β2·v + (1−β2)·Δ² (Flower's defaults: eta=0.1, eta_l=0.1, beta_1=0.9,
    beta_2=0.99, tau=1e-9)."""

    def __init__(self, *, eta: float = 1e-1, eta_l: float = 1e-1, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-9, **base: Any) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **base)

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return v * self.beta_2 + square * (1.0 - self.beta_2)


class FedYogi(FedOpt):
    """v ← v − (1−β2)·Δ²·sign(v − Δ²) (Flower's defaults: eta=0.01, eta_l=0.0316,
    beta_1=0.9, beta_2=0.99, tau=1e-3)."""

    def __init__(self, *, eta: float = 1e-2, eta_l: float = 0.0316, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-3, **base: Any) -> None:
        super().__init__(eta=eta, eta_l=eta_l, beta_1=beta_1, beta_2=beta_2, tau=tau, **base)

    def _second_moment(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        return v - square * (1.0 - self.beta_2) * torch.sign(v - square)
