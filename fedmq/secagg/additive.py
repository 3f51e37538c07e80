"""Additive-sharing secure aggregation: the seed's §10 way, with fedmq's own SMPC ring.

`fedmq train --secure-aggregation additive:agg1,agg2[,...]`: 2 to 5 aggregators, ordinary
fedmq workers that train nothing in the round. Per round (session: a fresh random id):

    1. begin_round (coordinator)   every training worker's Fit entry names the session, the
                                   round and the aggregators (the aggregators are probed first)
    2. protect (training worker)   its int64 ring vector x (fedmq.secagg.quantize) is split into
                                   one additive share per aggregator, x = s_1 + ... + s_n mod
                                   2**64 (fedmq.smpc.ring.additive_split: n-1 uniform from the
                                   AES-CTR CSPRNG), and each aggregator gets its share worker
                                   to worker (`AggregatorShare`); the Fit waits for every ack,
                                   so a FitRes that arrives means the shares are stored. One
                                   aggregator failing fails the Fit, and the others are told to
                                   drop the share (`DropShare`): nothing partial stays
    3. end_round (coordinator)     asks every aggregator which of the workers whose FitRes
                                   arrived it holds (`AggregateShares(reveal=False)`), then for
                                   the sum over the workers all of them hold (`reveal=True`);
                                   the sum of the aggregators' sums is the sum of the vectors

The coordinator never receives a share; an aggregator sees one uniform share per worker. What
an aggregator enforces, whoever asks (`handle_aggregate`): only a principal granted
`coordinator` may ask; a sum covers at least `MIN_CONTRIBUTORS` workers (so no one worker's
share is revealed alone) and is given once per session, which is then forgotten (asking again
with one worker fewer would reveal that worker's share: the differencing attack). A share is
keyed by the message's authenticated principal (over RabbitMQ the broker-checked user id,
in-process the transport's principal), never by a field of the message: one per sender and
session, a second one is refused.

Trust boundary (fedmq.policy): the vector comes from the data owner's private data, so a
worker sends shares only to its peer workers (`--grant worker:<aggregator>`), checked for all
aggregators before anything is sent, as `ShareRequest` does (fedmq.smpc.remote). The shares go
as the worker itself (its own login), not on behalf of the coordinator whose Fit is running:
an aggregator keeps them in memory outside its object store, and releases only sums over
several workers, only to coordinators.

Memory on an aggregator is bounded (`ShareStore`): at most MAX_SESSIONS open sessions and
MAX_BYTES of shares; sessions older than SESSION_TTL seconds are forgotten.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmq import messages as m
from fedmq.client import call_all
from fedmq.errors import AccessDeniedError, QuotaExceededError
from fedmq.secagg.additive_messages import (AggregateResult, AggregateShares, AggregatorShare,
                                            DropShare)
from fedmq.secagg.base import Request, SecureAggregationError, SecureAggregator
from fedmq.smpc.ring import MAX_EXPANDED, additive_split

#: `--secure-aggregation additive:...` takes 2 to 5 aggregators
MIN_AGGREGATORS, MAX_AGGREGATORS = 2, 5
#: the fewest workers an aggregator sums over (its floor, whatever the coordinator asks)
MIN_CONTRIBUTORS = 2
#: an aggregator's bounds: open sessions, bytes of shares held, seconds a session lives
MAX_SESSIONS = 64
MAX_BYTES = 2 << 30
SESSION_TTL = 3600.0
#: finished sessions remembered (refused if asked again or sent a share)
MAX_CLOSED = 4096
#: the longest session id accepted (the coordinator's are 32 hex digits)
MAX_SESSION_CHARS = 64


# -- the aggregator side ----------------------------------------------------------------------

@dataclass
class _Held:
    created: float
    length: int | None = None
    shares: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * 8 for s in self.shares.values())


class ShareStore:
    """One aggregator's shares, in memory: (session, round) -> sender -> int64 share.
    Thread-safe. `min_contributors`: its floor for a sum; `max_sessions`, `max_bytes`, `ttl`:
    its bounds (QuotaExceededError past them, after expired sessions are dropped)."""

    def __init__(self, min_contributors: int = MIN_CONTRIBUTORS, max_sessions: int = MAX_SESSIONS,
                 max_bytes: int = MAX_BYTES, ttl: float = SESSION_TTL) -> None:
        self.min_contributors = min_contributors
        self.max_sessions, self.max_bytes, self.ttl = max_sessions, max_bytes, ttl
        self._open: dict[tuple, _Held] = {}
        self._closed: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [k for k, held in self._open.items() if now - held.created > self.ttl]:
            del self._open[key]
            self._close(key)

    def _close(self, key: tuple) -> None:
        self._closed[key] = None
        while len(self._closed) > MAX_CLOSED:
            self._closed.popitem(last=False)

    def bytes_held(self) -> int:
        with self._lock:
            return sum(held.nbytes for held in self._open.values())

    def put(self, key: tuple, sender: str, share: torch.Tensor) -> None:
        """Store `sender`'s share for `key` (session, round). ValueError for a second share
        from the same sender, a finished session, a length unlike the session's other shares;
        QuotaExceededError past the bounds."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if key in self._closed:
                raise ValueError(f"secure-aggregation session {key[0]} round {key[1]} is over: "
                                 f"its sum was given (or it expired)")
            held = self._open.get(key)
            if held is None:
                if len(self._open) >= self.max_sessions:
                    raise QuotaExceededError(f"this aggregator holds {len(self._open)} open "
                                             f"sessions already (at most {self.max_sessions})")
                held = _Held(now)
            if sender in held.shares:
                raise ValueError(f"a share from {sender!r} for session {key[0]} round {key[1]} "
                                 f"is held already: one share per worker and session")
            if held.length is not None and share.numel() != held.length:
                raise ValueError(f"a share of {share.numel()} elements for a session whose "
                                 f"shares have {held.length}")
            total = sum(h.nbytes for h in self._open.values())
            if total + share.numel() * 8 > self.max_bytes:
                raise QuotaExceededError(f"storing {share.numel() * 8} more bytes of shares "
                                         f"would pass this aggregator's {self.max_bytes} bytes")
            held.length = share.numel()
            held.shares[sender] = share
            self._open[key] = held

    def drop(self, key: tuple, sender: str) -> bool:
        """Forget `sender`'s share for `key`; whether one was held."""
        with self._lock:
            held = self._open.get(key)
            if held is None or sender not in held.shares:
                return False
            del held.shares[sender]
            if not held.shares:
                del self._open[key]
            return True

    def held(self, key: tuple, contributors: list[str]) -> list[str]:
        """Which of `contributors` have a share stored for `key` (sorted). ValueError for a
        finished session."""
        with self._lock:
            self._expire(time.monotonic())
            if key in self._closed:
                raise ValueError(f"secure-aggregation session {key[0]} round {key[1]} is over: "
                                 f"its sum was given once (or it expired)")
            held = self._open.get(key)
            have = set(held.shares) if held is not None else set()
            return sorted(w for w in contributors if w in have)

    def reveal(self, key: tuple, contributors: list[str]) -> tuple[list[str], Any]:
        """(held, the int64 ring sum over `contributors`) and the session forgotten, when every
        contributor's share is held; (held, None), the session kept, when one is missing.
        ValueError below the floor or for a finished session."""
        if len(contributors) < self.min_contributors:
            raise ValueError(f"a sum of shares covers at least {self.min_contributors} workers "
                             f"(asked for {len(contributors)}): one worker's share alone is "
                             f"never revealed")
        with self._lock:
            self._expire(time.monotonic())
            if key in self._closed:
                raise ValueError(f"secure-aggregation session {key[0]} round {key[1]} is over: "
                                 f"its sum was given once (asking again is refused)")
            held = self._open.get(key)
            have = held.shares if held is not None else {}
            present = sorted(w for w in contributors if w in have)
            if len(present) != len(contributors):
                return present, None
            total = torch.zeros_like(have[contributors[0]])
            for w in contributors:
                total += have[w]  # int64: wraps around mod 2**64
            del self._open[key]
            self._close(key)
            return present, total


