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
Only trainable parameters take the server step (and have m, v); BatchNorm's running
statistics and integer buffers take the round's aggregate (fedmq.strategy.base). FedAvgM (Hsu
et al., 2019, "Measuring the Effects of Non-Identical Data Distribution") is the momentum
step w ← w + η·m with m ← β·m + Δ (Flower's server_learning_rate, server_momentum).
Defaults are Flower's. `eta_l` is the workers' learning rate: `fit_config` offers it as ``lr``
unless the base config already sets one. m, v are float64 and live in `state_dict()`, so a
run resumed from a checkpoint continues with the same numbers.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.strategy.base import FitAggregate, RunningAverage, Strategy, Weights, accumulator
from fedmq.strategy.fedavg import average_of


class FedOpt(Strategy):
    """The shared machinery; subclasses define `_second_moment`. The server step moves the
    trainable parameters only; buffers take the round's aggregate (base module docstring)."""
    aggregates_mean = True


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

    def initialize_parameters(self, weights: Weights, trainable=None) -> Weights:
        """m = 0 and v = τ² for every trainable parameter (float64)."""
        weights = super().initialize_parameters(weights, trainable)
        self._reset(weights)
        return weights

    def _reset(self, weights: Weights) -> None:
        names = self.layout(weights).parameters
        self.m = {n: torch.zeros_like(accumulator(weights[n])) for n in names}
        self.v = {n: torch.full(weights[n].shape, self.tau ** 2, dtype=torch.float64)
                  for n in names}
        self.steps = 0

    def fit_config(self, round: int, base: dict[str, Any]) -> dict[str, Any]:
        config = super().fit_config(round, base)
        config.setdefault("lr", self.eta_l)
        return config

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        return RunningAverage(round, parameters, self.layout(parameters))

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        average = average_of(self, results)
        global_weights = results.global_weights
        if self.m is None or self.v is None:
            self._reset(global_weights)
        names = results.layout.parameters
        if self.m.keys() != set(names):
            raise ValueError("the server optimizer's state does not match the model's "
                             "trainable parameters")
        m_new, v_new, out = {}, {}, {}
        for name in names:
            current = global_weights[name]
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


class FedAvgM(Strategy):
    """FedAvg with server momentum: m ← β·m + Δ, w ← w + η·m, Δ = avg(w_i) − w (Flower's
    defaults: server_learning_rate=1.0, server_momentum=0.0, which is FedAvg). Trainable
    parameters only; m (float64) lives in `state_dict()`."""
    aggregates_mean = True


    def __init__(self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.0,
                 **base: Any) -> None:
        super().__init__(**base)
        if server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be positive, got "
                             f"{server_learning_rate}")
        if not 0.0 <= server_momentum < 1.0:
            raise ValueError(f"server_momentum must be in [0, 1), got {server_momentum}")
        self.server_learning_rate = float(server_learning_rate)
        self.server_momentum = float(server_momentum)
        self.m: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", server_learning_rate={self.server_learning_rate}"
                f", server_momentum={self.server_momentum})")

    def initialize_parameters(self, weights: Weights, trainable=None) -> Weights:
        weights = super().initialize_parameters(weights, trainable)
        self.m = None
        return weights

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        return RunningAverage(round, parameters, self.layout(parameters))

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        average = average_of(self, results)
        out, m_new = {}, {}
        for name in results.layout.parameters:
            current = results.global_weights[name]
            base = accumulator(current)
            delta = accumulator(average[name]).sub_(base)
            m = delta if self.m is None else self.m[name] * self.server_momentum + delta
            m_new[name] = m
            out[name] = (base + self.server_learning_rate * m).to(current.dtype)
        self.m = m_new
        return out

    def state_dict(self) -> dict[str, Any]:
        return {} if self.m is None else {"m": {n: t.clone() for n, t in self.m.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = ({n: t.detach().to(torch.float64, copy=True) for n, t in state["m"].items()}
                  if "m" in state else None)
