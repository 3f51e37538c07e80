"""broker_config/: the files say what fedmq's code relies on, and they work on a real broker.

The first tests only read the files. The `amqp` ones use real RabbitMQ nodes without
disturbing anyone else's use of them:

* importing definitions.json (`rabbitmqctl import_definitions`) rewrites node-wide state (the
  guest user, vhost `/`), so it is done on this run's private node (the `private_rabbitmq`
  fixture, tests/private_rabbitmq.py) and checked through that node's management API;
* the throwaway per-worker user documented in broker_config/README.md is created, checked and
  deleted with rabbitmqctl on the broker FEDMQ_AMQP_URL points at (it must be the local node),
  with its permissions on this run's vhost (tests/broker_vhost.py) only.

They need rabbitmq-server/rabbitmqctl (run as root or the rabbitmq user) and the management
plugin (`.ci/broker.sh` enables it).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker_vhost import vhost_of
from fedmq.management import ManagementAPIError, api_get
from fedmq.transport.amqp import worker_queue_arguments

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "broker_config"
DEFINITIONS = CONFIG / "definitions.json"
AMQP_URL = os.environ.get("FEDMQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: the run's vhost, where the per-worker user gets its permissions
VHOST = vhost_of(AMQP_URL)

#: what fedmq's code declares and relies on: name -> exchange type
EXCHANGES = {"fedmq.commands": "direct", "fedmq.events": "topic", "fedmq.dlx": "fanout"}
DEAD_LETTER_QUEUE = "fedmq.dead-letters"
WORKER_POLICY = "fedmq-worker-dlx"


def definitions() -> dict:
    return json.loads(DEFINITIONS.read_text())


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


# --- the files ---------------------------------------------------------------------------------

def test_definitions_declare_vhost_guest_and_permissions():
    d = definitions()
    assert [v["name"] for v in d["vhosts"]] == ["/"]
    guest = by_name(d["users"])["guest"]
    assert guest["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert "administrator" in guest["tags"]
    [perm] = [p for p in d["permissions"] if p["user"] == "guest"]
    assert (perm["vhost"], perm["configure"], perm["write"], perm["read"]) == ("/", ".*", ".*", ".*")


def test_guest_password_hash_is_sha256_of_salt_and_guest():
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + password))."""
    raw = base64.b64decode(by_name(definitions()["users"])["guest"]["password_hash"])
    salt, digest = raw[:4], raw[4:]
    assert len(raw) == 4 + 32
    assert digest == hashlib.sha256(salt + b"guest").digest()


def test_definitions_declare_the_topology():
    d = definitions()
    exchanges = {e["name"]: e for e in d["exchanges"]}
    for name, kind in EXCHANGES.items():
        assert exchanges[name]["type"] == kind, name
        assert exchanges[name]["durable"] is True and exchanges[name]["vhost"] == "/"
        assert exchanges[name]["auto_delete"] is False and exchanges[name]["internal"] is False
    queues = by_name(d["queues"])
    assert queues[DEAD_LETTER_QUEUE]["durable"] is True
    assert {"source": "fedmq.dlx", "destination": DEAD_LETTER_QUEUE,
            "destination_type": "queue", "routing_key": "", "vhost": "/",
            "arguments": {}} in d["bindings"]


def test_worker_queues_are_left_to_the_workers_and_dead_lettered_by_policy():
    d = definitions()
    # A worker queue declared here with other arguments than the worker's own declaration
    # would make the worker's queue.declare fail with PRECONDITION_FAILED.
    for q in d["queues"]:
        if q["name"].startswith("fedmq.worker."):
            assert q["arguments"] == worker_queue_arguments(), q["name"]
    policy = by_name(d["policies"])[WORKER_POLICY]
    assert policy["apply-to"] == "queues" and policy["vhost"] == "/"
    assert policy["definition"] == {"dead-letter-exchange": "fedmq.dlx"}
    pattern = re.compile(policy["pattern"])
    assert pattern.search("fedmq.worker.alice") and pattern.search("fedmq.worker.test-1f")
    assert not pattern.search(DEAD_LETTER_QUEUE) and not pattern.search("fedmq.workerX")


def read_conf(path: Path) -> dict[str, str]:
    """rabbitmq.conf's `key = value` lines (comments and blanks skipped)."""
    settings = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not a `key = value` line in {path.name}: {line!r}"
            settings[key.strip()] = value.strip()
    return settings


