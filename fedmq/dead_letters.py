"""The dead-letter queue `fedmq.dead-letters`, read and settled over AMQP (aiormq, the protocol
library under aio-pika), for `fedmq dead-letters` (fedmq/dead_letters_cli.py) and for tests.

What lands there, and what each message says about itself:
* a worker's copy of a message it failed (fedmq/service.py, `_dead_letter`): the original body
  and properties, with headers `x-fedmq-error` (why), `x-fedmq-worker` (whose queue),
  `x-fedmq-message-type`, `x-fedmq-user-id` (the sender: the copy's own `user_id` is the
  worker's login) and `x-fedmq-dead-at` (when);
* a message the broker dead-lettered itself (a worker queue's `x-dead-letter-exchange`):
  `x-death` says why (`expired`, `rejected`, `maxlen`, `delivery_limit`), from which queue and
  when; its `user_id` is still the sender's.

Reading without removing: messages are taken with basic.get and manual acks, all held unacked
until the end, then given back with one basic.nack(multiple, requeue). RabbitMQ puts requeued
messages of a classic queue (fedmq's dead-letter queue is one) back at their original
positions, so the order, and the positions `list` shows, are kept; the only trace is the
`redelivered` flag, set on every message read. Positions count from the head of the queue at
that moment (1 = the oldest); dead letters arriving meanwhile join at the tail.

    DeadLetterQueue(url)        async context: connect, take(...), settle, close
      .take(upto, keep_bodies)  the first messages, held unacked, as DeadLetter
      .requeue(letter)          republish it to the worker queue it died in, then remove it
      .purge()                  remove every message; returns how many
    DeadLetter                  one message: reason, queue, message_type, died_at, sender...

Errors: `DeadLetterError` (a person's one line: no such queue, no permission, a position past
the end); `fedmq.errors.TransportError` when the broker cannot be reached or refuses the login.
"""
from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.exceptions
from pamqp.commands import Basic

from fedmq.errors import FedmqError, TransportError
from fedmq.transport.amqp import (DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, connect_error_text,
                                  connect_refused, describe_url, login_of, queue_name,
                                  resolve_url)

#: headers a worker adds to its dead-letter copy (removed when the message is requeued)
FEDMQ_DEATH_HEADERS = ("x-fedmq-error", "x-fedmq-worker", "x-fedmq-message-type",
                       "x-fedmq-user-id", "x-fedmq-dead-at")
#: header prefixes the broker adds when it dead-letters (removed when requeued)
BROKER_DEATH_PREFIXES = ("x-death", "x-first-death-", "x-last-death-")
#: the queues `requeue` sends to unless told otherwise (`fedmq dead-letters requeue
#: --any-queue`): a dead letter's queue is read from headers its publisher wrote
WORKER_QUEUE_PREFIX = queue_name("")
#: seconds to wait for the broker to accept the connection, and for each step after it
TIMEOUT = 5.0


class DeadLetterError(FedmqError):
    """A dead-letter request that cannot be done (one line for a person)."""