#: aggregator worker id -> its ShareStore (workers in one process keep theirs apart)
_STORES: dict[str, ShareStore] = {}
_STORES_LOCK = threading.Lock()


def store_of(worker_id: str) -> ShareStore:
    """The ShareStore of aggregator `worker_id` in this process (made on first use)."""
    with _STORES_LOCK:
        store = _STORES.get(worker_id)
        if store is None:
            store = _STORES[worker_id] = ShareStore()
        return store


def _check_key(msg: Any) -> tuple:
    sid, rnd = msg.session, msg.round
    if type(sid) is not str or not 0 < len(sid) <= MAX_SESSION_CHARS:
        raise ValueError(f"a secure-aggregation session id is a str of 1 to "
                         f"{MAX_SESSION_CHARS} characters, got {sid!r}"[:200])
    if type(rnd) is not int or rnd < 0:
        raise ValueError(f"round must be an int >= 0, got {rnd!r}"[:200])
    return sid, rnd


def handle_share(session: Any, msg: AggregatorShare) -> None:
    """On an aggregator: store the sender's share (sender: the message's authenticated
    principal, which the aggregator's owner granted `worker`: AccessDeniedError for anyone
    else, so a stranger cannot fill its sessions). ValueError for a malformed message, a
    second share from the same sender, a finished session; QuotaExceededError past the
    aggregator's bounds."""
    session.require("worker", "send an aggregator share")
    key = _check_key(msg)
    share = msg.share
    if type(share) is not torch.Tensor or share.dtype != torch.int64 or share.dim() != 1:
        raise ValueError("AggregatorShare.share is a 1-D int64 tensor")
    if share.numel() > MAX_EXPANDED:
        raise ValueError(f"a share holds at most {MAX_EXPANDED} elements")
    store_of(session.id).put(key, session.principal, share.clone())
    return None


