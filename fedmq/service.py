"""The worker service: `fedmq worker --id alice --url amqp://...`.

It consumes `fedmq.worker.<id>` and runs every frame through the same `Worker.handle_frame` as
an in-process VirtualWorker. The rules (aio-pika's master/worker pattern, adapted):
* one message at a time, in queue order (a FIFO lock around handling; the op runs on the
  service's op thread so heartbeats keep flowing during long work, except a small message
  `Worker.is_light` calls quick and local, handled on the loop to spare two thread switches);
* the reply (direct reply-to, same correlation id) is published before the message is acked;
* every message is settled: one that cannot be decoded or executed, or whose chunks are bad or
  never all arrive, is answered with an error, and a copy goes to `fedmq.dead-letters` with
  headers saying why (`x-fedmq-error`, `x-fedmq-worker`, `x-fedmq-message-type`) before the
  original is acked;
* one id, one active worker: the queue has a single active consumer; a second process for a
  served id exits with an error, or with --standby waits as a hot standby;
* a redelivered message whose id was already handled (the service crashed after handling it,
  before the ack) is acked without running again, its cached reply resent if we have it;
  handled ids are kept in a file under --state-dir, so this holds across restarts;
* SIGTERM/SIGINT: stop consuming, finish the message in hand; prefetched messages that were
  not started go back to the queue when the channel closes.

One process may host several worker ids (`--id a --id b` or `--ids a,b,c`): one WorkerService
per id on the same event loop, each with its own connection, queue, consumer and op thread, so
the ids stay independent workers (a benchmark's 50 workers need not be 50 torch processes).
The dataset is read once; see `build_workers` for which data each id holds.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import datetime
import functools
import itertools
import logging
import os
import pathlib
import queue
import signal
import sys
import threading
import uuid
from typing import Any, Callable

import aiormq.exceptions
import torch
from pamqp.commands import Basic

from fedmq import messages as m, serde
from fedmq.cli_options import (UsageError, check_amqp_url, check_worker_id, clean, seconds,
                               url_option, usage_error, whole_number)
from fedmq.client import WorkerClient
from fedmq.context import Context
from fedmq.data.spec import NamedDataset, add_data_arguments
from fedmq.engine import RequestEngine
from fedmq.errors import FedmqError
from fedmq.extensions import load_extensions
from fedmq.health import DEFAULT_INTERVAL, HEALTH_FILE_ENV, HealthFile, beat_text
from fedmq.ids import new_id
from fedmq.runtime import tune_malloc
from fedmq.transport.base import INLINE_FRAME
from fedmq.transport.amqp import (BINDING_PROBE, CHUNK_SIZE, COMMANDS_EXCHANGE,
                                  DEAD_LETTER_EXCHANGE, FRAME_CONTENT_TYPE, QUEUE_TYPES,
                                  AMQPTransport, ChunkAssembler, ChunkError, Delivery,
                                  TopologyError, attempt, check_chunk_size, chunk_messages,
                                  connect_robust, consume, declare_topology, describe_url,
                                  login_of, publish, queue_name, queue_state, routes_anywhere,
                                  worker_queue_arguments)
from fedmq.errors import TransportError
from fedmq.policy import RELEASES, Policy
from fedmq.worker import Worker
from fedmq.workers.amqp import DEFAULT_URL, AMQPNetwork

log = logging.getLogger("fedmq.service")

#: where `fedmq worker --url` comes from when not given, first set first
URL_ENVS = ("FEDMQ_URL", "FEDMQ_AMQP_URL")


class WorkerStartError(FedmqError):
    """A worker service cannot start (its id is served already, its queue is incompatible)."""


#: replies kept for answering a redelivered message again: each at most REPLY_CACHE_ITEM bytes,
#: REPLY_CACHE_BYTES in all (a bigger reply is not kept: its redelivery is acked unanswered,
#: and the caller's wait ends with its timeout or ConnectionLost)
REPLY_CACHE_ITEM = 4 << 20
REPLY_CACHE_BYTES = 32 << 20


class HandledIds:
    """Ids of messages already handled (exactly-once across redeliveries and restarts): the last
    `size` in memory and in an append-only file, which is compacted to those `size` ids when it
    reaches twice that many lines, so it stays bounded (about 33 bytes an id) and is read whole
    at start-up in milliseconds. Each id is written (to the kernel; it survives the process
    being killed) before its message is acked."""

    def __init__(self, path: pathlib.Path | None, size: int = 100_000) -> None:
        self.path = path
        self.size = size
        self._order: collections.deque[str] = collections.deque()
        self._set: set[str] = set()
        self._replies: collections.OrderedDict[str, tuple[bytes, str]] = collections.OrderedDict()
        self._reply_bytes = 0
        self._file: Any = None
        self._lines = 0
        if path is not None:
            if path.exists():
                lines = path.read_text().split()
                self._lines = len(lines)
                for line in lines[-size:]:
                    self._remember(line)
            self._file = path.open("a")
            if self._lines >= 2 * size:
                self._compact()

    def __contains__(self, key: str) -> bool:
        return key in self._set

    def add(self, key: str, reply: bytes | None = None, reply_to: str | None = None) -> None:
        self._remember(key)
        if reply is not None and reply_to and len(reply) <= REPLY_CACHE_ITEM:
            self._replies[key] = (reply, reply_to)
            self._reply_bytes += len(reply)
            while len(self._replies) > 64 or self._reply_bytes > REPLY_CACHE_BYTES:
                _, (old, _) = self._replies.popitem(last=False)
                self._reply_bytes -= len(old)
        if self._file is not None:
            self._file.write(key + "\n")
            self._file.flush()
            self._lines += 1
            if self._lines >= 2 * self.size:
                self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the ids kept in memory (a new file, then an atomic rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{key}\n" for key in self._order))
        self._file.close()
        os.replace(tmp, self.path)
        self._file = self.path.open("a")
        self._lines = len(self._order)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def reply_for(self, key: str) -> tuple[bytes, str] | None:
        return self._replies.get(key)

    def _remember(self, key: str) -> None:
        if key in self._set:
            return
        self._order.append(key)
        self._set.add(key)
        while len(self._order) > self.size:
            self._set.discard(self._order.popleft())


#: AMQP's largest prefetch count (a short)
MAX_PREFETCH = 65535
#: an inline message slower than this (seconds) pauses inline handling for INLINE_PAUSE seconds
INLINE_LIMIT = 0.05
INLINE_PAUSE = 60.0


class OpThread:
    """The thread a worker service runs ops on, so the event loop (heartbeats, consuming,
    replying) never waits for an op. One thread, one op at a time, in order; `run` hands the
    result back to the calling loop with one wake-up (lighter than run_in_executor)."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((fn, arg, loop, future))
        return future

    def stop(self, timeout: float = 30.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, arg, loop, future = job
            try:
                result, error = fn(arg), None
            except BaseException as exc:  # handed to the caller, raised there
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


#: seconds each step of stopping may take with the broker (see WorkerService.stop)
STOP_STEP_TIMEOUT = 5.0


class WorkerService:
    def __init__(self, worker_id: str, url: str = DEFAULT_URL, *, prefetch: int = 64,
                 state_dir: str | os.PathLike | None = None, worker: Worker | None = None,
                 chunk_size: int = CHUNK_SIZE, chunk_timeout: float = 300.0,
                 standby: bool = False, queue_type: str = "classic",
                 connect_wait: float = 60.0, policy: Policy | None = None) -> None:
        self.id = worker_id
        #: who may do what here (default: `service_policy(url)`: the login of `url` owns the
        #: worker's data, no grants, release none)
        self.policy = policy or service_policy(url)
        #: seconds to keep trying a broker that cannot be reached yet, at start
        self.connect_wait = connect_wait
        #: start even if another process serves this id, as its hot standby (the broker's
        #: single-active-consumer makes this one active when the other's consumer goes)
        self.standby = standby
        self.queue_type = queue_type
        #: a frame whose chunks have not all arrived this many seconds after its first one is
        #: given up: its chunks are dead-lettered and the sender gets an error reply
        self.chunk_timeout = chunk_timeout
        self.url = url
        #: the broker user this service logs in as (the `user_id` of what it publishes)
        self._login = login_of(url)
        self.prefetch = prefetch
        self.chunk_size = chunk_size
        self.worker = worker
        state = pathlib.Path(state_dir) if state_dir else None
        if state is not None:
            state.mkdir(parents=True, exist_ok=True)
        self.handled = HandledIds(state / f"{worker_id}.handled" if state else None)
        self._handling: asyncio.Lock | None = None
        self._stopping: asyncio.Event | None = None
        self._op_thread = OpThread(f"fedmq-op-{worker_id}")
        self._inline_paused_until = 0.0
        self._standing_by = False
        #: our consumer is registered on the open channel (see `serving`)
        self._consuming = False
        self._prefetch_now = prefetch
        #: the process's exit status once stopped: 1 if the service stopped on an error
        self.exit_code = 0
        self._assembler = self._new_assembler()
        self._chunks: dict[str, list] = {}
        #: reply message ids: a random prefix and a counter (aiormq would draw a UUID each)
        self._reply_prefix = f"{uuid.uuid4().hex[:16]}."
        self._reply_ids = itertools.count()

    def _new_assembler(self) -> ChunkAssembler:
        """Chunks of big frames become frames here; one larger than the policy's
        max_frame_bytes is refused as soon as its chunks declare or reach that size."""
        return ChunkAssembler(max_frame_bytes=self.policy.max_frame_bytes)

    async def start(self) -> None:
        tune_malloc()
        load_extensions()  # extension messages (plans, SMPC, ...) must decode and have handlers
        self._handling = asyncio.Lock()
        self._stopping = asyncio.Event()
        self.connection = await self._start_step(connect_robust(
            self.url, connection_name=f"fedmq worker {self.id}", wait=self.connect_wait))
        self.channel = await self.connection.channel()
        # a channel-wide limit (one consumer per channel here), which, unlike a per-consumer
        # one, RabbitMQ applies at once when it changes (see _make_room_for_chunks); quorum
        # queues only take a per-consumer limit
        await self.channel.set_qos(prefetch_count=self.prefetch,
                                   global_=self.queue_type == "classic")
        await self._start_step(declare_topology(self.connection, self.channel))
        name = queue_name(self.id)
        state = await queue_state(self.connection, name)
        if state is not None and state[1] and not self.standby:
            await self.connection.close()
            raise WorkerStartError(
                f"fedmq worker {self.id}: another process already consumes {name} on "
                f"{describe_url(self.url)}; one id has one active worker. Stop that one, use "
                f"another --id, or start this one with --standby to take over when it dies")
        await self._start_step(self._declare_queue())
        # Outbound (moves, pointers to pointers, SMPC deals): a request engine over a client
        # connection on this same loop, in a context of this worker's own.
        context = Context(sender=self.id)
        self.outbound = await self._start_step(AMQPTransport.on_running_loop(
            self.url, chunk_size=self.chunk_size, confirm=True,
            connection_name=f"fedmq worker {self.id} (outbound)"))
        network = AMQPNetwork(RequestEngine(self.outbound, sender=self.id), context,
                              relaying=True)
        if self.worker is None:
            self.worker = Worker(self.id, network, self.policy)
        else:
            self.worker.network = network
            self.worker.policy = self.policy
        log.info("fedmq worker %s: %s", self.id, self.policy.describe())
        context.local_worker = self.worker
        # A message this worker sends to itself (a protocol whose next hop is here) must not go
        # through the broker: it would wait behind the message being handled, forever.
        context.transport.add(self.worker)
        network.add(WorkerClient(self.id, context.engine, network, sender=self.id))
        self._sweeper = asyncio.ensure_future(self._sweep_loop())
        await self._consume()
        self.channel.reopen_callbacks.add(self._on_reopen)
        self.channel.close_callbacks.add(self._not_consuming)
        self.connection.close_callbacks.add(self._not_consuming)
        self._standing_by = bool(state is not None and state[1])
        log.info("fedmq worker %s: consuming %s on %s (prefetch %d%s)", self.id,
                 self.queue.name, self.outbound.describe(), self.prefetch,
                 "; standing by: active once the worker serving this id stops"
                 if state is not None and state[1] else "")

    async def _declare_queue(self) -> None:
        """Declare this worker's queue `fedmq.worker.<id>` and bind it to `fedmq.commands` under
        its id (aio-pika declares both again whenever it reopens the channel). A user who may
        not (ACCESS_REFUSED: the worker role of `fedmq broker add-user`, which provisions both)
        uses what its administrator provisioned: the queue must exist, and a probe published
        under this id must reach a queue (BINDING_PROBE; the consumer acks it unread). Each try
        runs on a channel of its own (a refusal closes its channel). Raises TopologyError (one
        line) when the queue or its binding is missing, or the queue is not what this worker
        declares."""
        name = queue_name(self.id)
        arguments = worker_queue_arguments(self.queue_type)
        [refused] = await attempt(self.connection, lambda ch: ch.queue_declare(
            name, durable=True, arguments=arguments))
        if refused is None:
            self.queue = await self.channel.declare_queue(name, durable=True, arguments=arguments)
        elif isinstance(refused, aiormq.exceptions.ChannelPreconditionFailed):
            raise TopologyError(
                f"the queue {name} exists with other arguments than this worker declares "
                f"({refused}); it was made by an older fedmq or with another --queue-type. "
                f"Delete it (`rabbitmqctl delete_queue {name}`; its messages are lost) or start "
                f"with the queue type it has")
        elif await queue_state(self.connection, name) is None:
            raise TopologyError(
                f"the queue {name} does not exist on {describe_url(self.url)} and user "
                f"{self._login!r} may not declare it; an administrator creates it and its "
                f"binding: `fedmq broker add-user {self.id} --role worker`")
        else:  # provisioned by the administrator: checked (passively) on every reopen
            self.queue = await self.channel.declare_queue(name, passive=True)
        [refused] = await attempt(self.connection, lambda ch: ch.queue_bind(
            name, COMMANDS_EXCHANGE, routing_key=self.id))
        if refused is None:
            await self.queue.bind(COMMANDS_EXCHANGE, routing_key=self.id)
        elif not await routes_anywhere(self.connection, COMMANDS_EXCHANGE, self.id,
                                       Basic.Properties(message_type=BINDING_PROBE,
                                                        user_id=self._login)):
            raise TopologyError(
                f"the queue {name} exists but {COMMANDS_EXCHANGE} does not route key "
                f"{self.id!r} to it, and user {self._login!r} may not bind it; an administrator "
                f"binds it: `fedmq broker add-user {self.id} --role worker` (or "
                f"`rabbitmqadmin declare binding source={COMMANDS_EXCHANGE} "
                f"destination={name} routing_key={self.id}`)")

    async def _start_step(self, step: Any) -> Any:
        """`await step`; a broker that cannot be reached or refuses us is a WorkerStartError
        (one line, exit 2), after closing what is open already."""
        try:
            return await step
        except TransportError as exc:
            if getattr(self, "connection", None) is not None:
                await self.connection.close()
            raise WorkerStartError(f"fedmq worker {self.id}: {exc}") from None

    async def run_until_stopped(self) -> None:
        if self._stopping is None:
            raise RuntimeError(f"worker service {self.id}: start() it before running it")
        await self._stopping.wait()
        await self.stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _on_reopen(self, _channel: Any) -> None:
        """aio-pika reopened the channel (after a reconnect, or after the broker closed just the
        channel) and restored its QoS and the queue; our consumer (on aiormq, see
        transport/amqp.py) is consumed again here. Chunks of incomplete frames came on the
        old channel: the broker delivers them again, so what arrived of them is dropped."""
        if self._stopping is not None and self._stopping.is_set():
            return
        if self.queue_type == "classic":
            self._chunks.clear()
            self._assembler = self._new_assembler()
        else:  # chunks acked early (see _make_room_for_chunks) come only once: keep what
            # arrived; those still unacked come again, and the assembler ignores repeats
            for key, held in list(self._chunks.items()):
                self._chunks[key] = [msg for msg in held if msg.settled]
        await self._set_prefetch(self.prefetch)
        try:
            await self._consume()
            log.info("fedmq worker %s: reconnected; consuming %s again", self.id, self.queue.name)
        except Exception:  # the next loss and reconnect will try again
            log.exception("fedmq worker %s: could not consume after reconnecting", self.id)

    async def _consume(self) -> None:
        """Consume the worker's queue (again), and hear when the broker cancels the consumer."""
        self._consumer_tag = await consume(self.channel, self.queue.name, self._on_delivery)
        underlay = await self.channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        self._consuming = True

    @property
    def serving(self) -> bool:
        """Connected to the broker and consuming this worker's queue (a hot standby's consumer
        counts: it is registered and takes over by itself). What `fedmq worker --health-file`
        reports; false from the moment the connection or the channel is lost or the broker
        cancels the consumer until the service consumes again."""
        connection = getattr(self, "connection", None)
        return bool(self._consuming and connection is not None and connection.connected.is_set()
                    and not self.channel.is_closed and not self._stopping.is_set())

    def _not_consuming(self, *_args: Any) -> None:
        """The channel or the connection closed: the consumer is gone with it (aio-pika
        reopens both; `_on_reopen` consumes again)."""
        self._consuming = False

    def _on_consumer_cancelled(self, frame: Any) -> None:
        """The broker cancelled our consumer: the queue was deleted (by an operator, say), or
        its node went away. Declare the queue again and consume it, in a task of its own (this
        runs in the channel's reader, which the declare needs)."""
        if frame.consumer_tag != self._consumer_tag or self._stopping.is_set():
            return
        self._consuming = False
        log.warning("fedmq worker %s: the broker cancelled the consumer of %s (was the queue "
                    "deleted?); declaring it and consuming again", self.id, self.queue.name)
        self._reconsuming = asyncio.ensure_future(self._consume_again())

    async def _consume_again(self) -> None:
        try:
            await self._declare_queue()
            await self._consume()
            log.info("fedmq worker %s: consuming %s again", self.id, self.queue.name)
        except Exception as exc:  # noqa: BLE001 - serving nothing while alive is worse
            log.error("fedmq worker %s: could not consume %s again (%s); stopping", self.id,
                      self.queue.name, exc)
            self.exit_code = 1
            self.request_stop()

    async def stop(self) -> None:
        """Stop consuming, finish the message in hand, requeue the rest, close. Each step
        with the broker is given STOP_STEP_TIMEOUT seconds: with the broker unreachable
        (a reconnect under way) the service still stops; the broker requeues what it had
        not acked when the connection goes."""
        async def cancel_consumer() -> None:
            underlay = await self.channel.get_underlay_channel()
            await underlay.basic_cancel(self._consumer_tag)

        self._consuming = False
        await self._bounded("stop consuming", cancel_consumer())
        # The message in hand is finished; prefetched ones are skipped (see _on_message) and,
        # never acked, go back to the queue when the channel closes.
        async with self._handling:
            pass
        self._sweeper.cancel()
        try:  # unacked prefetched messages go back to the queue
            await self._bounded("close the channel", self.channel.close())
        finally:
            await self._bounded("close the outbound connection", self.outbound.aclose())
            await self._bounded("close the connection", self.connection.close())
            self._op_thread.stop()
            self.handled.close()
        log.info("fedmq worker %s: stopped", self.id)

    async def _bounded(self, what: str, step: Any) -> None:
        try:
            await asyncio.wait_for(step, STOP_STEP_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - stopping goes on whatever the broker does
            log.warning("fedmq worker %s: could not %s (%s); stopping all the same", self.id,
                        what, type(exc).__name__ if isinstance(exc, asyncio.TimeoutError)
                        else exc)

    async def _on_delivery(self, message: Delivery) -> None:
        """Every delivery from the queue: a binding probe (published by a worker starting for
        this id, see _declare_queue) is acked unread; the rest are handled in order."""
        if message.type == BINDING_PROBE:
            await message.ack()
            return
        await self._on_message(message)

    async def _on_message(self, message: Delivery) -> None:
        """aio-pika calls this in a task of its own per delivery, in delivery order; the lock
        (FIFO) lets one message at a time be handled, in that order. A `Cancel` is handled at
        once, not behind the message it stops (`_cancel_at_once`)."""
        if message.type == "Cancel" and await self._cancel_at_once(message):
            return
        async with self._handling:
            if self._stopping.is_set():
                return  # not started: it is requeued when the channel closes
            if self._standing_by:
                self._standing_by = False
                log.info("fedmq worker %s: active now (the worker it stood by for stopped)",
                         self.id)
            try:
                await self._handle(message)
            except Exception as exc:  # never let one message stop the service
                log.exception("fedmq worker %s: failed to process a message; dead-lettering "
                              "it", self.id)
                try:  # settled all the same, so it cannot hold a place in the prefetch window
                    await self._dead_letter([message], f"internal_error: {type(exc).__name__}: "
                                                       f"{exc}")
                except Exception:  # already settled, or the channel is gone (then requeued)
                    pass

    async def _cancel_at_once(self, message: Delivery) -> bool:
        """Handle a `Cancel` on the event loop as it arrives (`Worker.handle_control_frame`:
        it flags the running message, which stops at its next check), reply and ack it; False
        if the message is no Cancel after all (its AMQP type is the sender's claim), is
        chunked, or carries no user_id: it is then handled in turn as any other."""
        login = message.properties.user_id
        if not login or self.worker is None or self._stopping.is_set() or \
                "x-fedmq-chunks" in (message.headers or {}):
            return False
        reply = self.worker.handle_control_frame(message.body, str(login))
        if reply is None:
            return False
        try:
            if message.reply_to:
                await self._reply(reply, message.reply_to, message.correlation_id)
            await message.ack()
        except Exception as exc:  # noqa: BLE001 - the channel went: the broker redelivers it
            log.warning("fedmq worker %s: could not answer a Cancel: %s", self.id, exc)
        return True

    async def _sweep_loop(self) -> None:
        """Every chunk_timeout / 4 (between 0.05 and 5 s): give up frames whose chunks stopped
        coming (runs beside the message loop; neither waits for the other)."""
        every = max(0.05, min(5.0, self.chunk_timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self._give_up_partial_frames()
            except Exception:  # never let the sweep stop
                log.exception("fedmq worker %s: failed to give up partial frames", self.id)

    async def _give_up_partial_frames(self) -> None:
        """Frames with chunks missing after `chunk_timeout` (the rest expired in the queue, or
        the sender died mid-frame): dead-letter what arrived (-> fedmq.dead-letters) and tell the
        sender, instead of holding the chunks unacknowledged forever."""
        for key in self._assembler.expire(self.chunk_timeout):
            messages = self._chunks.pop(key, [])
            log.warning("fedmq worker %s: frame %s incomplete after %.0f s (%d chunk(s) of %s "
                        "arrived); dead-lettering them", self.id, key, self.chunk_timeout,
                        len(messages), (messages[0].headers or {}).get("x-fedmq-chunks", "?")
                        if messages else "?")
            reason = (f"frame {key} arrived incomplete: chunks missing after "
                      f"{self.chunk_timeout:.0f} s")
            await self._refuse(messages, "chunk_error", reason)
        if not self._chunks:
            await self._set_prefetch(self.prefetch)

    async def _handle(self, message: Delivery) -> None:
        login = message.properties.user_id
        if not login:  # before anything is kept for it (a chunk would hold a place)
            log.warning("fedmq worker %s: refused message %s: it carries no AMQP user_id",
                        self.id, message.message_id)
            await self._refuse([message], "access_denied", "the message carries no AMQP "
                               "user_id: a worker serves only messages whose sender the broker "
                               "vouches for (fedmq clients set it to their login)")
            return
        headers = message.headers or {}
        shown = str(headers.get("x-fedmq-frame") or message.message_id or "")
        # ids are only unique per sender: keyed by the broker-checked user too, so nobody can
        # pre-empt (and so drop, or answer with its own reply) another's message ids
        key = f"{login}/{shown}" if shown else ""
        if "x-fedmq-chunks" in headers:
            if key and key in self.handled and key not in self._chunks:
                # a chunk of a frame already handled, published again by a sender whose
                # confirm was lost with its connection: nothing to do
                log.info("fedmq worker %s: chunk of handled frame %s arrived again; dropped",
                         self.id, key)
                await message.ack()
                return
            self._chunks.setdefault(key, []).append(message)
        sender = str(login)
        frame_id = headers.get("x-fedmq-frame")
        if type(frame_id) is str and frame_id:  # frames are the sender's: keyed as `key` is
            headers = {**headers, "x-fedmq-frame": key}
        try:
            frame = self._assembler.add(headers, message.body, sender)
        except ChunkError as exc:
            messages = self._chunks.pop(key, None) or [message]
            log.warning("fedmq worker %s: refused frame %s: %s", self.id, key, exc)
            await self._refuse(messages, exc.code, str(exc))
            if not self._chunks:
                await self._set_prefetch(self.prefetch)
            return
        if frame is None:  # more chunks to come; acked together once the whole frame is handled
            await self._make_room_for_chunks(message)
            return
        messages = self._chunks.pop(key, [message])
        if len(messages) > 1 and not self._chunks:
            await self._set_prefetch(self.prefetch)
        if key and key in self.handled:
            log.warning("fedmq worker %s: message %s was already handled; not running it again",
                        self.id, key)
            cached = self.handled.reply_for(key)
            if cached is not None:
                await self._reply(cached[0], cached[1], message.correlation_id)
            for msg in messages:
                await msg.ack()
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.debug("fedmq worker %s: handling message %s from %s", self.id, shown, login)
        reply, failed = await self._run_frame(frame, str(login))
        log.debug("fedmq worker %s: handled message %s in %.1f ms%s", self.id, shown,
                  (loop.time() - started) * 1e3, " (failed)" if failed else "")
        if key:  # recorded first: if the reply or the ack is lost now, a redelivery is not rerun
            self.handled.add(key, reply if message.reply_to else None, message.reply_to)
        if message.reply_to:
            await self._reply(reply, message.reply_to, message.correlation_id)
        if failed:
            await self._dead_letter(messages, failed)
        else:
            for msg in messages:
                await msg.ack()

    async def _make_room_for_chunks(self, chunk: Delivery) -> None:
        """Chunks of incomplete frames stay unacked until their frame is handled, and each holds
        a place in the prefetch window: a frame of more chunks than `prefetch` could never
        arrive. So the window grows while chunks are held (up to AMQP's 65 535), and shrinks
        back when no frame is incomplete. A quorum queue's window cannot change while it is
        consumed (per-consumer QoS only): there, once held chunks fill the window, each further
        chunk is acked as it arrives and kept in memory (bounded by the assembler); if this
        process dies before their frame is complete, the frame is refused with a chunk_error
        (its other chunks arrive alone and expire), never run half."""
        held = sum(len(v) for v in self._chunks.values())
        if self.queue_type != "classic":
            if held + 1 >= self.prefetch:  # the window is full of chunks: take this one now
                await chunk.ack()
            return
        if held + 1 >= self._prefetch_now and self._prefetch_now < MAX_PREFETCH:
            await self._set_prefetch(min(MAX_PREFETCH, self.prefetch + 2 * held))

    async def _set_prefetch(self, count: int) -> None:
        if count == self._prefetch_now or self.queue_type != "classic":
            return
        try:
            await self.channel.set_qos(prefetch_count=count, global_=True)
            self._prefetch_now = count
        except Exception as exc:  # noqa: BLE001 - the channel is being reopened
            log.debug("fedmq worker %s: could not set prefetch %d: %s", self.id, count, exc)

    async def _refuse(self, messages: list[Delivery], code: str, reason: str) -> None:
        """Tell the sender (each caller waiting for a reply to one of `messages`) why its
        message was refused, then dead-letter the messages with that reason."""
        error = bytes(serde.encode(m.Reply(
            error=m.ErrorInfo(code, reason, self.id),
            incarnation=self.worker.incarnation if self.worker else None)))
        for reply_to, correlation_id in dict.fromkeys(
                (msg.reply_to, msg.correlation_id) for msg in messages if msg.reply_to):
            await self._reply(error, reply_to, correlation_id)
        await self._dead_letter(messages, f"{code}: {reason}")

    async def _dead_letter(self, messages: list[Delivery], reason: str) -> None:
        """Settle messages that failed: a copy goes to `fedmq.dlx` (-> fedmq.dead-letters)
        with headers saying why (`x-fedmq-error`), where (`x-fedmq-worker`) and what
        (`x-fedmq-message-type`: the decoded message's type when it could be decoded, else
        the AMQP `type` the sender gave) and who sent it (`x-fedmq-user-id`: its AMQP user_id,
        which the copy cannot carry) and when (`x-fedmq-dead-at`), so the dead-letter queue
        explains itself (`fedmq dead-letters`, the management UI); the copy has no
        `expiration` (a per-message TTL would drop it from there) and is persistent (it
        outlives a broker restart, whatever the original was: a call travels transient).
        Then the original is acked.
        If the copy cannot be published, the original is rejected to the same place by the
        broker instead (without the explanation)."""
        for msg in messages:
            if msg.settled or not msg.channel_open:
                continue  # settled, or its channel closed: the broker delivers it again
            properties = copy.copy(msg.properties)
            properties.headers = {**(msg.headers or {}), "x-fedmq-error": str(reason)[:4000],
                                  "x-fedmq-worker": self.id,
                                  "x-fedmq-message-type": getattr(reason, "message_type",
                                                                  None) or msg.type or "?",
                                  "x-fedmq-dead-at": datetime.datetime.now(datetime.timezone.utc)}
            properties.expiration = None  # a copy must not expire out of the dead-letter queue
            properties.delivery_mode = 2  # nor vanish with a broker restart
            if msg.user_id:  # the sender; the copy is this worker's (the broker refuses any
                # other user_id than the publishing connection's, closing the channel)
                properties.headers["x-fedmq-user-id"] = msg.user_id
            properties.user_id = self._login
            try:
                await publish(self.channel, DEAD_LETTER_EXCHANGE, self.id,
                              [(msg.body, properties)])
            except Exception as exc:  # noqa: BLE001 - the broker dead-letters it instead
                log.warning("fedmq worker %s: could not publish a dead-letter copy (%s); "
                            "rejecting the message instead", self.id, exc)
                await msg.reject(requeue=False)
                continue
            await msg.ack()

    async def _run_frame(self, frame: bytes | bytearray, login: str
                         ) -> tuple[bytes, str | None]:
        """Handle a frame: on the op thread, or, for a small message `Worker.is_light` calls
        quick and local, right here on the loop (two thread switches fewer per call). An
        inline message that took longer than INLINE_LIMIT sends every message to the op thread
        for INLINE_PAUSE seconds."""
        loop = asyncio.get_running_loop()
        if len(frame) > INLINE_FRAME or loop.time() < self._inline_paused_until:
            return await self._op_thread.run(
                functools.partial(self.worker.handle_frame_checked, login=login), frame)
        started = loop.time()
        result, envelope = self.worker.light_reply(frame, login)
        if result is None:
            return await self._op_thread.run(
                functools.partial(self.worker.respond, login=login), envelope)
        took = loop.time() - started
        if took > INLINE_LIMIT:
            self._inline_paused_until = loop.time() + INLINE_PAUSE
            log.warning("fedmq worker %s: a light message took %.0f ms on the event loop; "
                        "every message goes to the op thread for %.0f s", self.id, took * 1e3,
                        INLINE_PAUSE)
        return result

    async def _reply(self, reply: bytes, reply_to: str, correlation_id: str | None) -> None:
        await publish(self.channel, "", reply_to, chunk_messages(
            reply, self.chunk_size, correlation_id=correlation_id,
            content_type=FRAME_CONTENT_TYPE, message_id=f"{self._reply_prefix}"
                                                        f"{next(self._reply_ids):x}"))


def worker_ids(args: argparse.Namespace) -> list[str]:
    """The ids this process hosts: every `--id`, then every name in every `--ids a,b,c`, in
    order. Raises UsageError naming the option for an id that is not one (see
    cli_options.check_worker_id), an empty entry in --ids, an id given twice, or none."""
    ids: list[str] = []
    given = [("--id", item) for item in args.id or []]
    for text in args.ids or []:
        items = [item.strip() for item in text.split(",")]
        if "" in items:
            raise UsageError(f"--ids {clean(text, 60)!r}: an empty id (give names separated "
                             f"by single commas, e.g. w0,w1,w2)")
        given += [("--ids", item) for item in items]
    for option, item in given:
        check_worker_id(item, option)
        if item in ids:
            raise UsageError(f"{option}: worker id {item!r} is given twice (one id, one "
                             f"worker)")
        ids.append(item)
    if not ids:
        raise UsageError("give at least one --id (or --ids a,b,c)")
    return ids


def build_worker(args: argparse.Namespace) -> Worker:
    """A `Worker(args.id)` whose store holds what `args` describes: the named dataset's
    partition and the owner's `--data` files (fedmq.data.worker_data.holdings: inputs and
    targets, tagged for search). Raises ValueError naming the option at fault."""
    from fedmq.data.worker_data import holdings  # torchvision: only for workers holding data

    worker = Worker(args.id)
    for tensor, tags, description in holdings(args):
        worker.store.put(new_id(), tensor, tags, description)
    return worker


def build_workers(args: argparse.Namespace, ids: list[str]) -> dict[str, Worker]:
    """Workers holding data for several ids served by one process; the data is read and
    normalised once. Without `--iid-parts` each id holds its own copy of the whole
    `--labels` partition (or test set); with `--iid-parts N` the partition is cut into N
    near-equal IID parts (`fedmq.data.partition.iid`, seed `--iid-seed`) and the i-th id of
    this process holds part `--first-part + i`, so processes hosting w0-w9, w10-w19, ... with
    `--first-part 0, 10, ...` share out one partition without overlap. Every id holds its own
    copy of the `--data` files. Raises ValueError naming the option at fault."""
    from fedmq.data import partition  # torchvision: only for workers holding data
    from fedmq.data.worker_data import (checked_specs, file_holdings, named_dataset,
                                        partition_tensors)

    named = named_dataset(args)
    specs = checked_specs(args)
    if args.iid_parts and not named:
        raise ValueError("--iid-parts cuts the partition of a --dataset: give --dataset")
    if args.iid_parts and (args.first_part < 0 or args.first_part + len(ids) > args.iid_parts):
        raise ValueError(f"{len(ids)} ids from part {args.first_part} do not fit in "
                         f"--iid-parts {args.iid_parts}")
    workers = {worker_id: Worker(worker_id) for worker_id in ids}
    if named:
        dataset, labels, testing, key = named
        images, targets = partition_tensors(dataset, labels, testing)
        parts = partition.iid(len(targets), args.iid_parts, args.iid_seed) \
            if args.iid_parts else None
        split = "#test" if testing else "#train"
        for i, (worker_id, worker) in enumerate(workers.items()):
            if parts is not None:
                index = torch.from_numpy(parts[args.first_part + i])
                data, target = images[index], targets[index]  # indexing copies
                what = f"IID part {args.first_part + i}/{args.iid_parts}"
            else:
                data, target = images.clone(), targets.clone()  # ids never share a tensor
                what = "all"
            labelled = f", labels {args.labels}" if args.labels else ""
            description = f"{dataset} {split[1:]} set{labelled}, {what}, held by {worker_id}"
            worker.store.put(new_id(), data, (f"#{key}", "#data", split), description)
            worker.store.put(new_id(), target, (f"#{key}", "#target", split), description)
            log.info("worker %s holds %d %s %s samples (%s); per label: %s", worker_id,
                     len(target), dataset, split[1:], what,
                     ", ".join(str(n) for n in partition.label_counts(target)))
    if specs:
        held = file_holdings(specs, ", ".join(ids))
        for worker in workers.values():
            for tensor, tags, description in held:
                worker.store.put(new_id(), tensor.clone(), tags, description)
    return workers


def _holds_data(args: argparse.Namespace) -> bool:
    return bool(args.dataset or args.testing or args.labels or getattr(args, "data", None))


def check_worker_args(args: argparse.Namespace) -> list[str]:
    """The ids `args` names, once every option that needs no broker and no data is checked
    (ids, --url, the numbers, --first-part, the data options). Raises UsageError (one line
    naming the option)."""
    ids = worker_ids(args)
    check_amqp_url(args.url, url_option(args.url, envs=URL_ENVS), management_option=None)
    if args.iid_parts < 0:
        raise UsageError(f"--iid-parts must be 0 (no cut) or more, got {args.iid_parts}")
    if args.first_part is not None and not args.iid_parts:
        raise UsageError("--first-part is the IID part of the first id: give --iid-parts too")
    if args.iid_seed is not None and not args.iid_parts:
        raise UsageError("--iid-seed seeds the IID split: give --iid-parts too")
    args.first_part = args.first_part or 0
    args.iid_seed = args.iid_seed or 0
    if args.first_part < 0:
        raise UsageError(f"--first-part must be 0 or more, got {args.first_part}")
    if _holds_data(args) or args.iid_parts:
        from fedmq.data.worker_data import checked_specs, named_dataset
        try:
            named = named_dataset(args)
            checked_specs(args)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.iid_parts and not named:
            raise UsageError("--iid-parts cuts the partition of a --dataset: give --dataset")
        if args.iid_parts and args.first_part + len(ids) > args.iid_parts:
            raise UsageError(f"{len(ids)} ids from part {args.first_part} do not fit in "
                             f"--iid-parts {args.iid_parts}")
    return ids


def load_data(args: argparse.Namespace, ids: list[str]) -> dict[str, Worker | None]:
    """The workers holding what the data options describe (None for an id holding nothing).
    Raises UsageError for a data option or file that cannot be used."""
    workers: dict[str, Worker | None] = dict.fromkeys(ids)
    try:
        if len(ids) == 1 and not args.iid_parts:
            if _holds_data(args):
                workers[ids[0]] = build_worker(argparse.Namespace(**{**vars(args),
                                                                     "id": ids[0]}))
        elif _holds_data(args) or args.iid_parts:
            workers = dict(build_workers(args, ids))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return workers


async def _reach_broker(args: argparse.Namespace, ids: list[str]) -> None:
    """Connect to the broker once and close: a refused login or an unreachable broker is
    said (WorkerStartError) before the data is read, which takes seconds."""
    try:
        connection = await connect_robust(args.url, connection_name=f"fedmq worker "
                                                                    f"{', '.join(ids)} (check)",
                                          wait=args.connect_wait)
    except TransportError as exc:
        raise WorkerStartError(f"fedmq worker {', '.join(ids)}: {exc}") from None
    await connection.close()


def run_worker(args: argparse.Namespace) -> int:
    """One `WorkerService` per id, all on this process's event loop (each with its own
    connection, queue, consumer and op thread); SIGTERM/SIGINT stops them all."""
    try:
        ids = check_worker_args(args)  # before anything slow: one line, exit 2
    except UsageError as exc:
        usage_error("worker", str(exc))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    policy = policy_from_args(args)
    health = health_file_from_args(args)
    if _holds_data(args) or args.iid_parts:
        try:  # the broker first: reading the data takes seconds
            asyncio.run(_reach_broker(args, ids))
        except WorkerStartError as exc:
            log.error("%s", exc)
            return 2
    try:
        workers = load_data(args, ids)
    except UsageError as exc:  # a data file that cannot be used
        usage_error("worker", str(exc))

    async def main() -> None:
        services = [WorkerService(worker_id, args.url, prefetch=args.prefetch,
                                  state_dir=args.state_dir, worker=worker,
                                  chunk_size=args.chunk_size, chunk_timeout=args.chunk_timeout,
                                  standby=args.standby, queue_type=args.queue_type,
                                  connect_wait=args.connect_wait, policy=policy)
                    for worker_id, worker in workers.items()]
        started = await asyncio.gather(*(s.start() for s in services), return_exceptions=True)
        failures = [exc for exc in started if isinstance(exc, BaseException)]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [s.request_stop() for s in services])
        if failures:
            for service, result in zip(services, started):
                if not isinstance(result, BaseException):
                    service.request_stop()
            await asyncio.gather(*(s.run_until_stopped() for s, r in zip(services, started)
                                   if not isinstance(r, BaseException)))
            raise failures[0]
        reporter = asyncio.ensure_future(report_health(services, health, args.health_interval)) \
            if health is not None else None
        try:
            await asyncio.gather(*(s.run_until_stopped() for s in services))
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        return max(s.exit_code for s in services)

    try:
        return asyncio.run(main())
    except WorkerStartError as exc:
        log.error("%s", exc)
        return 2


def health_file_from_args(args: argparse.Namespace) -> HealthFile | None:
    """The `--health-file` to keep, with any left by an earlier run removed (a restarted
    container keeps its files: an old one must not pass for this process's); a directory
    that cannot be written exits 2 with one line."""
    if not args.health_file:
        return None
    health = HealthFile(args.health_file)
    folder = os.path.dirname(os.path.abspath(health.path))
    if not os.access(folder, os.W_OK | os.X_OK):
        print(f"fedmq worker: --health-file {health.path}: cannot write in {folder}",
              file=sys.stderr)
        raise SystemExit(2)
    health.clear()
    return health


async def report_health(services: list[WorkerService], health: HealthFile,
                        interval: float) -> None:
    """Write `health` every `interval` seconds while every service is `serving` (connected
    and consuming), and remove it within a second (at most `interval`) once one is not; remove
    it when cancelled. A stuck event loop writes nothing, so the file goes stale (see
    fedmq/health.py)."""
    loop = asyncio.get_running_loop()
    ids = ", ".join(s.id for s in services)
    written: float | None = None
    try:
        while True:
            if all(s.serving for s in services):
                if written is None or loop.time() - written >= interval:
                    if written is None:
                        log.info("fedmq worker %s: serving; writing %s every %g s", ids,
                                 health.path, interval)
                    health.beat(beat_text(ids))
                    written = loop.time()
            elif written is not None:
                log.warning("fedmq worker %s: not serving (the broker connection or the "
                            "consumer is lost); removed %s", ids, health.path)
                health.clear()
                written = None
            await asyncio.sleep(min(interval, 1.0))
    except OSError as exc:  # the file stays stale: the healthcheck fails, as it should
        log.error("fedmq worker %s: cannot write the health file %s: %s", ids, health.path, exc)
    finally:
        health.clear()


def _chunk_size_arg(text: str) -> int:
    try:
        return check_chunk_size(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: a worker service's default per-principal quotas
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_OBJECTS = 100_000
#: a worker service's default resource limits: bytes a frame, seconds a message
DEFAULT_MAX_FRAME_BYTES = 512 << 20
DEFAULT_MAX_OP_SECONDS = 600.0


def _size_arg(text: str) -> int:
    """`--max-bytes`: an integer with an optional K/M/G suffix (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B") or "?"
    scale = units.get(text[-1], 1)
    try:
        value = int(text[:-1] if text[-1] in units else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes such as 512M or 2G, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def service_policy(url: str, grants: list[str] | tuple = (), release: str = "none",
                   owner: str | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES,
                   max_objects: int | None = DEFAULT_MAX_OBJECTS, *,
                   max_frame_bytes: int | None = DEFAULT_MAX_FRAME_BYTES,
                   max_op_bytes: int | None = -1,
                   max_op_seconds: float | None = DEFAULT_MAX_OP_SECONDS,
                   models: list[str] | None = None,
                   require_secure_aggregation: bool = False) -> Policy:
    """A worker service's policy: the data owner is `owner` or the broker user of `url`;
    `grants` are "ROLE:PRINCIPAL"; quotas and limits of 0 or None mean no limit. Bytes a frame
    (`max_frame_bytes`), bytes of one op's results (`max_op_bytes`, -1: as `max_bytes`),
    seconds a message (`max_op_seconds`), the model plans others may run (`models`), whether
    its updates leave only securely aggregated (`require_secure_aggregation`): see
    fedmq.policy.Policy. Raises ValueError."""
    if max_op_bytes == -1:
        max_op_bytes = max_bytes
    owner = owner or login_of(url)
    if not owner:
        raise ValueError("with ?auth=external the URL names no user: give the data owner's "
                         "principal with --owner")
    return Policy.from_options(owner, grants, release, models=models or None,
                               require_secure_aggregation=require_secure_aggregation,
                               max_bytes=max_bytes or None, max_objects=max_objects or None,
                               max_frame_bytes=max_frame_bytes or None,
                               max_op_bytes=max_op_bytes or None,
                               max_op_seconds=max_op_seconds or None)


def policy_from_args(args: argparse.Namespace) -> Policy:
    """The policy `fedmq worker`'s options describe; a mistake exits 2 with one line."""
    try:
        return service_policy(args.url, args.grant, args.release, args.owner, args.max_bytes,
                              args.max_objects, max_frame_bytes=args.max_frame_bytes,
                              max_op_bytes=args.max_op_bytes,
                              max_op_seconds=args.max_op_seconds,
                              models=getattr(args, "allow_model", None),
                              require_secure_aggregation=getattr(
                                  args, "require_secure_aggregation", False))
    except ValueError as exc:
        print(f"fedmq worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def add_worker_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a worker service consuming fedmq.worker.<id>")
    p.add_argument("--id", action="append", default=[],
                   help="worker id (queue fedmq.worker.<id>); repeat to host several ids "
                        "(required, or --ids)")
    p.add_argument("--ids", action="append", default=[], metavar="A,B,...",
                   help="several worker ids served by this one process (default: none)")
    p.add_argument("--url", default=next(filter(None, map(os.environ.get, URL_ENVS)),
                                         DEFAULT_URL),
                   help="AMQP broker URL (default $FEDMQ_URL, else $FEDMQ_AMQP_URL, else "
                        "%(default)s)")
    p.add_argument("--connect-wait", type=seconds("do not wait"), default=60.0,
                   metavar="SECONDS",
                   help="keep trying a broker that cannot be reached yet for this long at "
                        "start (a refused user, password or vhost is not tried again); "
                        "default %(default)s")
    p.add_argument("--prefetch", default=64,
                   type=whole_number(1, MAX_PREFETCH, " (AMQP's largest prefetch)"),
                   help=f"messages the broker hands this worker before it acks one, 1 to "
                        f"{MAX_PREFETCH} (default %(default)s)")
    p.add_argument("--chunk-size", type=_chunk_size_arg, default=CHUNK_SIZE,
                   help="replies above this many bytes travel in chunks (default %(default)s; "
                        "keep it below the broker's max_message_size)")
    p.add_argument("--chunk-timeout", type=seconds(), default=300.0,
                   help="seconds to wait for the rest of a chunked frame before giving it up "
                        "(dead-lettered, the sender told); default %(default)s")
    p.add_argument("--state-dir", default=os.environ.get("FEDMQ_STATE_DIR"),
                   help="where handled message ids are kept across restarts (default "
                        "$FEDMQ_STATE_DIR, else kept in memory only)")
    p.add_argument("--health-file", default=os.environ.get(HEALTH_FILE_ENV), metavar="PATH",
                   help="write PATH every --health-interval seconds while every id is "
                        "connected and consuming, remove it when not; `fedmq worker-health "
                        f"--file PATH` checks it (default ${HEALTH_FILE_ENV}; none)")
    p.add_argument("--health-interval", type=seconds(), default=DEFAULT_INTERVAL,
                   metavar="SECONDS", help="seconds between writes of --health-file "
                                           "(default %(default)g)")
    p.add_argument("--dataset", action=NamedDataset, metavar="NAME",
                   help="a named dataset this worker holds: mnist5k or fashion-mnist, tagged "
                        "#NAME (or #KEY with --key KEY right after it) (default: none)")
    p.add_argument("--labels", help="label range of this worker's --dataset partition, e.g. "
                                    "0-3 (with several ids: of every id) (default: all)")
    p.add_argument("--testing", action="store_true",
                   help="hold --dataset's held-out test set")
    p.add_argument("--iid-parts", type=whole_number(0), default=0, metavar="N",
                   help="cut the partition into N IID parts; the i-th id holds part "
                        "--first-part + i (default: no cut)")
    p.add_argument("--first-part", type=whole_number(0), default=None, metavar="I",
                   help="IID part of the first id, with --iid-parts (default 0)")
    p.add_argument("--iid-seed", type=whole_number(0), default=None, metavar="SEED",
                   help="seed of the IID split, with --iid-parts (default 0)")
    add_data_arguments(p)
    p.add_argument("--standby", action="store_true",
                   help="if another process serves this id, wait as its hot standby and take "
                        "over when it stops (without this, starting a second one is an error)")
    p.add_argument("--queue-type", choices=QUEUE_TYPES, default="classic",
                   help="classic, or quorum: a replicated queue on a RabbitMQ cluster "
                        "(default %(default)s)")
    access = p.add_argument_group(
        "access", "who may do what with this worker's data (see the README's threat model)")
    access.add_argument("--grant", action="append", default=[], metavar="ROLE:PRINCIPAL",
                        help="grant a broker user a role: coordinator (may send Fit/Evaluate), "
                             "scientist (may find and compute on the data), worker (a peer "
                             "worker service: may forward on a principal's behalf and receive "
                             "private values); repeatable (default: none; the owner may do "
                             "anything)")
    access.add_argument("--release", choices=RELEASES, default="none",
                        help="what private values may leave in the clear: none (only Fit/"
                             "Evaluate replies to coordinators), derived (values computed from "
                             "the data, to scientists), all; default %(default)s")
    access.add_argument("--require-secure-aggregation", action="store_true",
                        help="answer a coordinator's Fit only in a securely aggregated round "
                             "(fedmq train --secure-aggregation ...): a coordinator cannot just "
                             "ask for the update in the clear (one that deviates from the "
                             "protocol still can: see the README, Private rounds; default: "
                             "off)")
    access.add_argument("--allow-model", action="append", default=[],
                        metavar="sha256:DIGEST|any",
                        help="a model plan (by the digest a refused Fit names) that principals "
                             "other than the owner may train and evaluate on the data "
                             "(repeatable); 'any' for every plan. Default: every plan with "
                             "--release derived/all; only the built-in models with --release "
                             "none (a plan is the coordinator's code: one written for it can "
                             "carry the data out in its update, loss or metrics)")
    access.add_argument("--owner", metavar="PRINCIPAL",
                        help="the data owner's principal (may do anything with the data; "
                             "default: the user of --url)")
    access.add_argument("--max-bytes", type=_size_arg, default=DEFAULT_MAX_BYTES,
                        metavar="BYTES", help="per-principal quota of stored tensor bytes "
                                              "(suffixes K, M, G; default 1G; 0: none)")
    access.add_argument("--max-objects", type=whole_number(0), default=DEFAULT_MAX_OBJECTS,
                        metavar="N",
                        help="per-principal quota of stored objects (default %(default)s; "
                             "0: no limit)")
    limits = p.add_argument_group(
        "limits", "what one message may cost this worker (see fedmq/limits.py)")
    limits.add_argument("--max-frame-bytes", type=_size_arg, default=DEFAULT_MAX_FRAME_BYTES,
                        metavar="BYTES", help="refuse frames larger than this before reading "
                                              "them, chunked ones as their chunks arrive "
                                              "(suffixes K, M, G; default 512M; 0: none)")
    limits.add_argument("--max-op-bytes", type=_size_arg, default=-1, metavar="BYTES",
                        help="refuse, before it runs, an op whose results would take more "
                             "bytes, whoever sends it (default: --max-bytes; 0: none; a "
                             "principal's ops are bounded by what its quota leaves anyway)")
    limits.add_argument("--max-op-seconds", type=seconds("no limit"),
                        default=DEFAULT_MAX_OP_SECONDS,
                        metavar="SECONDS", help="stop a message (a batch of commands, a plan "
                                                "run, a Fit) that runs longer, between two ops "
                                                "or two batches (default %(default)g; 0: none)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="(default %(default)s)")
    p.set_defaults(func=run_worker)
