"""RabbitMQ transport: frames travel as AMQP messages through the broker.

URL: amqp://user:password@host:port/vhost, or amqps://...?cafile=/path/ca.pem for TLS (aiormq
reads `cafile`, `certfile`, `keyfile` and `no_verify_ssl` from the query); a URL without a
password takes it from the file $FEDMQ_AMQP_PASSWORD_FILE names (compose secrets), or else from
$FEDMQ_AMQP_PASSWORD.
Features:
* every message published carries the AMQP `user_id` property = the URL's (percent-decoded)
  login: RabbitMQ refuses a message whose user_id is not the connection's user, so a worker can
  tell who sent what (`Delivery.user_id`);
* worker `<id>` consumes the durable queue `fedmq.worker.<id>`, bound to the direct exchange
  `fedmq.commands` under routing key `<id>`; messages that fail go to `fedmq.dlx` ->
  `fedmq.dead-letters` (the worker side is fedmq/service.py);
* replies come back by direct reply-to with the request's correlation id, and are handed to
  the request engine (fedmq/engine.py), which owns the pending-reply table and the timeouts;
* publishes keep their order (one publisher task per connection);
* the hot path (publishing, consuming replies) talks to aiormq, the protocol library under
  aio-pika, directly: an aio-pika `Message`/`IncomingMessage` costs ~10 us and two extra tasks
  per message, which is a third of fedmq's per-call overhead over a raw RPC;
* after a broker restart or a dropped connection, aio-pika reconnects; the reply consumer is
  consumed again, and the engine fails every caller still waiting (their replies are lost);
* frames larger than `chunk_size` (default 64 MiB, under RabbitMQ's 128 MiB max_message_size)
  travel as numbered chunks and are reassembled on arrival;
* posted frames (no reply awaited) to workers are persistent, and everything is published
  with publisher confirms (a broker restart keeps posted frames waiting in a worker's durable
  queue; `persistent=False` for transient frames without confirms). A call's frame (its
  caller awaits the reply) is transient: the reply is addressed to the caller's connection
  (direct reply-to), so after a broker restart nobody waits for it, and the worker should not
  run it for nobody (persisting it only cost the broker a disk write per call). A posted frame (no reply awaited) that could not be published, or whose
  confirm was lost with the connection, is published again, in order, once the connection is
  back (the worker runs a message id once); one the broker refused, or that waited longer than
  RECONNECT_WAIT, is reported to the engine, which raises it at the next call to that worker;
* a frame for a worker nobody serves is refused at once (`probe`: a passive declare of its
  queue).

`AMQPTransport` runs aio-pika on its own event-loop thread (or on the running loop, as the
worker service and the coordinator do) and offers a thread-safe synchronous `send`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import ssl
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit

import aio_pika
import aiormq.abc
import aiormq.exceptions
import yarl
from pamqp.commands import Basic

from fedmq.errors import TransportError
from fedmq.transport.base import Transport
from fedmq.transport.chunks import (CHUNK_SIZE, MAX_CHUNKS, MAX_PARTIAL_BYTES,  # noqa: F401
                                    MIN_CHUNK_SIZE, ChunkAssembler, ChunkError,
                                    check_chunk_size, split_chunks)

log = logging.getLogger("fedmq.amqp")

COMMANDS_EXCHANGE = "fedmq.commands"
EVENTS_EXCHANGE = "fedmq.events"
DEAD_LETTER_EXCHANGE = "fedmq.dlx"
DEAD_LETTER_QUEUE = "fedmq.dead-letters"
REPLY_TO = "amq.rabbitmq.reply-to"
FRAME_CONTENT_TYPE = "application/x-fedmq-frame"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: fedmq's exchanges and their types (broker_config/definitions.json declares the same)
EXCHANGES = ((COMMANDS_EXCHANGE, "direct"), (EVENTS_EXCHANGE, "topic"),
             (DEAD_LETTER_EXCHANGE, "fanout"))
#: the AMQP type of the message a worker service publishes under its own id at start, when it
#: may not bind its queue itself, to see that `fedmq.commands` routes that id to a queue; the
#: worker acks it unread (see WorkerService._declare_queue)
BINDING_PROBE = "fedmq.binding-probe"
#: environment variable naming a file that holds the password of a URL that gives none
PASSWORD_FILE_ENV = "FEDMQ_AMQP_PASSWORD_FILE"
#: environment variable holding that password itself (when PASSWORD_FILE_ENV is not set)
PASSWORD_ENV = "FEDMQ_AMQP_PASSWORD"
#: what an administrator runs to create what a user may not create itself
PROVISION_HINT = ("an administrator creates it: `fedmq broker add-user NAME --role ROLE` "
                  "(see README, \"Running workers with their own credentials\")")


class TopologyError(TransportError):
    """fedmq's exchanges (or a worker's queue) are missing or not what fedmq declares, and this
    user may not declare them."""


def login_of(url: str) -> str | None:
    """The user a connection to `url` logs in as, read as aiormq reads it (percent-decoded;
    `guest` when the URL names none): the `user_id` of what it publishes. None with
    `?auth=external` (a TLS client certificate names the user, not the URL)."""
    parsed = yarl.URL(url)
    if parsed.query.get("auth", "plain").lower() == "external":
        return None
    return parsed.user or "guest"


def queue_name(worker_id: str) -> str:
    return f"fedmq.worker.{worker_id}"


#: worker queue types `fedmq worker --queue-type` offers
QUEUE_TYPES = ("classic", "quorum")


def worker_queue_arguments(queue_type: str = "classic") -> dict[str, Any]:
    """The arguments of a worker's durable queue: failed messages go to `fedmq.dlx`, and one
    consumer at a time is active (RabbitMQ's single-active-consumer: a second process with the
    same id waits as a hot standby instead of taking half the commands). `quorum` makes it a
    replicated quorum queue (on a RabbitMQ cluster)."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type {queue_type!r} is not one of {QUEUE_TYPES}")
    arguments: dict[str, Any] = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                                 "x-single-active-consumer": True}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


