"""Wire records of SecAgg+ (codes 110-117, reserved for fedmq.secagg.secaggplus).

Stage numbers and names are Bell et al. (CCS 2020), Fig. 2 / Bonawitz et al. (CCS 2017):
0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection (inside the Fit), 3 Unmasking.
Keys and ciphertexts are raw bytes; worker ids are str; every field is checked again by the
handlers (fedmq.secagg.secaggplus), which refuse bad values with ValueError.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmq.serde import record


@record(110)
@dataclass(slots=True)
class SecAggSetup:
    """Stage 0 (AdvertiseKeys), coordinator -> worker: the round's `workers` (ring order),
    this worker's `neighbours` in the graph, the Shamir `threshold`, and the vector `length`
    (int64 elements; 0: whatever the worker's vector has). With `prepare` (round + 1) the
    worker also makes its keys of that next protocol round (SecAggPublicKeys.next_keys)."""
    session: str
    round: int
    workers: list
    neighbours: list
    threshold: int
    length: int
    prepare: Any = None


@record(111)
@dataclass(slots=True)
class SecAggPublicKeys:
    """Stage 0 reply: the worker's X25519 public keys, `c_pk` (encryption) and `s_pk`
    (masking), 32 raw bytes each (typed Any for serde's generic field test, which has no
    bytes sample; the coordinator checks both are 32-byte `bytes`). With a `prepare` asked:
    `next_keys`, c_pk + s_pk of the next protocol round (64 bytes; None if not made)."""
    c_pk: Any
    s_pk: Any
    next_keys: Any = None


@record(112)
@dataclass(slots=True)
class SecAggShareKeys:
    """Stage 1 (ShareKeys), coordinator -> worker: {neighbour: [c_pk, s_pk]} for its
    neighbours that answered stage 0."""
    session: str
    round: int
    public_keys: dict


@record(113)
@dataclass(slots=True)
class SecAggEncryptedShares:
    """Stage 1 reply: {neighbour: AEAD ciphertext of (share of s^SK, share of b), followed by
    the pairwise seed s_uv when the sender agrees that edge (`secaggplus.agrees`)}."""
    ciphertexts: dict


@record(114)
@dataclass(slots=True)
class SecAggUnmask:
    """Stage 3 (Unmasking), coordinator -> worker: its neighbours (and itself) that sent a
    masked input (`survivors`) and those that shared keys but did not (`dropped`)."""
    session: str
    round: int
    survivors: list
    dropped: list


@record(115)
@dataclass(slots=True)
class SecAggUnmaskShares:
    """Stage 3 reply: {worker: Shamir share (66 bytes)}: of b for a survivor, of s^SK for a
    dropped worker."""
    shares: dict


@record(116)
@dataclass(slots=True)
class SecAggEnd:
    """Coordinator -> worker, once its run is over: forget every state of `session` (its
    rounds, set up ahead or never unmasked there, and its channel pair)."""
    session: str


@record(117)
@dataclass(slots=True)
class SecAggEnded:
    """SecAggEnd's reply: how many round states the worker forgot."""
    forgotten: int
