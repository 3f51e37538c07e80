"""SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020), semi-honest server, over the ring Z_2^64.

The round's workers form a Harary graph H(n, k) on a ring permuted by (session seed, round)
(`graph`); each worker's secrets are Shamir-shared (t of k+1) among its neighbours and itself.
Stages, as the paper numbers them (Fig. 2 / Bonawitz et al. 2017, Fig. 4):

    0 AdvertiseKeys          worker u draws (s_u^SK, s_u^PK) and advertises it with its
                             channel pair (c_u^SK, c_u^PK), X25519; c_u is drawn once per
                             session (see below), s_u every round
    1 ShareKeys              u draws b_u, shares s_u^SK and b_u among its holders, AEAD-encrypts
                             each neighbour's pair under KA(c_u^SK, c_v^PK) (with s_uv for the
                             edges u agrees, see Cost); the coordinator relays the ciphertexts,
                             which it cannot open
    2 MaskedInputCollection  inside the Fit (`protect`): y_u = x_u + PRG(b_u)
                             + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)   (mod 2^64)
    3 Unmasking              each survivor sends shares of b_v for surviving neighbours and of
                             s_v^SK for dropped ones (never both for one v); the coordinator
                             removes the masks and keeps the sum

Coordinator: `SecAggPlus` (fedmq.secagg.base.SecureAggregator). Worker: HANDLERS (stages 0, 1,
3) and `protect` (stage 2). Worker state is in memory only (`_STATES`, `_CHANNELS`), bounded,
never persisted: a restarted worker simply drops out of its round.

Cost: the X25519 agreements dominate a worker's CPU (35 to 60 us each, as the machine goes).
s_u must be fresh every round (s_u^SK is revealed when u drops), but c_u^SK never leaves the
worker, so a worker keeps one channel pair per session and agrees the AEAD key with each
neighbour's c_v^PK once (`_channel`): each ciphertext stays bound to its round by the AEAD's
associated data (session, round, sender, receiver) under a random nonce. And the pairwise
seed s_uv = KA(s_u^SK, s_v^PK) = KA(s_v^SK, s_u^PK) is agreed by one end of the edge only
(`agrees`), which appends it to its stage 1 ciphertext for the other end: k/2 agreements per
worker and round instead of k, the same seed bytes, and the paper's dropout recovery (the
coordinator rebuilds s_v^SK of a dropped v and agrees s_vw with each survivor w).

What the session-long channel pair gives up is forward secrecy within the session: c_u^SK
opens every ciphertext u sent or received in the session's rounds (the AEAD key is the same
both ways). So whoever steals it from u's memory while the session lasts, and also holds the
coordinator's frames, gets u's outgoing shares of its own s_u^SK and b_u, and with them u's
inputs of those rounds; of any other worker v, only the one share of v's secrets and the one
pairwise seed s_uv that v sent u (fewer than t shares, one of v's k seeds), so no other
input. This was so before seeds travelled (the outgoing shares alone suffice). Such a thief
reads u's training data from the same memory, and its updates follow from the data and the
global models the coordinator sent. With fresh channel pairs every round (the paper), each
worker would agree k channel keys more per round.

With `SecAggPlus(ahead=True)` (default) the next protocol rounds' stages 0 and 1
travel inside this round's Fits (see `SecAggPlus`), stage 3 asks only the workers whose
shares it needs (`unmask_plan`), and a worker's Unmask goes out during the Fits once its
closed neighbourhood has masked (`SecAggPlus.masked`).

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
import functools
import hashlib
import logging
import math
import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmq.secagg import keys, shamir
from fedmq.secagg.base import COMPUTE_LOCK, Request, SecureAggregationError, SecureAggregator
from fedmq.secagg.messages import (SecAggEncryptedShares, SecAggEnd, SecAggEnded,
                                   SecAggPublicKeys, SecAggSetup, SecAggShareKeys, SecAggUnmask,
                                   SecAggUnmaskShares)
from fedmq.smpc.ring import MAX_EXPANDED, PRG

#: a round's graph is complete up to this many workers
COMPLETE_UP_TO = 8
#: rounds of one session a worker keeps state for (older ones are forgotten)
KEEP_ROUNDS = 3
#: round states one worker (for one principal) keeps at most, all the workers of a process
#: at most, and for how long unused (seconds: a day, so that no round in progress, however
#: long its training, is forgotten); the oldest go first
MAX_STATES_PER_WORKER = 32
MAX_STATES = 8192
STATE_TTL = 24 * 3600.0
#: characters of a worker id in a SecAggSetup, at most
MAX_ID_CHARS = 256
#: bytes of the self-mask seed b_u
SEED_BYTES = 32
#: workers a SecAggSetup may list, and neighbours it may give one worker, at most (bounds on
#: what a worker accepts from the network: stage 1 costs O(k * t) Shamir work, k neighbours)
MAX_WORKERS = 10_000
MAX_NEIGHBOURS = 1_024
#: channel pairs (one per worker, principal and session) and agreed channel keys (32 bytes
#: each, one per neighbour and its c_v^PK) a process keeps at most, the least recently used
#: forgotten (a forgotten key is agreed again; a forgotten pair leaves its rounds)
MAX_CHANNEL_PAIRS = 4096
MAX_CHANNEL_KEYS = 16384
#: vectors of at most this many elements get their masks summed ahead, in stage 1, within a
#: budget of PREMASK_BUDGET bytes for the whole process (beyond it, stage 2 sums them)
PREMASK_ELEMENTS = 1 << 16
PREMASK_BUDGET = 64 << 20
#: seconds the first wave of stage 3 requests (`unmask_plan`) is waited for, at most, before
#: the other workers are asked for the shares still missing
UNMASK_WAVE_WAIT = 2.0
#: the stage of a worker that refused stage 2: it neither masks nor unmasks in this round
ABORTED = 4
#: the stage of a round whose keys were made ahead (`_advertise_ahead`), awaiting its setup
AHEAD = -1

log = logging.getLogger("fedmq.secagg")


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


class _Masks:
    """Adds PRG(seed) streams into the int64 vector `total` (shape (L,), contiguous, on the
    CPU) in place, mod 2^64: each stream is `PRG(seed).uniform((L,))` (fedmq.smpc.ring:
    AES-256-CTR keyed by the 32-byte seed, zero counter), expanded into one reused buffer and
    added through numpy views of both (int64 arrays wrap as the ring does; a third of a
    torch call's overhead, which counts at 15 masks per worker per round)."""

    def __init__(self, total: torch.Tensor) -> None:
        self.total = total
        n = 8 * total.numel()
        self._zeros, self._buf = bytes(n), bytearray(n)
        self._stream = np.frombuffer(self._buf, dtype=np.int64) if n else None
        self._total = total.numpy() if n else None

    def add(self, seed: bytes, sign: int = 1) -> None:
        """total += sign * PRG(seed) (sign +1 or -1)."""
        if self._stream is None:
            return
        PRG.expand_into(seed, self._zeros, self._buf)
        if sign > 0:
            np.add(self._total, self._stream, out=self._total)
        else:
            np.subtract(self._total, self._stream, out=self._total)


def _pairwise_seed(s_sk: Any, s_pk: bytes, session: str, round: int) -> bytes:
    """s_uv = KA.agree(s_u^SK, s_v^PK), bound to (session, round)."""
    return keys.agree(s_sk, s_pk, keys.INFO_MASK, salt=keys.mask_salt(session, round))


def agrees(x_u: int, x_v: int) -> bool:
    """Whether the worker at Shamir point `x_u` agrees the pairwise seed of its edge with the
    worker at `x_v` (and hands it over in its stage 1 ciphertext), rather than `x_v`: a
    balanced tournament, exactly one end of every edge (u agrees when x_u < x_v and x_u + x_v
    is odd, or x_u > x_v and x_u + x_v is even): on a Harary ring each worker agrees k/2 of
    its k edges, on a complete graph (n-1)/2 or so."""
    return (x_u < x_v) == ((x_u + x_v) % 2 == 1)


# -- worker side -----------------------------------------------------------------------------

@dataclass
class _RoundState:
    """What a worker keeps for one round (in memory only). `workers` is not kept (only the
    holders' `points`)."""
    workers: list
    neighbours: list
    threshold: int
    length: int
    c: keys.KeyPair             # the session's channel pair c_u (`_channel_pair`)
    s: keys.KeyPair | None
    used: float = field(default_factory=time.monotonic)   # last stage it served
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
    #: v -> the pairwise mask seed s_uv this worker agreed (stage 1, `agrees`), expanded in
    #: stage 2, then dropped
    seeds: dict = field(default_factory=dict)
    #: PRG(b_u) + sum_v +-PRG(s_uv) over the seeds of `seeds`, summed in stage 1 when the
    #: length is known and small (PREMASK_ELEMENTS), so that stage 2 (the Fit) adds it and
    #: only expands the seeds its neighbours handed over
    premask: torch.Tensor | None = None
    #: its key in _STATES (worker, principal, session, round), set when kept
    key: tuple = ()
    #: worker -> its Shamir point (built once: x() is O(1))
    points: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points = {w: i for i, w in enumerate(self.workers, 1)}

    def x(self, worker: str) -> int:
        """The Shamir point of `worker`: its place in the round's list, from 1. KeyError for
        a worker not in the round."""
        return self.points[worker]


#: (worker, principal, session, round) -> its state, least recently used first
_STATES: "OrderedDict[tuple, _RoundState]" = OrderedDict()
#: (worker, principal) -> {its keys in _STATES: None}, oldest set up first (so that bounds
#: and a new round's clean-up look at one worker's states, not at every worker's)
_BY_WORKER: dict[tuple, dict] = {}
#: (worker, principal, session) -> (its channel pair, last use), most recently used last
_CHANNELS: "OrderedDict[tuple, tuple]" = OrderedDict()
#: (worker, principal, session, neighbour, c_v^PK) -> the agreed AEAD key, LRU
_CHANNEL_KEYS: "OrderedDict[tuple, bytes]" = OrderedDict()
#: (worker, principal, session) -> its keys in _CHANNEL_KEYS (`end_session` drops them
#: without a scan of every worker's)
_KEYS_OF: dict[tuple, set] = {}
#: bytes of the premasks kept (PREMASK_BUDGET)
_PREMASK_BYTES = [0]
#: (worker, principal, session) -> the last round set up (older setups are replays)
_LAST_ROUND: dict = {}
#: (worker, principal) -> the sessions it ended here (SecAggEnd), oldest first, at most
#: ENDED_PER_PRINCIPAL each: none of their rounds is set up again (a Fit still running when
#: its session ended would otherwise make keys ahead for it, a channel pair and channel keys,
#: that nothing would end); kept per principal, so one cannot push out another's
_ENDED: OrderedDict = OrderedDict()
ENDED_PER_PRINCIPAL = 1024


def _ended(key: tuple) -> bool:
    """Whether the session of `key` (worker, principal, session, ...) has ended here. Call
    with _LOCK."""
    return key[2] in _ENDED.get(key[:2], ())
_LOCK = threading.Lock()


def _principal(session: Any) -> str:
    acting = getattr(session, "acting", None)
    return acting.principal if acting is not None else session.principal


def _check_session(value: Any, round: Any) -> None:
    if type(value) is not str or not 0 < len(value) <= 128:
        raise ValueError("a SecAgg+ session is a non-empty str of at most 128 characters")
    if type(round) is not int or round < 0:
        raise ValueError(f"a SecAgg+ round is an int >= 0, got {round!r}")


def _drop_premask(state: "_RoundState") -> None:
    """Releases the state's premask from the budget. Call with _LOCK."""
    if state.premask is not None:
        _PREMASK_BYTES[0] -= 8 * state.premask.numel()
        state.premask = None


def _evict(key: tuple) -> None:
    """Forgets the state under `key`. Call with _LOCK."""
    state = _STATES.pop(key, None)
    mine = _BY_WORKER.get(key[:2])
    if mine is not None:
        mine.pop(key, None)
        if not mine:
            del _BY_WORKER[key[:2]]
    if state is not None:
        _drop_premask(state)


def _touch(key: tuple, state: "_RoundState") -> None:
    """Marks the state used now (the TTL counts from here; _STATES stays in order of use).
    Call with _LOCK."""
    state.used = time.monotonic()
    if _STATES.get(key) is state:
        _STATES.move_to_end(key)


#: stage -> the order in which a worker's states beyond MAX_STATES_PER_WORKER are forgotten
_EVICTION_RANK = {ABORTED: 0, 3: 0, AHEAD: 1, 1: 2}


def _forget_old(worker: tuple, keep: tuple = ()) -> None:
    """Forgets states unused for STATE_TTL, then those of `worker` (worker, principal) beyond
    MAX_STATES_PER_WORKER (the least useful first, never `keep`), then the least recently
    used of all beyond MAX_STATES; and channel pairs unused for STATE_TTL. Call with
    _LOCK."""
    now = time.monotonic()
    while _STATES:
        key, state = next(iter(_STATES.items()))
        if now - state.used <= STATE_TTL:
            break
        _evict(key)
    mine = _BY_WORKER.get(worker, {})
    if len(mine) > MAX_STATES_PER_WORKER:
        # the most recently active session's states last (runs that ended without SecAggEnd,
        # a coordinator's crash, never push out the live one); otherwise rounds finished
        # (unmasked, or refused) go first, then what a coordinator can set up again by
        # messages (keys made ahead, then rounds shared but not yet masked), rounds in the
        # middle of a stage exchange or masked and awaiting stage 3 last; each class least
        # recently used first; never the state just opened
        newest = max(mine, key=lambda k: _STATES[k].used)[2]
        ranked = sorted((k for k in mine if k != keep),
                        key=lambda k: (k[2] == newest, _EVICTION_RANK.get(_STATES[k].stage, 3),
                                       _STATES[k].used))
        for key in ranked[:len(mine) - MAX_STATES_PER_WORKER]:
            _evict(key)
    while len(_STATES) > MAX_STATES:
        _evict(next(iter(_STATES)))
    while _CHANNELS and now - next(iter(_CHANNELS.values()))[1] > STATE_TTL:
        _CHANNELS.popitem(last=False)


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
    _touch(key, state)
    return key, state


def _check_setup(me: str, msg: SecAggSetup) -> None:
    """ValueError unless `msg` is a setup this worker accepts (see `advertise_keys`)."""
    _check_session(msg.session, msg.round)
    workers, neighbours = msg.workers, msg.neighbours
    if not (isinstance(workers, list) and isinstance(neighbours, list)):
        raise ValueError("SecAggSetup.workers and .neighbours are lists of worker ids")
    if len(workers) > MAX_WORKERS:
        raise ValueError(f"SecAggSetup: at most {MAX_WORKERS} workers in a round, got "
                         f"{len(workers)}")
    if len(neighbours) > MAX_NEIGHBOURS:
        raise ValueError(f"SecAggSetup: at most {MAX_NEIGHBOURS} neighbours, got "
                         f"{len(neighbours)}")
    if not all(type(w) is str and 0 < len(w) <= MAX_ID_CHARS for w in [*workers, *neighbours]) \
            or len(set(workers)) != len(workers):
        raise ValueError(f"SecAggSetup.workers are distinct worker ids (1-{MAX_ID_CHARS} "
                         f"characters)")
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


def _open_state(key: tuple, state: "_RoundState") -> None:
    """Keeps `state` under `key` (worker, principal, session, round), refusing a round not
    newer than the last one this worker set up in the session (a replay). Call with _LOCK."""
    last = _LAST_ROUND.get(key[:3])
    if key in _STATES or (last is not None and key[3] <= last):
        raise ValueError(f"SecAgg+ session {key[2]!r} round {key[3]}: stage 0 replayed (this "
                         f"worker already set up round {last})")
    _LAST_ROUND.pop(key[:3], None)
    _LAST_ROUND[key[:3]] = key[3]  # newest last: the oldest sessions are forgotten
    while len(_LAST_ROUND) > 4 * MAX_STATES:
        del _LAST_ROUND[next(iter(_LAST_ROUND))]
    mine = _BY_WORKER.setdefault(key[:2], {})
    for old in [k for k in mine if k[2] == key[2] and k[3] <= key[3] - KEEP_ROUNDS]:
        _evict(old)
    state.key = key
    state.used = time.monotonic()
    _STATES[key] = state
    _BY_WORKER.setdefault(key[:2], {})[key] = None
    _forget_old(key[:2], keep=key)


def _release_unused(key: tuple) -> None:
    """Round `key` moves to stage 1: the premasks of the worker's older rounds of the session
    still before stage 2 are released (set up but never used: the coordinator set up anew).
    Call with _LOCK."""
    for old in _BY_WORKER.get(key[:2], ()):
        kept = _STATES[old]
        if old[2] == key[2] and old[3] < key[3] and kept.stage <= 1:
            _drop_premask(kept)


def _channel_pair(key: tuple) -> keys.KeyPair:
    """The channel pair c_u of (worker, principal, session) `key[:3]`, drawn on first use.
    ValueError if that session has ended here (`end_session`). Call with _LOCK."""
    if _ended(key):
        raise ValueError(f"SecAgg+ session {key[2]!r} has ended on worker {key[0]!r} "
                         f"(SecAggEnd): none of its rounds is set up again")
    found = _CHANNELS.pop(key[:3], None)
    pair = found[0] if found is not None else keys.KeyPair.generate()
    _CHANNELS[key[:3]] = (pair, time.monotonic())  # most recently used last
    while len(_CHANNELS) > MAX_CHANNEL_PAIRS:
        _CHANNELS.popitem(last=False)
    return pair


def _channel(state: "_RoundState", v: str, c_pk: bytes) -> bytes:
    """The AEAD key (32 bytes) of this worker's channel with neighbour `v` (public key `c_pk`)
    in the state's session: KA(c_u^SK, c_v^PK) bound to the session, agreed once and kept
    (LRU, MAX_CHANNEL_KEYS). ValueError for a bad key."""
    lookup = (*state.key[:3], state.c.pk, v, c_pk)  # both ends' keys: either may change
    with _LOCK:
        agreed = _CHANNEL_KEYS.get(lookup)
        if agreed is not None:
            _CHANNEL_KEYS.move_to_end(lookup)
    if agreed is None:
        agreed = keys.agree(state.c.private or state.c.sk, c_pk, keys.INFO_ENCRYPTION,
                            salt=keys.session_salt(state.key[2]))
        with _LOCK:
            if _ended(state.key):  # the session ended while this worker was agreeing
                return agreed
            _CHANNEL_KEYS[lookup] = agreed
            _KEYS_OF.setdefault(lookup[:3], set()).add(lookup)
            while len(_CHANNEL_KEYS) > MAX_CHANNEL_KEYS:
                old, _ = _CHANNEL_KEYS.popitem(last=False)
                of = _KEYS_OF.get(old[:3])
                if of is not None:
                    of.discard(old)
                    if not of:
                        del _KEYS_OF[old[:3]]
    return agreed


def _set_up(state: "_RoundState", me: str, msg: SecAggSetup) -> None:
    """The checked setup into `state`: of the round's workers it keeps only the Shamir points
    of its share holders (itself and its neighbours), O(k) whatever the round's size."""
    state.neighbours = sorted(msg.neighbours)
    state.threshold, state.length = msg.threshold, msg.length
    holders = {me, *msg.neighbours}
    state.points = {w: i for i, w in enumerate(msg.workers, 1) if w in holders}


def advertise_keys(session: Any, msg: SecAggSetup) -> SecAggPublicKeys:
    """Stage 0, AdvertiseKeys: fresh (c_u, s_u) X25519 pairs for this round; replies their
    public halves. ValueError for a bad setup (more than MAX_WORKERS workers or
    MAX_NEIGHBOURS neighbours, a threshold t outside [(k+1)//2 + 1, k+1] for k neighbours:
    t must be a strict majority of the k+1 share holders) or a replayed/old round;
    AccessDeniedError unless the sender holds `coordinator`."""
    session.require("coordinator", "send SecAggSetup")
    me = session.id
    _check_setup(me, msg)
    if msg.prepare is not None and (type(msg.prepare) is not int
                                    or msg.prepare != msg.round + 1):
        raise ValueError("SecAggSetup.prepare is the next protocol round (round + 1)")
    key = (me, _principal(session), msg.session, msg.round)
    s = keys.KeyPair.generate()
    with _LOCK:
        state = _RoundState([], [], 0, 0, _channel_pair(key), s)
        _set_up(state, me, msg)
        _open_state(key, state)
    reply = SecAggPublicKeys(state.c.pk, state.s.pk)
    if msg.prepare is not None:
        reply.next_keys = _advertise_ahead(session, msg.session, msg.prepare)
    return reply


def _advertise_ahead(session: Any, sa_session: str, round: Any) -> bytes | None:
    """Stage 0 of a later round `round`, done ahead (asked by a SecAggSetup's or a Fit
    entry's "prepare"): fresh key pairs kept in a state that waits for its setup, which
    comes in a later Fit (`_share_ahead`). Returns c_pk + s_pk (64 bytes), or None (logged)
    if the round is not newer than every round set up."""
    try:
        _check_session(sa_session, round)
        key = (session.id, _principal(session), sa_session, round)
        s = keys.KeyPair.generate()
        with _LOCK:
            state = _RoundState([], [], 0, 0, _channel_pair(key), s, stage=AHEAD)
            _open_state(key, state)
    except ValueError as exc:
        log.warning("worker %s: SecAgg+ keys for a later round not made: %s", session.id, exc)
        return None
    return state.c.pk + state.s.pk


def share_keys(session: Any, msg: SecAggShareKeys) -> SecAggEncryptedShares:
    """Stage 1, ShareKeys: draws b_u, Shamir-shares s_u^SK and b_u (t of the holders: this
    worker and its neighbours in `public_keys`), keeps its own shares and replies each
    neighbour's pair AEAD-encrypted for it (with their pairwise seed, for the edges this
    worker `agrees`). ValueError for keys of non-neighbours, malformed keys, too few holders,
    a stage out of order or replayed."""
    session.require("coordinator", "send SecAggShareKeys")
    with _LOCK:
        key, state = _state(session, msg.session, msg.round, 0)
        state.stage = 1  # a replay now fails, whatever follows
        _release_unused(key)
    with COMPUTE_LOCK:
        return SecAggEncryptedShares(_share(session.id, state, msg.session, msg.round,
                                            msg.public_keys))


def _share(me: str, state: "_RoundState", sa_session: str, round: int,
           public_keys: Any) -> dict:
    """The body of stage 1 (the state already moved to it): {neighbour: ciphertext}, each
    the AEAD of (share of s_u^SK, share of b_u), followed, for the edges this worker agrees
    (`agrees`: one end of each), by their pairwise mask seed s_uv: one X25519 agreement per
    edge instead of two. A seed the other end would have agreed is the same bytes
    (KA(s_u^SK, s_v^PK) = KA(s_v^SK, s_u^PK)); it travels where the coordinator cannot read
    it, and dropout recovery is the paper's (s^SK of the dropped end, from its shares)."""
    if type(public_keys) is not dict:
        raise ValueError("SecAggShareKeys.public_keys is {neighbour: [c_pk, s_pk]}")
    pks = {}
    neighbours = set(state.neighbours)
    for v, pair in public_keys.items():
        if v not in neighbours:
            raise ValueError(f"SecAggShareKeys: {v!r} is not a neighbour of {me!r}")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"SecAggShareKeys: the keys of {v!r} are [c_pk, s_pk]")
        c_pk = keys.check_public_key(pair[0], f"c_pk of {v!r}")
        s_pk = keys.check_public_key(pair[1], f"s_pk of {v!r}")
        own = (state.c.pk, state.s.pk)
        if c_pk in own or s_pk in own:
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
        channel = state.channels[w] = _channel(state, w, pks[w][0])
        plain = pair[0] + pair[1]
        if agrees(state.x(me), state.x(w)):
            seed = state.seeds[w] = _pairwise_seed(state.s.private or state.s.sk, pks[w][1],
                                                   sa_session, round)
            plain += seed
        out[w] = keys.seal(channel, plain, keys.associated_data(sa_session, round, me, w))
    if 0 < state.length <= PREMASK_ELEMENTS:
        with _LOCK:
            room = _PREMASK_BYTES[0] + 8 * state.length <= PREMASK_BUDGET
            _PREMASK_BYTES[0] += 8 * state.length if room else 0
        if room:
            premask = torch.zeros(state.length, dtype=torch.int64)
            masks = _Masks(premask)
            masks.add(state.b)
            for v in sorted(state.seeds):
                masks.add(state.seeds[v], 1 if v > me else -1)
            with _LOCK:
                state.premask = premask
                if _STATES.get(state.key) is not state or state.stage != 1:
                    _drop_premask(state)  # forgotten (or moved on) meanwhile
    return out


