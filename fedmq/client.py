"""The client side of a worker: what a pointer's `.location` is.

A `WorkerClient` names one worker and sends through its connection's request engine
(fedmq/engine.py), the same for in-process and RabbitMQ workers. `call(msg)` sends a message
and returns the reply's value (raising the worker's error as a fedmq exception). `post(msg)` is
for messages whose result stays remote:

* Commands are buffered and go out together as one `Batch` (a stream, as on a GPU): at the
  next sync point (any `call`), when the buffer is full, or on `flush()`. A training step is
  then a few frames, not one per op.
* Before anything else is sent, every client's buffer in the same context is flushed, so a
  worker never sees a message before the commands it depends on, even when another worker
  relays it.
* A pipelined op that fails is recorded under its result ids on the worker, and its error is
  raised at the caller's next sync point with that worker (`get`, `item`, a call).

Pointers that are garbage collected call `release(id)`; the ids ride along with the next
message's envelope (or go out on `flush()`), so GC never sends from inside a finalizer.
"""
from __future__ import annotations

import collections
import functools
import logging
import weakref
from typing import Any

from fedmq import messages as m
from fedmq.engine import RequestEngine, collect, value_of
from fedmq.errors import FedmqError, ObjectNotFoundError, WorkerRestartedError, remote_error_from

log = logging.getLogger("fedmq.client")

#: how many commands a buffer holds before it is sent on its own
MAX_BATCH = 256
#: messages that look at a worker's store: deferred gets are carried out before them
_LOOKS_AT_STORE = (m.ObjectsCount, m.ListObjects, m.WorkerStats, m.SearchRequest,
                   m.ClearObjects)


def call_all(calls: list[tuple["WorkerClient", Any]], *, sender: str | None = None,
             timeout: float | None = None) -> list:
    """`client.call(message)` for every (client, message), with every message sent before any
    reply is awaited: one round trip in all, not one per client, over RabbitMQ. Returns the
    values in order; raises the first error (after all replies)."""
    started = []
    for client, message in calls:
        with client.context.send_lock:
            frame, buffered = client._call_frame(message, sender)
            call = client.engine.start_frame(client.id, frame, type(message).__name__)
        started.append((call, functools.partial(client._call_result, message=message,
                                                buffered=buffered)))
    if timeout is None:
        timeout = max((c.timeout for c, _ in calls if c.timeout is not None), default=None)
    return collect(started, timeout)


