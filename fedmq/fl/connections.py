"""How a coordinator reaches its workers: the one request engine (fedmq/engine.py), over the
in-process transport or a RabbitMQ connection on the coordinator's event loop.

    engine = InProcessConnection({"alice": worker, ...})        # Worker objects in this process
    engine = await AMQPRoundConnection.connect(url)             # RabbitMQ, on the running loop
    value = await engine.arequest(worker_id, message, timeout=..., expiration=...)
    await engine.aclose()

In-process, every message is still encoded, run through `worker.handle_frame` on a thread of
that worker's own (a worker handles one message at a time, like a queue consumer) and decoded,
so the workers of a round train concurrently. Over RabbitMQ each message gets an AMQP
per-message `expiration` when asked (a Fit that waits in the durable queue of a dead worker
beyond its round is dropped by the broker, so a restarted worker does not train on stale
rounds). A reply carrying an error raises the matching `fedmq.RemoteError`; no reply in time
raises `fedmq.ReplyTimeout` (also a TimeoutError); a lost connection `fedmq.ConnectionLost`.
`engine.events` is where round events go (fedmq.fl.events).
"""
from __future__ import annotations

from typing import Any, Mapping

from fedmq.engine import RequestEngine, decode_reply as decode, value_of
from fedmq.extensions import load_extensions
from fedmq.fl.events import AMQPEvents, EventLog
from fedmq.transport.local import LocalTransport

#: the sender name coordinators put on their messages
SENDER = "coordinator"


def InProcessConnection(workers: Mapping[str, Any]) -> RequestEngine:
    """A request engine over workers in this process (anything with `handle_frame`)."""
    load_extensions(("fl", "secagg"))
    engine = RequestEngine(LocalTransport(workers), sender=SENDER, timeout=None)
    engine.events = EventLog()
    return engine


class AMQPRoundConnection:
    """Requests over RabbitMQ, on the coordinator's event loop."""

    @staticmethod
    async def connect(url: str, *, chunk_size: int | None = None) -> RequestEngine:
        """A request engine over a new broker connection living on the running loop."""
        from fedmq.transport.amqp import CHUNK_SIZE, AMQPTransport  # aio-pika only when used

        transport = await AMQPTransport.on_running_loop(
            url, chunk_size=chunk_size or CHUNK_SIZE, connection_name="fedmq coordinator")
        engine = RequestEngine(transport, sender=SENDER, timeout=None)
        engine.events = AMQPEvents(transport)
        return engine


def encode_request(message: Any, sender: str = SENDER) -> bytes:
    """The frame a coordinator sends for `message` (for tests and tools that talk raw AMQP)."""
    return RequestEngine.encode(message, sender=sender)


def decode_reply(frame: bytes | bytearray, worker_id: str) -> Any:
    """The value of a reply frame, or the worker's error raised."""
    return value_of(decode(frame, worker_id), worker_id)