def protect(session: Any, entry: dict, vector: torch.Tensor) -> dict:
    """Stage 2, MaskedInputCollection (on the worker, inside the Fit): checks and stores the
    shares in `entry["ciphertexts"]` ({sender: ciphertext}, from neighbours that shared keys)
    and returns {"masked": y}, y = x + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)
    mod 2^64 (int64, shape (L,)). `vector`: int64, shape (L,). ValueError naming the sender of
    a forged/altered ciphertext, for a sender that is no neighbour, for ciphertexts from fewer
    than t-1 neighbours (fewer than t holders of this worker's shares, itself included: the
    paper's stage 2 aborts when |U2| < t), a wrong vector, or a stage out of order. After any
    refusal the worker has left the round: its secrets are dropped, it neither masks nor
    unmasks again in it.

    The next protocol rounds, run ahead (`SecAggPlus(ahead=True)`), once y is made:
    - `entry["share"]`, the next round's setup (round + 1, whose keys this worker made
      ahead) as {"round", "workers", "neighbours", "threshold", "length", "keys":
      {neighbour: c_pk + s_pk (64 bytes)}}: its stage 1 (`share_keys`), whose ciphertexts
      the reply carries as "next_ciphertexts" ({neighbour: bytes}), or "next_refused" (why
      not; y is sent either way);
    - `entry["prepare"]` (round + 2): that round's keys (`_advertise_ahead`), carried as
      "next_keys" (c_pk + s_pk, 64 bytes)."""
    if not isinstance(entry, dict):
        raise ValueError("the secure_aggregation entry is a dict")
    me = session.id
    sa_session, round = entry.get("session"), entry.get("round")
    ciphertexts = entry.get("ciphertexts")
    if not isinstance(ciphertexts, dict):
        raise ValueError("the secure_aggregation entry's ciphertexts are {sender: bytes}")
    if not (isinstance(vector, torch.Tensor) and vector.dtype == torch.int64 and vector.dim() == 1):
        raise ValueError("SecAgg+ masks an int64 vector of shape (L,)")
    ahead, share = entry.get("prepare"), entry.get("share")
    if ahead is not None and (type(ahead) is not int or type(round) is not int
                              or ahead != round + 2):
        raise ValueError("the secure_aggregation entry's prepare is the protocol round after "
                         "next (this round + 2)")
    if share is not None and not isinstance(share, dict):
        raise ValueError("the secure_aggregation entry's share is a dict")
    with _LOCK:
        key, state = _state(session, sa_session, round, 1)
        state.stage = 2
    try:
        with COMPUTE_LOCK:
            out = _mask_input(me, state, sa_session, round, ciphertexts, vector)
    except BaseException:
        state.stage = ABORTED
        state.b, state.s, state.channels, state.held, state.seeds = None, None, {}, {}, {}
        with _LOCK:
            _drop_premask(state)
        raise
    if share is not None:
        try:
            setup, public_keys = _next_setup(sa_session, round, share)
            out["next_ciphertexts"] = _share_ahead(session, sa_session, setup, public_keys)
        except ValueError as exc:
            log.warning("worker %s: SecAgg+ stage 1 of a later round refused: %s", me, exc)
            out["next_refused"] = str(exc)
    if ahead is not None:
        next_keys = _advertise_ahead(session, sa_session, ahead)
        if next_keys is not None:
            out["next_keys"] = next_keys
    return out


