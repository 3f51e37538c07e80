"""Wire records of additive-sharing aggregation (record codes 118-121, fedmq.secagg.additive).

A training worker sends each aggregator its share (`AggregatorShare`) and, if another
aggregator failed, tells them to forget it (`DropShare`); the coordinator asks every
aggregator which of a round's workers it holds shares of, then for the ring sum over the
workers all of them hold (`AggregateShares`, answered by `AggregateResult`). Who sent a share
is never a field: it is the message's authenticated principal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmq.serde import record


@record(118)
@dataclass(slots=True)
class AggregatorShare:
    """One worker's additive share of its round vector, for one aggregator.

    session: the round's random session id (hex str, from the coordinator's Fit entry).
    round: the federated round (int >= 0).
    share: int64 tensor of shape (L,), uniform in Z_2^64 unless the worker's last share.
    The reply's value is None once the share is stored."""
    session: str
    round: int
    share: Any


@record(119)
@dataclass(slots=True)
class DropShare:
    """Forget the share the sending principal stored for (session, round) (its protect
    failed at another aggregator: nothing partial stays). The reply's value: whether one was
    held."""
    session: str
    round: int


@record(120)
@dataclass(slots=True)
class AggregateShares:
    """From a coordinator: `contributors` (sorted, distinct worker principals).

    reveal False: which of them this aggregator holds a share from (`AggregateResult.held`),
    nothing else, and the session stays open.
    reveal True: the int64 ring sum of their shares (`AggregateResult.total`), given once per
    session and only over at least the aggregator's floor of contributors, all held; the
    session is then forgotten, and any further request for it refused."""
    session: str
    round: int
    contributors: list
    reveal: bool = True


@record(121)
@dataclass(slots=True)
class AggregateResult:
    """An aggregator's answer to `AggregateShares`: `held`, the listed contributors it holds
    shares from (sorted); `total`, the int64 ring sum over them (shape (L,)) when revealed,
    else None."""
    held: list
    total: Any = None
