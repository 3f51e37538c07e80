"""FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): the new global model is the average of the workers' models weighted by
their sample counts. Kept as a running weighted sum, so memory is O(model)."""
from __future__ import annotations

from fedmq.strategy.base import Aggregation, RunningAverage, Strategy, Weights


class FedAvg(Strategy):
    def begin_round(self, round: int, global_weights: Weights) -> Aggregation:
        return RunningAverage(round, global_weights)

    def aggregate(self, round: int, global_weights: Weights, aggregation: Aggregation) -> Weights:
        if not isinstance(aggregation, RunningAverage):
            raise TypeError(f"{type(self).__name__} aggregates a RunningAverage (from its own "
                            f"begin_round), got {type(aggregation).__name__}")
        return aggregation.average()