#: the fields of a Fit entry's "share" (the next protocol round's setup)
SHARE_FIELDS = frozenset({"round", "workers", "neighbours", "threshold", "length", "keys"})


def _next_setup(sa_session: str, round: int, share: dict) -> tuple[SecAggSetup, dict]:
    """(the SecAggSetup a Fit entry's "share" describes, its neighbours' keys as
    {neighbour: [c_pk, s_pk]}). ValueError unless its fields are SHARE_FIELDS, its round is
    `round` + 1 and its keys 64 bytes each; the rest is checked as stages 0 and 1 do."""
    if set(share) != SHARE_FIELDS:
        raise ValueError(f"the secure_aggregation entry's share has the fields "
                         f"{sorted(SHARE_FIELDS)}")
    if type(share["round"]) is not int or share["round"] != round + 1:
        raise ValueError("the secure_aggregation entry's share is of the next protocol round "
                         "(this round + 1)")
    made = share["keys"]
    if type(made) is not dict or not all(type(k) is bytes and len(k) == 2 * keys.KEY_BYTES
                                         for k in made.values()):
        raise ValueError("the secure_aggregation entry's share keys are {neighbour: c_pk + "
                         "s_pk (64 bytes)}")
    return (SecAggSetup(sa_session, share["round"], share["workers"], share["neighbours"],
                        share["threshold"], share["length"]),
            {v: [k[:keys.KEY_BYTES], k[keys.KEY_BYTES:]] for v, k in made.items()})


