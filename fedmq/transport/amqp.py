"""RabbitMQ transport: frames travel as AMQP messages through the broker.

URL: amqp://user:password@host:port/vhost
Features:
* worker `<id>` consumes the durable queue `fedmq.worker.<id>`, bound to the direct exchange
  `fedmq.commands` under routing key `<id>`; messages that fail go to `fedmq.dlx` ->
  `fedmq.dead-letters` (the worker side is fedmq/service.py);
* replies come back by direct reply-to with the request's correlation id; a call with no reply
  in time raises `ReplyTimeout` naming the worker and the message type;
* posts (pipelined batches) do not wait; their replies carry errors back asynchronously;
* publishes keep their order (one publisher task per connection);
* frames larger than `chunk_size` (default 64 MiB, under RabbitMQ's 128 MiB max_message_size)
  travel as numbered chunks and are reassembled on arrival.

`AMQPConnection` runs aio-pika on its own event-loop thread (or on a loop you give it, as the
worker service does) and offers a thread-safe synchronous API, so scripts use it like any
other transport.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
import uuid
from typing import Any, Callable

import aio_pika

from fedmq.errors import ReplyTimeout, TransportError
from fedmq.transport.base import Transport

log = logging.getLogger("fedmq.amqp")

COMMANDS_EXCHANGE = "fedmq.commands"
EVENTS_EXCHANGE = "fedmq.events"
DEAD_LETTER_EXCHANGE = "fedmq.dlx"
DEAD_LETTER_QUEUE = "fedmq.dead-letters"
REPLY_TO = "amq.rabbitmq.reply-to"
CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_TIMEOUT = 60.0


def queue_name(worker_id: str) -> str:
    return f"fedmq.worker.{worker_id}"


async def declare_topology(channel: aio_pika.abc.AbstractChannel) -> dict[str, Any]:
    """Declare fedmq's exchanges and the dead-letter queue (idempotent; the same definitions as
    broker_config/definitions.json)."""
    commands = await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.DIRECT,
                                              durable=True)
    events = await channel.declare_exchange(EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC,
                                            durable=True)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT,
                                         durable=True)
    dead = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
    await dead.bind(dlx, routing_key="")  # fanout: the key is ignored; "" as in definitions.json
    return {"commands": commands, "events": events, "dlx": dlx}


async def delete_queues(url: str, *names: str) -> None:
    """Delete queues (a benchmark's or a test's durable worker queues), each if it exists."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


#: a chunked reply still incomplete this long after its first chunk is dropped (seconds)
PARTIAL_REPLY_TIMEOUT = 600.0


def split_chunks(frame: bytes | bytearray, chunk_size: int) -> list[memoryview]:
    view = memoryview(frame)
    return [view[i:i + chunk_size] for i in range(0, max(len(view), 1), chunk_size)]


