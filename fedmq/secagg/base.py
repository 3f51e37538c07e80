"""What the federated coordinator drives, for any secure-aggregation method.

The coordinator (fedmq.fl.secure) runs a round as:

    entries = await aggregator.begin_round(round, workers, request, deadline)
        # the stages before training (SecAgg+: advertise keys, share keys); returns, for each
        # worker that may train, the `secure_aggregation` entry its Fit config carries
    ... every worker trains; on the worker, `protect(session, entry, vector)` turns its int64
        ring vector into what its FitRes carries instead of weights; as each FitRes arrives:
    aggregator.masked(round, worker, carried, request, deadline)
        # may start the last stages early (SecAgg+: the Unmask of settled workers) ...
    total, contributors = await aggregator.end_round(round, protected, request, deadline)
        # `protected`: worker -> the dict its FitRes carried, for the workers that answered;
        # returns the ring sum of the vectors of `contributors` (SecAgg+: unmasking)

`request(worker_id, message, timeout)` is an awaitable that returns the worker's reply or raises
(a timeout, the worker's error). Only the coordinator calls these; workers never see each
other's vectors, and the coordinator sees only the sum.
"""
from __future__ import annotations

import abc
import threading
from typing import Any, Awaitable, Callable

import torch

#: request(worker_id, message, timeout seconds) -> the reply (raises on failure)
Request = Callable[[str, Any, float], Awaitable[Any]]

#: held by a worker thread for the CPU-bound arithmetic of a secure round (encoding, key
#: agreements, masks), never across a message or a wait: one such computation at a time per
#: process. A process hosting many workers (a group service, the in-process transport) would
#: otherwise run them interleaved, and their many short GIL-releasing calls (torch ops, AES)
#: hand the GIL back and forth: measured with 50 in-process workers, 5x the CPU and twice the
#: round time.
COMPUTE_LOCK = threading.RLock()


class SecureAggregationError(RuntimeError):
    """A round's secure aggregation cannot finish (too few workers left to unmask, an
    aggregator missing): the round fails and the global model stays as it was."""


class SecureAggregator(abc.ABC):
    """The coordinator side of one secure-aggregation method (one instance per run)."""

    #: the name `fedmq train --secure-aggregation` uses
    name: str = ""

    @abc.abstractmethod
    async def begin_round(self, round: int, workers: list[str], request: Request,
                          deadline: float) -> dict[str, dict]:
        """The stages before training. Returns worker -> the plain-values dict the worker's
        Fit config carries under "secure_aggregation" (workers that failed a stage are left
        out: they do not train this round). Raises SecureAggregationError when too few are
        left to aggregate securely."""

    def fewest_contributors(self, workers: int) -> int:
        """The fewest contributors a round of `workers` sampled workers may be summed over
        (distributed DP noise is calibrated for them)."""
        return 2

    def masked(self, round: int, worker: str, carried: dict, request: Request,
               deadline: float) -> None:
        """A protected update of `round` arrived (`carried`: the dict its FitRes carried)
        before the round's end: a method may start its last stages for the workers whose part
        is settled (SecAgg+ sends the Unmask of a worker whose neighbours have all masked).
        Never raises for a bad update (end_round judges it). Default: nothing."""

    def abandon(self, round: int) -> None:
        """`round` will not be ended (its run was cancelled, or failed before unmasking):
        forget it and stop what `masked` started. Default: nothing."""

    async def end_session(self, request: Request, deadline: float) -> None:
        """The run is over: tell the workers to free what they keep for it (best effort, by
        `deadline`: a worker that does not answer frees it later by itself). Default:
        nothing."""

    @abc.abstractmethod
    async def end_round(self, round: int, protected: dict[str, dict], request: Request,
                        deadline: float) -> tuple[torch.Tensor, list[str]]:
        """The stages after training: `protected` maps each worker whose FitRes arrived to the
        dict it carried. Returns (the int64 ring sum of the contributors' vectors, the
        contributors). Raises SecureAggregationError."""


#: the worker side: protect(session, entry, vector) -> the dict the FitRes carries
Protect = Callable[[Any, dict, torch.Tensor], dict]
