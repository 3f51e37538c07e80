"""SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020), semi-honest server, over the ring Z_2^64.

The round's workers form a Harary graph H(n, k) on a ring permuted by (session seed, round)
(`graph`); each worker's secrets are Shamir-shared (t of k+1) among its neighbours and itself.
Stages, as the paper numbers them (Fig. 2 / Bonawitz et al. 2017, Fig. 4):

    0 AdvertiseKeys          worker u draws (c_u^SK, c_u^PK) and (s_u^SK, s_u^PK), X25519
    1 ShareKeys              u draws b_u, shares s_u^SK and b_u among its holders, AEAD-encrypts
                             each neighbour's pair under KA(c_u^SK, c_v^PK); the coordinator
                             relays the ciphertexts, which it cannot open
    2 MaskedInputCollection  inside the Fit (`protect`): y_u = x_u + PRG(b_u)
                             + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^64)
    3 Unmasking              each survivor sends shares of b_v for surviving neighbours and of
                             s_v^SK for dropped ones (never both for one v); the coordinator
                             removes the masks and keeps the sum

Coordinator: `SecAggPlus` (fedmq.secagg.base.SecureAggregator). Worker: HANDLERS (stages 0, 1,
3) and `protect` (stage 2). Worker state is in memory only (`_STATES`), bounded, never
persisted: a restarted worker simply drops out of its round.

Threat model: the paper's semi-honest server (it follows the protocol; workers may drop out
at any stage), with authenticated workers (only a principal holding `coordinator` drives the
stages). The sum of at least t inputs is all it learns. Beyond that, each worker checks what
a deviating coordinator could exploit cheaply:

- stage 0: t must be a strict majority of its k+1 share holders (t > (k+1)/2,
  `lowest_threshold`), so no two disjoint groups of t holders exist, one to reveal b_v and
  the other s_v^SK; at most MAX_WORKERS workers and MAX_NEIGHBOURS neighbours (bounded CPU);
- stage 2: it masks only when ciphertexts from at least t-1 neighbours arrived (t holders of
  its shares, itself included; the paper aborts when |U2| < t): withholding them would leave
  y_u masked by b_u alone, which its neighbours reveal when u survives;
- stage 3: never both shares of one worker, one answer per round, at least t survivors.

Not covered (the paper's malicious-server setting, its ConsistencyCheck round with signed
survivor lists, is not implemented): a coordinator that lies consistently about who dropped,
e.g. names u's masking neighbours as dropped to their holders while u survives, can still
unmask u's input.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmq.secagg import keys, shamir
from fedmq.secagg.base import Request, SecureAggregationError, SecureAggregator
from fedmq.secagg.messages import (SecAggEncryptedShares, SecAggPublicKeys, SecAggSetup,
                                   SecAggShareKeys, SecAggUnmask, SecAggUnmaskShares)
from fedmq.smpc.ring import MAX_EXPANDED, PRG

#: a round's graph is complete up to this many workers
COMPLETE_UP_TO = 8
#: rounds of one session a worker keeps state for (older ones are forgotten)
KEEP_ROUNDS = 3
#: states a worker keeps at most, and for how long (seconds)
MAX_STATES = 256
STATE_TTL = 3600.0
#: bytes of the self-mask seed b_u
SEED_BYTES = 32
#: workers a SecAggSetup may list, and neighbours it may give one worker, at most (bounds on
#: what a worker accepts from the network: stage 1 costs O(k * t) Shamir work, k neighbours)
MAX_WORKERS = 10_000
MAX_NEIGHBOURS = 1_024
#: the stage of a worker that refused stage 2: it neither masks nor unmasks in this round
ABORTED = 4


# -- the graph -------------------------------------------------------------------------------

def default_degree(n: int) -> int:
    """k for n workers: n-1 (complete graph) when n <= 8, else the smallest even number
    >= 2*ceil(log2 n) + 2, at most n-1 (Bell et al. §4: a logarithmic degree)."""
    if n <= COMPLETE_UP_TO:
        return n - 1
    k = 2 * math.ceil(math.log2(n)) + 2
    return min(n - 1, k + (k % 2))


def default_threshold(k: int) -> int:
    """t for k neighbours (k+1 share holders): the smallest strict majority, (k+1)//2 + 1."""
    return lowest_threshold(k)


