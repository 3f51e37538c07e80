"""Aggregation strategies for federated rounds, in the style of Flower's strategy API.

A strategy decides which workers train in a round (`sample`), what they are told
(`fit_config`) and how their updates become the next global model (`begin_round` returns an
`Aggregation` that takes `FitResult`s as they arrive; `finish_round` turns it into weights).
"""
from fedmq.strategy.base import (Aggregation, FitResult, RoundFailed, Strategy, Weights,
                                 weighted_average)
from fedmq.strategy.fedavg import FedAvg

__all__ = ["Aggregation", "FedAvg", "FitResult", "RoundFailed", "Strategy", "Weights",
           "weighted_average"]