def handle_drop(session: Any, msg: DropShare) -> bool:
    """On an aggregator: forget the sender's own share for (session, round); whether one was
    held. AccessDeniedError for a principal not granted `worker`, ValueError for a malformed
    message."""
    session.require("worker", "drop an aggregator share")
    return store_of(session.id).drop(_check_key(msg), session.principal)


def handle_aggregate(session: Any, msg: AggregateShares) -> AggregateResult:
    """On an aggregator, for a coordinator only (AccessDeniedError otherwise): which listed
    contributors it holds (reveal False), or their shares' sum (reveal True; see
    ShareStore.reveal). ValueError for a malformed request, below the floor, for a session
    already summed."""
    session.require("coordinator", "ask for sums of secure-aggregation shares")
    key = _check_key(msg)
    workers = msg.contributors
    if type(workers) is not list or not all(type(w) is str and w for w in workers) or \
            len(set(workers)) != len(workers) or len(workers) > 100_000:
        raise ValueError("AggregateShares.contributors is a list of distinct worker ids")
    if type(msg.reveal) is not bool:
        raise ValueError("AggregateShares.reveal is a bool")
    store = store_of(session.id)
    if not msg.reveal:
        return AggregateResult(store.held(key, workers))
    held, total = store.reveal(key, sorted(workers))
    return AggregateResult(held, total)


# -- the training worker's side ---------------------------------------------------------------

def check_aggregators(aggregators: Any) -> list[str]:
    """The aggregator ids as a list; ValueError unless 2 to 5 distinct non-empty strs."""
    if type(aggregators) not in (list, tuple) or \
            not all(type(a) is str and a for a in aggregators):
        raise ValueError(f"aggregators are a list of worker ids, got {aggregators!r}"[:200])
    if not MIN_AGGREGATORS <= len(aggregators) <= MAX_AGGREGATORS or \
            len(set(aggregators)) != len(aggregators):
        raise ValueError(f"additive aggregation needs {MIN_AGGREGATORS} to {MAX_AGGREGATORS} "
                         f"distinct aggregators, got {list(aggregators)!r}")
    return list(aggregators)


