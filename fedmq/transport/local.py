"""In-process transport: frames go straight to a worker's `handle_frame` in this process.

URL: local://
Features: synchronous (`send` returns the reply frame); every message is still encoded and
decoded, so an in-process run exercises exactly the bytes a network would carry. A worker
handles one frame at a time (a lock per worker, like a queue consumer); `asend` runs it on a
thread of that worker's own, so a coordinator's in-process workers train concurrently, except
a small message the worker calls light (`Worker.light_reply`), which `asend` answers on the
caller's loop when the worker is idle, as a service does (two thread switches fewer). The
embedded default: no broker needed. A `Cancel` (message type "Cancel") is handled at once, without
waiting for the worker's lock (`handle_control_frame`): it stops the message the worker is
running for another thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Mapping, Protocol

from fedmq import principals
from fedmq.errors import TransportError
from fedmq.transport.base import INLINE_FRAME, Transport


class FrameHandler(Protocol):
    """What the local transport delivers to (fedmq.worker.Worker). A class that also defines
    `light_reply(frame, login)` and `respond(envelope, login)` (Worker does) gets its light
    messages answered on the caller's loop (`LocalTransport.asend`)."""
    id: str

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes: ...


def _light_reply(worker: Any) -> Any:
    """The handler's `light_reply` (called as light_reply(worker, frame, login)), or None
    when its light messages must go through its `handle_frame` too: a handler opts in by its
    class defining light_reply, whose class attribute LIGHT_OF names the handle_frame it
    stands in for; a wrapper that delegates the rest (an instrumented or faulty worker in a
    test), a subclass that overrides handle_frame, or an instance whose handle_frame was
    replaced is always called through handle_frame."""
    cls = type(worker)
    light = getattr(cls, "light_reply", None)
    if light is None or getattr(cls, "handle_frame", None) is not getattr(cls, "LIGHT_OF", None) \
            or "handle_frame" in getattr(worker, "__dict__", ()):
        return None
    return light


class LocalTransport(Transport):
    name = "local"
    pipelines = False

    def __init__(self, workers: Mapping[str, FrameHandler] | None = None, *,
                 principal: str = principals.LOCAL) -> None:
        #: who this transport's frames come from (in-process there is no broker to say it: the
        #: client's hook, or the principal an in-process worker is acting for)
        self.principal = principal
        self.workers: dict[str, FrameHandler] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        #: worker id -> frames handed to its thread and not finished (`asend` answers a light
        #: one on the loop only when none is, so that frames keep their order)
        self._queued: dict[str, int] = {}
        self._queued_lock = threading.Lock()
        for worker_id, worker in (workers or {}).items():
            self.add(worker, worker_id)

    def add(self, worker: FrameHandler, worker_id: str | None = None) -> None:
        """Make `worker` reachable under its id (replacing a worker of the same id)."""
        worker_id = worker_id or worker.id
        self.workers[worker_id] = worker
        self._locks.setdefault(worker_id, threading.RLock())

    def _worker(self, worker_id: str) -> FrameHandler:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise TransportError(f"no in-process worker with id {worker_id!r} (known: "
                                 f"{sorted(self.workers)})")
        return worker

    def send(self, worker_id: str, frame: bytes | bytearray, *, correlation_id: str | None,
             message_type: str = "message", expiration: float | None = None,
             posted: bool = False) -> bytes:
        worker = self._worker(worker_id)
        if message_type == "Cancel":
            reply = self._control(worker, frame)
            if reply is not None:
                return reply
        with self._locks[worker_id]:
            return worker.handle_frame(frame, self._login())

    def _login(self) -> str:
        acting = principals.current()
        return self.principal if acting is None else acting.principal

    def _control(self, worker: FrameHandler, frame: bytes | bytearray) -> bytes | None:
        """The reply to a Cancel, handled without the worker's lock (None: not one)."""
        handle = getattr(worker, "handle_control_frame", None)
        return None if handle is None else handle(frame, self._login())

    async def asend(self, worker_id: str, frame: bytes | bytearray, *,
                    correlation_id: str | None, message_type: str = "message",
                    expiration: float | None = None) -> bytes:
        worker = self._worker(worker_id)
        if message_type == "Cancel":  # at once, not behind the message it stops
            reply = self._control(worker, frame)
            if reply is not None:
                return reply
        loop = asyncio.get_running_loop()
        login = self._login()
        light = _light_reply(worker)
        lock = self._locks[worker_id]
        if light is not None and len(frame) <= INLINE_FRAME and \
                not self._queued.get(worker_id) and lock.acquire(blocking=False):
            try:
                reply, envelope = light(worker, frame, login)
            finally:
                lock.release()
            if reply is not None:
                return reply[0]
            return await self._on_thread(loop, worker_id, self._respond_locked, envelope, login)
        return await self._on_thread(loop, worker_id, self._handle_locked, frame, login)

    async def _on_thread(self, loop: asyncio.AbstractEventLoop, worker_id: str, fn: Any,
                         arg: Any, login: str) -> bytes:
        """`fn(worker_id, arg, login)` on the worker's thread (made on first use); counted in
        `_queued` until it has run, or was cancelled before it started (not merely until its
        caller stops waiting: a frame still queued must keep its place ahead of a light
        one)."""
        executor = self._executors.get(worker_id)
        if executor is None:
            executor = self._executors[worker_id] = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"fedmq-{worker_id}")
        with self._queued_lock:
            self._queued[worker_id] = self._queued.get(worker_id, 0) + 1
        job = executor.submit(fn, worker_id, arg, login)
        job.add_done_callback(lambda _: self._unqueue(worker_id))
        return await asyncio.wrap_future(job, loop=loop)

    def _unqueue(self, worker_id: str) -> None:
        with self._queued_lock:
            self._queued[worker_id] -= 1

    def _handle_locked(self, worker_id: str, frame: Any, login: str) -> bytes:
        with self._locks[worker_id]:
            return self.workers[worker_id].handle_frame(frame, login)

    def _respond_locked(self, worker_id: str, envelope: Any, login: str) -> bytes:
        with self._locks[worker_id]:
            return self.workers[worker_id].respond(envelope, login)[0]

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