def lowest_threshold(k: int) -> int:
    """The smallest t a worker with k neighbours accepts: a strict majority of its k+1 share
    holders (t > (k+1)/2), so that two disjoint groups of t holders cannot exist (one would
    reveal b_v, the other s_v^SK). The largest is k+1."""
    return (k + 1) // 2 + 1


def graph(workers: list[str], seed: bytes, round: int, k: int) -> tuple[list[str], dict]:
    """(the ring order, worker -> sorted neighbours) of the Harary graph H(n, k) on `workers`
    sorted then permuted by (seed, round): each worker is joined to the k/2 nearest on each
    side (k rounded up to even; k >= n-1 gives the complete graph)."""
    order = sorted(set(workers))
    n = len(order)
    rng = random.Random(hashlib.sha256(seed + round.to_bytes(8, "big", signed=True)).digest())
    rng.shuffle(order)
    if k >= n - 1:
        return order, {w: sorted(set(order) - {w}) for w in order}
    half = (k + 1) // 2
    out = {}
    for i, w in enumerate(order):
        near = {order[(i + d) % n] for d in range(-half, half + 1) if d}
        out[w] = sorted(near)
    return order, out


def _mask(seed: bytes, length: int) -> torch.Tensor:
    """PRG(seed) expanded to `length` uniform int64 ring elements (AES-256-CTR)."""
    return PRG(seed).uniform((length,))


def _pairwise_seed(s_sk: Any, s_pk: bytes, session: str, round: int) -> bytes:
    """s_uv = KA.agree(s_u^SK, s_v^PK), bound to (session, round)."""
    return keys.agree(s_sk, s_pk, keys.INFO_MASK,
                      salt=keys.associated_data(session, round, "", ""))


def _channel_key(c_sk: Any, c_pk: bytes, session: str, round: int) -> bytes:
    return keys.agree(c_sk, c_pk, keys.INFO_ENCRYPTION,
                      salt=keys.associated_data(session, round, "", ""))


# -- worker side -----------------------------------------------------------------------------

@dataclass
class _RoundState:
    """What a worker keeps for one round (in memory only)."""
    workers: list
    neighbours: list
    threshold: int
    length: int
    c: keys.KeyPair
    s: keys.KeyPair | None
    created: float = field(default_factory=time.monotonic)
    stage: int = 0
    public_keys: dict = field(default_factory=dict)   # v -> (c_pk, s_pk), stage 1
    b: bytes | None = None
    #: v -> (share of s_v^SK, share of b_v) this worker holds, itself included
    held: dict = field(default_factory=dict)
    #: the neighbours whose ciphertexts arrived in stage 2 (the pairwise masks it added)
    masked_with: list = field(default_factory=list)
    unmasked: tuple | None = None   # (survivors, dropped, reply) of stage 3
    #: v -> the AEAD key of the channel with v (stage 1, reused in stage 2, then dropped)
    channels: dict = field(default_factory=dict)
    #: worker -> its Shamir point (built once: x() is O(1))
    points: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points = {w: i for i, w in enumerate(self.workers, 1)}

    def x(self, worker: str) -> int:
        """The Shamir point of `worker`: its place in the round's list, from 1. KeyError for
        a worker not in the round."""
        return self.points[worker]


_STATES: "OrderedDict[tuple, _RoundState]" = OrderedDict()
#: (worker, principal, session) -> the last round set up (older setups are replays)
_LAST_ROUND: dict = {}
_LOCK = threading.Lock()


def _principal(session: Any) -> str:
    acting = getattr(session, "acting", None)
    return acting.principal if acting is not None else session.principal


