"""The deployment half of the trust boundary, on the real broker: the users `fedmq broker
add-user` makes for each role (fedmq/broker_admin.py) may do what their role needs and nothing
more; fedmq services run under them; every message fedmq publishes carries its login as
`user_id`, and the broker itself refuses a forged one.

Users are node-wide: tests/role_users.py names them after this run's vhost, gives them
permissions on that vhost only, and deletes them (the `role_users` fixture)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import aio_pika
import pika
import pytest
import torch

import fedmq
from fedmq import broker_admin, messages as m, serde
from fedmq.transport.amqp import (DEAD_LETTER_QUEUE, MIN_CHUNK_SIZE, AMQPTransport,
                                  queue_name, worker_queue_arguments)
from role_users import ADMIN_USER, AMQP_URL, RUN_PREFIX, VHOST, api, depth, q, url_for
from test_amqp_service import assert_all_settled, envelope
from worker_procs import WorkerProcesses

pytestmark = pytest.mark.amqp

@pytest.fixture
def procs(tmp_path):
    made: list[WorkerProcesses] = []

    def start(url: str) -> WorkerProcesses:
        p = WorkerProcesses(tmp_path, url=url)
        made.append(p)
        return p
    yield start
    for p in made:
        p.stop_all()


class Recorder:
    """An admin consumer of a queue named like worker `worker_id`'s (so fedmq finds the worker
    served), also bound to `fedmq.events` under `events_key`: records every message's
    properties."""

    def __init__(self, worker_id: str, events_key: str | None = None) -> None:
        self.properties: list[pika.BasicProperties] = []
        self.bodies: list[bytes] = []
        self._conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        ch = self._conn.channel()
        queue = queue_name(worker_id)
        ch.queue_declare(queue, exclusive=True, auto_delete=True)
        ch.queue_bind(queue, "fedmq.commands", routing_key=worker_id)
        if events_key:
            ch.queue_bind(queue, "fedmq.events", routing_key=events_key)
        ch.basic_consume(queue, self._on_message, auto_ack=True)
        self._channel = ch
        self._thread = threading.Thread(target=ch.start_consuming, daemon=True)
        self._thread.start()

    def _on_message(self, ch, method, props, body) -> None:
        self.properties.append(props)
        self.bodies.append(body)

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.properties) < count:
            assert time.monotonic() < deadline, f"{len(self.properties)} of {count} arrived"
            time.sleep(0.05)

    def stop(self) -> None:
        self._conn.add_callback_threadsafe(self._channel.stop_consuming)
        self._thread.join(10)
        self._conn.close()


# --- user_id ----------------------------------------------------------------------------------

def test_the_broker_refuses_a_forged_user_id(role_users):
    """RabbitMQ checks `user_id` against the connection's user: a message claiming another
    sender is refused (the channel is closed) and never reaches the worker's queue; an honest
    one goes through. Shown on a raw aio-pika connection, as an attacker would write it."""
    client, _, client_url = role_users.add("forger", "client")
    sink = RUN_PREFIX + "sink"
    api("PUT", f"queues/{q(VHOST)}/{q(queue_name(sink))}", {"durable": False,
                                                            "auto_delete": False})
    api("POST", f"bindings/{q(VHOST)}/e/fedmq.commands/q/{q(queue_name(sink))}",
        {"routing_key": sink})

    async def publish(url: str, user_id: str) -> str:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("fedmq.commands", ensure=False)
            await exchange.publish(aio_pika.Message(b"x", user_id=user_id), routing_key=sink)
            return "published"
        except aio_pika.exceptions.AMQPError as exc:
            return str(exc)
        finally:
            await connection.close()

    try:
        for url, login in ((client_url, client), (AMQP_URL, ADMIN_USER)):
            refused = asyncio.run(publish(url, "fedmq-coordinator"))
            assert "PRECONDITION_FAILED" in refused and (
                f"user_id property set to 'fedmq-coordinator' but authenticated user was "
                f"'{login}'") in refused, refused
        assert depth(queue_name(sink)) == 0
        assert asyncio.run(publish(client_url, client)) == "published"  # confirmed: queued
        assert depth(queue_name(sink)) == 1
    finally:
        api("DELETE", f"queues/{q(VHOST)}/{q(queue_name(sink))}")


def test_user_id_is_checked_when_set_and_may_be_left_out(role_users):
    """What a receiver may conclude from `user_id`, on the broker: a worker user (whose
    amq.default grant lets it publish into any queue by name, a caller's direct reply-to
    included) cannot answer as another worker, but can publish with no user_id at all. So a
    receiver must treat a message without user_id as from nobody: the broker adds none."""
    _, _, client_url = role_users.add("rtc", "client")
    mallory, _, mallory_url = role_users.add("rtm", "worker")
    honest, _, _ = role_users.add("rth", "worker")
    client = pika.BlockingConnection(pika.URLParameters(client_url))
    try:
        channel = client.channel()
        got: list[str | None] = []
        channel.basic_consume("amq.rabbitmq.reply-to", auto_ack=True,
                              on_message_callback=lambda c, mt, p, b: got.append(p.user_id))
        # the address a worker sees in every request the client sends it
        channel.basic_publish("fedmq.commands", mallory, b"request", pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
        def receive(ch):
            return next(ch.consume(queue_name(mallory), auto_ack=True, inactivity_timeout=10))[1]
        props = as_user(mallory_url, receive)

        def answer(user_id: str | None):
            def operation(ch):
                ch.confirm_delivery()
                ch.basic_publish("", props.reply_to, b"forged?", pika.BasicProperties(
                    correlation_id="c1", user_id=user_id))
            return operation
        assert as_user(mallory_url, answer(honest)) == 406  # PRECONDITION_FAILED: not its login
        assert as_user(mallory_url, answer(None)) == "ok"
        assert as_user(mallory_url, answer(mallory)) == "ok"
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            client.process_data_events(time_limit=0.2)
        assert got == [None, mallory]
    finally:
        client.close()


def test_every_message_fedmq_publishes_carries_its_login_as_user_id(role_users):
    """Frames (one message or chunks) and events carry the URL's login, percent-decoded (the
    broker would refuse the still-encoded `...%40...`)."""
    login, _, url = role_users.add_raw(RUN_PREFIX + "co@rd:1", broker_admin.role_permissions(
        "coordinator", "x"))
    assert "%40" in url and "%3A" in url
    sink = RUN_PREFIX + "sink2"
    recorder = Recorder(sink, events_key="fedmq-test.#")
    transport = AMQPTransport(url, chunk_size=MIN_CHUNK_SIZE)
    try:
        assert transport.user_id == login
        transport.send(sink, b"a small frame", correlation_id=None, posted=True)
        transport.send(sink, os.urandom(3 * MIN_CHUNK_SIZE), correlation_id=None, posted=True)
        transport.publish_event("fedmq-test.round", b"{}")
        transport.drain()
        recorder.wait_for(1 + 3 + 1)
        assert [p.user_id for p in recorder.properties] == [login] * 5
        assert sum(1 for p in recorder.properties if "x-fedmq-chunk" in (p.headers or {})) == 3
    finally:
        transport.close()
        recorder.stop()


def test_a_dead_letter_copy_of_another_users_message_is_published(role_users, procs):
    """Found by trying it: the worker's dead-letter copy kept the sender's user_id, which the
    broker refuses from the worker's connection (PRECONDITION_FAILED closes the channel), so no
    copy explained the failure. The copy is the worker's now, naming the sender in a header."""
    worker, _, worker_url = role_users.add("dlw", "worker")
    client, _, client_url = role_users.add("dlc", "client")
    procs(worker_url).start(worker)
    conn = pika.BlockingConnection(pika.URLParameters(client_url))
    admin = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        replies: dict[str, bytes] = {}
        ch.basic_consume("amq.rabbitmq.reply-to", auto_ack=True,
                         on_message_callback=lambda c, mt, p, b: replies.update(
                             {p.correlation_id: b}))

        def call(body: bytes, message_id: str) -> m.Reply:
            ch.basic_publish("fedmq.commands", worker, body, pika.BasicProperties(
                reply_to="amq.rabbitmq.reply-to", correlation_id=message_id,
                message_id=message_id, user_id=client, type="Envelope"))
            deadline = time.monotonic() + 30
            while message_id not in replies and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
            return serde.decode(replies.pop(message_id))

        assert call(b"\x00 not a frame", "bad-1").error.code == "serde_error"
        deadline, headers, admin_channel = time.monotonic() + 15, None, admin.channel()
        while headers is None and time.monotonic() < deadline:
            method, props, _ = admin_channel.basic_get(DEAD_LETTER_QUEUE, auto_ack=True)
            if method is None:
                time.sleep(0.1)
            elif props.message_id == "bad-1":
                headers, copy_user = props.headers, props.user_id
        assert headers is not None, "no dead-letter copy arrived"
        assert headers["x-fedmq-user-id"] == client and headers["x-fedmq-worker"] == worker
        assert copy_user == worker
        assert call(envelope(m.ObjectsCount()), "good-1").value == 0  # still serving
    finally:
        conn.close()
        admin.close()