def _mask_input(me: str, state: _RoundState, sa_session: str, round: int, ciphertexts: dict,
                vector: torch.Tensor) -> dict:
    """The body of `protect` (stage 2), once the state has moved to stage 2."""
    if state.length and vector.numel() != state.length:
        raise ValueError(f"SecAgg+: the vector has {vector.numel()} elements, the round "
                         f"{state.length}")
    if vector.numel() > MAX_EXPANDED:
        raise ValueError(f"SecAgg+: at most {MAX_EXPANDED} elements")
    state.length = vector.numel()
    handed = {}  # v -> the seed s_uv v agreed and handed over
    pair = 2 * shamir.SHARE_BYTES
    for v, ciphertext in ciphertexts.items():
        if v not in state.public_keys:
            raise ValueError(f"SecAgg+: a ciphertext from {v!r}, which shared no keys with "
                             f"{me!r} in stage 1")
        channel = state.channels.get(v) or _channel(state, v, state.public_keys[v][0])
        try:
            plain = keys.open_sealed(channel, ciphertext,
                                     keys.associated_data(sa_session, round, v, me))
        except ValueError as exc:
            raise ValueError(f"SecAgg+: the shares from {v!r} were refused: {exc}") from None
        if len(plain) not in (pair, pair + SEED_BYTES):
            raise ValueError(f"SecAgg+: the shares from {v!r} are malformed")
        state.held[v] = (plain[:shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES:pair])
        if len(plain) > pair and v not in state.seeds:
            handed[v] = plain[pair:]  # s_uv, agreed by v
    if len(ciphertexts) + 1 < state.threshold:  # Bell et al. Fig. 2 / Bonawitz et al. Round 2
        raise ValueError(f"SecAgg+: shares from {len(ciphertexts)} neighbours reached "
                         f"{me!r}, so {len(ciphertexts) + 1} hold its shares, fewer than the "
                         f"threshold {state.threshold}: it refuses to mask (its input could "
                         f"be unmasked from its self-mask alone)")
    y = vector.detach().clone()
    masks = _Masks(y)
    premask = state.premask
    if premask is not None and premask.numel() == y.numel():
        # summed in stage 1 over the seeds agreed there: take out those of neighbours whose
        # shares did not arrive (no mask with them)
        y.add_(premask)
        for v in sorted(set(state.seeds) - set(ciphertexts)):
            masks.add(state.seeds[v], -1 if v > me else 1)
        summed = set(state.seeds)
    else:
        masks.add(state.b)
        summed = set()
    for v in sorted(set(ciphertexts) - summed):
        # handed over by v (`agrees`), else agreed here (v did not: a setup whose points
        # differ at the two ends; the same bytes either way)
        seed = state.seeds.get(v) or handed.get(v) or _pairwise_seed(
            state.s.private or state.s.sk, state.public_keys[v][1], sa_session, round)
        masks.add(seed, 1 if v > me else -1)
    state.masked_with = sorted(ciphertexts)
    # the secrets are no longer needed: only shares stay (stage 3)
    state.b, state.s, state.channels, state.seeds = None, None, {}, {}
    with _LOCK:
        _drop_premask(state)
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
        state.stage = 3
        reply = SecAggUnmaskShares(shares)
        state.unmasked = (sorted(survivors), sorted(dropped), reply)
    return reply


