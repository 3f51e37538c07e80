"""The strategy interface the coordinator drives, and the types it passes around.

    strategy.initialize(weights)                       once, before round 1 (server state)
    chosen = strategy.sample(worker_ids, round, rng)   who trains this round
    config = strategy.fit_config(round, base_config)   what each Fit carries
    agg = strategy.begin_round(round, global_weights)  an empty running aggregate
    agg.add(FitResult(...))                            as each reply arrives
    new = strategy.finish_round(round, global_weights, agg, failures)

`Weights` is a model's `state_dict()`: names to tensors, in order. Floating-point entries are
aggregated; integer entries (BatchNorm's `num_batches_tracked`) are taken from the global model
unchanged. Strategies never modify the tensors they are given (no aliasing: the result is new
tensors), and `state_dict()` / `load_state_dict()` carry server-side state (optimizer moments)
into checkpoints so a resumed run continues with the same results.
"""
from __future__ import annotations

import abc

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

Weights = dict[str, torch.Tensor]


class RoundFailed(RuntimeError):
    """A round that cannot produce a model (too few answers, or a failure not accepted)."""


@dataclass
class FitResult:
    """One worker's answer to `Fit`: its model after local training (full weights)."""
    worker_id: str
    weights: Weights
    num_examples: int
    loss: float = float("nan")
    round: int = 0  # the round whose global weights the worker started from
    metrics: dict[str, Any] = field(default_factory=dict)