def _check_session(value: Any, round: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= 128:
        raise ValueError("a SecAgg+ session is a non-empty str of at most 128 characters")
    if type(round) is not int or round < 0:
        raise ValueError(f"a SecAgg+ round is an int >= 0, got {round!r}")


def _forget_old() -> None:
    now = time.monotonic()
    for key in [k for k, s in _STATES.items() if now - s.created > STATE_TTL]:
        del _STATES[key]
    while len(_STATES) > MAX_STATES:
        _STATES.popitem(last=False)


def _state(session: Any, sa_session: Any, round: Any, stage: int) -> tuple[tuple, _RoundState]:
    """The worker's state for the round, expected at `stage` (ValueError otherwise)."""
    _check_session(sa_session, round)
    key = (session.id, _principal(session), sa_session, round)
    state = _STATES.get(key)
    if state is None:
        raise ValueError(f"SecAgg+ session {sa_session!r} round {round}: no such round on "
                         f"worker {session.id!r} (not set up, forgotten, or the worker restarted)")
    if state.stage == ABORTED:
        raise ValueError(f"SecAgg+ session {sa_session!r} round {round}: this worker refused "
                         f"stage 2 (MaskedInputCollection) and left the round")
    if state.stage != stage:
        raise ValueError(f"SecAgg+ session {sa_session!r} round {round}: stage {stage + 1} "
                         f"out of order (this worker is past stage {state.stage})")
    return key, state


def advertise_keys(session: Any, msg: SecAggSetup) -> SecAggPublicKeys:
    """Stage 0, AdvertiseKeys: fresh (c_u, s_u) X25519 pairs for this round; replies their
    public halves. ValueError for a bad setup (more than MAX_WORKERS workers or
    MAX_NEIGHBOURS neighbours, a threshold t outside [(k+1)//2 + 1, k+1] for k neighbours:
    t must be a strict majority of the k+1 share holders) or a replayed/old round;
    AccessDeniedError unless the sender holds `coordinator`."""
    session.require("coordinator", "send SecAggSetup")
    _check_session(msg.session, msg.round)
    me = session.id
    workers, neighbours = msg.workers, msg.neighbours
    if not (isinstance(workers, list) and isinstance(neighbours, list)):
        raise ValueError("SecAggSetup.workers and .neighbours are lists of worker ids")
    if len(workers) > MAX_WORKERS:
        raise ValueError(f"SecAggSetup: at most {MAX_WORKERS} workers in a round, got "
                         f"{len(workers)}")
    if len(neighbours) > MAX_NEIGHBOURS:
        raise ValueError(f"SecAggSetup: at most {MAX_NEIGHBOURS} neighbours, got "
                         f"{len(neighbours)}")
    if not all(type(w) is str for w in [*workers, *neighbours]) \
            or len(set(workers)) != len(workers):
        raise ValueError("SecAggSetup.workers are distinct worker ids")
    if me not in workers or me in neighbours or not set(neighbours) <= set(workers) \
            or len(set(neighbours)) != len(neighbours) or not neighbours:
        raise ValueError(f"SecAggSetup: worker {me!r} must be in the round, and its neighbours "
                         f"(others in the round, at least one) distinct")
    k = len(neighbours)
    if type(msg.threshold) is not int or not lowest_threshold(k) <= msg.threshold <= k + 1:
        raise ValueError(f"SecAggSetup.threshold must be in [{lowest_threshold(k)}, {k + 1}] "
                         f"(a strict majority of the {k + 1} share holders), got "
                         f"{msg.threshold!r}")
    if type(msg.length) is not int or not 0 <= msg.length <= MAX_EXPANDED:
        raise ValueError(f"SecAggSetup.length must be in [0, {MAX_EXPANDED}]")
    key = (me, _principal(session), msg.session, msg.round)
    with _LOCK:
        last = _LAST_ROUND.get(key[:3])
        if key in _STATES or (last is not None and msg.round <= last):
            raise ValueError(f"SecAgg+ session {msg.session!r} round {msg.round}: stage 0 "
                             f"replayed (this worker already set up round {last})")
        _LAST_ROUND.pop(key[:3], None)
        _LAST_ROUND[key[:3]] = msg.round  # newest last: the oldest sessions are forgotten
        while len(_LAST_ROUND) > 4 * MAX_STATES:
            del _LAST_ROUND[next(iter(_LAST_ROUND))]
        for old in [k for k in _STATES if k[:3] == key[:3] and k[3] <= msg.round - KEEP_ROUNDS]:
            del _STATES[old]
        state = _RoundState(list(workers), sorted(neighbours), msg.threshold, msg.length,
                            keys.KeyPair.generate(), keys.KeyPair.generate())
        _STATES[key] = state
        _forget_old()
    return SecAggPublicKeys(state.c.pk, state.s.pk)


def share_keys(session: Any, msg: SecAggShareKeys) -> SecAggEncryptedShares:
    """Stage 1, ShareKeys: draws b_u, Shamir-shares s_u^SK and b_u (t of the holders: this
    worker and its neighbours in `public_keys`), keeps its own shares and replies each
    neighbour's pair AEAD-encrypted for it. ValueError for keys of non-neighbours, malformed
    keys, too few holders, a stage out of order or replayed."""
    session.require("coordinator", "send SecAggShareKeys")
    me = session.id
    with _LOCK:
        key, state = _state(session, msg.session, msg.round, 0)
        state.stage = 1  # a replay now fails, whatever follows
    if type(msg.public_keys) is not dict:
        raise ValueError("SecAggShareKeys.public_keys is {neighbour: [c_pk, s_pk]}")
    pks = {}
    neighbours = set(state.neighbours)
    for v, pair in msg.public_keys.items():
        if v not in neighbours:
            raise ValueError(f"SecAggShareKeys: {v!r} is not a neighbour of {me!r}")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"SecAggShareKeys: the keys of {v!r} are [c_pk, s_pk]")
        c_pk = keys.check_public_key(pair[0], f"c_pk of {v!r}")
        s_pk = keys.check_public_key(pair[1], f"s_pk of {v!r}")
        if c_pk in (state.c.pk, state.s.pk) or s_pk in (state.c.pk, state.s.pk):
            raise ValueError(f"SecAggShareKeys: {v!r} advertises this worker's own key")
        pks[v] = (c_pk, s_pk)
    holders = [me, *sorted(pks)]
    if len(holders) < state.threshold:
        raise ValueError(f"SecAggShareKeys: {len(holders)} share holders, fewer than the "
                         f"threshold {state.threshold}")
    state.public_keys = pks
    state.b = os.urandom(SEED_BYTES)
    xs = [state.x(w) for w in holders]
    s_shares = shamir.split(int.from_bytes(state.s.sk, "big"), xs, state.threshold)
    b_shares = shamir.split(int.from_bytes(state.b, "big"), xs, state.threshold)
    out = {}
    for w in holders:
        pair = (shamir.to_bytes(s_shares[state.x(w)]), shamir.to_bytes(b_shares[state.x(w)]))
        if w == me:
            state.held[me] = pair
            continue
        channel = state.channels[w] = _channel_key(state.c.private or state.c.sk, pks[w][0],
                                                   msg.session, msg.round)
        out[w] = keys.seal(channel, pair[0] + pair[1],
                           keys.associated_data(msg.session, msg.round, me, w))
    return SecAggEncryptedShares(out)