# --- what each role may do ---------------------------------------------------------------------

def as_user(url: str, operation):
    """Run `operation(channel)` on a fresh connection; its result ("ok" for None), or the
    reply code the broker closed the channel with (403 = ACCESS_REFUSED)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        result = operation(connection.channel())
        return "ok" if result is None else result
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    finally:
        if connection.is_open:
            connection.close()


def publish(exchange: str, routing_key: str):
    def operation(channel):
        channel.confirm_delivery()  # so a refused publish raises here, not later
        channel.basic_publish(exchange, routing_key, b"x")
    return operation


def consume(queue: str):
    # direct reply-to takes no-ack consumers only
    auto_ack = queue == "amq.rabbitmq.reply-to"
    return lambda ch: ch.basic_consume(queue, lambda *a: None, auto_ack=auto_ack) and None


def check(url: str, allowed: dict, refused: dict) -> None:
    for what, operation in allowed.items():
        assert as_user(url, operation) == "ok", f"refused to {what}"
    for what, operation in refused.items():
        assert as_user(url, operation) == 403, f"allowed to {what}"


@pytest.fixture(scope="module")
def other_worker(role_users):
    """A worker queue the role users must not touch."""
    name, _, _ = role_users.add("other", "worker")
    return name


def test_the_worker_role_serves_its_own_queue_only(role_users, other_worker):
    worker, _, url = role_users.add("w", "worker")
    own, other = queue_name(worker), queue_name(other_worker)
    admin = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        admin_channel = admin.channel()
        replies: list[bytes] = []
        admin_channel.basic_consume("amq.rabbitmq.reply-to", auto_ack=True,
                                    on_message_callback=lambda c, mt, p, body:
                                    replies.append(body))
        admin_channel.basic_publish("fedmq.commands", worker, b"request", pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))

        def serve_one(channel):
            # what a worker service does: check the topology passively, consume its queue with
            # manual acks, answer by direct reply-to, forward to a peer, dead-letter a copy
            for exchange in ("fedmq.commands", "fedmq.events", "fedmq.dlx"):
                channel.exchange_declare(exchange, passive=True)
            channel.queue_declare(own, passive=True)
            channel.confirm_delivery()
            for method, props, body in channel.consume(own, inactivity_timeout=10):
                assert method is not None, "no command arrived on the worker's own queue"
                channel.basic_publish("", props.reply_to, b"reply:" + body,
                                      pika.BasicProperties(correlation_id=props.correlation_id))
                channel.basic_publish("fedmq.commands", other_worker, b"forwarded")
                channel.basic_publish("fedmq.dlx", worker, b"dead letter")
                channel.basic_ack(method.delivery_tag)
                channel.cancel()
                return body

        assert as_user(url, serve_one) == b"request"
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            admin.process_data_events(time_limit=0.2)
        assert replies == [b"reply:request"]
        assert admin_channel.basic_get(other, auto_ack=True)[2] == b"forwarded"
    finally:
        admin.close()
    check(url, allowed={
        "consume replies (direct reply-to) as a caller of other workers":
            consume("amq.rabbitmq.reply-to"),
        "see whether another worker's queue exists (passive)":
            lambda ch: ch.queue_declare(other, passive=True) and None,
    }, refused={
        "consume another worker's queue": consume(other),
        "basic.get from another worker's queue": lambda ch: ch.basic_get(other),
        "purge another worker's queue": lambda ch: ch.queue_purge(other),
        "delete another worker's queue": lambda ch: ch.queue_delete(other),
        "delete its own queue": lambda ch: ch.queue_delete(own),
        # declaring needs configure: a worker may not re-create its queue with other arguments
        "declare its own queue": lambda ch: ch.queue_declare(
            own, durable=True, arguments=worker_queue_arguments()),
        # binding needs write on the queue and read on the exchange: without this refusal a
        # worker could bind its queue under another worker's key and read copies of its commands
        "bind its queue to another worker's key":
            lambda ch: ch.queue_bind(own, "fedmq.commands", routing_key=other_worker),
        "bind its queue to its own key":
            lambda ch: ch.queue_bind(own, "fedmq.commands", routing_key=worker),
        "declare a fedmq exchange":
            lambda ch: ch.exchange_declare("fedmq.commands", "direct", durable=True),
        "declare a server-named queue": lambda ch: ch.queue_declare("", exclusive=True),
        "publish round events": publish("fedmq.events", "round.start"),
        "publish to an exchange not granted": publish("amq.direct", other_worker),
    })


@pytest.mark.parametrize("role", ["client", "coordinator"])
def test_client_and_coordinator_roles_publish_commands_and_read_nothing(role_users,
                                                                        other_worker, role):
    _, _, url = role_users.add(role, role)
    other = queue_name(other_worker)
    events = {"publish round events": publish("fedmq.events", "round.start")}
    check(url, allowed={
        "publish a command": publish("fedmq.commands", other_worker),
        "consume its replies (direct reply-to)": consume("amq.rabbitmq.reply-to"),
        "see whether a worker is served (passive declare)":
            lambda ch: ch.queue_declare(other, passive=True) and None,
        "check fedmq's exchanges (passive)":
            lambda ch: ch.exchange_declare("fedmq.commands", passive=True) and None,
        **(events if role == "coordinator" else {}),
    }, refused={
        "consume a worker's queue": consume(other),
        "basic.get from a worker's queue": lambda ch: ch.basic_get(other),
        "publish through the default exchange (to any queue by name)": publish("", other),
        "publish into the dead-letter exchange": publish("fedmq.dlx", other_worker),
        "declare a server-named queue": lambda ch: ch.queue_declare("", exclusive=True),
        "declare a fedmq exchange":
            lambda ch: ch.exchange_declare("fedmq.commands", "direct", durable=True),
        **(events if role == "client" else {}),
    })


# --- fedmq services under role users ----------------------------------------------------------

@pytest.mark.slow
def test_workers_and_a_client_run_under_their_role_users(role_users, procs, monkeypatch,
                                                         tmp_path):
    """`fedmq worker` starts and serves under a worker user (no configure, no bind: it checks
    the queue and binding the administrator provisioned), with its password from the file
    $FEDMQ_AMQP_PASSWORD_FILE names (as compose's secrets give it); it forwards to another
    worker under its own login; the binding probe it published at start is acked unread."""
    names = []
    for suffix in ("ra", "rb"):
        name, password, _ = role_users.add(suffix, "worker")
        secret = tmp_path / f"{name}.password"
        secret.write_text(password + "\n")
        names.append((name, secret))
    _, _, client_url = role_users.add("rc", "client")
    hook = fedmq.TorchHook(torch)
    try:
        started = []
        for (name, secret), (peer, _) in zip(names, reversed(names)):
            monkeypatch.setenv("FEDMQ_AMQP_PASSWORD_FILE", str(secret))
            p = procs(url_for(name, secret.read_text().strip()))  # pika's, to check the queue
            # the worker's URL has no password (last wins); the other is its peer: it may
            # store objects here on the client's behalf (the move)
            p.start(name, "--url", url_for(name, None), "--grant", f"worker:{peer}")
            started.append(p)
        monkeypatch.delenv("FEDMQ_AMQP_PASSWORD_FILE")
        (a, _), (b, _) = names
        wa = fedmq.AMQPClientWorker(hook, id=a, url=client_url, timeout=30)
        wb = fedmq.AMQPClientWorker(hook, id=b, url=client_url, timeout=30)
        x = torch.tensor([1.0, 2.0, 3.0])
        pointer = x.send(wa)
        pointer.move(wb)  # a -> b through fedmq.commands, published by a's worker user
        assert torch.equal((pointer + 1).get(), x + 1)
        assert (wa.objects_count(), wb.objects_count()) == (0, 1)
        assert torch.equal(pointer.get(), x)
        for (name, _), p in zip(names, started):
            assert_all_settled(queue_name(name))
            log = p.log(name)
            assert "consuming" in log and "dead-letter" not in log, log[-2000:]
    finally:
        hook.context.close()


def run_worker(worker_id: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id,
                           "--url", url, "--connect-wait", "0", *extra],
                          capture_output=True, text=True, timeout=120)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    [line] = [line for line in output.splitlines() if " ERROR " in line]
    return line


def test_a_worker_user_without_its_queue_exits_2_naming_the_provisioning_command(role_users):
    name = RUN_PREFIX + "noqueue"
    _, _, url = role_users.add_raw(name, broker_admin.role_permissions("worker", name))
    line = one_error_line(run_worker(name, url))
    assert f"the queue fedmq.worker.{name} does not exist" in line
    assert f"`fedmq broker add-user {name} --role worker`" in line


def test_a_worker_user_whose_queue_is_not_bound_exits_2_naming_the_command(role_users):
    name, _, url = role_users.add("unbound", "worker")
    queue = queue_name(name)
    api("DELETE", f"bindings/{q(VHOST)}/e/fedmq.commands/q/{q(queue)}/{q(name)}")
    line = one_error_line(run_worker(name, url))
    assert f"fedmq.commands does not route key {name!r}" in line
    assert f"`fedmq broker add-user {name} --role worker`" in line
    assert depth(queue) == 0  # the probe came back unrouted: nothing was left in the queue


@pytest.mark.slow
def test_a_worker_user_whose_queue_is_deleted_stops_saying_why(role_users, procs):
    """A worker that may not declare its queue cannot bring it back: it stops (exit 1) naming
    the command that provisions it, instead of failing on a refused declare forever."""
    name, _, url = role_users.add("deleted", "worker")
    p = procs(url)
    proc = p.start(name)
    api("DELETE", f"queues/{q(VHOST)}/{q(queue_name(name))}")
    assert proc.wait(60) == 1, p.log(name)[-3000:]
    log = p.log(name)
    assert f"`fedmq broker add-user {name} --role worker`" in log and "Traceback" not in log


def test_train_as_a_client_user_says_the_workers_refused_it(role_users, procs, tmp_path):
    """Found by review: `fedmq train` as a client-role user failed every Fit with
    ConnectionLost (the broker refused its events on fedmq.events, closing the channel the
    Fits used) and exited 1. The events go on a channel of their own now: they are lost (one
    warning), and the run stops on the workers' own refusal, exit 2."""
    worker, _, worker_url = role_users.add("trw", "worker")
    client, _, client_url = role_users.add("trc", "client")
    procs(worker_url).start(worker, "--dataset", "mnist5k", "--labels", "0-3")
    done = subprocess.run(
        [sys.executable, "-m", "fedmq", "train", "--url", client_url, "--workers", worker,
         "--testing", "", "--rounds", "3", "--batches", "1", "--runs-dir", str(tmp_path),
         "--wait-workers", "30"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "every worker refused the round" in done.stderr
    assert "AccessDeniedError" in done.stderr and "ConnectionLost" not in done.stderr
    assert "events are not published" in done.stderr
    assert "Traceback" not in done.stderr
