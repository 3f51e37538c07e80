"""The strategy interface the coordinators drive, in Flower's shape (`flwr.server.strategy.
Strategy`: initialize_parameters, configure_fit, aggregate_fit, configure_evaluate,
aggregate_evaluate, evaluate), with Flower's batch `aggregate_fit(results)` made streaming:

    weights = strategy.initialize_parameters(weights, trainable)   once, before round 1
    todo = strategy.configure_fit(round, weights, workers, config, seed=seed)
                                         [(worker_id, FitIns(parameters, config))]
    results = strategy.begin_fit(round, weights)        the round's results, folded as they come
    results.add(FitResult(...))                         per reply; UpdateRejected: dropped
    new = strategy.aggregate_fit(round, results, failures)        the next global model
    todo = strategy.configure_evaluate(round, weights, workers, config)
    loss, metrics = strategy.aggregate_evaluate(round, [(worker_id, EvaluateResult)], failures)
    strategy.evaluate(round, weights)                   server-side evaluation, None by default

`Weights` is a model's `state_dict()`: names to tensors, in order. Its entries are of three
kinds (`Layout`):
- parameters (trainable floating entries): what the strategy's rule aggregates and what server
  optimizers (FedAdam, FedYogi, FedAdagrad, FedAvgM) and FedBuff's server step move;
- float buffers (BatchNorm's running_mean / running_var): the sample-weighted average of the
  round's accepted results, in every strategy, never moved by a server optimizer;
- integer buffers (BatchNorm's num_batches_tracked, any non-floating entry): the element-wise
  maximum over the accepted results (batches seen by the most-trained model; stays integer).
Which floating entries are trainable comes from `initialize_parameters(weights, trainable)`
(the coordinator knows the model's `named_parameters()`); with `trainable=None` a floating entry
whose name ends with running_mean or running_var is a buffer, every other one a parameter.

A result with `num_examples` of 0, non-finite values, or names/shapes/dtypes other than the
model's is dropped: `FitAggregate.add` raises `UpdateRejected` with the reason, which the
coordinator logs and records as that worker's failure of the round.

Strategies never modify the tensors they are given (the result is new tensors), and
`state_dict()` / `load_state_dict()` carry server-side state (optimizer moments) into
checkpoints so a resumed run continues with the same results.
"""
from __future__ import annotations

import abc
import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

Weights = dict[str, torch.Tensor]

#: floating entries with these name endings are buffers when the trainable names are unknown
BUFFER_SUFFIXES = ("running_mean", "running_var")


class RoundFailed(RuntimeError):
    """A round that cannot produce a model (too few answers, or a failure not accepted)."""


class UpdateRejected(ValueError):
    """A worker's result the strategy drops (its message is the reason)."""


@dataclass
class FitIns:
    """What one worker is told to do (Flower's FitIns): train from `parameters` with `config`
    (batch_size, optimizer_args incl. lr, seed, ... plain values only)."""
    parameters: Weights
    config: dict[str, Any]


@dataclass
class EvaluateIns:
    """Evaluate `parameters` with `config` (batch_size, loss, split, ...)."""
    parameters: Weights
    config: dict[str, Any]


@dataclass
class FitResult:
    """One worker's answer to `Fit`: its model after local training (full weights)."""
    worker_id: str
    weights: Weights
    num_examples: int
    loss: float = float("nan")
    round: int = 0  # the round (async: version) whose global weights the worker started from
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateResult:
    """One evaluation (Flower's EvaluateRes): mean loss over `num_examples`; `metrics` holds
    "correct" (int) when the worker counted correct predictions."""
    worker_id: str
    loss: float
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


def worker_seed(seed: int, round: int, worker_id: str) -> int:
    """The shuffling seed of `worker_id` in `round` (stable across processes and runs)."""
    return zlib.crc32(f"{seed}:{round}:{worker_id}".encode()) & 0x7FFFFFFF


def is_aggregated(tensor: torch.Tensor) -> bool:
    """Floating or complex: averaged (an integer entry is a buffer aggregated by maximum)."""
    return tensor.is_floating_point() or tensor.is_complex()


def accumulator(tensor: torch.Tensor) -> torch.Tensor:
    """A new float64 (complex128 for complex entries) copy of `tensor` to accumulate in."""
    dtype = torch.complex128 if tensor.is_complex() else torch.float64
    return tensor.detach().to(dtype, copy=True)


