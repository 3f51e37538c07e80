"""Aggregation strategies for federated rounds, in the style of Flower's strategy API.

A strategy decides which workers train in a round (`sample`), what they are told
(`fit_config`) and how their updates become the next global model (`begin_round` returns an
`Aggregation` that takes `FitResult`s as they arrive; `finish_round` turns it into weights).

    fedavg.py        FedAvg (default; a running weighted sum, O(model) memory)
    fedprox.py       FedProx (its worker half, `proximal_term`, is fedmq.fl.proximal)
    fedopt.py        FedAdagrad, FedAdam, FedYogi (server-side adaptive optimizers)
    robust.py        FedMedian, FedTrimmedAvg, Krum / Multi-Krum
    asynchronous.py  FedAsync, FedBuff (`AsyncStrategy.on_update`, no rounds)
    registry.py      STRATEGIES and make_strategy(name, **kwargs) for the CLI
"""
from fedmq.strategy.asynchronous import (STALENESS_FUNCTIONS, AsyncStrategy, FedAsync, FedBuff,
                                         staleness_weight)
from fedmq.strategy.base import (Aggregation, FitResult, RoundFailed, RunningAverage, Strategy,
                                 Weights, check_compatible, weighted_average)
from fedmq.strategy.fedavg import FedAvg
from fedmq.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedmq.strategy.fedprox import FedProx
from fedmq.strategy.registry import STRATEGIES, make_strategy
from fedmq.strategy.robust import FedMedian, FedTrimmedAvg, Krum

__all__ = ["Aggregation", "AsyncStrategy", "FedAdagrad", "FedAdam", "FedAsync", "FedAvg",
           "FedBuff", "FedMedian", "FedOpt", "FedProx", "FedTrimmedAvg", "FedYogi", "FitResult",
           "Krum", "RoundFailed", "RunningAverage", "STALENESS_FUNCTIONS", "STRATEGIES",
           "Strategy", "Weights", "check_compatible", "make_strategy",
           "staleness_weight", "weighted_average"]