def end_session(session: Any, msg: SecAggEnd) -> SecAggEnded:
    """The run of SecAgg+ session `msg.session` is over: this worker forgets its states of
    it (whatever their stage) and its channel pair and keys. Only a principal holding
    `coordinator` may ask, and only for its own sessions (states are kept per principal).
    From then on the session sets up no round here (a Fit of it still running, or arriving
    late, makes no keys ahead). ValueError for a malformed session."""
    session.require("coordinator", "send SecAggEnd")
    _check_session(msg.session, 0)
    me, principal = session.id, _principal(session)
    with _LOCK:
        mine = _ENDED.pop((me, principal), None) or OrderedDict()
        _ENDED[(me, principal)] = mine  # the most recently ending principals last
        mine.pop(msg.session, None)
        mine[msg.session] = None
        while len(mine) > ENDED_PER_PRINCIPAL:
            mine.popitem(last=False)
        while len(_ENDED) > MAX_STATES:
            _ENDED.popitem(last=False)
        ended = [key for key in _BY_WORKER.get((me, principal), ()) if key[2] == msg.session]
        for key in ended:
            _evict(key)
        _CHANNELS.pop((me, principal, msg.session), None)
        for key in _KEYS_OF.pop((me, principal, msg.session), ()):
            _CHANNEL_KEYS.pop(key, None)
    return SecAggEnded(len(ended))


def _share_ahead(session: Any, sa_session: str, setup: SecAggSetup, public_keys: Any) -> dict:
    """Stage 1 of the later round `setup` names, whose keys this worker made ahead: checks
    the setup as stage 0 does (`advertise_keys`), then shares as `share_keys` does."""
    me = session.id
    _check_setup(me, setup)
    with _LOCK:
        key = (me, _principal(session), setup.session, setup.round)
        state = _STATES.get(key)
        if state is None or state.stage != AHEAD:
            raise ValueError(f"SecAgg+ session {setup.session!r} round {setup.round}: no keys "
                             f"made ahead on worker {me!r}")
        _set_up(state, me, setup)
        state.stage = 1
        _touch(key, state)
        _release_unused(key)
    with COMPUTE_LOCK:
        return _share(me, state, setup.session, setup.round, public_keys)


# -- coordinator side ------------------------------------------------------------------------

@dataclass
class _Round:
    seq: int                   # the protocol round (what the messages carry)
    workers: list
    neighbours: dict
    threshold: int
    length: int
    public_keys: dict          # U1: worker -> (c_pk, s_pk)
    shared: list               # U2: workers whose stage 1 ciphertexts were relayed
    masked_with: dict          # u -> neighbours whose ciphertexts u got (its pairwise masks)
    #: the next protocol round's (order, neighbours, t, public keys), shared in this round's
    #: Fits (None: not run ahead)
    next_setup: tuple | None = None
    #: stage 3 started early (`SecAggPlus.masked`): the workers whose masked input arrived,
    #: the requests in flight, for each worker the first wave plans to ask how many of its
    #: closed neighbourhood are still to arrive, and who waits on whom
    arrived: set = field(default_factory=set)
    asking: Any = None
    waiting: dict = field(default_factory=dict)
    waits_on: dict = field(default_factory=dict)


@dataclass
class _Prepared:
    """A later round's stages 0 and 1, run ahead (keys in one Fit, shares in the next)."""
    workers: frozenset         # the workers it was set up for
    entries: dict              # worker -> its Fit entry
    round: _Round


async def _gather(request: Request, messages: dict[str, Any], deadline: float,
                  refused: dict | None = None) -> dict:
    """worker -> reply for those that answered before `deadline` (errors are drops; with
    `refused`, worker -> why is added to it for each)."""
    asked, replies = _Asking(request, deadline), {}
    asked.ask(messages)
    try:
        await asked.wait(deadline, replies.__setitem__)
    finally:
        asked.cancel()
        if refused is not None:
            refused.update(asked.refused)
    return replies


def _why(refused: dict) -> str:
    """"; 'w1': reason; ..." for the first 3 workers of `refused` (worker -> why)."""
    return "".join(f"; {w!r}: {reason}" for w, reason in list(refused.items())[:3])