def test_rabbitmq_conf_settings():
    conf = read_conf(CONFIG / "rabbitmq.conf")
    assert 128 * 2**20 < int(conf["max_message_size"]) <= 512 * 2**20
    assert int(conf["consumer_timeout"]) >= 3_600_000
    assert 0 < int(conf["heartbeat"]) <= 60
    assert conf["load_definitions"] == "/etc/rabbitmq/definitions.json"
    assert conf["loopback_users.guest"] == "false"
    assert conf["listeners.tcp.default"] == "5672"
    assert conf["management.tcp.port"] == "15672"


def test_enabled_plugins():
    assert (CONFIG / "enabled_plugins").read_text().strip() == "[rabbitmq_management]."


# --- the running broker -----------------------------------------------------------------------

def rabbitmqctl(*args: str, node=None) -> str:
    """Run rabbitmqctl against the local node, or against `node` (a PrivateRabbitMQ); fail the
    test with its output on error."""
    if node is not None:
        result = node.ctl("-q", *args)
    else:
        exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        if not os.path.exists(exe):
            pytest.fail("rabbitmqctl not found: these tests manage the local RabbitMQ node "
                        "(apt-get install rabbitmq-server, see .ci/broker.sh)")
        result = subprocess.run([exe, "-q", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}"
    return result.stdout


def wait_for(get, timeout: float = 15.0, interval: float = 0.5):
    """Call `get` until it returns a truthy value without raising ManagementAPIError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = get()
            if value:
                return value
        except ManagementAPIError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.mark.amqp
@pytest.mark.slow
def test_import_definitions_into_the_running_broker_is_idempotent(private_rabbitmq):
    node = private_rabbitmq  # the import rewrites the guest user: never on the shared broker

    def api(path: str):
        return api_get(path, url=node.management_url)

    for _ in range(2):  # the second import must change nothing and must not fail
        rabbitmqctl("import_definitions", str(DEFINITIONS), node=node)
    # import_definitions returns before the import finishes: poll the management API.
    for name, kind in EXCHANGES.items():
        exchange = wait_for(lambda: api(f"exchanges/%2F/{name}"))
        assert (exchange["type"], exchange["durable"]) == (kind, True), name
    queue = wait_for(lambda: api(f"queues/%2F/{DEAD_LETTER_QUEUE}"))
    assert queue["durable"] is True
    bindings = wait_for(lambda: api(f"bindings/%2F/e/fedmq.dlx/q/{DEAD_LETTER_QUEUE}"))
    assert [b["routing_key"] for b in bindings] == [""]
    policy = wait_for(lambda: api(f"policies/%2F/{WORKER_POLICY}"))
    assert policy["definition"] == {"dead-letter-exchange": "fedmq.dlx"}
    # The imported guest password hash is the hash of "guest": guest can still log in
    # (authenticate_user exits non-zero otherwise).
    rabbitmqctl("authenticate_user", "guest", "guest", node=node)


# --- per-worker users (broker_config/README.md, "Per-worker users") ---------------------------

def worker_permissions(worker_id: str) -> tuple[str, str, str]:
    """The configure/write/read regexes README.md documents for worker `worker_id`."""
    queue = re.escape(f"fedmq.worker.{worker_id}")
    return (rf"^({queue}|amq\.gen-.*)$",
            r"^(fedmq\.commands|fedmq\.events|amq\.default)$",
            rf"^({queue})$")


@contextmanager
def throwaway_worker_user():
    """A user for worker `t<hex>-alice` with README's permissions on the run's vhost, fedmq's
    exchanges and alice's and bob's queues declared and bound there by the admin (guest);
    the user and the queues are deleted afterwards (the vhost goes at the end of the run)."""
    import pika

    tag = secrets.token_hex(4)
    alice, bob = f"t{tag}-alice", f"t{tag}-bob"
    user, password = f"fedmq_test_alice_{tag}", secrets.token_urlsafe(24)
    admin = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    queues = [f"fedmq.worker.{alice}", f"fedmq.worker.{bob}"]
    try:
        channel = admin.channel()
        # the topology as fedmq.transport.amqp.declare_topology declares it (the run's vhost
        # is fresh: no worker may have run in it yet)
        for name, kind in EXCHANGES.items():
            channel.exchange_declare(name, kind, durable=True)
        channel.queue_declare(DEAD_LETTER_QUEUE, durable=True)
        channel.queue_bind(DEAD_LETTER_QUEUE, "fedmq.dlx", routing_key="")
        for worker_id, queue in zip((alice, bob), queues):
            channel.queue_declare(queue, durable=True, arguments=worker_queue_arguments())
            channel.queue_bind(queue, "fedmq.commands", routing_key=worker_id)
        rabbitmqctl("add_user", user, password)
        rabbitmqctl("set_permissions", "-p", VHOST, user, *worker_permissions(alice))
        parsed = urllib.parse.urlsplit(AMQP_URL)
        url = (f"amqp://{user}:{password}@{parsed.hostname}:{parsed.port or 5672}/"
               f"{urllib.parse.quote(VHOST, safe='')}")
        yield admin, url, alice, bob
    finally:
        try:
            rabbitmqctl("delete_user", user)
        finally:
            if admin.is_open:
                channel = admin.channel()
                for queue in queues:
                    channel.queue_delete(queue)
                admin.close()


def as_user(url: str, operation):
    """Run `operation(channel)` on a fresh connection as the worker user; return its result,
    or the reply code the broker closed the channel with (403 = ACCESS_REFUSED)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return operation(connection.channel())
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_code
    finally:
        if connection.is_open:
            connection.close()


def publish(exchange: str, routing_key: str, body: bytes = b"x", properties=None):
    def operation(channel):
        channel.confirm_delivery()  # so a refused publish raises here, not later
        channel.basic_publish(exchange, routing_key, body, properties)
        return "ok"
    return operation


@pytest.mark.amqp
def test_worker_user_can_serve_its_own_queue_only():
    import pika

    with throwaway_worker_user() as (admin, url, alice, bob):
        own, other = f"fedmq.worker.{alice}", f"fedmq.worker.{bob}"
        admin_channel = admin.channel()
        replies: list[bytes] = []
        admin_channel.basic_consume("amq.rabbitmq.reply-to", auto_ack=True,
                                    on_message_callback=lambda ch, m, p, body:
                                    replies.append(body))
        admin_channel.basic_publish("fedmq.commands", alice, b"request", pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))

        def serve_one(channel):
            # What a worker service does: re-declare its queue idempotently (same arguments),
            # consume it with manual acks, answer through direct reply-to, forward to a peer
            # and publish an event.
            channel.exchange_declare("fedmq.commands", passive=True)
            channel.queue_declare(own, durable=True, arguments=worker_queue_arguments())
            channel.confirm_delivery()
            for method, props, body in channel.consume(own, inactivity_timeout=10):
                assert method is not None, "no command arrived on the worker's own queue"
                channel.basic_publish("", props.reply_to, b"reply:" + body,
                                      pika.BasicProperties(correlation_id=props.correlation_id))
                channel.basic_publish("fedmq.commands", bob, b"forwarded")
                channel.basic_publish("fedmq.events", "fit.done", b"{}")
                channel.basic_ack(method.delivery_tag)
                channel.cancel()
                return body

        assert as_user(url, serve_one) == b"request"
        deadline = time.monotonic() + 10
        while not replies and time.monotonic() < deadline:
            admin.process_data_events(time_limit=0.2)
        assert replies == [b"reply:request"]
        method, _, body = admin_channel.basic_get(other, auto_ack=True)
        assert body == b"forwarded"

        refused = {
            "consume another worker's queue":
                lambda ch: ch.basic_consume(other, lambda *a: None),
            "basic.get from another worker's queue": lambda ch: ch.basic_get(other),
            "purge another worker's queue": lambda ch: ch.queue_purge(other),
            "delete another worker's queue": lambda ch: ch.queue_delete(other),
            # binding needs write on the queue and read on the exchange: without this refusal
            # alice could bind her queue with bob's routing key and read copies of his commands
            "bind its queue to another worker's key":
                lambda ch: ch.queue_bind(own, "fedmq.commands", routing_key=bob),
            "(re)declare a fedmq exchange":
                lambda ch: ch.exchange_declare("fedmq.commands", "direct", durable=True),
            "publish to an exchange not granted": publish("amq.direct", bob),
            "publish into the dead-letter exchange": publish("fedmq.dlx", alice),
        }
        for what, operation in refused.items():
            assert as_user(url, operation) == 403, f"worker user was allowed to {what}"