def protect(session: Any, entry: dict, vector: torch.Tensor) -> dict:
    """Stage 2, MaskedInputCollection (on the worker, inside the Fit): checks and stores the
    shares in `entry["ciphertexts"]` ({sender: ciphertext}, from neighbours that shared keys)
    and returns {"masked": y}, y = x + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)
    mod 2^64 (int64, shape (L,)). `vector`: int64, shape (L,). ValueError naming the sender of
    a forged/altered ciphertext, for a sender that is no neighbour, for ciphertexts from fewer
    than t-1 neighbours (fewer than t holders of this worker's shares, itself included: the
    paper's stage 2 aborts when |U2| < t), a wrong vector, or a stage out of order. After any
    refusal the worker has left the round: its secrets are dropped, it neither masks nor
    unmasks again in it."""
    if not isinstance(entry, dict):
        raise ValueError("the secure_aggregation entry is a dict")
    me = session.id
    sa_session, round = entry.get("session"), entry.get("round")
    ciphertexts = entry.get("ciphertexts")
    if not isinstance(ciphertexts, dict):
        raise ValueError("the secure_aggregation entry's ciphertexts are {sender: bytes}")
    if not (isinstance(vector, torch.Tensor) and vector.dtype == torch.int64 and vector.dim() == 1):
        raise ValueError("SecAgg+ masks an int64 vector of shape (L,)")
    with _LOCK:
        key, state = _state(session, sa_session, round, 1)
        state.stage = 2
    try:
        return _mask_input(me, state, sa_session, round, ciphertexts, vector)
    except BaseException:
        state.stage = ABORTED
        state.b, state.s, state.channels, state.held = None, None, {}, {}
        raise


