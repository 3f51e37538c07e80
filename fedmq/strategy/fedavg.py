"""FedAvg (McMahan et al., 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): the new global model is the average of the workers' models weighted by
their sample counts. Kept as a running weighted sum, so memory is O(model)."""
from __future__ import annotations

from fedmq.strategy.base import FitAggregate, RunningAverage, Strategy, Weights


class FedAvg(Strategy):
    aggregates_mean = True

    def begin_fit(self, round: int, parameters: Weights) -> FitAggregate:
        return RunningAverage(round, parameters, self.layout(parameters))

    def aggregate_parameters(self, round: int, results: FitAggregate) -> Weights:
        return average_of(self, results)


def average_of(strategy: Strategy, results: FitAggregate) -> Weights:
    """The sample-weighted average (all entries) of a RunningAverage (TypeError otherwise:
    it was not made by the strategy's own `begin_fit`)."""
    if not isinstance(results, RunningAverage):
        raise TypeError(f"{type(strategy).__name__} aggregates a RunningAverage (from its own "
                        f"begin_fit), got {type(results).__name__}")
    return results.average()
