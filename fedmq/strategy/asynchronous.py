"""Asynchronous federated learning: the server applies updates as they arrive instead of in
rounds, discounting stale ones (trained from an older global model).

- FedAsync (Xie et al., 2019, "Asynchronous Federated Optimization"): every update is mixed in
  at once, w ← (1−α_t)·w + α_t·w_new, with α_t = α·s(t−τ).
- FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
  updates Δ_i = w_i − w^(τ_i) (relative to the model the worker started from), weighted by
  s(t−τ_i), are summed in a buffer; every K updates the server applies
  w ← w + η_g·(Σ s·Δ_i)/K.

Both are `Strategy`s (Flower's interface, fedmq.strategy.base) whose rounds are versions:

    strategy.initialize_parameters(weights, trainable, version=0)
    [(worker, FitIns)] = strategy.configure_fit(version, weights, [worker], config, seed=seed)
    results = strategy.begin_fit(version, global_weights); results.add(result)
    new = strategy.aggregate_fit(version, results, failures)
    new = strategy.on_update(global_weights, version, result)     the three lines above

`result.round` is the version the worker started from, staleness = version − result.round.
`aggregate_fit` returns None while nothing changes (buffering, or a dropped update) and a new
global model (new tensors) when one is applied; the caller then makes it version + 1. Updates
staler than `max_staleness` are dropped and counted in `dropped`; results with no examples or
non-finite values are rejected by `results.add` (UpdateRejected) as in every strategy.

Buffers (fedmq.strategy.base): FedAsync mixes float buffers as it mixes parameters (its mixing
is a weighted average, not a server step); FedBuff replaces them by the (staleness × samples)-
weighted average of the buffered updates' own buffers, without server_lr; integer buffers take
the element-wise maximum of the global model's and the updates'.

Staleness functions s(d) of the staleness d (Xie et al., §5.2): constant 1; polynomial
(d+1)^−a; hinge 1 if d ≤ b else 1/(a·(d−b)+1).
"""
from __future__ import annotations

import abc
from typing import Any, Iterable, Mapping, Sequence

import torch

from fedmq.strategy.base import (FitAggregate, FitIns, FitResult, Layout, Strategy,
                                 UpdateRejected, Weights, accumulator, worker_seed)

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


class AsyncUpdates(FitAggregate):
    """The updates folded into one version: each kept whole (references), as the asynchronous
    rules apply them one by one. `add` also rejects an update that starts from a version newer
    than this one."""

    def add(self, result: FitResult) -> None:
        if result.round > self.round:
            raise UpdateRejected(f"update from {result.worker_id} starts from version "
                                 f"{result.round}, newer than the current version {self.round}")
        super().add(result)

    def _keep(self, result: FitResult) -> None:
        self.results.append(result)


class AsyncStrategy(Strategy):
    """Base class: staleness bookkeeping, the `max_staleness` rule, and Fit configs without
    sampling (every worker the driver names gets one)."""

    def __init__(self, *, staleness: str = "polynomial", a: float = 0.5, b: float = 4,
                 max_staleness: int | None = None) -> None:
        super().__init__()
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
        self._repeats: dict[tuple[str, int], int] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(staleness={self.staleness!r}, a={self.a}, b={self.b}, "
                f"max_staleness={self.max_staleness})")

    def initialize_parameters(self, weights: Weights, trainable: Iterable[str] | None = None,
                              *, version: int = 0) -> Weights:
        """Called once with the initial global model, of version `version`."""
        self._repeats = {}
        return super().initialize_parameters(weights, trainable)

    def configure_fit(self, round: int, parameters: Weights, workers: Sequence[str],
                      config: Mapping[str, Any] | None = None, *,
                      seed: int = 0) -> list[tuple[str, FitIns]]:
        """A Fit from version `round` for every worker in `workers`, with its shuffling seed
        `worker_seed(seed, version, worker)`; when a worker starts again from the same version
        (FedBuff still buffering) its k-th repeat is seeded as worker "<worker>/<k>", so it
        does not redo identical batches."""
        self._repeats = {k: n for k, n in self._repeats.items() if k[1] >= round - 1}
        base = self.fit_config(round, dict(config or {}))
        out = []
        for worker in workers:
            repeat = self._repeats.get((worker, round), 0)
            self._repeats[(worker, round)] = repeat + 1
            name = worker if repeat == 0 else f"{worker}/{repeat}"
            out.append((worker, FitIns(parameters, dict(base, seed=worker_seed(seed, round,
                                                                               name)))))
        return out

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        return AsyncUpdates(round, parameters, self.layout(parameters))

    def weight(self, staleness: int) -> float:
        return staleness_weight(self.staleness, staleness, self.a, self.b)

    def aggregate_fit(self, round: int, results: FitAggregate,
                      failures: Mapping[str, str] | Sequence[Any] = ()) -> Weights | None:
        """Apply the updates that arrived at version `round`, in order: each too stale one is
        dropped, each other goes to `_apply`. The new global model, or None when none was."""
        current, new = results.global_weights, None
        for result in results.results:
            self.received += 1
            staleness = round - result.round
            if self.max_staleness is not None and staleness > self.max_staleness:
                self.dropped += 1
                continue
            applied = self._apply(current, round, result, self.weight(staleness),
                                  results.layout)
            if applied is not None:
                current = new = applied
        return new

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        raise TypeError(f"{type(self).__name__} applies updates one at a time: call "
                        f"aggregate_fit or on_update")

    def on_update(self, global_weights: Weights, version: int,
                  result: FitResult) -> Weights | None:
        """One update: `begin_fit`, `add` (UpdateRejected: dropped, not counted as received),
        `aggregate_fit`."""
        results = self.begin_fit(version, global_weights)
        results.add(result)
        return self.aggregate_fit(version, results)

    @abc.abstractmethod
    def _apply(self, global_weights: Weights, version: int, result: FitResult,
               weight: float, layout: Layout) -> Weights | None:
        """Fold a fresh-enough update in (with its staleness `weight`); the new global model,
        or None when it was only buffered."""

    def state_dict(self) -> dict[str, Any]:
        return {"received": self.received, "applied": self.applied, "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.received = int(state.get("received", 0))
        self.applied = int(state.get("applied", 0))
        self.dropped = int(state.get("dropped", 0))
        self._repeats = {}


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
               weight: float, layout: Layout) -> Weights:
        alpha_t = self.alpha * weight
        integers = set(layout.integers)
        out = {}
        for name, current in global_weights.items():
            if name in integers:
                out[name] = torch.maximum(current.detach(), result.weights[name].detach()) \
                    .to(current.dtype, copy=True)
                continue
            mixed = accumulator(current).mul_(1.0 - alpha_t)
            mixed.add_(accumulator(result.weights[name]).mul_(alpha_t))
            out[name] = mixed.to(current.dtype)
        self.applied += 1
        return out