class _Asking:
    """Stage 3 requests in flight: `ask` sends (`sent`: worker -> the message it was asked;
    asking a worker again sends the same message, which it answers again alike), `wait`
    hands each reply to `take` (worker, reply) as it comes, until every request has ended or
    `until` (epoch seconds), or, with `done`, until done() holds (the rest keep running for a
    later wait). `counted()`: the workers whose request is running or answered; one that
    failed (an error, a timeout: `refused`, why) may be asked again. Replies that came before
    a wait are handed to it."""

    def __init__(self, request: Request, deadline: float) -> None:
        self.request, self.deadline = request, deadline
        self.sent: dict[str, Any] = {}
        self.running: dict[asyncio.Future, str] = {}
        self.answered: list[tuple[str, Any]] = []
        self.ok: set[str] = set()
        self.refused: dict[str, str] = {}  # worker -> its error (or timeout)

    def ask(self, messages: dict[str, Any]) -> None:
        for worker, message in messages.items():
            self.sent[worker] = message
            self.refused.pop(worker, None)
            task = asyncio.ensure_future(self.request(
                worker, message, max(0.001, self.deadline - time.time())))
            self.running[task] = worker
            task.add_done_callback(self._done)

    def counted(self) -> set:
        return {*self.running.values(), *self.ok}

    def _done(self, task: asyncio.Future) -> None:
        worker = self.running.pop(task, None)
        if worker is None or task.cancelled():
            return
        if task.exception() is None:
            self.ok.add(worker)
            self.answered.append((worker, task.result()))
        else:
            error = task.exception()
            self.refused[worker] = f"{type(error).__name__}: {error}"[:300]

    async def wait(self, until: float, take: Any, done: Any = None) -> None:
        while True:
            while self.answered:
                take(*self.answered.pop(0))
            if not self.running or (done is not None and done()) or time.time() >= until:
                return
            await asyncio.wait(list(self.running), timeout=max(0.0, until - time.time()),
                               return_when=asyncio.FIRST_COMPLETED)

    def cancel(self) -> None:
        for task in list(self.running):
            task.cancel()
        self.running.clear()


def _public_keys(made: Any) -> tuple[bytes, bytes] | None:
    """(c_pk, s_pk) from a worker's 64 bytes of keys made ahead; None if malformed."""
    if type(made) is not bytes or len(made) != 2 * keys.KEY_BYTES:
        return None
    return made[:keys.KEY_BYTES], made[keys.KEY_BYTES:]


def unmask_plan(targets: dict, t: int, asked: Any = ()) -> list:
    """Whom to ask for their shares in stage 3: a small set of askable workers such that each
    target (a worker whose b or s^SK is to be rebuilt) gets t + 1 shares from it (t + 1: two
    t-subsets must agree, `_reconstruct`), or as many as it has holders. `targets`: target ->
    the askable workers holding one of its shares; `asked`: workers asked already (counted,
    not returned). Greedy set multicover (the worker that still covers the most targets
    first; ties to the earliest in `targets`' order), O(sum of the holders) with a bucket
    queue of gains: for SecAgg+'s ring graphs, a little over (t + 1) / (k + 1) of the workers
    instead of all."""
    need = {v: min(t + 1, len(holders)) for v, holders in targets.items()}
    covers: dict[str, list] = {}
    for v, holders in targets.items():
        for u in holders:
            covers.setdefault(u, []).append(v)
    for u in asked:
        for v in covers.pop(u, ()):
            need[v] -= 1
    gain = {u: sum(need[v] > 0 for v in vs) for u, vs in covers.items()}
    buckets: list[dict] = [{} for _ in range(max(gain.values(), default=0) + 1)]
    for u, g in gain.items():  # in `targets`' order: ties go to the earliest
        buckets[g][u] = None
    chosen = []
    top = len(buckets) - 1
    while top > 0:
        if not buckets[top]:
            top -= 1
            continue
        best = next(iter(buckets[top]))
        del buckets[top][best]
        del gain[best]
        chosen.append(best)
        for v in covers[best]:
            need[v] -= 1
            if need[v] == 0:  # covered: no longer a gain for its other holders
                for u in targets[v]:
                    if u in gain:
                        del buckets[gain[u]][u]
                        gain[u] -= 1
                        buckets[gain[u]][u] = None
    return chosen


def _holders(state: "_Round", alive: Any) -> dict:
    """target -> the workers of `alive` holding one of its shares (itself included), for
    every worker of `alive` and every worker of the round's U2 some survivor masked with."""
    targets: dict[str, list] = {}
    for u in alive:
        targets.setdefault(u, []).append(u)
        for v in state.masked_with[u]:
            targets.setdefault(v, []).append(u)
    return targets