def is_aggregated(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def accumulator(tensor: torch.Tensor) -> torch.Tensor:
    """A new float64 (complex128 for complex entries) copy of `tensor` to accumulate in."""
    dtype = torch.complex128 if tensor.is_complex() else torch.float64
    return tensor.detach().to(dtype, copy=True)


def weighted_average(pairs: Iterable[tuple[Weights, float]]) -> Weights:
    """sum(w_i * weights_i) / sum(w_i) over the floating entries, as new float64-accumulated
    tensors cast back to each entry's dtype; non-floating entries come from the first model."""
    total = 0.0
    acc: dict[str, torch.Tensor] = {}
    first: Weights | None = None
    for weights, weight in pairs:
        if first is None:
            first = weights
        total += weight
        for name, tensor in weights.items():
            if not is_aggregated(tensor):
                continue
            term = accumulator(tensor).mul_(weight)
            acc[name] = term if name not in acc else acc[name].add_(term)
    if first is None or total <= 0:
        raise RoundFailed("nothing to average (no results, or zero total weight)")
    return {name: (acc[name].div_(total).to(t.dtype) if name in acc else t.detach().clone())
            for name, t in first.items()}


class Aggregation:
    """A round's running aggregate. The default keeps every result (what median, trimmed mean
    and Krum need); `RunningAverage` below keeps one weighted sum (O(model) memory)."""

    def __init__(self, round: int, global_weights: Weights) -> None:
        self.round = round
        self.global_weights = global_weights
        self.results: list[FitResult] = []
        self.count = 0
        self.num_examples = 0
        self.losses: dict[str, float] = {}
        self.samples: dict[str, int] = {}

    def add(self, result: FitResult) -> None:
        if result.worker_id in self.samples:
            raise ValueError(f"round {self.round}: a second result from {result.worker_id}")
        if isinstance(result.num_examples, bool) or not isinstance(result.num_examples, int) \
                or result.num_examples < 0:
            raise ValueError(f"update from {result.worker_id}: num_examples must be a "
                             f"non-negative int, got {result.num_examples!r}")
        check_compatible(self.global_weights, result.weights, result.worker_id)
        self.count += 1
        self.num_examples += result.num_examples
        self.losses[result.worker_id] = result.loss
        self.samples[result.worker_id] = result.num_examples
        self._keep(result)

    def _keep(self, result: FitResult) -> None:
        self.results.append(result)

    def loss(self) -> float:
        """The sample-weighted mean of the workers' training losses."""
        if not self.num_examples:
            return float("nan")
        return sum(self.losses[w] * self.samples[w] for w in self.losses) / self.num_examples


class RunningAverage(Aggregation):
    """Weighted sum of the updates so far plus the total weight: O(model) memory however
    many workers answer; results are folded in as they arrive."""

    def __init__(self, round: int, global_weights: Weights) -> None:
        super().__init__(round, global_weights)
        self._sum: dict[str, torch.Tensor] = {}
        self._total = 0.0

    def _keep(self, result: FitResult) -> None:
        weight = float(result.num_examples)
        for name, tensor in result.weights.items():
            if not is_aggregated(tensor):
                continue
            term = accumulator(tensor).mul_(weight)
            if name in self._sum:
                self._sum[name].add_(term)
            else:
                self._sum[name] = term
        self._total += weight

    def average(self) -> Weights:
        if not self.count or self._total <= 0:
            raise RoundFailed("no update to average")
        return {name: (self._sum[name] / self._total).to(t.dtype) if name in self._sum
                else t.detach().clone() for name, t in self.global_weights.items()}


def check_compatible(reference: Weights, weights: Weights, who: str) -> None:
    """Raise ValueError unless `weights` has the model's names and shapes, only tensors, and
    finite floating entries."""
    if not isinstance(weights, dict):
        raise ValueError(f"update from {who}: weights must be a dict of tensors, "
                         f"got {type(weights).__name__}")
    if reference.keys() != weights.keys():
        missing = sorted(set(reference) - set(weights))
        extra = sorted(set(weights) - set(reference))
        raise ValueError(f"update from {who} does not match the model: missing {missing}, "
                         f"unexpected {extra}")
    for name, tensor in reference.items():
        if not isinstance(weights[name], torch.Tensor):
            raise ValueError(f"update from {who}: {name} is a {type(weights[name]).__name__}, "
                             f"not a tensor")
        if weights[name].shape != tensor.shape:
            raise ValueError(f"update from {who}: {name} has shape {tuple(weights[name].shape)},"
                             f" the model has {tuple(tensor.shape)}")
        if is_aggregated(tensor) and not torch.isfinite(weights[name]).all():
            raise ValueError(f"update from {who}: {name} holds NaN or infinite values")


class Strategy(abc.ABC):
    """Base class: uniform sampling with `fraction_fit`, the `min_fit_workers` rule and
    `accept_failures`. Subclasses implement `aggregate` (and may override `begin_round`)."""

    def __init__(self, *, fraction_fit: float = 1.0, min_fit_workers: int = 1,
                 min_available_workers: int = 1, accept_failures: bool = True) -> None:
        if not 0.0 < fraction_fit <= 1.0:
            raise ValueError("fraction_fit must be in (0, 1]")
        if min_fit_workers < 1:
            raise ValueError("min_fit_workers must be at least 1")
        self.fraction_fit = fraction_fit
        self.min_fit_workers = min_fit_workers
        self.min_available_workers = min_available_workers
        self.accept_failures = accept_failures

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fraction_fit={self.fraction_fit}, "
                f"min_fit_workers={self.min_fit_workers}, accept_failures={self.accept_failures})")

    def initialize(self, weights: Weights) -> None:
        """Called once with the initial global model (server-side optimizers set up here)."""

    def sample(self, worker_ids: Sequence[str], round: int, rng: random.Random) -> list[str]:
        """ceil(fraction_fit * n) workers, at least min_fit_workers, chosen with `rng`."""
        ids = list(worker_ids)
        if len(ids) < self.min_available_workers:
            raise RoundFailed(f"round {round}: {len(ids)} workers available, "
                              f"{self.min_available_workers} required")
        k = max(self.min_fit_workers, math.ceil(self.fraction_fit * len(ids)))
        if k >= len(ids):
            return ids
        return sorted(rng.sample(ids, k), key=ids.index)

    def fit_config(self, round: int, base: dict[str, Any]) -> dict[str, Any]:
        return dict(base)

    def begin_round(self, round: int, global_weights: Weights) -> Aggregation:
        return Aggregation(round, global_weights)

    def finish_round(self, round: int, global_weights: Weights, aggregation: Aggregation,
                     failures: int = 0) -> Weights:
        if failures and not self.accept_failures:
            raise RoundFailed(f"round {round}: {failures} worker(s) failed and "
                              f"accept_failures is False")
        if aggregation.count < self.min_fit_workers:
            raise RoundFailed(f"round {round}: {aggregation.count} worker(s) answered, "
                              f"min_fit_workers is {self.min_fit_workers}")
        return self.aggregate(round, global_weights, aggregation)

    @abc.abstractmethod
    def aggregate(self, round: int, global_weights: Weights, aggregation: Aggregation) -> Weights:
        """The next global model from the round's aggregation (inputs are not modified)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
