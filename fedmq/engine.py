"""The request engine: the one way fedmq sends a message to a worker and gets its reply.

One `RequestEngine` per connection (an in-process network, or one RabbitMQ connection), shared
by everything that talks to workers: pointers, plans, protocols, SMPC rounds and both
coordinators. As in httpx, there is one core and two faces:

    post(worker_id, message, on_reply=None)        fire and forget, in order
    request(worker_id, message) -> value           one reply (sync facade)
    request_all([(worker_id, message), ...]) -> [value, ...]    many at once, one round trip
    await arequest(worker_id, message) -> value    the async core, for coroutines

What the engine owns, and nothing else does:
* encoding the `Envelope` (sender, released ids, message id) and decoding the `Reply`, turning
  an error the worker reported into the matching `fedmq.RemoteError`;
* the pending-reply table, keyed by correlation id. An entry leaves it when its reply arrives,
  when its caller's timeout passes (`ReplyTimeout`, naming the worker and message type; a
  posted message's entry is swept the next time anything is sent), when its frame could not
  be published, or when the connection closes or drops: then every waiting caller fails at once
  with `ConnectionLost` (direct reply-to replies to a lost connection can never arrive);
* the worker watchdog: a frame for a worker nobody serves is refused by the transport before it
  is sent, and a caller waiting for a reply asks the transport every PROBE_INTERVAL whether the
  worker is still served; either way the caller gets `WorkerNotFoundError` at once, not a
  `ReplyTimeout` after its whole timeout;
* posted frames the transport could not deliver (the broker refused them, or the connection
  stayed down): the next call or post to that worker raises `ConnectionLost` saying so;
* counters of frames sent and replies received (`stats()`, `FrameCounter`), so tests can
  assert how many round trips an operation costs.

Transports (fedmq/transport/) only move frames; a synchronous transport (in-process) answers
`send` with the reply frame itself, a pipelining one (RabbitMQ) delivers it later through
`deliver(correlation_id, frame)`.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import logging
import secrets
import threading
import time
import weakref
from typing import Any, Callable, Iterable

from fedmq import messages as m, principals, serde
from fedmq.errors import (AccessDeniedError, ConnectionBlocked, ConnectionLost, FedmqError,
                          RemoteSerdeError, ReplyTimeout, WorkerNotFoundError,
                          remote_error_from)
from fedmq.transport.base import Transport

log = logging.getLogger("fedmq.engine")

#: seconds a caller waits for a reply unless it says otherwise (None: forever)
DEFAULT_TIMEOUT = 60.0
#: how often (seconds) posted messages whose replies never came are looked for
SWEEP_INTERVAL = 1.0
#: how often (seconds) a caller waiting for a reply checks that its worker is still served
PROBE_INTERVAL = 1.0
#: seconds the broker may block a connection's publishes (an alarm) before a waiting caller
#: fails with ConnectionBlocked
BLOCKED_GRACE = 5.0

#: what `post(..., on_reply=...)` receives: the decoded Reply, or the error that ended the wait
ReplyCallback = Callable[["m.Reply | FedmqError"], None]


def value_of(reply: m.Reply, worker_id: str, op: str | None = None) -> Any:
    """The value a Reply carries, or the `RemoteError` it reports (raised)."""
    if reply.error is not None:
        err = reply.error
        raise remote_error_from(err.code, err.message, err.worker or worker_id, err.op or op)
    return reply.value


def _value_for(worker_id: str, op: str | None, reply: m.Reply) -> Any:
    return value_of(reply, worker_id, op)


def decode_reply(frame: bytes | bytearray, worker_id: str) -> m.Reply:
    """Decode a reply frame; anything but a `Reply` is a `RemoteSerdeError`."""
    try:
        reply = serde.decode(frame)
    except serde.SerdeError as exc:
        raise RemoteSerdeError(f"undecodable reply: {exc}", worker=worker_id) from None
    if not isinstance(reply, m.Reply):
        raise RemoteSerdeError(f"expected a Reply, got {type(reply).__name__}", worker=worker_id)
    return reply


class _Entry:
    """A pending reply: a sync future, an asyncio future, or a callback (posts)."""
    __slots__ = ("worker_id", "message_type", "deadline", "future", "loop", "callback")

    def __init__(self, worker_id: str, message_type: str, deadline: float | None,
                 future: Any = None, loop: asyncio.AbstractEventLoop | None = None,
                 callback: ReplyCallback | None = None) -> None:
        self.worker_id = worker_id
        self.message_type = message_type
        self.deadline = deadline
        self.future = future
        self.loop = loop
        self.callback = callback

    def settle(self, frame: bytes | bytearray | None, error: FedmqError | None) -> None:
        """Hand the reply frame (or the error that ended the wait) to whoever waits."""
        if self.callback is not None:
            if error is None:
                try:
                    result: Any = decode_reply(frame, self.worker_id)
                except FedmqError as exc:
                    result = exc
            else:
                result = error
            try:
                self.callback(result)
            except Exception:  # a callback must never kill the transport's consumer
                log.exception("fedmq: reply callback for %s failed", self.message_type)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(_settle_async, self.future, frame, error)
        elif error is None:
            self.future.set_result(frame)
        else:
            self.future.set_exception(error)


def _settle_async(future: asyncio.Future, frame: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(frame)
    else:
        future.set_exception(error)


class PendingCall:
    """A request already sent (`RequestEngine.start`); `reply()` waits for its Reply."""
    __slots__ = ("engine", "worker_id", "message_type", "correlation_id", "future", "frame")

    def __init__(self, engine: "RequestEngine", worker_id: str, message_type: str,
                 correlation_id: str | None, future: Any, frame: Any = None) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.message_type = message_type
        self.correlation_id = correlation_id
        self.future = future
        self.frame = frame  # the reply frame, for synchronous transports

    def reply(self, timeout: float | None) -> m.Reply:
        """The decoded Reply; ReplyTimeout after `timeout` seconds, WorkerNotFoundError as soon
        as the worker is found gone (checked every PROBE_INTERVAL); the entry is dropped."""
        if self.future is None:
            return decode_reply(self.frame, self.worker_id)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else end - time.monotonic()
            try:
                frame = self.future.result(timeout=PROBE_INTERVAL if left is None else
                                           max(0.0, min(left, PROBE_INTERVAL)))
                break
            except concurrent.futures.TimeoutError:
                if end is not None and time.monotonic() >= end:
                    self.engine._forget(self.correlation_id)
                    raise self.engine._timeout_error(self.worker_id, self.message_type,
                                                     timeout) from None
                blocked = self.engine.transport.blocked(BLOCKED_GRACE)
                if blocked is not None and not self.future.done():
                    self.engine._forget(self.correlation_id)
                    raise self.engine._blocked_error(self.worker_id, self.message_type,
                                                     blocked) from None
                absent = self.engine.transport.probe(self.worker_id)
                if absent is not None and not self.future.done():
                    self.engine._forget(self.correlation_id)
                    raise self.engine._absent_error(self.worker_id, self.message_type,
                                                    absent) from None
        return decode_reply(frame, self.worker_id)


class RequestEngine:
    """Requests and replies over one transport. Thread-safe: any thread may call the sync
    methods; `arequest` runs on any event loop."""

    def __init__(self, transport: Transport, *, sender: str = "me",
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.transport = transport
        self.sender = sender
        self.timeout = timeout
        #: where a coordinator's round events go (set by fedmq.fl.connections)
        self.events: Any = None
        self._pending: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._prefix = secrets.token_hex(6) + "."
        self._counter = itertools.count()
        self._next_sweep = 0.0
        self._closed = False
        #: worker id -> (posted frames lost, the last reason): raised at the next call there
        self._lost: dict[str, tuple[int, str]] = {}
        self.frames_sent: collections.Counter = collections.Counter()
        self.replies_received: collections.Counter = collections.Counter()
        transport.bind(self)
        _open.add(self)

    # -- encoding --------------------------------------------------------------------------------
    @staticmethod
    def encode(message: Any, *, sender: str, release: list | None = None,
               msg_id: int = 0, to: str | None = None) -> bytes:
        """The encoded Envelope carrying `message` from `sender` (to worker `to`). Sent by a
        worker while it handles a principal's message (fedmq.principals.current()), it goes
        on that principal's behalf, marked private if what the worker read was: private
        values go only to the worker's trusted peers (AccessDeniedError otherwise)."""
        acting = principals.current()
        if acting is None:
            return serde.encode(m.Envelope(m.WIRE_VERSION, sender, message, msg_id,
                                           release or []))
        if acting.tainted and to is not None and not acting.may_forward_private(to):
            raise AccessDeniedError(
                f"values computed from private data may only go to the worker's peer workers; "
                f"{to!r} is not one (the data owner grants it with --grant worker:{to})",
                worker=sender)
        private = (f"{'raw' if acting.raw else 'derived'}:{acting.release}"
                   if acting.tainted else None)
        return serde.encode(m.Envelope(m.WIRE_VERSION, sender, message, msg_id, release or [],
                                       acting.principal, private))

    def frame(self, message: Any, *, sender: str | None = None, release: list | None = None,
              msg_id: int = 0, to: str | None = None) -> bytes:
        """The encoded Envelope carrying `message` (from this engine's sender by default)."""
        return self.encode(message, sender=sender or self.sender, release=release,
                           msg_id=msg_id, to=to)

    # -- the sync facade --------------------------------------------------------------------------
    def post(self, worker_id: str, message: Any, *, sender: str | None = None,
             release: list | None = None, on_reply: ReplyCallback | None = None) -> None:
        """Send `message` without waiting. Messages to one worker keep their order. With
        `on_reply`, the decoded Reply (or the FedmqError that ended the wait: timeout,
        connection lost) is passed to it, on the transport's thread."""
        self.post_frame(worker_id, self.frame(message, sender=sender, release=release,
                                             to=worker_id),
                        type(message).__name__, on_reply)

    def post_frame(self, worker_id: str, frame: bytes | bytearray, message_type: str,
                   on_reply: ReplyCallback | None = None, *,
                   timeout: float | None = None) -> None:
        self._check_open()
        self._raise_lost(worker_id)
        self.frames_sent[worker_id] += 1
        if not self.transport.pipelines:
            reply = self.transport.send(worker_id, frame, correlation_id=None,
                                        message_type=message_type)
            if on_reply is not None:
                self.replies_received[worker_id] += 1
                _Entry(worker_id, message_type, None, callback=on_reply).settle(reply, None)
            return
        corr = None
        if on_reply is not None:
            corr = self._correlation_id()
            timeout = self.timeout if timeout is None else timeout
            deadline = None if timeout is None else time.monotonic() + timeout
            self._register(corr, _Entry(worker_id, message_type, deadline, callback=on_reply))
        self._sweep()
        self._send(worker_id, frame, corr, message_type, None, posted=True)

    def exchange(self, worker_id: str, message: Any, *, sender: str | None = None,
                 release: list | None = None, timeout: float | None = None,
                 expiration: float | None = None) -> m.Reply:
        """Send `message` and return the decoded `Reply` (errors stay inside it)."""
        call = self.start(worker_id, message, sender=sender, release=release,
                          expiration=expiration)
        return call.reply(self.timeout if timeout is None else timeout)

    def request(self, worker_id: str, message: Any, *, sender: str | None = None,
                release: list | None = None, timeout: float | None = None,
                expiration: float | None = None) -> Any:
        """Send `message`, wait for the reply, return its value or raise the worker's error
        (`RemoteError`), `ReplyTimeout` or `ConnectionLost`."""
        reply = self.exchange(worker_id, message, sender=sender, release=release,
                              timeout=timeout, expiration=expiration)
        return value_of(reply, worker_id, getattr(message, "op", None))

    def request_all(self, calls: Iterable[tuple[str, Any]], *, deadline: float | None = None,
                    sender: str | None = None) -> list:
        """`request` for every (worker_id, message), all sent before any reply is awaited: one
        round trip in all over a pipelining transport. Waits at most `deadline` seconds in
        all (default: the engine's timeout). Returns the values in order; after every reply
        is in, raises the first error."""
        pending = [(self.start(worker_id, message, sender=sender),
                    functools.partial(_value_for, worker_id, getattr(message, "op", None)))
                   for worker_id, message in calls]
        return collect(pending, deadline if deadline is not None else self.timeout)

    def start(self, worker_id: str, message: Any, *, sender: str | None = None,
              release: list | None = None, expiration: float | None = None) -> PendingCall:
        """Send `message` now; the returned `PendingCall` waits for its reply."""
        return self.start_frame(worker_id, self.frame(message, sender=sender, release=release,
                                                      to=worker_id),
                                type(message).__name__, expiration)

    def start_frame(self, worker_id: str, frame: bytes | bytearray, message_type: str,
                    expiration: float | None = None) -> PendingCall:
        self._check_open()
        self._raise_lost(worker_id)
        self.frames_sent[worker_id] += 1
        if not self.transport.pipelines:
            reply = self.transport.send(worker_id, frame, correlation_id="",
                                        message_type=message_type, expiration=expiration)
            self.replies_received[worker_id] += 1
            return PendingCall(self, worker_id, message_type, None, None, reply)
        corr = self._correlation_id()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._register(corr, _Entry(worker_id, message_type, None, future=future))
        self._sweep()
        self._send(worker_id, frame, corr, message_type, expiration)
        return PendingCall(self, worker_id, message_type, corr, future)

    # -- the async core ---------------------------------------------------------------------------
    async def arequest(self, worker_id: str, message: Any, *, sender: str | None = None,
                       timeout: float | None = None, expiration: float | None = None,
                       msg_id: int = 0) -> Any:
        """`request` for coroutines: the value, or the worker's error, `ReplyTimeout` or
        `ConnectionLost`. Cancelling the coroutine drops its pending entry."""
        reply = await self.aexchange(worker_id, message, sender=sender, timeout=timeout,
                                     expiration=expiration, msg_id=msg_id)
        return value_of(reply, worker_id, getattr(message, "op", None))

    async def aexchange(self, worker_id: str, message: Any, *, sender: str | None = None,
                        timeout: float | None = None, expiration: float | None = None,
                        msg_id: int = 0) -> m.Reply:
        self._check_open()
        self._raise_lost(worker_id)
        frame = self.frame(message, sender=sender, msg_id=msg_id, to=worker_id)
        message_type = type(message).__name__
        timeout = self.timeout if timeout is None else timeout
        self.frames_sent[worker_id] += 1
        if not self.transport.pipelines:
            job = self.transport.asend(worker_id, frame, correlation_id="",
                                       message_type=message_type, expiration=expiration)
            try:
                reply = await asyncio.wait_for(job, timeout)
            except asyncio.TimeoutError:
                raise self._timeout_error(worker_id, message_type, timeout) from None
            self.replies_received[worker_id] += 1
            return decode_reply(reply, worker_id)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        corr = self._correlation_id()
        self._register(corr, _Entry(worker_id, message_type, None, future=future, loop=loop))
        self._sweep()
        try:
            await self.transport.asend(worker_id, frame, correlation_id=corr,
                                       message_type=message_type, expiration=expiration)
            reply = await self._await_reply(worker_id, message_type, future, timeout)
        finally:
            self._forget(corr)
        return decode_reply(reply, worker_id)

    async def _await_reply(self, worker_id: str, message_type: str, future: asyncio.Future,
                           timeout: float | None) -> Any:
        """The reply frame; ReplyTimeout after `timeout`, WorkerNotFoundError once the worker
        is found gone (checked every PROBE_INTERVAL)."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while True:
            left = None if end is None else end - loop.time()
            done, _ = await asyncio.wait({future}, timeout=PROBE_INTERVAL if left is None else
                                         max(0.0, min(left, PROBE_INTERVAL)))
            if done:
                return future.result()
            if end is not None and loop.time() >= end:
                future.cancel()
                raise self._timeout_error(worker_id, message_type, timeout)
            blocked = self.transport.blocked(BLOCKED_GRACE)
            if blocked is not None and not future.done():
                future.cancel()
                raise self._blocked_error(worker_id, message_type, blocked)
            absent = await self.transport.aprobe(worker_id)
            if absent is not None and not future.done():
                future.cancel()
                raise self._absent_error(worker_id, message_type, absent)

    # -- what the transport calls (ReplySink) -----------------------------------------------------
    def deliver(self, correlation_id: str, frame: bytes | bytearray) -> None:
        """A reply frame arrived for `correlation_id` (unknown ids: late, dropped)."""
        with self._lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is None:
            log.debug("fedmq: dropped a reply nobody waits for (%s): late or cancelled",
                      correlation_id)
            return
        self.replies_received[entry.worker_id] += 1
        entry.settle(frame, None)

    def not_delivered(self, correlation_id: str, reason: str) -> bool:
        """The frame sent under `correlation_id` never reached the broker: its caller fails
        now with ConnectionLost (a posted message's error is raised at the next sync point).
        False if nobody waited for it any more."""
        with self._lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is None:
            return False
        entry.settle(None, ConnectionLost(
            f"{entry.message_type} to worker {entry.worker_id!r} was not delivered over "
            f"{self.transport.describe()} ({reason}); nothing was run"))
        return True

    def worker_not_found(self, correlation_id: str, reason: str) -> None:
        """The transport refused the frame sent under `correlation_id`: no worker serves its
        id. Its caller fails now with WorkerNotFoundError."""
        with self._lock:
            entry = self._pending.pop(correlation_id, None)
        if entry is not None:
            entry.settle(None, self._absent_error(entry.worker_id, entry.message_type, reason))

    def posted_lost(self, worker_id: str, message_type: str, reason: str) -> None:
        """A posted frame (no reply awaited) to `worker_id` could not be delivered: the next
        call or post to that worker raises ConnectionLost saying so (what it would have made
        or changed there is missing), instead of failing later with a puzzling error."""
        with self._lock:
            count, _ = self._lost.get(worker_id, (0, ""))
            self._lost[worker_id] = (count + 1, f"{message_type}: {reason}")

    def _raise_lost(self, worker_id: str) -> None:
        if not self._lost:
            return
        with self._lock:
            lost = self._lost.pop(worker_id, None)
        if lost is not None:
            raise ConnectionLost(
                f"{lost[0]} message(s) posted to worker {worker_id!r} over "
                f"{self.transport.describe()} were never delivered (last: {lost[1]}): what they "
                f"would have stored or changed there is missing")

    def connection_lost(self, reason: str) -> None:
        """The connection dropped: every pending reply is lost; their callers fail now. A
        posted message itself is not lost (the transport publishes it again if the broker
        did not confirm it); only its reply, which would have reported an error, is."""
        def lost(e: _Entry) -> ConnectionLost:
            if e.callback is not None:
                return ConnectionLost(
                    f"the connection to {self.transport.describe()} dropped ({reason}) before "
                    f"worker {e.worker_id!r} answered a posted {e.message_type}: the message "
                    f"is still delivered, but whether it failed there cannot be reported")
            return ConnectionLost(
                f"the connection to {self.transport.describe()} was lost while waiting for "
                f"worker {e.worker_id!r} to answer {e.message_type} ({reason}); it may or may "
                f"not have been handled")
        self._fail_all(lost)

    # -- bookkeeping -----------------------------------------------------------------------------
    def pending_replies(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, dict[str, int]]:
        """Frames sent and replies received, per worker id, since this engine was made."""
        return {"frames_sent": dict(self.frames_sent),
                "replies_received": dict(self.replies_received)}

    def drain(self, timeout: float | None = 30.0) -> None:
        """Wait until every frame sent so far has left this process."""
        self.transport.drain(timeout)

    def close(self) -> None:
        """Close the transport; callers still waiting fail at once with `ConnectionLost`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._fail_closed()
        self.transport.close()

    async def aclose(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._fail_closed()
        await self.transport.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"<RequestEngine {self.transport.describe()} sender={self.sender!r} "
                f"pending={len(self._pending)}>")

    # -- internals -------------------------------------------------------------------------------
    def _send(self, worker_id: str, frame: Any, corr: str | None, message_type: str,
              expiration: float | None, posted: bool = False) -> None:
        try:
            self.transport.send(worker_id, frame, correlation_id=corr, message_type=message_type,
                                expiration=expiration, posted=posted)
        except BaseException:
            if corr is not None:
                self._forget(corr)
            raise

    def _fail_closed(self) -> None:
        self._fail_all(lambda e: ConnectionLost(
            f"the connection to {self.transport.describe()} was closed while waiting for "
            f"worker {e.worker_id!r} to answer {e.message_type}"))

    def _fail_all(self, make_error: Callable[[_Entry], FedmqError]) -> None:
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for entry in entries:
            entry.settle(None, make_error(entry))

    def _register(self, corr: str, entry: _Entry) -> None:
        with self._lock:  # a sweep or a lost connection may be walking the table
            if self._closed:
                raise ConnectionLost(f"this connection to {self.transport.describe()} is "
                                     f"closed")
            self._pending[corr] = entry

    def _forget(self, corr: str | None) -> None:
        if corr is not None:
            with self._lock:
                self._pending.pop(corr, None)

    def _sweep(self) -> None:
        """Posted messages whose reply is overdue: their callbacks get a ReplyTimeout. The sweep
        runs (at most every SWEEP_INTERVAL) whenever something is sent, which includes the next
        sync point, where a posted message's error is raised: so an overdue entry leaves the
        table, with its error, no later than the caller could see it."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        with self._lock:
            overdue = [(corr, e) for corr, e in self._pending.items()
                       if e.deadline is not None and e.deadline < now]
            for corr, _ in overdue:
                del self._pending[corr]
        for _, entry in overdue:
            entry.settle(None, ReplyTimeout(
                f"worker {entry.worker_id!r} did not answer a posted {entry.message_type} "
                f"in time over {self.transport.describe()} (is a worker with id "
                f"{entry.worker_id!r} running?)"))

    def _timeout_error(self, worker_id: str, message_type: str,
                       timeout: float | None) -> ReplyTimeout:
        return ReplyTimeout(f"worker {worker_id!r} did not answer {message_type} within "
                            f"{timeout} s over {self.transport.describe()} (is a worker with "
                            f"id {worker_id!r} running?)")

    @staticmethod
    def _blocked_error(worker_id: str, message_type: str, reason: str) -> ConnectionBlocked:
        return ConnectionBlocked(f"{message_type} to worker {worker_id!r} cannot be answered "
                                 f"now: {reason}; what was sent goes out once it clears")

    @staticmethod
    def _absent_error(worker_id: str, message_type: str, reason: str) -> WorkerNotFoundError:
        return WorkerNotFoundError(f"{message_type} to worker {worker_id!r} cannot be answered: "
                                   f"{reason}", worker=worker_id)

    def _correlation_id(self) -> str:
        """Unguessable (64 random bits each): a worker that sees this caller's reply address
        (any worker it sends to does) cannot forge replies to its calls to other workers."""
        return f"{self._prefix}{next(self._counter):x}.{secrets.token_hex(8)}"

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost(f"this connection to {self.transport.describe()} is closed")


#: engines not yet closed (a broker connection's loop thread keeps its engine alive, so a
#: program or a test run can close every connection it left open: `close_all`)
_open: "weakref.WeakSet[RequestEngine]" = weakref.WeakSet()


def close_all() -> None:
    """Close every request engine not yet closed (their callers fail with ConnectionLost)."""
    for engine in list(_open):
        try:
            engine.close()
        except Exception:  # a connection the broker already dropped closes all the same
            log.debug("fedmq: closing %r", engine, exc_info=True)


def collect(pending: list[tuple[PendingCall, Callable[[m.Reply], Any]]],
            deadline: float | None) -> list:
    """The values of calls already started, in order: `value(reply)` for each, waiting at most
    `deadline` seconds in all; after every reply is in (or timed out), raises the first error."""
    end = None if deadline is None else time.monotonic() + deadline
    values: list = []
    first_error: BaseException | None = None
    for call, value in pending:
        left = None if end is None else max(0.0, end - time.monotonic())
        try:
            values.append(value(call.reply(left)))
        except FedmqError as exc:
            values.append(None)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return values


class FrameCounter:
    """Counts the frames one or more engines send inside a `with` block:

        with FrameCounter(bob.engine) as counted:
            train_one_step()
        assert counted.frames <= 8
    """

    def __init__(self, *engines: RequestEngine) -> None:
        self.engines = engines
        self.frames = 0
        self.replies = 0

    def _totals(self) -> tuple[int, int]:
        return (sum(sum(e.frames_sent.values()) for e in self.engines),
                sum(sum(e.replies_received.values()) for e in self.engines))

    def __enter__(self) -> "FrameCounter":
        self._start = self._totals()
        return self

    def __exit__(self, *exc: Any) -> None:
        frames, replies = self._totals()
        self.frames = frames - self._start[0]
        self.replies = replies - self._start[1]
