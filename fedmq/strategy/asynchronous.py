"""Asynchronous federated learning: the server applies updates as they arrive instead of in
rounds, discounting stale ones (trained from an older global model).

- FedAsync (Xie et al., 2019, "Asynchronous Federated Optimization"): every update is mixed in
  at once, w ← (1−α_t)·w + α_t·w_new, with α_t = α·s(t−τ).
- FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
  updates Δ_i = w_i − w^(τ_i) (relative to the model the worker started from), weighted by
  s(t−τ_i), are summed in a buffer; every K updates the server applies
  w ← w + η_g·(Σ s·Δ_i)/K.

Driven by the coordinator as:

    strategy.initialize(weights)                              version 0 (or `version=`)
    new = strategy.on_update(global_weights, version, result) as each FitResult arrives

`result.round` is the version the worker started from, staleness = version − result.round.
`on_update` returns None while nothing changes (buffering, or a dropped update) and a new global
model (new tensors) when one is applied; the caller then makes it version + 1. Updates staler
than `max_staleness` are dropped and counted in `dropped`.

Staleness functions s(d) of the staleness d (Xie et al., §5.2): constant 1; polynomial
(d+1)^−a; hinge 1 if d ≤ b else 1/(a·(d−b)+1).
"""
from __future__ import annotations

import abc

from typing import Any

import torch

from fedmq.strategy.base import FitResult, Weights, accumulator, check_compatible, is_aggregated

STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_weight(kind: str, staleness: int, a: float = 0.5, b: float = 4) -> float:
    """s(staleness) for `kind` in STALENESS_FUNCTIONS."""
    if staleness < 0:
        raise ValueError(f"negative staleness {staleness}")
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float((staleness + 1) ** -a)
    if kind == "hinge":
        return 1.0 if staleness <= b else 1.0 / (a * (staleness - b) + 1.0)
    raise ValueError(f"unknown staleness function {kind!r}; "
                     f"valid: {', '.join(STALENESS_FUNCTIONS)}")