class WorkerClient:
    """A worker as seen from here: its id, the engine that reaches it, and what this side keeps
    for it (buffered commands, ids to release, errors of pipelined ops, deferred gets)."""

    def __init__(self, id: str, engine: RequestEngine, network: Any, sender: str | None = None,
                 timeout: float | None = None) -> None:
        self.id = id
        self.engine = engine
        self.network = network
        self.context = network.context
        self.sender = sender or engine.sender
        #: seconds a call waits for its reply (None: the engine's default)
        self.timeout = engine.timeout if timeout is None else timeout
        self._pending_deletes: collections.deque[int] = collections.deque()
        self._buffer: list = []
        self._async_errors: list = []
        #: remote parameters of sent models, by remote id (for gradient bookkeeping)
        self._remote_params: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        #: deferred `model.get()`s from this worker (pointers/parameter.py PendingGet)
        self._pending_gets: dict[int, Any] = {}
        #: the worker's incarnation as of its last reply, and (old, new) once it was seen to
        #: change: the worker restarted, and objects it held before are gone
        self.incarnation: int | None = None
        self.restarted: tuple[int, int] | None = None

    # -- sending ---------------------------------------------------------------------------------
    def call(self, message: Any, *, sender: str | None = None, timeout: float | None = None,
             msg_id: int = 0, expires: bool = False) -> Any:
        """Send `message`, wait for the reply, return its value or raise the worker's error.
        A nonzero `msg_id` (Envelope.msg_id) lets a later `m.Cancel(msg_id)` stop it. With
        `expires`, a broker drops the message if it is still queued when the wait ends (a
        request nobody waits for any more, which a worker restarted later must not run)."""
        timeout = self.timeout if timeout is None else timeout
        with self.context.send_lock:  # the frame goes out before another thread's
            frame, buffered = self._call_frame(message, sender, msg_id)
            call = self.engine.start_frame(self.id, frame, type(message).__name__,
                                           timeout if expires else None)
        reply = call.reply(timeout)
        return self._call_result(reply, message, buffered)

    def _call_frame(self, message: Any, sender: str | None, msg_id: int = 0
                    ) -> tuple[bytes, list]:
        """The frame of a call: our own buffered commands ride in it, everyone else's go first."""
        if self._pending_gets and type(message) in _LOOKS_AT_STORE:
            self.carry_out_pending_gets()
        buffered, self._buffer = self._buffer, []
        if buffered:
            self.context.mark_clean(self)
        self.context.flush_all()
        self._raise_async_error()
        wire = m.Batch(buffered + [message], reply_last=True) if buffered else message
        return self._frame(wire, sender, msg_id), buffered

    def _call_result(self, reply: m.Reply, message: Any, buffered: list) -> Any:
        self._note_incarnation(reply)
        if isinstance(reply.value, m.BatchReply):
            for index, error in reply.value.errors:
                self._async_errors.append((error, buffered[index]))
            reply = m.Reply(reply.value.value, reply.error)
        self._raise_async_error()  # a pipelined failure comes before this call's own result
        try:
            return value_of(reply, self.id, getattr(message, "op", None))
        except ObjectNotFoundError as exc:
            raise self._lost_in_restart(exc) from None

    def _note_incarnation(self, reply: m.Reply) -> None:
        incarnation = reply.incarnation
        if incarnation is None or incarnation == self.incarnation:
            return
        if self.incarnation is not None:
            self.restarted = (self.incarnation, incarnation)
            log.warning("fedmq: worker %r restarted (incarnation %x -> %x): the objects it held "
                        "before are gone", self.id, self.incarnation, incarnation)
        self.incarnation = incarnation

    def _lost_in_restart(self, exc: ObjectNotFoundError) -> ObjectNotFoundError:
        """`exc`, or a WorkerRestartedError saying why, once the worker was seen to restart."""
        if self.restarted is None or isinstance(exc, WorkerRestartedError):
            return exc
        return WorkerRestartedError(
            f"worker {self.id!r} restarted since this client first reached it (incarnation "
            f"{self.restarted[0]:x} -> {self.restarted[1]:x}): what it held in memory is gone, "
            f"send it again ({exc.remote_message})", worker=exc.worker, op=exc.op)

    def post(self, message: Any, *, sender: str | None = None) -> None:
        """Send a message whose result stays on the worker, without waiting for it."""
        with self.context.send_lock:
            if type(message) is m.Command:
                self._buffer.append(message)
                if len(self._buffer) == 1:
                    self.context.mark_dirty(self)
                if len(self._buffer) >= MAX_BATCH:
                    self._send_buffer()
                return
            self.context.flush_all()
            self._send_now(message, sender)

    def carry_out_pending_gets(self) -> None:
        """Finish every deferred `model.get()` from this worker (before anyone looks at it)."""
        for pending in list(self._pending_gets.values()):
            pending.carry_out()

    def flush(self) -> None:
        """Send buffered commands and pending deletes now."""
        with self.context.send_lock:
            self.context.flush_all()
            ids = self._take_pending()
            if ids:
                self.engine.post_frame(self.id, self.engine.frame(
                    m.DeleteObjects(ids), sender=self.sender, to=self.id), "DeleteObjects")

    def _send_buffer(self) -> None:
        with self.context.send_lock:
            commands, self._buffer = self._buffer, []
            self.context.mark_clean(self)
            if commands:
                self._send_now(commands[0] if len(commands) == 1 else m.Batch(commands), None)

    def _send_now(self, message: Any, sender: str | None) -> None:
        def on_reply(reply: Any) -> None:
            self.on_async_reply(reply, message)

        self.engine.post_frame(self.id, self._frame(message, sender), type(message).__name__,
                               on_reply, timeout=self.timeout)

    def on_async_reply(self, reply: Any, message: Any) -> None:
        """A reply to a posted message (or the error that ended its wait): keep its errors for
        the next sync point."""
        if isinstance(reply, FedmqError):  # timed out or connection lost: raised as it is
            self._async_errors.append((reply, message))
            return
        self._note_incarnation(reply)
        if reply.error is not None:
            self._async_errors.append((reply.error, message))
        elif isinstance(message, m.Batch) and reply.value:
            for index, error in reply.value:
                self._async_errors.append((error, message.messages[index]))

    def _raise_async_error(self) -> None:
        if self._async_errors:
            error, message = self._async_errors[0]
            self._async_errors.clear()
            if isinstance(error, FedmqError):
                exc: FedmqError = error
            else:
                exc = remote_error_from(error.code, error.message, error.worker or self.id,
                                        error.op or getattr(message, "op", None))
                if isinstance(exc, ObjectNotFoundError):
                    exc = self._lost_in_restart(exc)
            exc.add_note(f"(raised at this call to worker {self.id!r}: it is the outcome of a "
                         f"{type(message).__name__} posted to it earlier)")
            raise exc

    def _frame(self, message: Any, sender: str | None, msg_id: int = 0) -> bytes:
        return self.engine.frame(message, sender=sender or self.sender,
                                 release=self._take_pending(), msg_id=msg_id, to=self.id)

    def _take_pending(self) -> list[int]:
        ids = []
        while self._pending_deletes:
            try:
                ids.append(self._pending_deletes.popleft())
            except IndexError:  # emptied by another thread
                break
        return ids

    # -- garbage collection of remote objects ----------------------------------------------------
    def release(self, obj_id: int) -> None:
        """Called from finalizers (any thread): delete `obj_id` remotely soon."""
        self._pending_deletes.append(obj_id)

    # -- conveniences every worker answers --------------------------------------------------------
    def objects_count(self) -> int:
        return self.call(m.ObjectsCount())

    def clear_objects(self) -> "WorkerClient":
        self.call(m.ClearObjects())
        return self

    def search(self, *query: Any) -> list:
        """Pointers to every object on this worker carrying all the tags in `query`
        (a list, or tags as arguments). Found pointers do not delete their object when dropped."""
        items: list = []
        for q in query:
            items.extend(q if isinstance(q, (list, tuple)) else [q])
        refs = self.call(m.SearchRequest(items))
        owner = self.network.local_worker
        return [m.adopt(ref, owner=owner, network=self.network, gc=False) for ref in refs]

    def request_search(self, query: Any, location: Any) -> list:
        """PySyft's `me.request_search(query, location=worker)`: search `location` (any worker
        client) for objects carrying every tag in `query`; returns non-owning pointers."""
        if location is None or not hasattr(location, "search"):
            raise TypeError(f"request_search needs a worker to search as location=, "
                            f"got {location!r}")
        return location.search(query)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id:{self.id}>"