def _mask_input(me: str, state: _RoundState, sa_session: str, round: int, ciphertexts: dict,
                vector: torch.Tensor) -> dict:
    """The body of `protect` (stage 2), once the state has moved to stage 2."""
    if state.length and vector.numel() != state.length:
        raise ValueError(f"SecAgg+: the vector has {vector.numel()} elements, the round "
                         f"{state.length}")
    if vector.numel() > MAX_EXPANDED:
        raise ValueError(f"SecAgg+: at most {MAX_EXPANDED} elements")
    state.length = vector.numel()
    for v, ciphertext in ciphertexts.items():
        if v not in state.public_keys:
            raise ValueError(f"SecAgg+: a ciphertext from {v!r}, which shared no keys with "
                             f"{me!r} in stage 1")
        channel = state.channels.get(v) or _channel_key(state.c.private or state.c.sk,
                                                        state.public_keys[v][0],
                                                        sa_session, round)
        try:
            plain = keys.open_sealed(channel, ciphertext,
                                     keys.associated_data(sa_session, round, v, me))
        except ValueError as exc:
            raise ValueError(f"SecAgg+: the shares from {v!r} were refused: {exc}") from None
        if len(plain) != 2 * shamir.SHARE_BYTES:
            raise ValueError(f"SecAgg+: the shares from {v!r} are malformed")
        state.held[v] = (plain[:shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES:])
    if len(ciphertexts) + 1 < state.threshold:  # Bell et al. Fig. 2 / Bonawitz et al. Round 2
        raise ValueError(f"SecAgg+: shares from {len(ciphertexts)} neighbours reached "
                         f"{me!r}, so {len(ciphertexts) + 1} hold its shares, fewer than the "
                         f"threshold {state.threshold}: it refuses to mask (its input could "
                         f"be unmasked from its self-mask alone)")
    y = vector.detach().clone() + _mask(state.b, state.length)
    for v in sorted(ciphertexts):
        seed = _pairwise_seed(state.s.private or state.s.sk, state.public_keys[v][1],
                              sa_session, round)
        if v > me:
            y += _mask(seed, state.length)
        else:
            y -= _mask(seed, state.length)
    state.masked_with = sorted(ciphertexts)
    # the secrets are no longer needed: only shares stay (stage 3)
    state.b, state.s, state.channels = None, None, {}
    return {"masked": y}


def unmask(session: Any, msg: SecAggUnmask) -> SecAggUnmaskShares:
    """Stage 3, Unmasking: shares of b_v for each v in `survivors` and of s_v^SK for each v in
    `dropped`. ValueError if the lists overlap, name this worker as dropped, hold fewer than t
    survivors, name a worker whose shares it does not hold (no neighbour in stage 1), differ
    from an earlier Unmask of this round, or if this worker sent no masked input."""
    session.require("coordinator", "send SecAggUnmask")
    me = session.id
    survivors, dropped = msg.survivors, msg.dropped
    if not (isinstance(survivors, list) and isinstance(dropped, list)
            and all(type(w) is str for w in [*survivors, *dropped])):
        raise ValueError("SecAggUnmask: survivors and dropped are lists of worker ids")
    with _LOCK:
        _check_session(msg.session, msg.round)
        key = (me, _principal(session), msg.session, msg.round)
        state = _STATES.get(key)
        if state is not None and state.unmasked is not None:
            if (sorted(survivors), sorted(dropped)) != state.unmasked[:2]:
                raise ValueError("SecAggUnmask: asked again with different survivors/dropped "
                                 "sets (refused: that could reveal both shares of a worker)")
            return state.unmasked[2]
        key, state = _state(session, msg.session, msg.round, 2)
        s_set, d_set = set(survivors), set(dropped)
        if len(s_set) != len(survivors) or len(d_set) != len(dropped):
            raise ValueError("SecAggUnmask: a worker is listed twice")
        if s_set & d_set:
            raise ValueError(f"SecAggUnmask: {sorted(s_set & d_set)} listed both as survivors "
                             f"and dropped (refused)")
        if me in d_set:
            raise ValueError(f"SecAggUnmask: {me!r} is listed as dropped, but it sent its "
                             f"masked input")
        if len(s_set) < state.threshold:
            raise ValueError(f"SecAggUnmask: {len(s_set)} survivors, fewer than the threshold "
                             f"{state.threshold}")
        unknown = sorted((s_set | d_set) - set(state.held))
        if unknown:
            raise ValueError(f"SecAggUnmask: {unknown} were not neighbours of {me!r} in "
                             f"stage 1")
        shares = {v: state.held[v][1] for v in sorted(s_set)}
        shares.update({v: state.held[v][0] for v in sorted(d_set)})
        reply = SecAggUnmaskShares(shares)
        state.stage = 3
        state.unmasked = (sorted(survivors), sorted(dropped), reply)
        return reply