@dataclass(frozen=True)
class Layout:
    """A model's entries by kind, each tuple in the model's order."""
    parameters: tuple[str, ...]  # trainable floating entries
    buffers: tuple[str, ...]  # non-trainable floating entries (sample-weighted average)
    integers: tuple[str, ...]  # non-floating entries (element-wise maximum)

    @classmethod
    def of(cls, weights: Weights, trainable: frozenset[str] | None = None) -> "Layout":
        """Sort `weights`' entries. `trainable`: the names of the model's trainable parameters
        (ValueError if one is not in `weights`); None: see BUFFER_SUFFIXES."""
        if trainable is not None and not trainable <= weights.keys():
            raise ValueError(f"trainable entries not in the model: "
                             f"{sorted(trainable - weights.keys())}")
        parameters, buffers, integers = [], [], []
        for name, tensor in weights.items():
            if not is_aggregated(tensor):
                integers.append(name)
            elif (name in trainable if trainable is not None
                  else not name.endswith(BUFFER_SUFFIXES)):
                parameters.append(name)
            else:
                buffers.append(name)
        return cls(tuple(parameters), tuple(buffers), tuple(integers))


def check_compatible(reference: Weights, weights: Weights, who: str) -> None:
    """Raise UpdateRejected unless `weights` has the model's names, shapes and kinds of dtype,
    only tensors, and finite values."""
    if not isinstance(weights, dict):
        raise UpdateRejected(f"update from {who}: weights must be a dict of tensors, "
                             f"got {type(weights).__name__}")
    if reference.keys() != weights.keys():
        missing = sorted(set(reference) - set(weights))
        extra = sorted(set(weights) - set(reference))
        raise UpdateRejected(f"update from {who} does not match the model: missing {missing}, "
                             f"unexpected {extra}")
    for name, tensor in reference.items():
        theirs = weights[name]
        if not isinstance(theirs, torch.Tensor):
            raise UpdateRejected(f"update from {who}: {name} is a {type(theirs).__name__}, "
                                 f"not a tensor")
        if theirs.shape != tensor.shape:
            raise UpdateRejected(f"update from {who}: {name} has shape {tuple(theirs.shape)},"
                                 f" the model has {tuple(tensor.shape)}")
        if is_aggregated(theirs) != is_aggregated(tensor):
            raise UpdateRejected(f"update from {who}: {name} is {theirs.dtype}, the model's "
                                 f"is {tensor.dtype}")
        if is_aggregated(theirs) and not torch.isfinite(theirs).all():
            raise UpdateRejected(f"update from {who}: {name} holds NaN or infinite values")


def check_result(reference: Weights, result: FitResult) -> None:
    """`check_compatible`, and a positive int `num_examples` (UpdateRejected otherwise: an
    update trained on nothing carries no information and would divide by zero)."""
    n = result.num_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UpdateRejected(f"update from {result.worker_id}: num_examples must be a "
                             f"positive int, got {n!r}")
    if n == 0:
        raise UpdateRejected(f"update from {result.worker_id}: num_examples is 0 "
                             f"(trained on no examples)")
    check_compatible(reference, result.weights, result.worker_id)


def add_weighted(sums: dict, weights: Weights, names: Iterable[str], weight: float) -> None:
    """sums[name] += weight * weights[name] (float64 accumulators, made on first use)."""
    for name in names:
        term = accumulator(weights[name]).mul_(weight)
        if name in sums:
            sums[name].add_(term)
        else:
            sums[name] = term


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


