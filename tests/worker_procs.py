"""Real worker processes (`python -m fedmq.cli worker --id ...`) for the RabbitMQ tests.

AMQP_URL is read when this module is first imported, which tests/conftest.py makes sure
happens after pytest_configure pointed FEDMQ_AMQP_URL at the run's vhost."""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import uuid

import pika

from fedmq import messages as m, serde
from fedmq.transport.amqp import DEAD_LETTER_QUEUE

AMQP_URL = os.environ.get("FEDMQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _channel(url: str = AMQP_URL):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    return conn, conn.channel()


def _declared(queue: str, url: str):
    """The broker's passive-declare answer for `queue` (None when it does not exist)."""
    conn, ch = _channel(url)
    try:
        return ch.queue_declare(queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if conn.is_open:
            conn.close()


def consumer_count(queue: str, url: str = AMQP_URL) -> int:
    method = _declared(queue, url)
    return method.consumer_count if method is not None else 0


def queue_depth(queue: str, url: str = AMQP_URL) -> int:
    """Messages ready in `queue` (0 when it does not exist)."""
    method = _declared(queue, url)
    return method.message_count if method is not None else 0


def purge(queue: str, url: str = AMQP_URL) -> None:
    conn, ch = _channel(url)
    try:
        ch.queue_purge(queue)
    except pika.exceptions.ChannelClosedByBroker:
        pass
    finally:
        if conn.is_open:
            conn.close()


def delete_queue(queue: str, url: str = AMQP_URL) -> None:
    conn, ch = _channel(url)
    try:
        ch.queue_delete(queue)
    except pika.exceptions.ChannelClosedByBroker:
        pass
    finally:
        if conn.is_open:
            conn.close()


class SilentWorker:
    """A consumer on `fedmq.worker.<id>` that acks every message and never answers: a worker
    that is alive (so fedmq's watchdog finds it served) but slow, for timeout tests."""

    def __init__(self, worker_id: str, url: str = AMQP_URL, *, keep_queue: bool = False) -> None:
        """`keep_queue`: the queue outlives this consumer (as a worker's durable queue does);
        delete it with `delete_queue`."""
        import threading

        self.id = worker_id
        self.received: list[bytes] = []
        self.delivery_modes: list[int | None] = []  # of each message received, in order
        self._conn, ch = _channel(url)
        queue = f"fedmq.worker.{worker_id}"
        ch.exchange_declare("fedmq.commands", "direct", durable=True)
        ch.queue_declare(queue, auto_delete=not keep_queue)
        ch.queue_bind(queue, "fedmq.commands", routing_key=worker_id)
        ch.basic_consume(queue, self._on_message, auto_ack=True)
        self._channel = ch
        self._thread = threading.Thread(target=ch.start_consuming, daemon=True)
        self._thread.start()

    def _on_message(self, ch, method, props, body) -> None:
        self.delivery_modes.append(props.delivery_mode)
        self.received.append(body)

    def stop(self) -> None:
        self._conn.add_callback_threadsafe(self._channel.stop_consuming)
        self._thread.join(10)
        self._conn.close()

    def __enter__(self) -> "SilentWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class WorkerProcesses:
    """Starts, stops and kills worker services on the broker at `url` (default: the run's
    vhost); their output goes to log files."""

    def __init__(self, log_dir: pathlib.Path, url: str = AMQP_URL) -> None:
        self.log_dir = log_dir
        self.url = url
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: set[str] = set()

    def start(self, worker_id: str, *extra: str, wait: bool = True,
              fresh: bool = True) -> subprocess.Popen:
        """Start a worker; `fresh` empties its queue first (not on a restart)."""
        if fresh:
            purge(f"fedmq.worker.{worker_id}", self.url)
        log = open(self.log_dir / f"{worker_id}.log", "a")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id, "--url", self.url,
             "--state-dir", str(self.log_dir / "state"), *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs[worker_id] = proc
        self.started.add(worker_id)
        if wait:
            self.wait_consuming(worker_id, proc)
        return proc

    def wait_consuming(self, worker_id: str, proc: subprocess.Popen, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {worker_id} exited: {self.log(worker_id)[-2000:]}")
            if consumer_count(f"fedmq.worker.{worker_id}", self.url) >= 1 and \
                    "consuming" in self.log(worker_id):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker {worker_id} did not start: {self.log(worker_id)[-2000:]}")

    def log(self, worker_id: str) -> str:
        path = self.log_dir / f"{worker_id}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, worker_id: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        proc = self.procs.pop(worker_id)
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    @contextlib.contextmanager
    def running(self, *worker_ids: str):
        """Start `worker_ids` at once and wait for each to consume; on exit stop those still
        running and delete their queues (a fixture's services leave nothing behind)."""
        for worker_id in worker_ids:
            self.start(worker_id, wait=False)
        for worker_id in worker_ids:
            self.wait_consuming(worker_id, self.procs[worker_id])
        try:
            yield self
        finally:
            for worker_id in worker_ids:
                if worker_id in self.procs:
                    self.stop(worker_id)
                delete_queue(f"fedmq.worker.{worker_id}", self.url)

    def kill(self, worker_id: str) -> None:
        self.stop(worker_id, signal.SIGKILL)

    def stop_all(self, delete_queues: bool = False) -> None:
        started = list(self.started)
        for worker_id in list(self.procs):
            self.stop(worker_id)
        if delete_queues:  # workers made for one test leave no queue behind
            for worker_id in started:
                delete_queue(f"fedmq.worker.{worker_id}", self.url)


class RawClient:
    """Publishes raw bytes to a worker's queue and reads replies (pika, direct reply-to)."""

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        self.replies: dict[str, bytes] = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, ch, method, props, body):
        self.replies[props.correlation_id] = body

    def publish(self, worker_id: str, body: bytes, *, message_id: str,
                headers: dict | None = None) -> str:
        corr = uuid.uuid4().hex
        self.ch.basic_publish("fedmq.commands", worker_id, body, pika.BasicProperties(
            user_id="guest", reply_to="amq.rabbitmq.reply-to", correlation_id=corr,
            message_id=message_id, headers=headers, type="Envelope"))
        return corr

    def reply(self, corr: str, timeout: float = 30) -> m.Reply:
        deadline = time.monotonic() + timeout
        while corr not in self.replies and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.1)
        assert corr in self.replies, f"no reply to {corr}"
        return serde.decode(self.replies.pop(corr))

    def call(self, worker_id: str, body: bytes, *, message_id: str | None = None,
             timeout: float = 30, headers: dict | None = None) -> m.Reply:
        """Publish `body` and wait for its reply (decoded)."""
        corr = self.publish(worker_id, body, message_id=message_id or uuid.uuid4().hex,
                            headers=headers)
        return self.reply(corr, timeout)

    #: message id -> the AMQP delivery mode of its dead-letter copy (`dead_lettered`)
    dead_letter_modes: dict

    def dead_lettered(self, message_id: str, timeout: float = 10) -> dict | None:
        if not hasattr(self, "dead_letter_modes"):
            self.dead_letter_modes = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(DEAD_LETTER_QUEUE, auto_ack=True)
            if method is None:
                time.sleep(0.1)
            elif props.message_id == message_id:
                self.dead_letter_modes[message_id] = props.delivery_mode
                return props.headers or {}
        return None

    def close(self) -> None:
        self.conn.close()


def wait_until(predicate, seconds: float, interval: float = 0.2) -> bool:
    """Poll `predicate()` until it is true (True) or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def envelope(message) -> bytes:
    return bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "test", message)))