async def queue_state(connection: aio_pika.abc.AbstractConnection,
                      queue: str) -> tuple[int, int] | None:
    """(messages, consumers) of `queue`, or None if it does not exist (a passive declare on a
    channel of its own, which a missing queue closes)."""
    channel = await connection.transport.connection.channel()
    try:
        declared = await channel.queue_declare(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
    await channel.close()
    return declared.message_count, declared.consumer_count


_CHANNEL_REFUSALS = (aiormq.exceptions.ChannelAccessRefused,
                     aiormq.exceptions.ChannelNotFoundEntity,
                     aiormq.exceptions.ChannelPreconditionFailed)


async def attempt(connection: aio_pika.abc.AbstractConnection,
                  *operations: Callable[[Any], Any]) -> list[BaseException | None]:
    """Run each `operation(channel)` (a coroutine function of an aiormq channel) on a raw
    channel, none on aio-pika's robust ones: a refusal (ACCESS_REFUSED, NOT_FOUND,
    PRECONDITION_FAILED) closes the channel it happened on, which a robust channel would
    reopen and restore behind our back. Returns, per operation, None or the refusal; after a
    refusal the next operation gets a fresh channel."""
    results: list[BaseException | None] = []
    channel = None
    try:
        for operation in operations:
            if channel is None or channel.is_closed:
                channel = await connection.transport.connection.channel()
            try:
                await operation(channel)
            except _CHANNEL_REFUSALS as exc:
                results.append(exc)
            else:
                results.append(None)
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return results


async def declare_topology(connection: aio_pika.abc.AbstractConnection,
                           channel: aio_pika.abc.AbstractChannel) -> bool:
    """Declare fedmq's exchanges and the dead-letter queue on `channel` (idempotent; the same
    definitions as broker_config/definitions.json; aio-pika declares them again whenever it
    reopens the channel), and return True. A user who may not configure them (ACCESS_REFUSED:
    the worker, client and coordinator roles of `fedmq broker add-user`) checks that the
    exchanges exist instead, with passive declares, which need no permission, and gets False.
    Raises TopologyError saying what is missing or inequivalent."""
    [refused] = await attempt(connection, lambda ch: ch.exchange_declare(
        COMMANDS_EXCHANGE, exchange_type="direct", durable=True))
    if refused is None:
        try:
            for name, kind in EXCHANGES:
                await channel.declare_exchange(name, kind, durable=True)
            dead = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
            await dead.bind(DEAD_LETTER_EXCHANGE, routing_key="")  # fanout: the key is ignored
        except _CHANNEL_REFUSALS as exc:  # an exchange of another type, partial permissions
            raise TopologyError(f"cannot declare fedmq's topology: {exc}") from None
        return True
    if not isinstance(refused, aiormq.exceptions.ChannelAccessRefused):
        raise TopologyError(f"cannot declare {COMMANDS_EXCHANGE}: {refused}")
    checks = [lambda ch, name=name: ch.exchange_declare(name, passive=True)
              for name, _ in EXCHANGES]
    missing = [name for (name, _), result in zip(EXCHANGES, await attempt(connection, *checks))
               if result is not None]
    if missing:
        raise TopologyError(f"the exchange(s) {', '.join(missing)} do not exist and this user "
                            f"may not declare them; {PROVISION_HINT}")
    return False


async def routes_anywhere(connection: aio_pika.abc.AbstractConnection, exchange: str,
                          routing_key: str, properties: Basic.Properties) -> bool:
    """Whether `exchange` routes `routing_key` to a queue: an empty mandatory message with
    `properties`, published with confirms, comes back (basic.return) when it routes nowhere.
    One that was routed stays in the queue it reached, for its consumer to settle."""
    channel = await connection.transport.connection.channel(publisher_confirms=True)
    try:
        await channel.basic_publish(b"", exchange=exchange, routing_key=routing_key,
                                    properties=properties, mandatory=True)
    except aiormq.exceptions.PublishError:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


async def delete_queues(url: str, *names: str) -> None:
    """Delete queues (a benchmark's or a test's durable worker queues), each if it exists."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


#: seconds between aio-pika's reconnection attempts (its default is 5): a broker back after a
#: restart is found within a second
RECONNECT_INTERVAL = 1


def describe_url(url: str) -> str:
    """`url` without its credentials and parameters, for logs and error messages."""
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return f"{parts.scheme}://{parts.hostname}:{port}{parts.path or '/'}"


#: the URL query parameters naming files aiormq reads for TLS
TLS_FILE_PARAMETERS = ("cafile", "capath", "certfile", "keyfile")


def resolve_url(url: str) -> str:
    """`url` ready to connect: checked (a scheme fedmq speaks; TLS files that exist, on an
    amqps:// URL only), and with the password from the file $FEDMQ_AMQP_PASSWORD_FILE names
    when the URL gives none (a compose secret: no password on a command line), or else from
    $FEDMQ_AMQP_PASSWORD. Raises TransportError saying what is wrong, without the password."""
    try:
        parsed = yarl.URL(url)
        parsed.port  # noqa: B018 - a port that is no number raises here, not deep in aiormq
    except ValueError as exc:
        raise TransportError(f"not a broker URL ({exc}): use "
                             f"amqp://user:password@host:5672/vhost") from None
    if parsed.scheme not in ("amqp", "amqps"):
        shown = (f"{parsed.scheme}://..." if parsed.scheme
                 else repr(url.rpartition("@")[2][:80]))
        raise TransportError(f"a broker URL starts with amqp:// or amqps:// "
                             f"(amqp://user:password@host:5672/vhost), not {shown}")
    if not parsed.host:
        raise TransportError("the broker URL names no host: use "
                             "amqp://user:password@host:5672/vhost")
    where = describe_url(url)
    for name in TLS_FILE_PARAMETERS:
        path = parsed.query.get(name)
        if path is None:
            continue
        if parsed.scheme != "amqps":
            raise TransportError(f"?{name}= is for TLS: use an amqps:// URL (port 5671 by "
                                 f"default), not {where}")
        if not os.path.exists(path):
            raise TransportError(f"the {name} {path!r} in the URL of {where} does not exist")
    if parsed.password is None and os.environ.get(PASSWORD_FILE_ENV):
        path = os.environ[PASSWORD_FILE_ENV]
        try:
            with open(path, encoding="utf-8") as file:  # its first line, as add-user reads it
                password = file.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise TransportError(f"cannot read the password for {where} from ${PASSWORD_FILE_ENV}"
                                 f" ({path}): {getattr(exc, 'strerror', None) or exc}") from None
        if not password:
            raise TransportError(f"${PASSWORD_FILE_ENV} ({path}) is empty")
        url = str(parsed.with_password(password))
    elif parsed.password is None and os.environ.get(PASSWORD_ENV):
        url = str(parsed.with_password(os.environ[PASSWORD_ENV]))
    return url


def robust_url(url: str) -> str:
    """`url` with fedmq's reconnect interval, unless the URL sets its own
    (`?reconnect_interval=...`, aio-pika's URL parameter)."""
    parts = urlsplit(url)
    if "reconnect_interval=" in parts.query:
        return url
    query = f"{parts.query}&" if parts.query else ""
    return parts._replace(query=f"{query}reconnect_interval={RECONNECT_INTERVAL}").geturl()


def connect_error_text(exc: BaseException) -> str:
    """What a failed connection attempt means, for a person: aiormq reports a refused vhost
    as an unexpected `Connection.Close` object."""
    text = str(exc)
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return "the broker refused the user name or password in the URL"
    if _tls_refused(exc):
        found = re.search(r"\[SSL: ([A-Z0-9_]+)\]\s*([^(]*)", text)
        reason = f"{found.group(1)} ({found.group(2).strip()})" if found else text
        if "WRONG_VERSION_NUMBER" in reason:
            return (f"TLS refused: {reason}: this port does not speak TLS; connect amqps:// "
                    f"URLs to the broker's TLS listener (port 5671 by default)")
        return (f"TLS refused: {reason}; give the CA that signed the broker's certificate with "
                f"?cafile=/path/to/ca.pem in the amqps:// URL, and connect to a host name the "
                f"certificate names")
    close = next((a for a in getattr(exc, "args", ()) if type(a).__name__ == "Close"), None)
    if close is None and "Connection.Close" in text:
        close = exc
    if close is not None:
        reason = getattr(close, "reply_text", None)
        return ("the broker refused to open the connection" + (f" ({reason})" if reason else "")
                + ": does the vhost in the URL exist, and may this user use it?")
    return text


def _tls_refused(exc: BaseException) -> bool:
    """A TLS handshake that failed on a certificate (aiormq passes the ssl error's args on)."""
    return isinstance(exc, ssl.SSLError) or any(
        mark in str(exc) for mark in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER",
                                      "SSLV3_ALERT", "TLSV1_ALERT"))


def connect_refused(exc: BaseException) -> bool:
    """Whether a failed connection attempt was refused by the broker (credentials, vhost,
    permissions) or by TLS (a certificate not trusted, TLS spoken to a plain port): trying
    again cannot help, unlike a broker that is not up yet."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) or _tls_refused(exc):
        return True
    return "Connection.Close" in str(exc) or any(type(a).__name__ == "Close"
                                                 for a in getattr(exc, "args", ()))


class _DropConnectErrors(logging.Filter):
    """aiormq logs a failed first connection at ERROR level with its own wording; the caller
    of connect_robust says it once, in one line (reconnects later are still logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


class _DropFirstReconnects(logging.Filter):
    """aio-pika logs "Connection to ... closed. Reconnecting" (and "Connection attempt ...
    failed") for a robust connection whose first connect failed, then raises: the caller of
    connect_robust says why in one line. A connection that was up once still logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and getattr(args[0], "connection_attempt", None) == 0)


@contextlib.contextmanager
def _quiet_first_connect():
    quiet = ((logging.getLogger("aiormq.connection"), _DropConnectErrors()),
             (logging.getLogger("aio_pika.robust_connection"), _DropFirstReconnects()))
    for logger, dropper in quiet:
        logger.addFilter(dropper)
    try:
        yield
    finally:
        for logger, dropper in quiet:
            logger.removeFilter(dropper)


async def connect_robust(url: str, *, connection_name: str | None = None,
                         wait: float = 0.0) -> aio_pika.abc.AbstractRobustConnection:
    """aio-pika's robust connection to `url` (reconnecting every RECONNECT_INTERVAL once up).
    A broker that cannot be reached yet is tried again every second for `wait` seconds (a
    service started before its broker); a refusal (credentials, vhost) is not. Raises
    TransportError saying why, without the URL's password."""
    properties = {"connection_name": connection_name} if connection_name else None
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + wait
    url = resolve_url(url)
    while True:
        try:
            with _quiet_first_connect():
                return await aio_pika.connect_robust(robust_url(url),
                                                     client_properties=properties)
        except Exception as exc:  # noqa: BLE001 - aiormq and the socket raise many kinds
            text = connect_error_text(exc)
            if connect_refused(exc) or loop.time() >= give_up_at:
                raise TransportError(f"cannot connect to RabbitMQ at {describe_url(url)}: "
                                     f"{text}") from exc
            log.warning("fedmq: RabbitMQ at %s cannot be reached yet (%s); trying again for "
                        "%.0f s", describe_url(url), text, give_up_at - loop.time())
            await asyncio.sleep(1.0)


#: a chunked reply still incomplete this long after its first chunk is dropped (seconds)
PARTIAL_REPLY_TIMEOUT = 600.0

#: seconds a posted frame waits for a lost connection to come back before it is given up
RECONNECT_WAIT = 60.0

#: seconds a call's frame waits for a reconnect under way before its caller fails
CALL_RECONNECT_WAIT = 5.0


class _NotReady(TransportError):
    """The channel is open, but replies are not consumed on it yet (a reconnect under way)."""


#: times a message whose confirm was lost is published again before it is given up
MAX_REPUBLISH = 10

#: what a confirm fails with when the broker will not take the message (a nack, or a channel
#: closed over it: no such exchange, access refused): never published again
_REFUSED = (aiormq.exceptions.DeliveryError, aiormq.exceptions.ChannelNotFoundEntity,
            aiormq.exceptions.ChannelAccessRefused, aiormq.exceptions.ChannelPreconditionFailed)

#: bytes and messages published and not yet confirmed above which the publisher waits until
#: half of them are confirmed (flow control, as a TCP window: memory and the number of confirm
#: tasks stay bounded when the broker is slower than the sender)
UNCONFIRMED_BYTES = 128 * 1024 * 1024
UNCONFIRMED_MESSAGES = 4096


#: an AMQP message ready to publish: its body and its properties
Outgoing = tuple[bytes, Basic.Properties]

#: publishes of bodies up to this size do not wait for aiormq's writer to drain the socket
#: (order is kept all the same: one write queue per channel); bigger ones do (back-pressure)
NO_WAIT_BODY = 64 * 1024


def chunk_messages(frame: bytes | bytearray, chunk_size: int, *,
                   expiration: float | None = None, headers: dict | None = None,
                   **properties: Any) -> list[Outgoing]:
    """The AMQP messages carrying `frame` (one, or numbered chunks), as (body, properties).
    `properties` are AMQP basic properties by pamqp's names (`message_type`, `correlation_id`,
    ...); `expiration` is in seconds (at least 1 ms)."""
    check_chunk_size(chunk_size)
    if expiration is not None:
        properties["expiration"] = str(max(1, round(float(expiration) * 1000)))
    if len(frame) <= chunk_size:
        return [(bytes(frame), Basic.Properties(headers=headers, **properties))]
    parts = split_chunks(frame, chunk_size)
    frame_id = uuid.uuid4().hex
    return [(bytes(part), Basic.Properties(headers={**(headers or {}), "x-fedmq-frame": frame_id,
                                                    "x-fedmq-chunk": i,
                                                    "x-fedmq-chunks": len(parts)},
                                           **properties))
            for i, part in enumerate(parts)]


async def publish(channel: aio_pika.abc.AbstractChannel, exchange: str, routing_key: str,
                  messages: list[Outgoing]) -> None:
    """Publish `messages` in order on `channel` (not mandatory: an unroutable message is
    dropped by the broker). On a channel with publisher confirms, each waits for the broker's
    ack (aiormq.exceptions.DeliveryError on a nack). Raises aiormq's errors when the channel
    is closed (during a reconnect, for instance)."""
    underlay = await channel.get_underlay_channel()
    for body, properties in messages:
        await underlay.basic_publish(body, exchange=exchange, routing_key=routing_key,
                                     properties=properties, mandatory=False,
                                     wait=len(body) > NO_WAIT_BODY)


class Delivery:
    """A message delivered to a consumer, read straight from aiormq: the body, the properties
    fedmq uses, and ack/reject on the channel it came on. It is settled at most once (a
    second ack or reject would make the broker close the channel), and settling it after its
    channel closed does nothing (the broker delivers it again)."""
    __slots__ = ("message", "body", "properties", "settled")

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        self.message = message
        self.body = message.body
        self.properties: Basic.Properties = message.header.properties
        self.settled = False

    @property
    def headers(self) -> dict | None:
        return self.properties.headers

    @property
    def reply_to(self) -> str | None:
        return self.properties.reply_to

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id

    @property
    def message_id(self) -> str | None:
        return self.properties.message_id

    @property
    def user_id(self) -> str | None:
        """The sender's broker login (RabbitMQ checks it against the publishing connection's
        user, so it cannot be forged by a client); None if the sender set none."""
        return self.properties.user_id

    @property
    def type(self) -> str | None:
        return self.properties.message_type

    @property
    def redelivered(self) -> bool:
        return bool(self.message.redelivered)

    async def ack(self) -> bool:
        """Acknowledge (queued on the channel's writer, in order after what was published
        before it). False if it was settled already or its channel closed."""
        if self.settled:
            return False
        self.settled = True
        try:
            await self.message.channel.basic_ack(self.message.delivery_tag, wait=False)
        except aiormq.exceptions.AMQPError as exc:
            log.debug("fedmq: could not ack %s (%s); the broker delivers it again",
                      self.message_id, exc)
            return False
        return True

    async def reject(self, requeue: bool = False) -> bool:
        """Reject: to the queue's dead-letter exchange, or back to the queue with `requeue`.
        False if it was settled already or its channel closed."""
        if self.settled:
            return False
        self.settled = True
        try:
            await self.message.channel.basic_reject(self.message.delivery_tag, requeue=requeue,
                                                    wait=False)
        except aiormq.exceptions.AMQPError as exc:
            log.debug("fedmq: could not reject %s (%s); the broker delivers it again",
                      self.message_id, exc)
            return False
        return True

    @property
    def channel_open(self) -> bool:
        return not self.message.channel.is_closed


async def consume(channel: aio_pika.abc.AbstractChannel, queue: str,
                  callback: Callable[[Delivery], Any], *, no_ack: bool = False) -> str:
    """Consume `queue` on `channel`'s current underlying channel; `callback` (a coroutine
    function) gets each message as a `Delivery`, in a task of its own, shielded from the
    cancellation aiormq sends when the channel closes (a message being handled is finished,
    and recorded, whatever happens to the channel). Returns the consumer tag. aio-pika does
    not restore this consumer when it reopens the channel: consume again from the channel's
    `reopen_callbacks`."""
    underlay = await channel.get_underlay_channel()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        await asyncio.shield(callback(Delivery(message)))

    ok = await underlay.basic_consume(queue, on_message, no_ack=no_ack)
    return ok.consumer_tag


class AMQPTransport(Transport):
    """One broker connection: an ordered publisher and the direct reply-to consumer. Replies go
    to the request engine bound with `bind` (fedmq/engine.py), which owns the pending table.

    aio-pika's robust connection reconnects after a broker restart or a closed connection; the
    reply consumer (on the `amq.rabbitmq.reply-to` pseudo-queue, which aio-pika does not
    restore) is consumed again on every reconnect, and the engine is told of every loss, so
    its waiting callers fail at once (their replies were addressed to the lost connection).
    Thread-safe; runs aio-pika on its own event-loop thread, or on the running loop
    (`await AMQPTransport.on_running_loop(url)`, for services and the coordinator)."""
    name = "amqp"
    pipelines = True

    def __init__(self, url: str = DEFAULT_URL, *, chunk_size: int = CHUNK_SIZE,
                 connect_timeout: float = 15.0, confirm: bool | None = None,
                 connection_name: str | None = None, persistent: bool = True,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.url = url
        #: the AMQP `user_id` of everything this transport publishes: its login, which the
        #: broker checks (a message with another user_id is refused)
        self.user_id = login_of(url)
        #: posted frames to workers are published persistent (delivery mode 2): one waiting in
        #: a worker's durable queue survives a broker restart. False: transient, for callers
        #: that prefer speed (benchmarks/transport.py prints the difference). Calls are
        #: transient either way (`_messages`)
        self.persistent = persistent
        self.chunk_size = check_chunk_size(chunk_size)
        #: publisher confirms (default: with persistent frames): the broker acks each message
        #: once it is in its queue (on disk, for a persistent one); what was not confirmed
        #: when the connection dropped is published again after the reconnect
        self.confirm = persistent if confirm is None else bool(confirm)
        #: confirms awaited: a task per message -> (seq, exchange, routing key, message,
        #: times published again, posted)
        self._unconfirmed: dict[asyncio.Future, tuple] = {}
        #: messages whose confirm was lost with the connection, to publish again (by seq)
        self._republish: list[tuple] = []
        #: the aiormq channel replies are consumed on (publishing waits for it after a reopen)
        self._replies_on: Any = None
        self._unconfirmed_bytes = 0
        self._room = asyncio.Event()  # set: the confirm window has room
        self._room.set()
        self._sequence = itertools.count()
        self.connection_name = connection_name
        self._own_loop = _loop is None
        self._loop_thread: threading.Thread | None = None
        if _loop is None:
            _loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=_loop.run_forever, name="fedmq-amqp",
                                                 daemon=True)
            self._loop_thread.start()
        self.loop = _loop
        self._assembler = ChunkAssembler()
        self._outbox: asyncio.Queue | None = None
        #: worker ids a consumer was seen serving (checked once before the first message to
        #: each, and again whenever a caller's wait finds the worker gone)
        self._served: set[str] = set()
        self._probe_channel: Any = None
        self._count_lock = threading.Lock()
        #: message ids: unique per connection (a random prefix) and cheap (a counter); a
        #: worker service recognises a redelivered message by its id
        self._id_prefix = uuid.uuid4().hex[:16] + "."
        self._message_ids = itertools.count()
        self._closed = False
        if self._own_loop:
            try:
                self._run(self._connect(), timeout=connect_timeout)
            except BaseException:
                self.loop.call_soon_threadsafe(self.loop.stop)
                raise

    @property
    def persistent(self) -> bool:
        """Whether frames to workers are published persistent (delivery mode 2)."""
        return self._delivery_mode == 2

    @persistent.setter
    def persistent(self, value: bool) -> None:
        self._delivery_mode = 2 if value else 1

    @classmethod
    async def on_running_loop(cls, url: str = DEFAULT_URL, **kwargs: Any) -> "AMQPTransport":
        """A transport living on the current event loop: its synchronous API may then be used
        from other threads only."""
        self = cls(url, _loop=asyncio.get_running_loop(), **kwargs)
        self._loop_ident = threading.get_ident()
        await self._connect()
        return self

    # -- setup (on the loop) ---------------------------------------------------------------------
    async def _connect(self) -> None:
        self.connection = await connect_robust(self.url, connection_name=self.connection_name)
        self.channel = await self.connection.channel(publisher_confirms=self.confirm)
        await declare_topology(self.connection, self.channel)
        self.commands, self.events = COMMANDS_EXCHANGE, EVENTS_EXCHANGE
        await self._consume_replies()
        self.connection.close_callbacks.add(self._on_connection_close)
        # after a reconnect, and after the broker closed just the channel (a publish to an
        # exchange that was deleted, say), aio-pika reopens the channel: consume again then
        self.channel.reopen_callbacks.add(self._on_reopen)
        self._outbox = asyncio.Queue()
        self._publisher = asyncio.ensure_future(self._publish_loop())

    async def _consume_replies(self) -> None:
        underlay = await self.channel.get_underlay_channel()
        await consume(self.channel, REPLY_TO, self._on_reply, no_ack=True)
        self._replies_on = underlay

    async def _ready_channel(self) -> Any:
        """The channel to publish on, once replies are consumed on it again: a message asking
        for a direct reply-to on a channel that does not consume `amq.rabbitmq.reply-to` makes
        the broker close the channel (PRECONDITION_FAILED), as happens right after a
        reconnect. Raises _NotReady until then."""
        underlay = await self.channel.get_underlay_channel()
        if underlay is not self._replies_on or underlay.is_closed:
            raise _NotReady("the channel is being restored after a reconnect")
        return underlay

    def _on_connection_close(self, _connection: Any, exc: BaseException | None = None) -> None:
        if self._closed:
            return
        log.warning("fedmq: connection to %s lost (%s); reconnecting", self.describe(), exc)
        if self._sink is not None:
            self._sink.connection_lost(str(exc) if exc else "closed by the broker")

    async def _on_reopen(self, _channel: Any) -> None:
        # confirms still awaited belong to the old channel, which is gone: published again
        # (posted frames) or given up (calls, whose callers were told) by _on_confirm
        for task in list(self._unconfirmed):
            task.cancel()
        try:
            await self._consume_replies()
            log.info("fedmq: channel to %s reopened; consuming replies again", self.describe())
        except Exception:  # the next loss and reconnect will try again
            log.exception("fedmq: could not consume replies after reconnecting")
        if self._republish and self._outbox is not None:  # the publisher may be idle: wake it
            self._enqueue((None, None, [], True))

    async def _publish_loop(self) -> None:
        outbox = self._outbox
        while True:
            item = await outbox.get()
            try:
                await self._publish_item(*item)
            except Exception:  # noqa: BLE001 - the publisher must outlive any one message
                log.exception("fedmq: publishing to %s failed", item[1])
            finally:
                self._published += 1
                outbox.task_done()

    async def _publish_item(self, exchange: str | None, routing_key: str | None,
                            messages: list[Outgoing], posted: bool) -> None:
        """Publish one frame's messages (after any whose confirm was lost with the connection).
        A posted frame waits out a reconnect, up to RECONNECT_WAIT; a call's frame fails at
        once (its caller is told, and may try again)."""
        give_up_at = self.loop.time() + (RECONNECT_WAIT if posted else CALL_RECONNECT_WAIT)
        while True:
            try:
                await self._publish_lost()
                if exchange is None:
                    return  # a wake-up after a reconnect
                if exchange == COMMANDS_EXCHANGE and routing_key not in self._served:
                    absent = await self._probe(routing_key)
                    if absent is not None:  # fail now: the broker would drop it, or keep it
                        self._refuse(routing_key, messages, absent)  # for a dead worker
                        return
                    self._served.add(routing_key)
                await self._publish(exchange, routing_key, messages, posted)
                return
            except Exception as exc:  # noqa: BLE001 - aiormq raises many kinds when closed
                if self._closed or not self._connection_down() or (
                        self.loop.time() >= give_up_at):
                    self._give_up(routing_key or "?", messages, f"publish to {routing_key!r} "
                                                                f"failed: {exc}", posted)
                    return
                log.info("fedmq: publish to %s waits for the connection to come back (%s)",
                         routing_key, exc)
                while self._connection_down() and self.loop.time() < give_up_at:
                    await asyncio.sleep(0.05)

    async def _publish(self, exchange: str, routing_key: str, messages: list[Outgoing],
                       posted: bool) -> None:
        underlay = await self._ready_channel()
        if not self.confirm:
            await publish(self.channel, exchange, routing_key, messages)
            return
        for message in messages:
            await self._publish_confirmed(underlay, (next(self._sequence), exchange,
                                                     routing_key, message, 0, posted))

    async def _publish_confirmed(self, underlay: Any, entry: tuple) -> None:
        """Publish one message on the confirm channel `underlay`; its confirm is awaited in a
        task of its own (publishes keep their order: aiormq's channel lock is FIFO)."""
        _, exchange, routing_key, (body, properties), _, _ = entry
        task = asyncio.ensure_future(underlay.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties,
            mandatory=False, wait=len(body) > NO_WAIT_BODY))
        self._unconfirmed[task] = entry
        self._unconfirmed_bytes += len(body)
        task.add_done_callback(self._on_confirm)
        while len(self._unconfirmed) > 1 and (self._unconfirmed_bytes > UNCONFIRMED_BYTES or
                                              len(self._unconfirmed) > UNCONFIRMED_MESSAGES):
            self._room.clear()  # set again by _on_confirm once half the window is confirmed
            await self._room.wait()

    def _on_confirm(self, task: asyncio.Future) -> None:
        entry = self._unconfirmed.pop(task)
        self._unconfirmed_bytes -= len(entry[3][0])
        if not self._room.is_set() and self._unconfirmed_bytes <= UNCONFIRMED_BYTES // 2 and (
                len(self._unconfirmed) <= UNCONFIRMED_MESSAGES // 2):
            self._room.set()
        _, exchange, routing_key, (body, properties), republished, posted = entry
        if task.cancelled():
            exc: BaseException | None = asyncio.CancelledError()
        else:
            exc = task.exception()
        if exc is None:
            return  # the broker has it
        if isinstance(exc, _REFUSED) or self._closed or republished >= MAX_REPUBLISH:
            self._give_up(routing_key, [(body, properties)],
                          f"the broker did not take a message to {routing_key!r} ({exc!r})",
                          posted)
        elif not posted:  # its caller was told the connection dropped
            log.debug("fedmq: the confirm of a call to %s was lost: %r", routing_key, exc)
        else:  # it may or may not be in the queue: publish it again (the worker runs it once)
            self._republish.append((*entry[:4], republished + 1, posted))

    async def _publish_lost(self) -> None:
        """Publish again, in their first order, the messages whose confirm was lost."""
        if not self._republish:
            return
        lost, self._republish = sorted(self._republish, key=lambda e: e[0]), []
        log.warning("fedmq: publishing %d message(s) again after a reconnect (their confirms "
                    "were lost with the connection)", len(lost))
        try:
            underlay = await self._ready_channel()
        except BaseException:
            self._republish[:0] = lost
            raise
        for index, entry in enumerate(lost):
            try:
                await self._publish_confirmed(underlay, entry)
            except BaseException:
                self._republish[:0] = lost[index:]
                raise

    def _connection_down(self) -> bool:
        """Whether the connection or the channel is down, or replies are not consumed on the
        channel yet (a reconnect is under way)."""
        channel = getattr(self, "channel", None)
        if channel is None or channel.is_closed or self.connection.is_closed or not (
                self.connection.connected.is_set()):
            return True
        holder = getattr(channel, "_channel", None)  # aio-pika's holder of its aiormq channel
        return holder is None or getattr(holder, "channel", None) is not self._replies_on

    def _give_up(self, routing_key: str, messages: list[Outgoing], reason: str,
                 posted: bool) -> None:
        """A frame that cannot be published: a call's caller fails now; a posted frame is
        reported to the engine, which raises it at the next call to that worker (its own
        reply entry may be gone already, failed when the connection dropped)."""
        log.error("fedmq: %s", reason)
        properties = messages[0][1] if messages else None
        if self._sink is None or properties is None:
            return
        if posted:  # its reply's waiter hears of it; if there is none left, the next call
            if not (properties.correlation_id and
                    self._sink.not_delivered(properties.correlation_id, reason)):
                self._sink.posted_lost(routing_key, properties.message_type or "message",
                                       reason)
        elif properties.correlation_id:
            self._sink.not_delivered(properties.correlation_id, reason)

    def _refuse(self, worker_id: str, messages: list[Outgoing], reason: str) -> None:
        correlation_id = messages[0][1].correlation_id if messages else None
        if correlation_id and self._sink is not None:
            self._sink.worker_not_found(correlation_id, reason)
        else:
            log.warning("fedmq: dropped a %s for worker %r: %s",
                        messages[0][1].message_type if messages else "message", worker_id, reason)

    async def _probe(self, worker_id: str) -> str | None:
        """None if a consumer serves `fedmq.worker.<worker_id>`, else why not (a passive
        queue declare on a channel of its own: a missing queue closes that channel). None as
        well when the broker cannot be asked (the connection is down: that has its own
        error)."""
        queue = queue_name(worker_id)
        try:
            channel = self._probe_channel
            if channel is None or channel.is_closed:
                channel = self._probe_channel = await self.connection.transport.connection.channel()
            declared = await channel.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._probe_channel = None
            self._served.discard(worker_id)
            return (f"no worker {worker_id!r} on {self.describe()}: its queue {queue!r} does not "
                    f"exist (start it with `fedmq worker --id {worker_id}`)")
        except Exception as exc:  # noqa: BLE001 - cannot tell now; the caller's wait goes on
            log.debug("fedmq: could not check worker %s: %s", worker_id, exc)
            return None
        if not declared.consumer_count:
            self._served.discard(worker_id)
            return (f"no worker {worker_id!r} runs on {self.describe()}: nothing consumes its "
                    f"queue {queue!r} (it stopped or died; {declared.message_count} message(s) "
                    f"wait in it)")
        return None

    def blocked(self, at_least: float = 0.0) -> str | None:
        """Why the broker holds this connection's publishes (RabbitMQ sends
        `connection.blocked` on a memory or disk alarm), once it has for `at_least` seconds
        (measured from when a caller first saw it); None otherwise. Any thread."""
        try:  # aiormq keeps the state in a private event (set: unblocked)
            unblocked = self.connection.transport.connection._Connection__connection_unblocked
        except AttributeError:  # not connected now (or another aiormq): cannot tell
            return None
        if unblocked.is_set():
            self._blocked_at = None
            return None
        now = time.monotonic()
        if self._blocked_at is None:
            self._blocked_at = now
        if now - self._blocked_at < at_least:
            return None
        return (f"the broker at {self.describe()} has blocked publishing on this connection for "
                f"{now - self._blocked_at:.0f} s (a memory or disk alarm: `rabbitmqctl status` "
                f"or the management UI shows which)")

    _blocked_at: float | None = None

    def probe(self, worker_id: str) -> str | None:
        if self._closed or self._on_this_loop() or self.blocked() is not None:
            return None
        try:
            return self._run(self._probe(worker_id), timeout=10)
        except Exception:  # noqa: BLE001 - cannot tell
            return None

    async def aprobe(self, worker_id: str) -> str | None:
        if self._closed or self.blocked() is not None:  # a passive declare would wait too
            return None
        if self._on_this_loop():
            return await self._probe(worker_id)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._probe(worker_id), self.loop)), 10)
        except Exception:  # noqa: BLE001 - cannot tell
            return None

    async def _on_reply(self, message: Delivery) -> None:
        try:
            frame = self._assembler.add(message.headers, message.body)
        except ChunkError as exc:
            log.warning("fedmq: dropped a malformed reply chunk (correlation id %s): %s",
                        message.correlation_id, exc)
            return
        for key in self._assembler.expire(PARTIAL_REPLY_TIMEOUT):  # its caller has timed out
            log.warning("fedmq: gave up reply frame %s (chunks missing)", key)
        if frame is None or self._sink is None:
            return
        self._sink.deliver(message.correlation_id or "", frame)

    # -- Transport ---------------------------------------------------------------------------------
    def send(self, worker_id: str, frame: bytes | bytearray, *, correlation_id: str | None,
             message_type: str = "message", expiration: float | None = None,
             posted: bool = False) -> None:
        """Queue `frame` for worker `worker_id` (returns at once; order is kept). With
        `expiration` (seconds) the broker drops the message if it waits longer in the queue.
        A `posted` frame waits out a lost connection and is published again if its confirm
        was lost; a call's frame fails at once (its caller is told, and may try again)."""
        self._enqueue((self.commands, worker_id,
                       self._messages(frame, correlation_id, message_type, expiration, posted),
                       posted))

    async def asend(self, worker_id: str, frame: bytes | bytearray, *,
                    correlation_id: str | None, message_type: str = "message",
                    expiration: float | None = None, posted: bool = False) -> None:
        self.send(worker_id, frame, correlation_id=correlation_id, message_type=message_type,
                  expiration=expiration, posted=posted)

    def _messages(self, frame: bytes | bytearray, correlation_id: str | None,
                  message_type: str, expiration: float | None, posted: bool = True) -> list:
        """The frame's messages. A call (a reply awaited: `correlation_id`, not `posted`) is
        transient whatever `persistent` says: its reply can only reach this connection."""
        call = bool(correlation_id) and not posted
        return chunk_messages(frame, self.chunk_size, expiration=expiration,
                              reply_to=REPLY_TO if correlation_id else None,
                              correlation_id=correlation_id or None, message_type=message_type,
                              message_id=f"{self._id_prefix}{next(self._message_ids):x}",
                              content_type=FRAME_CONTENT_TYPE,
                              delivery_mode=1 if call else self._delivery_mode,
                              user_id=self.user_id)

    def publish_event(self, routing_key: str, body: bytes) -> None:
        """Publish a JSON event on `fedmq.events`, in order, on a channel of its own: a broker
        user that may not publish there (one without the coordinator role) loses its events
        (said once, in the log), not the channel its commands and Fits travel on. Best
        effort: an event that cannot be published is dropped (and logged at debug level)."""
        if self._closed or self._events_refused:
            return
        if self._on_this_loop():
            self._put_event((routing_key, body))
        else:
            self.loop.call_soon_threadsafe(self._put_event, (routing_key, body))

    #: set once the broker refused this user's events (403 on fedmq.events)
    _events_refused = False
    _events_queue: asyncio.Queue | None = None
    _events_task: asyncio.Task | None = None

    def _put_event(self, item: tuple[str, bytes]) -> None:
        if self._events_queue is None:
            self._events_queue = asyncio.Queue()
            self._events_task = asyncio.ensure_future(self._event_loop())
        self._events_queue.put_nowait(item)

    async def _event_loop(self) -> None:
        channel = exchange = None
        while True:
            routing_key, body = await self._events_queue.get()
            try:
                if self._events_refused:
                    continue
                if channel is None or channel.is_closed:
                    channel = await self.connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
                # not mandatory: an event nobody subscribed to is dropped by the broker
                # (mandatory, each one came back as a basic.return: 50 per round of 50 workers)
                await exchange.publish(aio_pika.Message(
                    body, content_type="application/json", user_id=self.user_id),
                    routing_key=routing_key, mandatory=False)
            except aiormq.exceptions.ChannelAccessRefused as exc:
                self._events_refused = True
                log.warning("fedmq: events are not published: the broker refused them on %s "
                            "(%s); a user with the coordinator role may publish them",
                            EVENTS_EXCHANGE, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - events never stop a run
                channel = None
                log.debug("fedmq: event %s not published: %s", routing_key, exc)
            finally:
                self._events_queue.task_done()

    async def _events_drained(self, timeout: float) -> None:
        """Wait up to `timeout` s for the events queued so far to be published."""
        if self._events_queue is not None:
            try:
                await asyncio.wait_for(self._events_queue.join(), timeout)
            except (asyncio.TimeoutError, TimeoutError):
                log.warning("fedmq: closing %s with events still unpublished", self.describe())
            self._events_task.cancel()

    async def drain_async(self, timeout: float | None = 10.0) -> None:
        """Wait (on this loop) until everything queued so far is published (and confirmed)."""
        if self._outbox is not None:
            await asyncio.wait_for(self._drained(), timeout)

    async def _drained(self) -> None:
        await self._outbox.join()
        while self._unconfirmed:
            await asyncio.wait(list(self._unconfirmed))
        if self._republish:  # confirms lost with the connection: published again first
            self._enqueue((None, None, [], True))
            await self._drained()

    def drain(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is published (and, with `confirm`, enqueued by
        the broker). A worker drains before replying, so what it relayed to other workers is
        in their queues before its caller can send them anything else."""
        if self._outbox is None or (self._published >= self._enqueued
                                    and not self._unconfirmed and not self._republish):
            return  # nothing queued since the last drain: no trip to the loop
        self._run(self._drained(), timeout=timeout)

    def describe(self) -> str:
        return describe_url(self.url)

    def close(self) -> None:
        if self._closed:
            return
        if not self._own_loop:
            raise RuntimeError("this AMQP transport lives on its caller's loop: await aclose()")
        self._closed = True
        try:
            self._run(self._shutdown(), timeout=10)
        except Exception:  # pragma: no cover - closing a connection the broker already dropped
            log.debug("fedmq: closing %s", self.describe(), exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(10)
            if not self._loop_thread.is_alive():
                self.loop.close()

    async def _shutdown(self) -> None:
        """Close the connection, then end every task still on this transport's own loop."""
        try:
            await self._events_drained(5)
            await self.connection.close()
        finally:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._own_loop:
            await asyncio.get_running_loop().run_in_executor(None, self.close)
            return
        self._closed = True
        try:  # what was queued (the last events, replies) goes out before the connection closes
            await self.drain_async(10)
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("fedmq: closing %s with messages still unpublished", self.describe())
        await self._events_drained(5)
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.cancel()
        await self.connection.close()

    # -- helpers -----------------------------------------------------------------------------------
    _loop_ident: int | None = None

    #: items put in the outbox (any thread) and items the publisher finished (the loop only)
    _enqueued = 0
    _published = 0

    def _enqueue(self, item: tuple) -> None:
        if self._closed:
            raise TransportError(f"the AMQP connection to {self.describe()} is closed")
        with self._count_lock:
            self._enqueued += 1
        if self._on_this_loop():
            self._outbox.put_nowait(item)
        else:
            self.loop.call_soon_threadsafe(self._outbox.put_nowait, item)

    def _on_this_loop(self) -> bool:
        if self._loop_thread is not None:
            return threading.current_thread() is self._loop_thread
        return threading.get_ident() == self._loop_ident

    def _run(self, coro, timeout: float | None) -> Any:
        if self._on_this_loop():
            coro.close()
            raise RuntimeError("fedmq's synchronous AMQP API was called on its event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