class ChunkAssembler:
    """Collects the chunks of big frames: `add(...)` returns the whole frame when complete.
    A frame whose other chunks never come (they expired in the queue, or the sender died)
    is given up by `expire(max_age)`, so partial frames cannot pile up in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._parts: dict[str, dict[int, bytes]] = {}
        self._first_seen: dict[str, float] = {}
        self._clock = clock

    def add(self, headers: dict | None, body: bytes) -> bytes | bytearray | None:
        headers = headers or {}
        total = headers.get("x-fedmq-chunks")
        if total is None:
            return body
        key = str(headers.get("x-fedmq-frame"))
        parts = self._parts.setdefault(key, {})
        self._first_seen.setdefault(key, self._clock())
        parts[int(headers.get("x-fedmq-chunk", 0))] = body
        if len(parts) < int(total):
            return None
        del self._parts[key]
        del self._first_seen[key]
        return bytearray().join(parts[i] for i in range(int(total)))

    def expire(self, max_age: float) -> list[str]:
        """Drop the frames whose first chunk came more than `max_age` seconds ago; their keys."""
        if not self._first_seen:
            return []
        now = self._clock()
        stale = [key for key, seen in self._first_seen.items() if now - seen > max_age]
        for key in stale:
            del self._parts[key]
            del self._first_seen[key]
        return stale

    def __len__(self) -> int:
        return len(self._parts)


def chunk_messages(frame: bytes | bytearray, chunk_size: int, **properties: Any) -> list:
    """The AMQP messages carrying `frame` (one, or numbered chunks)."""
    if len(frame) <= chunk_size:
        return [aio_pika.Message(bytes(frame), **properties)]
    parts = split_chunks(frame, chunk_size)
    frame_id = uuid.uuid4().hex
    headers = dict(properties.pop("headers", None) or {})
    return [aio_pika.Message(bytes(part), headers={**headers, "x-fedmq-frame": frame_id,
                                                  "x-fedmq-chunk": i,
                                                  "x-fedmq-chunks": len(parts)}, **properties)
            for i, part in enumerate(parts)]


class AMQPConnection:
    """A broker connection with a reply consumer and an ordered publisher; thread-safe."""

    def __init__(self, url: str = DEFAULT_URL, *, chunk_size: int = CHUNK_SIZE,
                 connect_timeout: float = 15.0, confirm: bool = False,
                 _loop: asyncio.AbstractEventLoop | None = None,
                 _loop_thread: threading.Thread | None = None) -> None:
        self.url = url
        self.chunk_size = chunk_size
        self.confirm = confirm
        self._own_loop = _loop is None
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _loop_thread = threading.Thread(target=_loop.run_forever, name="fedmq-amqp",
                                            daemon=True)
            _loop_thread.start()
        self.loop = _loop
        self._loop_thread = _loop_thread
        self._pending: dict[str, tuple[concurrent.futures.Future | None, Callable | None]] = {}
        self._assembler = ChunkAssembler()
        self._outbox: asyncio.Queue | None = None
        self._closed = False
        if self._own_loop:
            self._run(self._connect(), timeout=connect_timeout)

    @classmethod
    async def on_running_loop(cls, url: str = DEFAULT_URL, **kwargs: Any) -> "AMQPConnection":
        """A connection living on the current event loop (for services): its synchronous API
        may then be used from other threads only."""
        self = cls(url, _loop=asyncio.get_running_loop(), _loop_thread=threading.current_thread(),
                   **kwargs)
        await self._connect()
        return self

    # -- setup (on the loop) ---------------------------------------------------------------------
    async def _connect(self) -> None:
        try:
            self.connection = await aio_pika.connect_robust(self.url)
        except Exception as exc:
            raise TransportError(f"cannot connect to RabbitMQ at {self._safe_url()}: {exc}") from exc
        self.channel = await self.connection.channel(publisher_confirms=self.confirm)
        exchanges = await declare_topology(self.channel)
        self.commands = exchanges["commands"]
        self.events = exchanges["events"]
        reply_queue = await self.channel.get_queue(REPLY_TO, ensure=False)
        await reply_queue.consume(self._on_reply, no_ack=True)
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_loop())

    async def _publish_loop(self) -> None:
        assert self._outbox is not None
        while True:
            exchange, routing_key, messages = await self._outbox.get()
            try:
                for message in messages:
                    await exchange.publish(message, routing_key=routing_key, mandatory=False)
            except Exception as exc:  # keep publishing; the caller's timeout reports the loss
                log.error("fedmq: publish to %s failed: %s", routing_key, exc)
            finally:
                self._outbox.task_done()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        frame = self._assembler.add(message.headers, message.body)
        for key in self._assembler.expire(PARTIAL_REPLY_TIMEOUT):  # its caller has timed out
            log.warning("fedmq: gave up reply frame %s (chunks missing)", key)
        if frame is None:
            return
        future, callback = self._pending.pop(message.correlation_id or "", (None, None))
        if callback is not None:
            try:
                callback(frame)
            except Exception:  # pragma: no cover - a callback must not kill the consumer
                log.exception("fedmq: reply callback failed")
        elif future is not None and not future.done():
            future.set_result(frame)
        else:
            log.debug("fedmq: dropped a reply with unknown correlation id %s",
                      message.correlation_id)

    # -- thread-safe API ---------------------------------------------------------------------------
    def publish(self, worker_id: str, frame: bytes | bytearray, *, reply_to: str | None = None,
                correlation_id: str | None = None, message_type: str | None = None,
                expiration: float | None = None) -> None:
        """Queue `frame` for worker `worker_id` (returns at once; order is kept). With
        `expiration` (seconds) the broker drops the message if it waits longer in the queue."""
        extra = {} if expiration is None else {"expiration": max(float(expiration), 0.001)}
        messages = chunk_messages(frame, self.chunk_size, reply_to=reply_to,
                                  correlation_id=correlation_id, type=message_type,
                                  message_id=uuid.uuid4().hex,
                                  content_type="application/x-fedmq-frame", **extra)
        self._put((self.commands, worker_id, messages))

    def publish_event(self, routing_key: str, body: bytes) -> None:
        self._put((self.events, routing_key, [aio_pika.Message(body,
                                                               content_type="application/json")]))

    def request(self, worker_id: str, frame: bytes | bytearray, *, timeout: float | None,
                message_type: str = "message") -> bytes:
        """Publish `frame` and wait for the reply."""
        self._check_thread()
        corr = uuid.uuid4().hex
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._pending[corr] = (future, None)
        self.publish(worker_id, frame, reply_to=REPLY_TO, correlation_id=corr,
                     message_type=message_type)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._pending.pop(corr, None)
            raise ReplyTimeout(f"worker {worker_id!r} did not answer {message_type} within "
                               f"{timeout} s (is `fedmq worker --id {worker_id}` running and "
                               f"consuming {queue_name(worker_id)}?)") from None

    def send(self, worker_id: str, frame: bytes | bytearray, *,
             on_reply: Callable[[bytes], None] | None = None, message_type: str = "message") -> None:
        """Publish without waiting; `on_reply` (called on the loop thread) gets the reply."""
        corr = None
        if on_reply is not None:
            corr = uuid.uuid4().hex
            self._pending[corr] = (None, on_reply)
        self.publish(worker_id, frame, reply_to=REPLY_TO if corr else None, correlation_id=corr,
                     message_type=message_type)

    # -- async API (on this connection's own loop: services, the coordinator) --------------------
    async def request_async(self, worker_id: str, frame: bytes | bytearray, *,
                            timeout: float | None, message_type: str = "message",
                            expiration: float | None = None) -> bytes:
        """`request` for coroutines on this connection's loop: publish, await the reply;
        asyncio.TimeoutError after `timeout` (a late reply is then dropped)."""
        answer: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_reply(reply: bytes) -> None:  # on this loop, from the reply consumer
            if not answer.done():
                answer.set_result(reply)

        corr = uuid.uuid4().hex
        self._pending[corr] = (None, on_reply)
        self.publish(worker_id, frame, reply_to=REPLY_TO, correlation_id=corr,
                     message_type=message_type, expiration=expiration)
        try:
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._pending.pop(corr, None)

    async def drain_async(self, timeout: float | None = 10.0) -> None:
        """Wait (on this loop) until everything queued so far is published."""
        if self._outbox is not None:
            await asyncio.wait_for(self._outbox.join(), timeout)

    def drain(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is published (and, with `confirm`, enqueued by
        the broker). A worker drains before replying, so what it relayed to other workers is
        in their queues before its caller can send them anything else."""
        if self._outbox is None:
            return
        self._run(self._outbox.join(), timeout=timeout)

    def pending_replies(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._own_loop:
            return  # the owner of the loop closes with `aclose()`
        try:
            self._run(self.connection.close(), timeout=5)
        except Exception:  # pragma: no cover
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def aclose(self) -> None:
        self._closed = True
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.cancel()
        await self.connection.close()

    # -- helpers -----------------------------------------------------------------------------------
    def _put(self, item: tuple) -> None:
        if self._closed:
            raise TransportError("the AMQP connection is closed")
        self.loop.call_soon_threadsafe(self._outbox.put_nowait, item)

    def _run(self, coro, timeout: float | None) -> Any:
        self._check_thread()
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _check_thread(self) -> None:
        if threading.current_thread() is self._loop_thread:
            raise RuntimeError("fedmq's synchronous AMQP API was called on its event loop")

    def _safe_url(self) -> str:
        from urllib.parse import urlsplit
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 5672}{parts.path or '/'}"


class AMQPTransport(Transport):
    """Frames to workers through an `AMQPConnection`."""
    name = "amqp"
    pipelines = True

    def __init__(self, connection: AMQPConnection, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.connection = connection
        self.timeout = timeout

    def request(self, worker_id: str, frame: bytes, timeout: float | None = None,
                message_type: str = "message") -> bytes:
        return self.connection.request(worker_id, frame, message_type=message_type,
                                       timeout=self.timeout if timeout is None else timeout)

    def send(self, worker_id: str, frame: bytes, on_reply: Callable | None = None,
             message_type: str = "message") -> None:
        self.connection.send(worker_id, frame, on_reply=on_reply, message_type=message_type)
        return None


_connections: dict[str, AMQPConnection] = {}
_lock = threading.Lock()
_counter = itertools.count()


def shared_connection(url: str) -> AMQPConnection:
    """One connection per broker URL per process (clients share it)."""
    with _lock:
        conn = _connections.get(url)
        if conn is None or conn._closed:
            conn = _connections[url] = AMQPConnection(url)
        return conn