class SecAggPlus(SecureAggregator):
    """The coordinator of SecAgg+ (see the module docstring). `threshold`: t (default: the
    smallest strict majority of each worker's k+1 holders; a t given here must be a strict
    majority and at most k+1 for each round's k, never clamped: see `check_threshold`);
    `neighbours`: k (default `default_degree`); `seed`: 32 bytes seeding the graph's
    permutation (random if None); `length`: the vectors' elements (0: not fixed in advance;
    end_round checks they agree).

    `ahead` (default True): the next protocol rounds' stages 0 and 1 travel inside the Fits,
    so that a steady run costs one stage 3 message more than plain FedAvg, and only to the
    workers whose shares it needs (`unmask_plan`): the Fit of protocol round r carries round
    r+1's setup (the worker's reply: its stage 1 ciphertexts there) and asks for round r+2's
    keys (the reply: their public halves). The first round's stage 0 makes round r+1's keys
    too. The next `begin_round` uses round r+1 when its workers are exactly those it was set
    up for and every one of them shared there; otherwise (the first round, a dropout, another
    sample) it runs stages 0 and 1 itself, as a new protocol round, so that no worker sits a
    round out for the shortcut. Messages carry protocol rounds (`_Round.seq`), which only
    grow within a session; the FL round is the coordinator's key."""

    name = "secagg+"

    def __init__(self, threshold: int | None = None, neighbours: int | None = None,
                 seed: bytes | None = None, length: int = 0, ahead: bool = True) -> None:
        if threshold is not None and (type(threshold) is not int or threshold < 2):
            raise ValueError(f"threshold must be an int >= 2, got {threshold!r}")
        if neighbours is not None and (type(neighbours) is not int or neighbours < 1):
            raise ValueError(f"neighbours must be an int >= 1, got {neighbours!r}")
        self.threshold = threshold
        self.neighbours = neighbours
        self.seed = os.urandom(32) if seed is None else bytes(seed)
        self.length = length
        self.session = os.urandom(12).hex()
        #: the sessions `end_session` ended, oldest first (each run of a coordinator is one)
        self.ended_sessions: list[str] = []
        self.ahead = bool(ahead)
        self._rounds: dict[int, _Round] = {}
        self._seen: set = set()  # every worker a round of this session was begun with
        self._seq = 0  # the last protocol round used or reserved
        self._prepared: _Prepared | None = None
        #: (protocol round, {worker: (c_pk, s_pk)}): the keys workers made ahead for it
        self._next_keys: tuple[int, dict] | None = None

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

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def begin_round(self, round: int, workers: list[str], request: Request,
                          deadline: float) -> dict[str, dict]:
        """Stages 0 (AdvertiseKeys) and 1 (ShareKeys), or the ones run ahead for exactly these
        `workers` in the last round's Fits (no message then). Returns worker -> its Fit
        config entry {"session", "round", "ciphertexts": {sender: bytes}[, "share",
        "prepare"]} (see `protect`) for the workers that finished stage 1 and got ciphertexts
        from at least t-1 neighbours (the others would refuse to mask).
        SecureAggregationError when fewer than t remain, or when the configured threshold
        does not suit this round's number of workers (`check_threshold`)."""
        if len(set(workers)) < 2:
            raise SecureAggregationError("SecAgg+ needs at least 2 workers")
        try:
            self.check_threshold(len(set(workers)))
        except ValueError as exc:
            raise SecureAggregationError(f"SecAgg+ round {round}: {exc}") from None
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.workers == frozenset(workers) \
                and set(prepared.entries) == prepared.workers:
            state, entries = prepared.round, prepared.entries
        else:
            state, entries = await self._set_up(round, workers, request, deadline)
        if self.ahead:
            entries = self._run_ahead(state, entries)
        self._rounds[round] = state
        self._seen.update(workers)
        for old in [r for r in self._rounds if r <= round - KEEP_ROUNDS]:
            self.abandon(old)
        return entries

    async def end_session(self, request: Request, deadline: float) -> None:
        """The run is over: every worker this session ever set up is told to forget its states
        of it (SecAggEnd: its last round, never unmasked there, the rounds set up ahead, its
        channel pair), by `deadline`; one that does not answer forgets them when they are the
        oldest beyond its bounds (MAX_STATES_PER_WORKER), or after STATE_TTL. Workers set
        up no round of an ended session again: a later run of this aggregator draws a new
        session."""
        for round in list(self._rounds):
            self.abandon(round)
        self._prepared, self._next_keys = None, None
        workers, self._seen = sorted(self._seen), set()
        ended, self.session = self.session, os.urandom(12).hex()
        self.ended_sessions.append(ended)
        if workers:
            replies = await _gather(request, {w: SecAggEnd(ended) for w in workers},
                                    deadline)
            if len(replies) < len(workers):
                log.info("SecAgg+ session %s: %d of %d workers did not confirm its end",
                         ended, len(workers) - len(replies), len(workers))

    def abandon(self, round: int) -> None:
        """Forget `round` (one that will not be ended: its run was cancelled, or it is too
        old), cancelling the Unmasks `masked` sent for it."""
        state = self._rounds.pop(round, None)
        if state is not None and state.asking is not None:
            state.asking.cancel()

    def _run_ahead(self, state: _Round, entries: dict) -> dict:
        """The Fit entries with the next protocol rounds run ahead: round seq+1's setup for the
        workers that made its keys (all of this round's workers, or none: a partial graph
        could not serve the next round), and round seq+2's keys asked."""
        made, self._next_keys = self._next_keys, None
        self._seq = max(self._seq, state.seq + 2)  # reserved: a fresh set-up comes after
        pks = made[1] if made is not None and made[0] == state.seq + 1 else {}
        ahead = {u: {**entry, "prepare": state.seq + 2} for u, entry in entries.items()}
        if set(pks) != set(entries):
            return ahead
        try:
            self.check_threshold(len(pks))
        except ValueError:
            return ahead
        k, t = self.degree(len(pks)), self.fewest_contributors(len(pks))
        order, nbrs = graph(list(pks), self.seed, state.seq + 1, k)
        state.next_setup = (order, nbrs, t, pks)
        for u in order:
            ahead[u]["share"] = {"round": state.seq + 1, "workers": order,
                                 "neighbours": nbrs[u], "threshold": t,
                                 "length": self.length,
                                 "keys": {v: pks[v][0] + pks[v][1] for v in nbrs[u]}}
        return ahead

    async def _set_up(self, round: int, workers: list[str], request: Request,
                      deadline: float) -> tuple[_Round, dict]:
        """Stages 0 and 1 as messages of their own, in a new protocol round (whose stage 0
        also makes the keys of the one after, when run ahead)."""
        seq = self._next_seq()
        if self.ahead:
            self._seq += 1  # reserved: its keys come with stage 0
        k = self.degree(len(set(workers)))
        t = self.fewest_contributors(len(set(workers)))
        order, nbrs = graph(workers, self.seed, seq, k)
        # Stage 0: AdvertiseKeys (half the time left: a worker that hangs here must not leave
        # stage 1 no time at all)
        refused: dict[str, str] = {}
        replies = await _gather(request, {
            u: SecAggSetup(self.session, seq, order, nbrs[u], t, self.length,
                           seq + 1 if self.ahead else None) for u in order
        }, time.time() + max(deadline - time.time(), 0.0) / 2, refused)
        pks = {u: (r.c_pk, r.s_pk) for u, r in replies.items()
               if isinstance(r, SecAggPublicKeys) and type(r.c_pk) is bytes
               and type(r.s_pk) is bytes and len(r.c_pk) == len(r.s_pk) == keys.KEY_BYTES}
        u1 = [u for u in order if u in pks and sum(v in pks for v in nbrs[u]) + 1 >= t]
        if len(u1) < t:
            raise SecureAggregationError(
                f"SecAgg+ round {round}: {len(pks)} of {len(order)} workers advertised keys, "
                f"{len(u1)} of them with at least t-1 = {t - 1} neighbours that did: fewer "
                f"than the threshold {t}{_why(refused)}")
        if self.ahead:
            made = {u: _public_keys(replies[u].next_keys) for u in pks}
            self._next_keys = (seq + 1, {u: pk for u, pk in made.items() if pk is not None})
        # Stage 1: ShareKeys
        replies = await _gather(request, {
            u: SecAggShareKeys(self.session, seq,
                               {v: list(pks[v]) for v in nbrs[u] if v in u1}) for u in u1
        }, deadline, refused)
        sent = {u: r.ciphertexts for u, r in replies.items()
                if isinstance(r, SecAggEncryptedShares)}
        state, entries = self._shared(seq, order, nbrs, t, pks, u1, sent)
        if len(state.shared) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(state.shared)} workers "
                                         f"shared keys, fewer than the threshold {t}"
                                         f"{_why(refused)}")
        if len(entries) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(entries)} workers got "
                                         f"enough shares to mask, fewer than the threshold {t}")
        return state, entries

    def _shared(self, seq: int, order: list, nbrs: dict, t: int, pks: dict, u1: list,
                sent: dict) -> tuple[_Round, dict]:
        """After stage 1: the round's state and the Fit entries, from the ciphertexts `sent`
        (worker -> its stage 1 reply's {neighbour: ciphertext}; malformed ones drop out)."""
        sent = {u: c for u, c in sent.items()
                if isinstance(c, dict) and set(c) == {v for v in nbrs[u] if v in u1}
                and all(type(x) is bytes for x in c.values())}
        u2 = [u for u in u1 if u in sent]
        entries, masked_with = {}, {}
        for u in u2:
            got = {v: sent[v][u] for v in nbrs[u] if v in sent}
            masked_with[u] = sorted(got)
            if len(got) + 1 >= t:  # else u refuses stage 2: it does not train (a dropout)
                entries[u] = {"session": self.session, "round": seq, "ciphertexts": got}
        return _Round(seq, order, nbrs, t, self.length, pks, u2, masked_with), entries

    def _collect_ahead(self, state: _Round, protected: dict) -> _Prepared | None:
        """From this round's Fits: the keys made for protocol round seq+2 (kept for the next
        `begin_round`), and round seq+1 set up (None: not run ahead, or too few shared)."""
        if not self.ahead:
            return None
        made = {u: _public_keys(r.get("next_keys")) for u, r in protected.items()
                if isinstance(r, dict)}
        self._next_keys = (state.seq + 2, {u: pk for u, pk in made.items() if pk is not None})
        if state.next_setup is None:
            return None
        order, nbrs, t, pks = state.next_setup
        sent = {u: protected[u].get("next_ciphertexts") for u in order
                if isinstance(protected.get(u), dict)}
        nstate, entries = self._shared(state.seq + 1, order, nbrs, t, pks, order, sent)
        if len(nstate.shared) < t or len(entries) < t:
            return None
        return _Prepared(frozenset(order), entries, nstate)

    @staticmethod
    def _valid_y(state: _Round, carried: Any) -> torch.Tensor | None:
        """The masked input `carried` holds (int64, shape (L,)), None if it holds none."""
        y = carried.get("masked") if isinstance(carried, dict) else None
        if isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1 \
                and (not state.length or y.numel() == state.length):
            return y
        return None

    def masked(self, round: int, worker: str, carried: dict, request: Request,
               deadline: float) -> None:
        """Stage 3 started during the Fits: once a worker's whole closed neighbourhood (itself
        and the neighbours it masked with) has sent valid masked inputs, nobody there can be
        declared dropped any more, so its Unmask (all of them survivors, nobody dropped) is
        sent now, if the first wave (`unmask_plan`, for the case where nobody drops) asks it.
        Only with the vector length fixed in advance (`length`: end_round keeps every valid
        input then)."""
        state = self._rounds.get(round)
        if state is None or not state.length or worker in state.arrived \
                or worker not in state.masked_with or self._valid_y(state, carried) is None:
            return
        if state.asking is None:
            state.asking = _Asking(request, deadline)
            for u in unmask_plan(_holders(state, state.shared), state.threshold):
                closed = {u, *state.masked_with[u]}
                state.waiting[u] = len(closed)
                for w in closed:
                    state.waits_on.setdefault(w, []).append(u)
        state.arrived.add(worker)
        for u in state.waits_on.get(worker, ()):
            state.waiting[u] -= 1
            if state.waiting[u] == 0:
                state.asking.ask({u: SecAggUnmask(self.session, state.seq,
                                                  sorted({u, *state.masked_with[u]}), [])})

    async def end_round(self, round: int, protected: dict[str, dict], request: Request,
                        deadline: float) -> tuple[torch.Tensor, list[str]]:
        """Stage 3 (Unmasking): asks the workers that sent y for their shares, first only
        those `unmask_plan` picks, then, if shares are still missing (a worker silent or
        refusing), every other one; reconstructs the survivors' b_u and the dropped workers'
        s_v^SK (t shares each, checked against the others), removes the masks. Returns (the
        int64 sum of the survivors' x, the survivors, sorted). SecureAggregationError when
        fewer than t masked inputs or shares arrive. With `ahead`, keeps what the Fits ran
        ahead for the next `begin_round`."""
        state = self._rounds.pop(round, None)
        if state is None:
            raise SecureAggregationError(f"SecAgg+ round {round} was not begun")
        asked = state.asking or _Asking(request, deadline)
        try:
            return await self._unmask(round, state, protected, asked, deadline)
        finally:
            asked.cancel()  # shares no longer needed (or too late)

    async def _unmask(self, round: int, state: _Round, protected: dict, asked: _Asking,
                      deadline: float) -> tuple[torch.Tensor, list[str]]:
        """The body of end_round; `asked` holds the Unmasks `masked` sent early."""
        t = state.threshold
        asked.deadline = max(asked.deadline, deadline)
        ys = {}
        for u in state.shared:
            y = self._valid_y(state, protected.get(u))
            if y is not None:
                ys[u] = y
        lengths = {y.numel() for y in ys.values()}
        if len(lengths) > 1:  # no length fixed in advance: keep the most common one
            common = max(lengths, key=lambda n: sum(y.numel() == n for y in ys.values()))
            ys = {u: y for u, y in ys.items() if y.numel() == common}
        u3 = sorted(ys)
        prepared = self._collect_ahead(state, protected)
        if len(u3) < t:
            raise SecureAggregationError(f"SecAgg+ round {round}: {len(u3)} masked inputs, "
                                         f"fewer than the threshold {t}")
        length = next(iter(ys.values())).numel()
        alive = set(u3)
        # the dropped workers some survivor added a pairwise mask with (only their s^SK is needed)
        dropped = {v for w in u3 for v in state.masked_with[w]} & (set(state.shared) - alive)
        requests = {u: SecAggUnmask(self.session, state.seq,
                                    sorted({u, *state.masked_with[u]} & alive),
                                    sorted(set(state.masked_with[u]) & dropped)) for u in u3}
        for u, sent in asked.sent.items():  # early (`masked`): the same lists, or a bug
            if u not in requests or (sent.survivors, sent.dropped) != (
                    requests[u].survivors, requests[u].dropped):
                raise SecureAggregationError(f"SecAgg+ round {round}: the Unmask sent early to "
                                             f"{u!r} does not match the survivors")
        targets = _holders(state, u3)
        b_shares: dict[str, dict] = {u: {} for u in u3}
        s_shares: dict[str, dict] = {v: {} for v in dropped}
        points = {w: i for i, w in enumerate(state.workers, 1)}

        def take(u: str, reply: Any) -> None:
            if not isinstance(reply, SecAggUnmaskShares) or not isinstance(reply.shares, dict):
                return
            try:
                got = ([(b_shares[v], shamir.from_bytes(reply.shares.get(v)))
                        for v in requests[u].survivors]
                       + [(s_shares[v], shamir.from_bytes(reply.shares.get(v)))
                          for v in requests[u].dropped])
            except ValueError:
                return  # a malformed reply: this worker's shares are not used
            for held, share in got:
                held[points[u]] = share

        def enough(extra: int = 1) -> bool:
            return all(len(b_shares[v]) >= min(t + extra, len(targets[v])) for v in u3) and \
                all(len(s_shares[v]) >= min(t + extra, len(targets[v])) for v in dropped)

        def grace() -> float:  # UNMASK_WAVE_WAIT, or half the time left
            return time.time() + min(UNMASK_WAVE_WAIT, max(deadline - time.time(), 0.0) / 2)

        # those asked early count while their request runs or once answered; one whose early
        # request failed (its deadline was the Fits') is asked again like any other
        asked.ask({u: requests[u] for u in unmask_plan(targets, t, asked.counted())})
        # the first wave, for a grace: a worker silent there must not leave the others no
        # time to stand in for it; then the others, for t + 1 shares of everything (two
        # t-subsets checked against each other) for another grace; then t shares will do
        await asked.wait(grace(), take)
        if not enough():
            counted = asked.counted()
            asked.ask({u: requests[u] for u in u3 if u not in counted})
        await asked.wait(grace(), take, enough)
        await asked.wait(deadline, take, functools.partial(enough, 0))
        if not enough(0):
            why = _why(asked.refused)
            short = sorted([v for v in u3 if len(b_shares[v]) < t]
                           + [v for v in dropped if len(s_shares[v]) < t])
            raise SecureAggregationError(
                f"SecAgg+ round {round}: fewer than t = {t} shares of the secrets of "
                f"{len(short)} workers (e.g. {short[0]!r}); {len(asked.refused)} of the "
                f"{len(asked.sent)} workers asked refused or did not answer stage 3{why}")
        total = torch.zeros(length, dtype=torch.int64)
        masks = _Masks(total)
        for u in u3:
            total += ys[u]
            b_u = _reconstruct(b_shares[u], t, f"b of {u!r}", round)
            masks.add(b_u.to_bytes(SEED_BYTES, "big"), -1)
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
                seed = _pairwise_seed(s_sk, state.public_keys[w][1], self.session, state.seq)
                # w added +PRG(s_wv) when v > w, -PRG(s_wv) when v < w
                masks.add(seed, -1 if v > w else 1)
        self._prepared = prepared
        silent = sorted(set(asked.refused) - asked.ok)
        if silent or dropped:  # right either way, but the operator should know
            log.warning("SecAgg+ round %d: %s%s", round,
                        f"{len(silent)} workers did not answer stage 3 (e.g. {silent[0]!r}: "
                        f"{asked.refused[silent[0]]}); their masked inputs are counted, "
                        f"unmasked from their neighbours' shares" if silent else "",
                        f"{'; ' if silent else ''}{len(dropped)} workers dropped after sharing "
                        f"keys (e.g. {sorted(dropped)[0]!r}): their pairwise masks were "
                        f"removed from their neighbours' shares" if dropped else "")
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
                  SecAggUnmask: unmask, SecAggEnd: end_session}
#: message type -> the values it reads (none: a light message, fedmq.worker.register_light)
LIGHT: dict = {SecAggUnmask: lambda message: (), SecAggEnd: lambda message: ()}
#: wire records (codes 110-117)
RECORDS: tuple = (SecAggSetup, SecAggPublicKeys, SecAggShareKeys, SecAggEncryptedShares,
                  SecAggUnmask, SecAggUnmaskShares, SecAggEnd, SecAggEnded)