class AsyncStrategy(abc.ABC):
    """Base class: staleness bookkeeping and the `max_staleness` rule."""

    def __init__(self, *, staleness: str = "polynomial", a: float = 0.5, b: float = 4,
                 max_staleness: int | None = None) -> None:
        if staleness not in STALENESS_FUNCTIONS:
            raise ValueError(f"unknown staleness function {staleness!r}; valid: "
                             f"{', '.join(STALENESS_FUNCTIONS)}")
        if a < 0 or b < 0:
            raise ValueError(f"staleness parameters must be non-negative, got a={a}, b={b}")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be non-negative, got {max_staleness}")
        self.staleness = staleness
        self.a, self.b = float(a), float(b)
        self.max_staleness = max_staleness
        self.received = self.applied = self.dropped = 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(staleness={self.staleness!r}, a={self.a}, b={self.b}, "
                f"max_staleness={self.max_staleness})")

    def initialize(self, weights: Weights, version: int = 0) -> None:
        """Called once with the initial global model."""

    def fit_config(self, version: int, base: dict[str, Any]) -> dict[str, Any]:
        return dict(base)

    def weight(self, staleness: int) -> float:
        return staleness_weight(self.staleness, staleness, self.a, self.b)

    def on_update(self, global_weights: Weights, version: int,
                  result: FitResult) -> Weights | None:
        """Check the update, drop it if too stale, else hand it to `_apply`."""
        staleness = version - result.round
        if staleness < 0:
            raise ValueError(f"update from {result.worker_id} starts from version "
                             f"{result.round}, newer than the current version {version}")
        check_compatible(global_weights, result.weights, result.worker_id)
        self.received += 1
        if self.max_staleness is not None and staleness > self.max_staleness:
            self.dropped += 1
            return None
        return self._apply(global_weights, version, result, self.weight(staleness))

    @abc.abstractmethod
    def _apply(self, global_weights: Weights, version: int, result: FitResult,
               weight: float) -> Weights | None:
        """Fold a fresh-enough update in (with its staleness `weight`); the new global model,
        or None when it was only buffered."""

    def state_dict(self) -> dict[str, Any]:
        return {"received": self.received, "applied": self.applied, "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.received = int(state.get("received", 0))
        self.applied = int(state.get("applied", 0))
        self.dropped = int(state.get("dropped", 0))


class FedAsync(AsyncStrategy):
    """w ← (1−α_t)·w + α_t·w_new, α_t = alpha·s(staleness), at every update."""

    def __init__(self, *, alpha: float = 0.6, **base: Any) -> None:
        super().__init__(**base)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", alpha={self.alpha})"

    def _apply(self, global_weights: Weights, version: int, result: FitResult,
               weight: float) -> Weights:
        alpha_t = self.alpha * weight
        out = {}
        for name, current in global_weights.items():
            if not is_aggregated(current):
                out[name] = current.detach().clone()
                continue
            mixed = accumulator(current).mul_(1.0 - alpha_t)
            mixed.add_(accumulator(result.weights[name]).mul_(alpha_t))
            out[name] = mixed.to(current.dtype)
        self.applied += 1
        return out


class FedBuff(AsyncStrategy):
    """Buffer `buffer_size` (K) staleness-weighted updates, then w ← w + server_lr·mean.

    A worker's update is its model minus the global model it started from, so the strategy
    keeps the global models of the versions still within `max_staleness` (one model each;
    with max_staleness=None it keeps them all). The buffer itself is one running sum."""

    def __init__(self, *, buffer_size: int = 10, server_lr: float = 1.0,
                 max_staleness: int | None = 10, **base: Any) -> None:
        super().__init__(max_staleness=max_staleness, **base)
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if server_lr <= 0:
            raise ValueError(f"server_lr must be positive, got {server_lr}")
        self.buffer_size = int(buffer_size)
        self.server_lr = float(server_lr)
        self._history: dict[int, Weights] = {}
        self._sum: dict[str, torch.Tensor] = {}
        self._count = 0

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", buffer_size={self.buffer_size}, "
                f"server_lr={self.server_lr})")

    @property
    def buffered(self) -> int:
        """Updates in the buffer, not yet applied."""
        return self._count

    def initialize(self, weights: Weights, version: int = 0) -> None:
        self._history = {}
        self._remember(version, weights)
        self._sum, self._count = {}, 0

    def _remember(self, version: int, weights: Weights) -> None:
        if version not in self._history:
            self._history[version] = {n: t.detach().clone() for n, t in weights.items()
                                      if is_aggregated(t)}
        if self.max_staleness is not None:
            for old in [v for v in self._history if v < version - self.max_staleness]:
                del self._history[old]

    def on_update(self, global_weights: Weights, version: int,
                  result: FitResult) -> Weights | None:
        self._remember(version, global_weights)
        return super().on_update(global_weights, version, result)

    def _apply(self, global_weights: Weights, version: int, result: FitResult,
               weight: float) -> Weights | None:
        base = self._history.get(result.round)
        if base is None:
            raise ValueError(f"update from {result.worker_id} starts from version "
                             f"{result.round}, whose model this strategy never saw")
        for name, start in base.items():
            term = accumulator(result.weights[name]).sub_(accumulator(start)).mul_(weight)
            if name in self._sum:
                self._sum[name].add_(term)
            else:
                self._sum[name] = term
        self._count += 1
        self.applied += 1
        if self._count < self.buffer_size:
            return None
        out = {}
        for name, current in global_weights.items():
            if not is_aggregated(current):
                out[name] = current.detach().clone()
                continue
            step = self._sum[name].mul_(self.server_lr / self._count)
            out[name] = (accumulator(current) + step).to(current.dtype)
        self._sum, self._count = {}, 0
        self._remember(version + 1, out)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["buffered"] = self._count
        state["buffer"] = {n: t.clone() for n, t in self._sum.items()}
        state["history"] = [[v, {n: t.clone() for n, t in w.items()}]
                            for v, w in sorted(self._history.items())]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._count = int(state.get("buffered", 0))
        self._sum = {n: t.detach().clone() for n, t in state.get("buffer", {}).items()}
        self._history = {int(v): {n: t.detach().clone() for n, t in w.items()}
                         for v, w in state.get("history", [])}
