"""The transport interface: move one encoded frame to a worker, and its reply back.

Transports know frames and worker ids, nothing about messages; the request engine
(fedmq/engine.py) encodes, keeps the pending-reply table and decodes. Two kinds:

* synchronous (`pipelines = False`, in-process): `send` runs the worker and returns the reply
  frame itself;
* pipelining (`pipelines = True`, RabbitMQ): `send` returns at once and the reply frame is
  handed to the engine later, from the transport's own thread, through the `ReplySink` the
  engine bound with `bind`. When the connection is lost the transport tells the sink, so every
  caller still waiting fails at once instead of waiting out its timeout.

Every transport module opens with the same docstring: what it is, its URL, its features.
"""
from __future__ import annotations

import abc
from typing import Protocol

#: frames up to this size may be decoded on the event loop of whoever receives them (a
#: service, the in-process transport's caller) and, when the worker calls them light
#: (`Worker.light_reply`), answered there
INLINE_FRAME = 256 * 1024


class ReplySink(Protocol):
    """Where a pipelining transport delivers what comes back (the request engine)."""

    def deliver(self, correlation_id: str, frame: bytes | bytearray) -> None: ...

    def connection_lost(self, reason: str) -> None: ...

    def not_delivered(self, correlation_id: str, reason: str) -> bool: ...

    def worker_not_found(self, correlation_id: str, reason: str) -> None: ...

    def posted_lost(self, worker_id: str, message_type: str, reason: str) -> None: ...


class Transport(abc.ABC):
    #: short name used in URLs and logs ("local", "amqp")
    name: str = "base"
    #: True when `send` returns without waiting for the worker (replies go to the sink)
    pipelines: bool = False

    _sink: ReplySink | None = None

    def bind(self, sink: ReplySink) -> None:
        """Attach the request engine that receives replies and connection losses."""
        self._sink = sink

    @abc.abstractmethod
    def send(self, worker_id: str, frame: bytes | bytearray, *, correlation_id: str | None,
             message_type: str = "message", expiration: float | None = None,
             posted: bool = False) -> bytes | bytearray | None:
        """Deliver `frame` to worker `worker_id`. A synchronous transport returns the reply
        frame; a pipelining one returns None and, when `correlation_id` is given, later hands
        the reply to the sink under that id. `expiration` (seconds) lets a broker drop a
        message that waited longer in the worker's queue. `posted`: no caller waits on it (a
        pipelined message), so a broker transport may hold it through a reconnect and publish
        it again (a call fails instead: its caller decides). Raises TransportError when the
        frame cannot be delivered."""

    async def asend(self, worker_id: str, frame: bytes | bytearray, *,
                    correlation_id: str | None, message_type: str = "message",
                    expiration: float | None = None) -> bytes | bytearray | None:
        """`send` for coroutines on the running loop (the coordinators)."""
        return self.send(worker_id, frame, correlation_id=correlation_id,
                         message_type=message_type, expiration=expiration)

    def probe(self, worker_id: str) -> str | None:
        """Why no worker serves `worker_id` (its queue is missing, nothing consumes it), or None
        when one does or this transport cannot tell. A caller waiting for a reply asks every
        second, so a dead worker fails its callers at once (WorkerNotFoundError)."""
        return None

    async def aprobe(self, worker_id: str) -> str | None:
        """`probe` for coroutines."""
        return None

    def blocked(self, at_least: float = 0.0) -> str | None:
        """Why the broker holds this transport's publishes (an alarm), once it has for at least
        `at_least` seconds; None otherwise (default: never)."""
        return None

    def drain(self, timeout: float | None = 30.0) -> None:
        """Wait until everything sent so far has left this process (default: nothing to do)."""

    def describe(self) -> str:
        """Where this transport goes, for error messages (no credentials)."""
        return self.name

    def close(self) -> None:
        """Release the transport's resources (idempotent)."""

    async def aclose(self) -> None:
        self.close()