class FedBuff(AsyncStrategy):
    """Buffer `buffer_size` (K) staleness-weighted updates, then w ← w + server_lr·mean.

    A worker's update is its model minus the global model it started from, so the strategy
    keeps the global models (trainable parameters) of the versions still within
    `max_staleness` (one model each; with max_staleness=None it keeps them all). The buffer
    itself is one running sum of the parameters' deltas, one of the float buffers (weighted by
    staleness weight × samples) and the running maximum of the integer buffers."""

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
        self._clear()

    def _clear(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._buffer_sum: dict[str, torch.Tensor] = {}
        self._buffer_weight = 0.0
        self._integer_max: dict[str, torch.Tensor] = {}
        self._count = 0

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", buffer_size={self.buffer_size}, "
                f"server_lr={self.server_lr})")

    @property
    def buffered(self) -> int:
        """Updates in the buffer, not yet applied."""
        return self._count

    def initialize_parameters(self, weights: Weights, trainable: Iterable[str] | None = None,
                              *, version: int = 0) -> Weights:
        weights = super().initialize_parameters(weights, trainable, version=version)
        self._history = {}
        self._remember(version, weights)
        self._clear()
        return weights

    def _remember(self, version: int, weights: Weights) -> None:
        if version not in self._history:
            self._history[version] = {n: weights[n].detach().clone()
                                      for n in self.layout(weights).parameters}
        if self.max_staleness is not None:
            for old in [v for v in self._history if v < version - self.max_staleness]:
                del self._history[old]

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        self._remember(round, parameters)
        return super().begin_fit(round, parameters)

    def _apply(self, global_weights: Weights, version: int, result: FitResult,
               weight: float, layout: Layout) -> Weights | None:
        base = self._history.get(result.round)
        if base is None:
            raise ValueError(f"update from {result.worker_id} starts from version "
                             f"{result.round}, whose model this strategy never saw")
        _fold(self._sum, ((name, accumulator(result.weights[name]).sub_(accumulator(start))
                           .mul_(weight)) for name, start in base.items()))
        buffer_weight = weight * result.num_examples
        _fold(self._buffer_sum, ((name, accumulator(result.weights[name]).mul_(buffer_weight))
                                 for name in layout.buffers))
        self._buffer_weight += buffer_weight
        for name in layout.integers:
            tensor = result.weights[name].detach()
            best = self._integer_max.get(name)
            self._integer_max[name] = tensor.clone() if best is None else torch.maximum(best,
                                                                                      tensor)
        self._count += 1
        self.applied += 1
        if self._count < self.buffer_size:
            return None
        out = {}
        for name, current in global_weights.items():
            if name in self._sum:
                step = self._sum[name].mul_(self.server_lr / self._count)
                out[name] = (accumulator(current) + step).to(current.dtype)
            elif name in self._buffer_sum:
                out[name] = (self._buffer_sum[name] / self._buffer_weight).to(current.dtype)
            elif name in self._integer_max:
                out[name] = torch.maximum(current.detach(), self._integer_max[name]) \
                    .to(current.dtype, copy=True)
            else:  # a parameter no update in the buffer started from (not kept in history)
                raise ValueError(f"FedBuff: no update for {name}")
        self._clear()
        self._remember(version + 1, out)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["buffered"] = self._count
        state["buffer"] = {n: t.clone() for n, t in self._sum.items()}
        state["buffer_buffers"] = {n: t.clone() for n, t in self._buffer_sum.items()}
        state["buffer_weight"] = self._buffer_weight
        state["buffer_integers"] = {n: t.clone() for n, t in self._integer_max.items()}
        state["history"] = [[v, {n: t.clone() for n, t in w.items()}]
                            for v, w in sorted(self._history.items())]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._count = int(state.get("buffered", 0))
        self._sum = {n: t.detach().clone() for n, t in state.get("buffer", {}).items()}
        self._buffer_sum = {n: t.detach().clone()
                            for n, t in state.get("buffer_buffers", {}).items()}
        self._buffer_weight = float(state.get("buffer_weight", 0.0))
        self._integer_max = {n: t.detach().clone()
                             for n, t in state.get("buffer_integers", {}).items()}
        self._history = {int(v): {n: t.detach().clone() for n, t in w.items()}
                         for v, w in state.get("history", [])}


def _fold(sums: dict[str, torch.Tensor], terms) -> None:
    """sums[name] += term for each (name, term) (the first term is taken as it is)."""
    for name, term in terms:
        if name in sums:
            sums[name].add_(term)
        else:
            sums[name] = term