class FitAggregate:
    """A round's results, folded in as they arrive (what `aggregate_fit` receives).

    Always O(model): the sample-weighted sum of the float buffers and the running maximum of
    the integer buffers, plus per-worker loss and sample counts. What the parameters need is
    the strategy's: this default keeps every result's parameter entries (references, no copy)
    in `results`, as the median, the trimmed mean and Krum need them all; `RunningAverage`
    keeps one weighted sum."""

    def __init__(self, round: int, global_weights: Weights, layout: Layout | None = None) -> None:
        self.round = round
        self.global_weights = global_weights
        self.layout = layout or Layout.of(global_weights)
        self.results: list[FitResult] = []
        self.count = 0
        self.num_examples = 0
        self.losses: dict[str, float] = {}
        self.samples: dict[str, int] = {}
        self._buffer_sum: dict[str, torch.Tensor] = {}
        self._integer_max: dict[str, torch.Tensor] = {}

    def add(self, result: FitResult) -> None:
        """Fold one result in; UpdateRejected (nothing folded) when it is dropped."""
        if result.worker_id in self.samples:
            raise UpdateRejected(f"round {self.round}: a second result from "
                                 f"{result.worker_id}")
        check_result(self.global_weights, result)
        weight = float(result.num_examples)
        add_weighted(self._buffer_sum, result.weights, self.layout.buffers, weight)
        for name in self.layout.integers:
            tensor = result.weights[name].detach()
            best = self._integer_max.get(name)
            self._integer_max[name] = (tensor.clone() if best is None
                                       else torch.maximum(best, tensor))
        self.count += 1
        self.num_examples += result.num_examples
        self.losses[result.worker_id] = result.loss
        self.samples[result.worker_id] = result.num_examples
        self._keep(result)

    def add_mean(self, weights: Weights, losses: Mapping[str, float],
                 samples: Mapping[str, int]) -> None:
        """Fold in the mean update of several workers at once (secure aggregation: the
        coordinator holds only their aggregate, fedmq.fl.secure): as one result weighted by
        their total examples, while each worker's loss and sample count is recorded as its own
        (so `count`, `loss()` and the round's record are as if they had come one by one).
        UpdateRejected as `add`."""
        total = int(sum(samples.values()))
        if not samples or total <= 0:
            raise UpdateRejected(f"round {self.round}: an aggregate of no examples")
        clash = [w for w in samples if w in self.samples]
        if clash:
            raise UpdateRejected(f"round {self.round}: a second result from {clash[0]}")
        loss = sum(losses[w] * samples[w] for w in samples) / total
        pseudo = "\x00aggregate"
        self.add(FitResult(pseudo, weights, total, loss, self.round))
        del self.losses[pseudo], self.samples[pseudo]
        self.losses.update({w: float(losses[w]) for w in samples})
        self.samples.update({w: int(samples[w]) for w in samples})
        self.count += len(samples) - 1

    def _keep(self, result: FitResult) -> None:
        self.results.append(FitResult(result.worker_id,
                                      {n: result.weights[n] for n in self.layout.parameters},
                                      result.num_examples, result.loss, result.round,
                                      result.metrics))

    def buffers(self) -> Weights:
        """The aggregated buffers: float ones the sample-weighted average, integer ones the
        element-wise maximum, in each entry's dtype (RoundFailed without results)."""
        if not self.count:
            raise RoundFailed(f"round {self.round}: no results to aggregate")
        out = {name: (self._buffer_sum[name] / self.num_examples)
               .to(self.global_weights[name].dtype) for name in self.layout.buffers}
        out.update({name: self._integer_max[name].to(self.global_weights[name].dtype, copy=True)
                    for name in self.layout.integers})
        return out

    def loss(self) -> float:
        """The sample-weighted mean of the workers' training losses."""
        if not self.num_examples:
            return float("nan")
        return sum(self.losses[w] * self.samples[w] for w in self.losses) / self.num_examples


Aggregation = FitAggregate  # the name before Flower's shape


class RunningAverage(FitAggregate):
    """Sample-weighted sum of the parameters so far plus the total weight: O(model) memory
    however many workers answer; results are folded in as they arrive."""

    def __init__(self, round: int, global_weights: Weights, layout: Layout | None = None) -> None:
        super().__init__(round, global_weights, layout)
        self._sum: dict[str, torch.Tensor] = {}

    def _keep(self, result: FitResult) -> None:
        weight = float(result.num_examples)
        add_weighted(self._sum, result.weights, self.layout.parameters, weight)

    def average(self) -> Weights:
        """The sample-weighted average of every entry (parameters and buffers), in the
        model's order and dtypes."""
        if not self.count:
            raise RoundFailed("no update to average")
        out = {name: (self._sum[name] / self.num_examples).to(self.global_weights[name].dtype)
               for name in self.layout.parameters}
        out.update(self.buffers())
        return {name: out[name] for name in self.global_weights}


