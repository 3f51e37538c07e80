"""Following a run's events: a subscription to the `fedmq.events` topic exchange, for
`fedmq events` and `fedmq dashboard` (and any program that wants the events as they happen).

    sub = EventSubscription(url, patterns=("round.*",))
    await sub.start()              # TransportError saying why (URL, credentials, vhost, down)
    async for event in sub:        # Event(routing_key, body, raw, received)
        ...
    await sub.close()

The subscription is an exclusive, auto-delete queue of its own (`fedmq-watch-<hex>`, outside
the `fedmq.*` names the queue listings show) bound to the exchange with each pattern (`#` is
every event; see fedmq/fl/events.py for the routing keys). Events published while nobody is
subscribed are not kept: a subscriber sees what happens after it started. The connection is
aio-pika's robust one: after the broker restarts, the queue is declared and bound again (the
events of the gap are lost) and `on_status` is told.

aio-pika only (no torch); bodies are decoded with `decode_body`, which never raises.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aio_pika
import aiormq.exceptions

from fedmq.errors import TransportError
from fedmq.transport.amqp import (EVENTS_EXCHANGE, connect_robust, declare_topology,
                                  describe_url, login_of)

log = logging.getLogger("fedmq.events")

#: seconds a first connection attempt may take before it is given up (a black-holed host)
CONNECT_TIMEOUT = 10.0
#: every event
ALL_EVENTS = "#"
#: how the subscription's queue is named (followed by 12 hex digits)
QUEUE_PREFIX = "fedmq-watch-"
#: events waiting for the consumer of the iterator before the oldest are dropped
BACKLOG = 10_000


@dataclass(frozen=True)
class Event:
    """One message from `fedmq.events`."""

    routing_key: str
    #: the decoded JSON object, or None when the body is not one (see `raw`)
    body: dict[str, Any] | None
    raw: bytes
    #: Unix time (seconds) the subscriber received it
    received: float


def decode_body(raw: bytes) -> dict[str, Any] | None:
    """The JSON object `raw` holds, or None when it is not UTF-8 JSON or not an object."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def check_pattern(pattern: str) -> str:
    """`pattern` if it is a topic binding key (dot-separated words, `*` one word, `#` any
    number; at most 255 bytes), else ValueError saying why."""
    if not pattern or len(pattern.encode()) > 255:
        raise ValueError(f"a binding pattern has 1 to 255 bytes, got {pattern!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in pattern):
        raise ValueError(f"a binding pattern has no spaces or control characters: {pattern!r}")
    return pattern


class EventSubscription:
    """An exclusive queue bound to `fedmq.events` with `patterns`; iterate it for the Events.

    `on_status(text)` is called when the connection is lost and when it is back (a person's
    sentence). Not thread-safe: use it on one event loop."""

    def __init__(self, url: str, patterns: tuple[str, ...] | list[str] = (ALL_EVENTS,), *,
                 connection_name: str = "fedmq events",
                 on_status: Callable[[str], None] | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.url = url
        self.patterns = tuple(check_pattern(p) for p in patterns) or (ALL_EVENTS,)
        self.connection_name = connection_name
        self.on_status = on_status or (lambda text: log.warning("%s", text))
        self.connect_timeout = connect_timeout
        self.queue_name = f"{QUEUE_PREFIX}{uuid.uuid4().hex[:12]}"
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(BACKLOG)
        self.dropped = 0

    @property
    def where(self) -> str:
        """The broker and vhost, without credentials (for messages)."""
        return _where(self.url)

    async def start(self) -> None:
        """Connect, check fedmq's exchanges (declaring them when this user may), declare and
        bind the queue, start consuming. Raises TransportError with one sentence for a person
        (bad URL, refused credentials or vhost, broker down or silent, no permission)."""
        where = _where(self.url)
        try:
            self.connection = await asyncio.wait_for(
                connect_robust(self.url, connection_name=self.connection_name),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"cannot connect to RabbitMQ at {where}: no answer within "
                                 f"{self.connect_timeout:.0f} s") from None
        except ValueError as exc:  # yarl/aiormq on a malformed URL
            raise TransportError(f"bad broker URL: {exc}") from None
        try:
            channel = await self.connection.channel()
            await declare_topology(self.connection, channel)
            queue = await channel.declare_queue(self.queue_name, exclusive=True,
                                                auto_delete=True)
            for pattern in self.patterns:
                await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
            await queue.consume(self._on_message, no_ack=True)
        except (aiormq.exceptions.ChannelAccessRefused,
                aiormq.exceptions.ChannelNotFoundEntity) as exc:
            await self.close()
            raise TransportError(
                f"user {login_of(self.url)!r} may not subscribe to {EVENTS_EXCHANGE} on "
                f"{where}: it needs configure and read permission on queues named "
                f"{QUEUE_PREFIX}* and read permission on {EVENTS_EXCHANGE} ({exc})") from None
        except TransportError:
            await self.close()
            raise
        self.connection.close_callbacks.add(self._on_lost)
        self.connection.reconnect_callbacks.add(self._on_back)

    def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = Event(message.routing_key or "", decode_body(message.body), message.body,
                      time.time())
        if self._events.full():  # a consumer far behind: keep the newest
            self._events.get_nowait()
            self.dropped += 1
        self._events.put_nowait(event)

    def _on_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self.connection is not None:  # not our own close()
            self.on_status(f"lost the connection to {_where(self.url)} "
                           f"({exc or 'closed by the broker'}); reconnecting")

    def _on_back(self, _sender: Any) -> None:
        self.on_status(f"connected to {_where(self.url)} again (events of the gap are lost)")

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None once closed, or when `timeout` seconds pass without one."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def close(self) -> None:
        """Close the connection (the broker deletes the queue); iterators end."""
        connection, self.connection = self.connection, None
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), 5.0)
            except (asyncio.TimeoutError, aiormq.exceptions.AMQPError, OSError):
                pass
        if self._events.full():
            self._events.get_nowait()
        self._events.put_nowait(None)


def configure_logging(level: str, command: str) -> None:
    """Log records at `level` and above on stderr, prefixed `fedmq <command>:`. Below debug,
    aio-pika's and aiormq's own records are left out: a subscription reports a refused or lost
    connection itself, in one sentence (see `EventSubscription.on_status`)."""
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format=f"fedmq {command}: %(levelname)s %(name)s: %(message)s")
    if level.lower() != "debug":
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _where(url: str) -> str:
    try:
        return describe_url(url)
    except ValueError:
        return "the given URL"