def protect(session: Any, entry: dict, vector: torch.Tensor) -> dict:
    """On a training worker, inside its Fit: split `vector` (int64, shape (L,)) into one
    additive share per aggregator of `entry` and send each its share, waiting for every ack.
    Returns {} (the FitRes carries no update). Raises ValueError for a malformed entry or
    vector, AccessDeniedError for an aggregator that is not one of the worker's peers (before
    anything is sent), or the first aggregator's error (a timeout, a refusal) after the
    aggregators that stored a share were told to drop it."""
    if type(entry) is not dict or entry.get("method") != "additive":
        raise ValueError(f"not an additive secure-aggregation entry: {entry!r}"[:200])
    sid, rnd = _check_key(AggregatorShare(entry.get("session"), entry.get("round"), None))
    aggregators = check_aggregators(entry.get("aggregators"))
    if session.id in aggregators:
        raise ValueError(f"worker {session.id!r} is an aggregator of this round: it cannot "
                         f"also contribute")
    if type(vector) is not torch.Tensor or vector.dtype != torch.int64 or vector.dim() != 1:
        raise ValueError("protect takes a 1-D int64 ring vector (fedmq.secagg.quantize.encode)")
    refused = [a for a in aggregators if not session.policy.allows("worker", a)]
    if refused:
        raise AccessDeniedError(
            f"the update comes from private data; worker {session.id!r} sends it, even as "
            f"secret shares, only to its peer workers, and {', '.join(map(repr, refused))} "
            f"{'is' if len(refused) == 1 else 'are'} not (the data owner grants it with "
            f"--grant worker:{refused[0]})", worker=session.id)
    network = session.network
    if network is None:
        raise ValueError(f"worker {session.id!r} cannot reach other workers, so it cannot send "
                         f"shares")
    shares = additive_split(vector.detach(), len(aggregators))
    # sent as the worker itself (its own login), outside the coordinator's Fit: an empty
    # context has no acting principal (fedmq.principals)
    contextvars.Context().run(_send, network, session.id, sid, rnd, aggregators, shares)
    return {}


def _send(network: Any, holder: str, sid: str, rnd: int, aggregators: list[str],
          shares: list[torch.Tensor]) -> None:
    try:
        call_all([(network.client(a), AggregatorShare(sid, rnd, s))
                  for a, s in zip(aggregators, shares)], sender=holder)
    except Exception:
        for a in aggregators:  # nothing partial: whoever stored a share forgets it
            try:  # posted with no reply asked: a dead aggregator must not fail a later call
                client = network.client(a)
                client.engine.post_frame(a, client.engine.frame(
                    DropShare(sid, rnd), sender=holder, to=a), "DropShare")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise


# -- the coordinator's side -------------------------------------------------------------------