# -- coordinator side ------------------------------------------------------------------------

@dataclass
class _Round:
    workers: list
    neighbours: dict
    threshold: int
    length: int
    public_keys: dict          # U1: worker -> (c_pk, s_pk)
    shared: list               # U2: workers whose stage 1 ciphertexts were relayed
    masked_with: dict          # u -> neighbours whose ciphertexts u got (its pairwise masks)


async def _gather(request: Request, messages: dict[str, Any], deadline: float) -> dict:
    """worker -> reply for those that answered before `deadline` (errors are drops)."""
    async def one(worker: str, message: Any) -> Any:
        try:
            return await request(worker, message, max(0.001, deadline - time.time()))
        except Exception as exc:  # a timeout or the worker's error: it drops out
            return exc
    names = list(messages)
    replies = await asyncio.gather(*(one(w, messages[w]) for w in names))
    return {w: r for w, r in zip(names, replies) if not isinstance(r, BaseException)}


class SecAggPlus(SecureAggregator):
    """The coordinator of SecAgg+ (see the module docstring). `threshold`: t (default: the
    smallest strict majority of each worker's k+1 holders; a t given here must be a strict
    majority and at most k+1 for each round's k, never clamped: see `check_threshold`);
    `neighbours`: k (default `default_degree`); `seed`: 32 bytes seeding the graph's
    permutation (random if None); `length`: the vectors' elements (0: not fixed in advance;
    end_round checks they agree)."""

    name = "secagg+"

    def __init__(self, threshold: int | None = None, neighbours: int | None = None,
                 seed: bytes | None = None, length: int = 0) -> None:
        if threshold is not None and (type(threshold) is not int or threshold < 2):
            raise ValueError(f"threshold must be an int >= 2, got {threshold!r}")
        if neighbours is not None and (type(neighbours) is not int or neighbours < 1):
            raise ValueError(f"neighbours must be an int >= 1, got {neighbours!r}")
        self.threshold = threshold
        self.neighbours = neighbours
        self.seed = os.urandom(32) if seed is None else bytes(seed)
        self.length = length
        self.session = os.urandom(12).hex()
        self._rounds: dict[int, _Round] = {}

    def degree(self, n: int) -> int:
        k = default_degree(n) if self.neighbours is None else min(n - 1, self.neighbours)
        return k if k >= n - 1 else k + (k % 2)

    def fewest_contributors(self, workers: int) -> int:
        """t for a round of `workers`: unmasking needs t survivors in a neighbourhood (the
        configured threshold as given; `begin_round` refuses one out of range)."""
        return self.threshold or default_threshold(self.degree(workers))

    def check_threshold(self, n_workers: int) -> None:
        """ValueError, naming the allowed range, unless the configured threshold t suits a
        round of `n_workers`: lowest_threshold(k) <= t <= k+1 for k = degree(n_workers), a
        strict majority of each worker's k+1 share holders (what workers accept). No-op
        when no threshold is configured (the default always suits)."""
        if type(n_workers) is not int or n_workers < 2:
            raise ValueError(f"SecAgg+ needs at least 2 workers, got {n_workers!r}")
        if self.threshold is None:
            return
        k = self.degree(n_workers)
        low, high = lowest_threshold(k), k + 1
        if not low <= self.threshold <= high:
            raise ValueError(f"SecAgg+ threshold {self.threshold} does not suit {n_workers} "
                             f"workers ({k} neighbours each, {k + 1} share holders): it must "
                             f"be from {low} to {high} (a strict majority of the holders)")

    async def begin_round(self, round: int, workers: list[str], request: Request,
                          deadline: float) -> dict[str, dict]:
        """Stages 0 (AdvertiseKeys) and 1 (ShareKeys). Returns worker -> its Fit config entry
        {"session", "round", "ciphertexts": {sender: bytes}} for the workers that finished
        stage 1 and got ciphertexts from at least t-1 neighbours (the others would refuse to
        mask). SecureAggregationError when fewer than t remain, or when the configured
        threshold does not suit this round's number of workers (`check_threshold`)."""
        if len(set(workers)) < 2:
            raise SecureAggregationError("SecAgg+ needs at least 2 workers")
        try:
            self.check_threshold(len(set(workers)))
        except ValueError as exc:
            raise SecureAggregationError(f"SecAgg+ round {round}: {exc}") from None
        k = self.degree(len(set(workers)))
        t = self.fewest_contributors(len(set(workers)))
        order, nbrs = graph(workers, self.seed, round, k)
        # Stage 0: AdvertiseKeys (half the time left: a worker that hangs here must not leave
        # stage 1 no time at all)
        replies = await _gather(request, {
            u: SecAggSetup(self.session, round, order, nbrs[u], t, self.length) for u in order
        }, time.time() + max(deadline - time.time(), 0.0) / 2)
        pks = {u: (r.c_pk, r.s_pk) for u, r in replies.items()
               if isinstance(r, SecAggPublicKeys) and type(r.c_pk) is bytes
               and type(r.s_pk) is bytes and len(r.c_pk) == len(r.s_pk) == keys.KEY_BYTES}
        u1 = [u for u in order if u in pks and sum(v in pks for v in nbrs[u]) + 1 >= t]
        if len(u1) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(u1)} workers advertised "
                                         f"keys, fewer than the threshold {t}")
        # Stage 1: ShareKeys
        replies = await _gather(request, {
            u: SecAggShareKeys(self.session, round,
                               {v: list(pks[v]) for v in nbrs[u] if v in u1}) for u in u1
        }, deadline)
        sent = {u: r.ciphertexts for u, r in replies.items()
                if isinstance(r, SecAggEncryptedShares) and isinstance(r.ciphertexts, dict)
                and set(r.ciphertexts) == {v for v in nbrs[u] if v in u1}
                and all(type(c) is bytes for c in r.ciphertexts.values())}
        u2 = [u for u in u1 if u in sent]
        if len(u2) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(u2)} workers shared "
                                         f"keys, fewer than the threshold {t}")
        entries, masked_with = {}, {}
        for u in u2:
            got = {v: sent[v][u] for v in nbrs[u] if v in sent}
            masked_with[u] = sorted(got)
            if len(got) + 1 >= t:  # else u refuses stage 2: it does not train (a dropout)
                entries[u] = {"session": self.session, "round": round, "ciphertexts": got}
        if len(entries) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(entries)} workers got "
                                         f"enough shares to mask, fewer than the threshold {t}")
        self._rounds[round] = _Round(order, nbrs, t, self.length, pks, u2, masked_with)
        for old in [r for r in self._rounds if r <= round - KEEP_ROUNDS]:
            del self._rounds[old]
        return entries

    async def end_round(self, round: int, protected: dict[str, dict], request: Request,
                        deadline: float) -> tuple[torch.Tensor, list[str]]:
        """Stage 3 (Unmasking): asks each worker that sent y for its shares, reconstructs the
        survivors' b_u and the dropped workers' s_v^SK (t shares each, checked against the
        others), removes the masks. Returns (the int64 sum of the survivors' x, the survivors,
        sorted). SecureAggregationError when fewer than t masked inputs or shares arrive."""
        state = self._rounds.pop(round, None)
        if state is None:
            raise SecureAggregationError(f"SecAgg+ round {round} was not begun")
        t = state.threshold
        ys = {}
        for u in state.shared:
            y = (protected.get(u) or {}).get("masked") if isinstance(protected.get(u), dict) \
                else None
            if isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1 \
                    and (not state.length or y.numel() == state.length):
                ys[u] = y
        lengths = {y.numel() for y in ys.values()}
        if len(lengths) > 1:  # no length fixed in advance: keep the most common one
            common = max(lengths, key=lambda n: sum(y.numel() == n for y in ys.values()))
            ys = {u: y for u, y in ys.items() if y.numel() == common}
        u3 = sorted(ys)
        if len(u3) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(u3)} masked inputs, "
                                         f"fewer than the threshold {t}")
        length = next(iter(ys.values())).numel()
        alive = set(u3)
        # the dropped workers some survivor added a pairwise mask with (only their s^SK is needed)
        dropped = {v for w in u3 for v in state.masked_with[w]} & (set(state.shared) - alive)
        requests = {u: SecAggUnmask(self.session, round,
                                    sorted({u, *state.masked_with[u]} & alive),
                                    sorted(set(state.masked_with[u]) & dropped)) for u in u3}
        replies = await _gather(request, requests, deadline)
        b_shares: dict[str, dict] = {u: {} for u in u3}
        s_shares: dict[str, dict] = {v: {} for v in dropped}
        points = {w: i for i, w in enumerate(state.workers, 1)}
        for u, reply in replies.items():
            if not isinstance(reply, SecAggUnmaskShares) or not isinstance(reply.shares, dict):
                continue
            x = points[u]
            try:
                for v in requests[u].survivors:
                    b_shares[v][x] = shamir.from_bytes(reply.shares.get(v))
                for v in requests[u].dropped:
                    s_shares[v][x] = shamir.from_bytes(reply.shares.get(v))
            except ValueError:
                continue  # a malformed reply: this worker's shares are not used
        total = torch.zeros(length, dtype=torch.int64)
        for u in u3:
            total += ys[u]
            b_u = _reconstruct(b_shares[u], t, f"b of {u!r}", round)
            total -= _mask(b_u.to_bytes(SEED_BYTES, "big"), length)
        for v in sorted(dropped):
            secret = _reconstruct(s_shares[v], t, f"s^SK of {v!r}", round)
            try:  # loaded once for all its neighbours
                s_sk = keys.private_key(secret.to_bytes(keys.KEY_BYTES, "big"))
            except (ValueError, OverflowError):
                raise SecureAggregationError(f"SecAgg+ round {round}: the shares of s^SK of "
                                             f"{v!r} do not make a key") from None
            for w in u3:
                if v not in state.masked_with[w]:
                    continue
                seed = _pairwise_seed(s_sk, state.public_keys[w][1], self.session, round)
                # w added +PRG(s_wv) when v > w, -PRG(s_wv) when v < w
                if v > w:
                    total -= _mask(seed, length)
                else:
                    total += _mask(seed, length)
        return total, u3


def _reconstruct(shares: dict, t: int, what: str, round: int) -> int:
    """The secret from >= t shares; with more than t, two different t-subsets must agree."""
    if len(shares) < t:
        raise SecureAggregationError(f"SecAgg+ round {round}: {len(shares)} shares of {what}, "
                                     f"fewer than the threshold {t}")
    points = sorted(shares.items())
    secret = shamir.reconstruct(dict(points[:t]))
    if len(points) > t and shamir.reconstruct(dict(points[-t:])) != secret:
        raise SecureAggregationError(f"SecAgg+ round {round}: inconsistent shares of {what}")
    if secret >= 1 << (8 * keys.KEY_BYTES):
        raise SecureAggregationError(f"SecAgg+ round {round}: the shares of {what} give no "
                                     f"32-byte secret")
    return secret


#: message type -> worker handler(session, message)
HANDLERS: dict = {SecAggSetup: advertise_keys, SecAggShareKeys: share_keys,
                  SecAggUnmask: unmask}
#: wire records (codes 110-117)
RECORDS: tuple = (SecAggSetup, SecAggPublicKeys, SecAggShareKeys, SecAggEncryptedShares,
                  SecAggUnmask, SecAggUnmaskShares)
