"""Wire records of the SMPC extension (record codes 90-99 are reserved for it).

The coordinator asks the crypto provider for correlated randomness with one `DealRequest`
holding any number of `Deal`s. The provider generates each primitive and sends every party its
shares directly (one `ObjectMessage` per party, under ids the coordinator chose), then answers
the coordinator with `None`: the coordinator never sees a share of a triple or of a mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fedmq.serde import record


@record(90)
@dataclass(slots=True)
class Deal:
    """One primitive to deal.

    kind: "mul", "matmul", "conv2d" (Beaver triples), "trunc" (truncation pair), "edabit"
    (a random ring element shared both additively and bitwise-XOR), "and" (binary triple),
    "bit" (a random bit shared both ways).
    parties: ids of the share holders, in share order.
    ids: for each party, the ids its shares are stored under (as many as the kind produces).
    params: shapes and constants (see fedmq.smpc.provider.KINDS).
    """
    kind: str
    parties: list
    ids: list
    params: dict = field(default_factory=dict)


@record(91)
@dataclass(slots=True)
class DealRequest:
    """Deal these primitives (handled by the crypto provider; the reply's value is None)."""
    deals: list


@record(92)
@dataclass(slots=True)
class LocalStep:
    """Run one party's local part of a protocol round (`step`, a function of
    fedmq.smpc.local_steps.STEPS: no other name is accepted) on `args` (Refs to the party's
    shares, public tensors, ints). The tensors it keeps are stored under `result_ids`; the ones
    it opens (masked values) come back in the reply, so a round costs one message per party."""
    step: str
    args: list
    result_ids: list


@record(93)
@dataclass(slots=True)
class ShareRequest:
    """Split the sender's object `id` (an integer tensor on the receiving worker, the holder)
    into additive shares in Z/2^64Z and store share i on worker `parties[i]` under `ids[i]`
    (ids the sender chose): the holder keeps its own share if it is a party and sends every
    other party its share directly (an `ObjectMessage`, worker to worker). The reply's value is
    None: the sender never sees a share (fedmq.smpc.remote)."""
    id: int
    parties: list
    ids: list


@record(94)
@dataclass(slots=True)
class FixPrecision:
    """Encode the sender's object `id` (a tensor on the receiving worker) in fixed precision,
    trunc(x * base**precision_fractional) as int64, and store it under `result_id` (an id the
    sender chose). Posted: nothing comes back; a failure (NaN, a value that does not fit) is
    recorded under `result_id` and raised at its next use (fedmq.smpc.remote)."""
    id: int
    result_id: int
    base: int
    precision_fractional: int