class AdditiveAggregation(SecureAggregator):
    """Additive-sharing aggregation among `aggregators` (2 to 5 distinct worker ids, none of
    them training in a round; ValueError otherwise). `min_contributors` (>= 2): the fewest
    workers a round's sum may cover (SecureAggregationError below it)."""

    name = "additive"

    def __init__(self, aggregators: list[str], min_contributors: int = 2) -> None:
        self.aggregators = check_aggregators(aggregators)
        if type(min_contributors) is not int or min_contributors < MIN_CONTRIBUTORS:
            raise ValueError(f"min_contributors must be an int >= {MIN_CONTRIBUTORS}, got "
                             f"{min_contributors!r}")
        self.min_contributors = min_contributors
        #: round -> (session id, the workers given an entry)
        self._rounds: dict[int, tuple[str, list[str]]] = {}

    @staticmethod
    def _timeout(deadline: float) -> float:
        return max(deadline - time.time(), 0.001)

    async def _ask_all(self, request: Request, message: Any, deadline: float) -> list:
        results = await asyncio.gather(
            *(request(a, message, self._timeout(deadline)) for a in self.aggregators),
            return_exceptions=True)
        failed = [(a, r) for a, r in zip(self.aggregators, results) if isinstance(r, BaseException)]
        if failed:
            a, exc = failed[0]
            raise SecureAggregationError(
                f"aggregator {a!r} failed: {type(exc).__name__}: {exc}") from exc
        return results

    async def begin_round(self, round: int, workers: list[str], request: Request,
                          deadline: float) -> dict[str, dict]:
        """A fresh session id for `round`; every worker's entry. SecureAggregationError when a
        worker is also an aggregator, fewer than min_contributors workers, or an aggregator
        does not answer a probe before `deadline` (Unix time)."""
        both = sorted(set(workers) & set(self.aggregators))
        if both:
            raise SecureAggregationError(f"{', '.join(map(repr, both))} cannot both train and "
                                         f"aggregate in a round")
        if len(workers) < self.min_contributors:
            raise SecureAggregationError(f"{len(workers)} workers in round {round}: additive "
                                         f"aggregation needs at least {self.min_contributors}")
        await self._ask_all(request, m.ObjectsCount(), deadline)
        sid = secrets.token_hex(16)
        self._rounds = {r: v for r, v in self._rounds.items() if r > round - 8}
        self._rounds[round] = (sid, sorted(workers))
        return {w: {"method": "additive", "session": sid, "round": round,
                    "aggregators": list(self.aggregators)} for w in workers}

    async def end_round(self, round: int, protected: dict[str, dict], request: Request,
                        deadline: float) -> tuple[torch.Tensor, list[str]]:
        """Ask every aggregator which of the workers in `protected` it holds, then for the sum
        over those all of them hold; (the sum of the sums, int64 (L,); those workers).
        SecureAggregationError for an unknown round, fewer than min_contributors held by
        every aggregator, or an aggregator failing."""
        if round not in self._rounds:
            raise SecureAggregationError(f"round {round} was not begun")
        sid, entered = self._rounds.pop(round)
        contributors = sorted(set(protected) & set(entered))
        self._check_count(round, contributors)
        held = await self._ask_all(
            request, AggregateShares(sid, round, contributors, reveal=False), deadline)
        for a, res in zip(self.aggregators, held):
            if type(res) is not AggregateResult or type(res.held) is not list:
                raise SecureAggregationError(f"aggregator {a!r} answered {type(res).__name__}")
        common = sorted(set(contributors).intersection(*(set(r.held) for r in held)))
        self._check_count(round, common)
        sums = await self._ask_all(request, AggregateShares(sid, round, common), deadline)
        total = None
        for a, res in zip(self.aggregators, sums):
            t = getattr(res, "total", None)
            if type(res) is not AggregateResult or type(t) is not torch.Tensor or \
                    t.dtype != torch.int64 or (total is not None and t.shape != total.shape):
                missing = sorted(set(common) - set(getattr(res, "held", None) or ()))
                raise SecureAggregationError(
                    f"aggregator {a!r} gave no sum for round {round}"
                    + (f" (it lost the shares of {', '.join(missing)})" if missing else ""))
            total = t.clone() if total is None else total + t
        return total, common

    def _check_count(self, round: int, contributors: list[str]) -> None:
        if len(contributors) < self.min_contributors:
            raise SecureAggregationError(
                f"round {round}: only {len(contributors)} workers' shares are held by every "
                f"aggregator ({', '.join(contributors) or 'none'}); at least "
                f"{self.min_contributors} are needed")


#: message type -> worker handler(session, message)
HANDLERS: dict = {AggregatorShare: handle_share, DropShare: handle_drop,
                  AggregateShares: handle_aggregate}
#: wire records (codes 118-121)
RECORDS: tuple = (AggregatorShare, DropShare, AggregateShares, AggregateResult)
