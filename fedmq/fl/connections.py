"""How the coordinator reaches its workers: one small async interface, two implementations.

    await connection.request(worker_id, message, timeout=..., expiration=...) -> reply value

* `InProcessConnection`: `Worker` objects in this process. Every message is still encoded,
  run through `worker.handle_frame` and decoded, in a thread per worker (a worker handles one
  message at a time, like a queue consumer), so the workers of a round train concurrently.
* `AMQPRoundConnection`: the coordinator's aio-pika connection on the running loop (fedmq's
  `AMQPConnection.on_running_loop`): publishes to `fedmq.commands` with routing key = worker id,
  waits for the direct reply-to answer by correlation id, chunks frames above `chunk_size`,
  and gives each message an AMQP per-message `expiration` (a Fit that waits in the durable
  queue of a dead worker beyond its round is dropped by the broker, so a restarted worker does
  not train on stale rounds).
A reply carrying an error raises the matching `fedmq.RemoteError`; no reply in time raises
`asyncio.TimeoutError`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Mapping

from fedmq import errors, messages as m, serde
from fedmq.fl.events import AMQPEvents, EventLog
from fedmq.ids import new_id

log = logging.getLogger("fedmq.fl")

SENDER = "coordinator"


def encode_request(message: Any, sender: str = SENDER) -> bytes:
    return serde.encode(m.Envelope(m.WIRE_VERSION, sender, message, msg_id=new_id()))


def decode_reply(frame: bytes | bytearray, worker_id: str) -> Any:
    reply = serde.decode(frame)
    if not isinstance(reply, m.Reply):
        raise errors.RemoteSerdeError(f"expected a Reply, got {type(reply).__name__}",
                                      worker=worker_id)
    if reply.error is not None:
        err = reply.error
        raise errors.remote_error_from(err.code, err.message, err.worker or worker_id, err.op)
    return reply.value


class Connection:
    """What the coordinator needs from a transport."""

    async def request(self, worker_id: str, message: Any, *, timeout: float | None = None,
                      expiration: float | None = None) -> Any:
        raise NotImplementedError

    #: where round events go (fedmq.fl.events)
    events: Any = None

    async def close(self) -> None:
        pass


class InProcessConnection(Connection):
    """Workers in this process (anything with `handle_frame(bytes) -> bytes`)."""

    def __init__(self, workers: Mapping[str, Any]) -> None:
        self.workers = dict(workers)
        self._executors = {wid: concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"fedmq-fl-{wid}") for wid in self.workers}
        self.events = EventLog()

    async def request(self, worker_id: str, message: Any, *, timeout: float | None = None,
                      expiration: float | None = None) -> Any:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise errors.TransportError(f"no in-process worker {worker_id!r}")
        frame = encode_request(message)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executors[worker_id], worker.handle_frame, frame)
        reply = await asyncio.wait_for(job, timeout)
        return decode_reply(reply, worker_id)

    async def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


class AMQPRoundConnection(Connection):
    """Requests over RabbitMQ, on the coordinator's event loop."""

    def __init__(self, amqp: Any) -> None:
        self.amqp = amqp  # fedmq.transport.amqp.AMQPConnection living on this loop
        self.events = AMQPEvents(amqp)

    @classmethod
    async def connect(cls, url: str, *, chunk_size: int | None = None) -> "AMQPRoundConnection":
        from fedmq.transport.amqp import CHUNK_SIZE, AMQPConnection
        amqp = await AMQPConnection.on_running_loop(url, chunk_size=chunk_size or CHUNK_SIZE)
        return cls(amqp)

    async def request(self, worker_id: str, message: Any, *, timeout: float | None = None,
                      expiration: float | None = None) -> Any:
        reply = await self.amqp.request_async(worker_id, encode_request(message),
                                              timeout=timeout, expiration=expiration,
                                              message_type=type(message).__name__)
        return decode_reply(reply, worker_id)

    async def close(self) -> None:
        try:  # the last events are published before the connection closes
            await self.amqp.drain_async(10)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        await self.amqp.aclose()
