"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean (Yin et al., 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"), Krum and
Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent").

All of them need every result of the round at once, so they use the default `FitAggregate`
(which keeps each result's parameters). They are unweighted (a worker's influence does not
grow with the sample count it claims, which an attacker could inflate). Parameters are computed
in float64 and cast back; buffers (BatchNorm statistics, integer counters) are aggregated as in
every strategy (fedmq.strategy.base: sample-weighted average, element-wise maximum) and do not
enter Krum's distances.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from fedmq.strategy.base import FitAggregate, RoundFailed, Strategy, Weights, accumulator


def _stacked(results: FitAggregate, name: str) -> torch.Tensor:
    """(n, *shape) float64 stack of one entry across the round's results."""
    return torch.stack([accumulator(r.weights[name]) for r in results.results])


def _per_parameter(results: FitAggregate, reduce) -> Weights:
    if not results.results:
        raise RoundFailed(f"round {results.round}: no results to aggregate")
    return {name: reduce(_stacked(results, name)).to(results.global_weights[name].dtype)
            for name in results.layout.parameters}


def coordinate_median(stack: torch.Tensor) -> torch.Tensor:
    """Median along dim 0; the mean of the two middle values when the count is even (numpy's
    convention; `torch.median` would return the lower one)."""
    if stack.is_complex():
        raise ValueError("the coordinate-wise median is undefined for complex entries")
    ordered = stack.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def trimmed_mean(stack: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean along dim 0 after dropping floor(beta·n) smallest and largest values per
    coordinate."""
    if stack.is_complex():
        raise ValueError("the trimmed mean is undefined for complex entries")
    n = stack.shape[0]
    cut = int(math.floor(beta * n))
    if n - 2 * cut < 1:
        raise RoundFailed(f"trimmed mean: beta={beta} trims all of {n} results")
    return stack.sort(dim=0).values[cut:n - cut].mean(dim=0)


class FedMedian(Strategy):
    """The coordinate-wise median of the workers' models."""

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        return _per_parameter(results, coordinate_median)


class FedTrimmedAvg(Strategy):
    """The coordinate-wise mean after trimming a fraction `beta` of the values from each end
    (Flower's default beta=0.2)."""

    def __init__(self, *, beta: float = 0.2, **base: Any) -> None:
        super().__init__(**base)
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = float(beta)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", beta={self.beta})"

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        return _per_parameter(results, lambda s: trimmed_mean(s, self.beta))


def krum_scores(flat: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """Krum's score of each row of `flat` (n, d): the sum of its squared distances to its
    n − f − 2 nearest other rows."""
    if flat.is_complex():
        raise ValueError("Krum is undefined for complex entries")
    n = flat.shape[0]
    closest = n - num_malicious - 2
    # exact row by row (torch.cdist may switch to a less precise matmul form)
    distances = torch.stack([(flat - flat[i]).pow(2).sum(dim=1) for i in range(n)])
    # a row's distance to itself is 0 and sorts first: skip it
    return distances.sort(dim=1).values[:, 1:closest + 1].sum(dim=1)


class Krum(Strategy):
    """Krum: the one model whose n − f − 2 nearest neighbours are closest (squared L2 over all
    trainable parameters). With `num_to_keep` = m > 1 it is Multi-Krum: the mean of the m models
    with the lowest scores. Needs n ≥ 2f + 3 results (the paper's n > 2f + 2)."""

    def __init__(self, *, num_malicious: int = 0, num_to_keep: int = 1, **base: Any) -> None:
        super().__init__(**base)
        if num_malicious < 0:
            raise ValueError(f"num_malicious must be non-negative, got {num_malicious}")
        if num_to_keep < 1:
            raise ValueError(f"num_to_keep must be at least 1, got {num_to_keep}")
        self.num_malicious = int(num_malicious)
        self.num_to_keep = int(num_to_keep)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", num_malicious={self.num_malicious}, "
                f"num_to_keep={self.num_to_keep})")

    def select(self, results: FitAggregate) -> list[int]:
        """Indices (into `results.results`) of the kept models, best score first."""
        n = len(results.results)
        if n < 2 * self.num_malicious + 3:
            raise RoundFailed(f"round {results.round}: Krum with num_malicious="
                              f"{self.num_malicious} needs at least "
                              f"{2 * self.num_malicious + 3} results, got {n}")
        if self.num_to_keep > n:
            raise RoundFailed(f"round {results.round}: num_to_keep={self.num_to_keep} "
                              f"but only {n} results")
        names = results.layout.parameters
        flat = torch.stack([torch.cat([accumulator(r.weights[k]).reshape(-1) for k in names])
                            for r in results.results])
        scores = krum_scores(flat, self.num_malicious)
        # stable: ties go to the earlier result
        order = sorted(range(n), key=lambda i: (scores[i].item(), i))
        return order[:self.num_to_keep]

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        kept = [results.results[i] for i in self.select(results)]
        return {name: torch.stack([accumulator(r.weights[name]) for r in kept])
                .mean(dim=0).to(results.global_weights[name].dtype)
                for name in results.layout.parameters}