class Strategy(abc.ABC):
    """Base class: uniform sampling with `fraction_fit`, the `min_fit_workers` rule,
    `accept_failures`, buffers as described in the module docstring. Subclasses implement
    `aggregate_parameters` (and may override `begin_fit`, `fit_config`)."""

    #: whether the strategy needs only the (weighted) mean of the updates, so that it composes
    #: with secure aggregation (FedAvg, FedProx, FedOpt, FedAvgM); the robust ones need each
    #: update and refuse it
    aggregates_mean: bool = False

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
        self.trainable: frozenset[str] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fraction_fit={self.fraction_fit}, "
                f"min_fit_workers={self.min_fit_workers}, accept_failures={self.accept_failures})")

    # -- Flower's interface ------------------------------------------------------------------
    def initialize_parameters(self, weights: Weights,
                              trainable: Iterable[str] | None = None) -> Weights:
        """Called once with the initial global model (also before `load_state_dict` on
        resume) and the names of its trainable parameters (None: by name, see `Layout.of`);
        returns the model to start from (these weights). Server optimizers set up here."""
        self.trainable = None if trainable is None else frozenset(trainable)
        Layout.of(weights, self.trainable)  # ValueError for unknown names
        return weights

    def layout(self, weights: Weights) -> Layout:
        return Layout.of(weights, self.trainable)

    def configure_fit(self, round: int, parameters: Weights, workers: Sequence[str],
                      config: Mapping[str, Any] | None = None, *,
                      seed: int = 0) -> list[tuple[str, FitIns]]:
        """Who trains in `round` (`sample` with an rng seeded by (seed, round): a resumed run
        samples the same) and each one's instructions: `fit_config(round, config)` plus the
        worker's shuffling seed `worker_seed(seed, round, worker_id)`. RoundFailed when too
        few workers are available."""
        chosen = self.sample(workers, round, random.Random(f"{seed}:{round}"))
        base = self.fit_config(round, dict(config or {}))
        return [(w, FitIns(parameters, dict(base, seed=worker_seed(seed, round, w))))
                for w in chosen]

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        """An empty aggregate of `round`, which started from `parameters`."""
        return FitAggregate(round, parameters, self.layout(parameters))

    def aggregate_fit(self, round: int, results: FitAggregate,
                      failures: Mapping[str, str] | Sequence[Any] = ()) -> Weights:
        """The next global model (new tensors) from the round's results and its failures
        (worker id -> reason). RoundFailed when failures are not accepted or fewer than
        `min_fit_workers` results were."""
        if failures and not self.accept_failures:
            raise RoundFailed(f"round {round}: {len(failures)} worker(s) failed and "
                              f"accept_failures is False")
        if results.count < self.min_fit_workers:
            raise RoundFailed(f"round {round}: {results.count} worker(s) answered, "
                              f"min_fit_workers is {self.min_fit_workers}")
        out = self.aggregate_parameters(round, results)
        out.update(results.buffers())
        return {name: out[name] for name in results.global_weights}

    def configure_evaluate(self, round: int, parameters: Weights, workers: Sequence[str],
                           config: Mapping[str, Any] | None = None
                           ) -> list[tuple[str, EvaluateIns]]:
        """Every given worker evaluates `parameters` with `config` (the coordinator passes its
        testing worker)."""
        return [(w, EvaluateIns(parameters, dict(config or {}))) for w in workers]

    def aggregate_evaluate(self, round: int, results: Sequence[tuple[str, EvaluateResult]],
                           failures: Mapping[str, str] | Sequence[Any] = ()
                           ) -> tuple[float | None, dict[str, Any]]:
        """The example-weighted mean loss, and "correct", "total", "accuracy" summed over the
        results ((None, {}) without results; one result's loss is returned as it is)."""
        results = [r for _, r in results]
        total = sum(r.num_examples for r in results)
        if not results or total <= 0:
            return None, {}
        loss = (results[0].loss if len(results) == 1
                else sum(r.loss * r.num_examples for r in results) / total)
        metrics: dict[str, Any] = {"total": total}
        if all("correct" in r.metrics for r in results):
            correct = sum(int(r.metrics["correct"]) for r in results)
            metrics.update(correct=correct, accuracy=correct / total)
        return loss, metrics

    def evaluate(self, round: int, parameters: Weights) -> tuple[float, dict[str, Any]] | None:
        """Server-side evaluation of the global model (loss, metrics); None: none."""
        return None

    # -- hooks -------------------------------------------------------------------------------
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
        """The config every worker of `round` gets (a new dict; `base` is not modified)."""
        return dict(base)

    @abc.abstractmethod
    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        """The next global values of the parameters (`results.layout.parameters`), from the
        round's results; inputs are not modified. Buffers are added by `aggregate_fit`."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
