"""Aggregation strategies for federated rounds, in the shape of Flower's strategy API.

A strategy (`base.Strategy`) sets up server state (`initialize_parameters`), decides who trains
and what each worker is told (`configure_fit` -> [(worker_id, FitIns)]), folds the replies as
they arrive (`begin_fit` -> `FitAggregate.add`) and turns them into the next global model
(`aggregate_fit`); `configure_evaluate` / `aggregate_evaluate` / `evaluate` do the same for
evaluation. Buffers (BatchNorm statistics, integer counters) are aggregated apart from the
trainable parameters in every strategy (see base.py).

    base.py          the interface, FitIns/FitResult/EvaluateIns/EvaluateResult, Layout
    fedavg.py        FedAvg (default; a running weighted sum, O(model) memory)
    fedprox.py       FedProx (its worker half, `proximal_term`, is fedmq.fl.proximal)
    fedopt.py        FedAdagrad, FedAdam, FedYogi, FedAvgM (server-side optimizers)
    robust.py        FedMedian, FedTrimmedAvg, Krum / Multi-Krum
    asynchronous.py  FedAsync, FedBuff (`AsyncStrategy`, versions instead of rounds)
    registry.py      STRATEGIES and make_strategy(name, **kwargs) for the CLI
"""
from fedmq.strategy.asynchronous import (STALENESS_FUNCTIONS, AsyncStrategy, AsyncUpdates,
                                         FedAsync, FedBuff, staleness_weight)
from fedmq.strategy.base import (Aggregation, EvaluateIns, EvaluateResult, FitAggregate, FitIns,
                                 FitResult, Layout, RoundFailed, RunningAverage, Strategy,
                                 UpdateRejected, Weights, check_compatible, check_result,
                                 weighted_average, worker_seed)
from fedmq.strategy.fedavg import FedAvg
from fedmq.strategy.fedopt import FedAdagrad, FedAdam, FedAvgM, FedOpt, FedYogi
from fedmq.strategy.fedprox import FedProx
from fedmq.strategy.registry import STRATEGIES, make_strategy
from fedmq.strategy.robust import FedMedian, FedTrimmedAvg, Krum

__all__ = ["Aggregation", "AsyncStrategy", "AsyncUpdates", "EvaluateIns", "EvaluateResult",
           "FedAdagrad", "FedAdam", "FedAsync", "FedAvg", "FedAvgM", "FedBuff", "FedMedian",
           "FedOpt", "FedProx", "FedTrimmedAvg", "FedYogi", "FitAggregate", "FitIns",
           "FitResult", "Krum", "Layout", "RoundFailed", "RunningAverage",
           "STALENESS_FUNCTIONS", "STRATEGIES", "Strategy", "UpdateRejected", "Weights",
           "check_compatible", "check_result", "make_strategy", "staleness_weight",
           "weighted_average", "worker_seed"]