@dataclass
class DeadLetter:
    """One message of the dead-letter queue, as read (and held unacked) by `take`."""

    #: 1 = the head of the queue (the oldest) when it was read
    position: int
    properties: Basic.Properties
    #: its size in bytes
    size: int
    #: the body, when it was kept (`take(keep_bodies=...)`), else None
    body: bytes | None
    delivery_tag: int
    redelivered: bool

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def death(self) -> dict[str, Any]:
        """The broker's latest x-death entry (reason, queue, time, count...), or {}."""
        deaths = self.headers.get("x-death")
        return dict(deaths[0]) if isinstance(deaths, list) and deaths else {}

    @property
    def by_worker(self) -> bool:
        """A worker's copy (x-fedmq-worker), not the broker's own dead-lettering."""
        return "x-fedmq-worker" in self.headers

    @property
    def reason(self) -> str:
        """Why it died: the worker's x-fedmq-error, or the broker's x-death reason."""
        headers = self.headers
        if headers.get("x-fedmq-error") is not None:
            return _text(headers["x-fedmq-error"])
        if self.death.get("reason") is not None:
            return f"broker: {_text(self.death['reason'])}"
        return "?"

    @property
    def queue(self) -> str | None:
        """The queue it died in: the worker's (x-fedmq-worker), else x-death's queue."""
        worker = self.headers.get("x-fedmq-worker")
        if worker is not None:
            return queue_name(_text(worker))
        queue = self.death.get("queue")
        return _text(queue) if queue is not None else None

    @property
    def message_type(self) -> str:
        """The decoded message's type the worker recorded, else the AMQP `type`, else "?"."""
        kind = self.headers.get("x-fedmq-message-type") or self.properties.message_type
        return _text(kind) if kind else "?"

    @property
    def died_at(self) -> datetime.datetime | None:
        """When it was dead-lettered (x-fedmq-dead-at, x-death's time), else when it was sent
        (the `timestamp` property), else None; timezone-aware, UTC."""
        for value in (self.headers.get("x-fedmq-dead-at"), self.death.get("time"),
                      self.properties.timestamp):
            when = _utc(value)
            if when is not None:
                return when
        return None

    @property
    def sender(self) -> str | None:
        """Who sent the original message (its AMQP user_id): x-fedmq-user-id on a worker's
        copy (whose own user_id is the worker's login), else the message's user_id."""
        if self.by_worker:
            sender = self.headers.get("x-fedmq-user-id")
            return _text(sender) if sender is not None else None
        return self.properties.user_id

    @property
    def chunk(self) -> tuple[int, int, str] | None:
        """(index, count, frame id) when this is one chunk of a frame cut in several."""
        headers = self.headers
        count, index = headers.get("x-fedmq-chunks"), headers.get("x-fedmq-chunk")
        if isinstance(count, int) and isinstance(index, int) and count > 1:
            return index, count, _text(headers.get("x-fedmq-frame", "?"))
        return None

    def requeue_properties(self, new_ids: dict[str, str] | None = None) -> Basic.Properties:
        """The properties it is requeued with: its own (reply_to, correlation_id, message_id,
        type, delivery_mode, chunk headers...), without the dead-letter headers, and with the
        original sender's user_id, so the worker handles it for the same principal as
        before (never for whoever requeues it). With `new_ids` (a dict, filled as it goes),
        the message id and the chunks' frame id are new ones, the same new frame id for
        every chunk of one frame: a worker runs a message id once (fedmq/service.py), so an
        id it handled already is acked there without running again."""
        props = self.properties
        headers = {key: value for key, value in self.headers.items()
                   if key not in FEDMQ_DEATH_HEADERS and not key.startswith(BROKER_DEATH_PREFIXES)}
        message_id = props.message_id
        if new_ids is not None:
            message_id = uuid.uuid4().hex
            frame = headers.get("x-fedmq-frame")
            if isinstance(frame, str) and frame:
                headers["x-fedmq-frame"] = new_ids.setdefault(frame, uuid.uuid4().hex)
        return Basic.Properties(
            content_type=props.content_type, content_encoding=props.content_encoding,
            headers=headers or None, delivery_mode=props.delivery_mode,
            priority=props.priority, correlation_id=props.correlation_id,
            reply_to=props.reply_to, message_id=message_id, timestamp=props.timestamp,
            message_type=props.message_type, user_id=self.sender, app_id=props.app_id)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _utc(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        try:  # a header is anyone's claim: a time past year 9999 is no time
            return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


class DeadLetterQueue:
    """`fedmq.dead-letters` on the broker at `url` (its vhost); use as `async with`. Messages
    taken and not requeued are given back in their order when the context ends (or, if this
    process dies, by the broker when the connection drops)."""

    def __init__(self, url: str, queue: str = DEAD_LETTER_QUEUE, timeout: float = TIMEOUT):
        self.url, self.queue, self.timeout = url, queue, timeout
        self.where = describe_url(url)
        self._connection: Any = None
        self._get: Any = None       # channel for basic.get, acks and nacks
        self._publish: Any = None   # channel with publisher confirms, for requeues
        self._held: list[DeadLetter] = []
        self._new_ids: dict[str, str] = {}  # old frame id -> new, for chunks requeued new_ids

    async def __aenter__(self) -> "DeadLetterQueue":
        url = resolve_url(self.url)  # TransportError: scheme, TLS files, password file
        self.login = login_of(url)
        try:
            self._connection = await asyncio.wait_for(
                aiormq.connect(url, client_properties={"connection_name": "fedmq dead-letters"}),
                self.timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"cannot connect to RabbitMQ at {self.where}: no answer within "
                                 f"{self.timeout:g} s") from None
        except Exception as exc:  # noqa: BLE001 - aiormq and the socket raise many kinds
            hint = "" if connect_refused(exc) else " (is RabbitMQ running and listening there?)"
            raise TransportError(f"cannot connect to RabbitMQ at {self.where}: "
                                 f"{connect_error_text(exc)}{hint}") from None
        self._get = await self._step(self._connection.channel())
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            await self.release()
        except Exception:  # noqa: BLE001 - closing the connection gives them back all the same
            pass
        if self._connection is not None and not self._connection.is_closed:
            try:
                await asyncio.wait_for(self._connection.close(), self.timeout)
            except Exception:  # noqa: BLE001 - the broker drops it (and requeues) anyway
                pass

    async def _step(self, awaitable):
        """One exchange with the broker, bounded to `timeout`; a refusal becomes a
        DeadLetterError naming the queue."""
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except asyncio.TimeoutError:
            raise DeadLetterError(f"RabbitMQ at {self.where} did not answer within "
                                  f"{self.timeout:g} s") from None
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise DeadLetterError(f"no queue {self.queue!r} on {self.where} (it is made when a "
                                  f"worker first starts on this vhost)") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise DeadLetterError(f"user {self.login!r} may not read {self.queue!r} on "
                                  f"{self.where} ({_reply_text(exc)}); use an administrator's "
                                  f"login in --url") from None

    async def count(self) -> int:
        """Messages ready in the queue now (a passive declare)."""
        declared = await self._step(self._get.queue_declare(self.queue, passive=True))
        return declared.message_count

    async def take(self, upto: int | None = None, keep_bodies: Any = None) -> list[DeadLetter]:
        """Take the queue's first messages, at most `upto` (default: all there when called;
        those arriving meanwhile are left), holding them unacked. `keep_bodies`: the positions
        whose body is kept (True: all; None: none, only sizes)."""
        ready = await self.count()
        upto = ready if upto is None else min(upto, ready)
        letters = []
        while len(letters) < upto:
            got = await self._step(self._get.basic_get(self.queue, no_ack=False))
            if not isinstance(got.delivery, Basic.GetOk):
                break  # emptied meanwhile (another reader, a TTL)
            position = len(letters) + 1
            keep = keep_bodies is True or (keep_bodies is not None and keep_bodies is not False
                                           and position in keep_bodies)
            letter = DeadLetter(position, got.header.properties, len(got.body),
                                bytes(got.body) if keep else None, got.delivery.delivery_tag,
                                bool(got.delivery.redelivered))
            letters.append(letter)
            self._held.append(letter)
        return letters

    async def remove(self, letter: DeadLetter) -> None:
        """Ack `letter`: it leaves the queue."""
        await self._step(self._get.basic_ack(letter.delivery_tag))
        self._held.remove(letter)

    async def release(self) -> None:
        """Give back every message held, in order (one nack with multiple and requeue)."""
        if not self._held or self._get is None or self._get.is_closed:
            self._held.clear()
            return
        last = max(letter.delivery_tag for letter in self._held)
        self._held.clear()
        await self._step(self._get.basic_nack(last, multiple=True, requeue=True))

    async def requeue(self, letter: DeadLetter, new_ids: bool = False,
                      any_queue: bool = False) -> str:
        """Publish `letter` to the queue it died in (default exchange, mandatory, confirmed) with
        `requeue_properties()` (`new_ids`: with a new message id, so that a worker that
        handled it already runs it again), then remove it from the dead-letter queue; return
        that queue.
        Raises DeadLetterError, the letter staying where it is: it names no queue, or one that
        is not a worker queue (fedmq.worker.*) without `any_queue` (the queue comes from
        headers anyone who may publish to fedmq.dlx can write), the queue does not exist, or
        the broker refused it (a user_id that is not this login's: RabbitMQ lets only that
        user, or one tagged `impersonator`, publish as another)."""
        if letter.body is None:
            raise ValueError("take() the letter with its body to requeue it")
        target = letter.queue
        if target is None:
            raise DeadLetterError("it names no queue it died in (no x-fedmq-worker or x-death "
                                  "header)")
        if not target.startswith(WORKER_QUEUE_PREFIX) and not any_queue:
            raise DeadLetterError(f"it names queue {target!r}, not a worker queue "
                                  f"({WORKER_QUEUE_PREFIX}*): its x-death header may be forged "
                                  f"(anyone who may publish to {DEAD_LETTER_EXCHANGE} writes "
                                  f"it); give --any-queue to requeue it there anyway; left in "
                                  f"{self.queue}")
        if self._publish is None or self._publish.is_closed:
            self._publish = await self._step(self._connection.channel(publisher_confirms=True))
        properties = letter.requeue_properties(self._new_ids if new_ids else None)
        try:
            await asyncio.wait_for(self._publish.basic_publish(
                letter.body, exchange="", routing_key=target, properties=properties,
                mandatory=True), self.timeout)
        except aiormq.exceptions.PublishError:
            raise DeadLetterError(f"queue {target!r} does not exist (any more); left in "
                                  f"{self.queue}") from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise DeadLetterError(
                f"the broker refused to let user {self.login!r} publish it as its sender "
                f"{properties.user_id!r} ({_reply_text(exc)}); requeue it logged in as "
                f"{properties.user_id!r}, or as a user with the 'impersonator' tag; left in "
                f"{self.queue}") from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise DeadLetterError(f"user {self.login!r} may not publish to {target!r} "
                                  f"({_reply_text(exc)}); left in {self.queue}") from None
        except aiormq.exceptions.DeliveryError:
            raise DeadLetterError(f"the broker refused the message for {target!r} (a full "
                                  f"queue?); left in {self.queue}") from None
        except asyncio.TimeoutError:
            raise DeadLetterError(f"no confirm from RabbitMQ within {self.timeout:g} s; left in "
                                  f"{self.queue} (it may have reached {target!r} too)") from None
        await self.remove(letter)
        return target

    async def purge(self) -> int:
        """Remove every ready message; return how many."""
        purged = await self._step(self._get.queue_purge(self.queue))
        return purged.message_count


def _reply_text(exc: BaseException) -> str:
    """The broker's reply text in a channel refusal (aiormq passes (code, text) or a frame)."""
    args = getattr(exc, "args", ())
    for arg in args:
        text = getattr(arg, "reply_text", None)
        if text:
            return str(text)
    texts = [a for a in args if isinstance(a, str)]
    return texts[-1] if texts else type(exc).__name__
