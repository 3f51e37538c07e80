"""broker_config/: the files say what fedmq's code relies on, and they work on a real broker.

The first tests only read the files. The `amqp` ones use real RabbitMQ nodes without
disturbing anyone else's use of them:

* importing definitions.json (`rabbitmqctl import_definitions`) rewrites node-wide state (the
  guest user, vhost `/`), so it is done on this run's private node (the `private_rabbitmq`
  fixture, tests/private_rabbitmq.py) and checked through that node's management API;
* the users by role that broker_config/README.md documents are tried on the broker by
  tests/test_broker_roles.py; here the README's table is checked against the code that grants
  them (fedmq.broker_admin.role_permissions).

They need rabbitmq-server/rabbitmqctl (run as root or the rabbitmq user) and the management
plugin (`.ci/broker.sh` enables it).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fedmq.management import ManagementAPIError, api_get
from fedmq.transport.amqp import worker_queue_arguments

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "broker_config"
DEFINITIONS = CONFIG / "definitions.json"

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
    # the only user is the loopback-only administrator (rabbitmq.conf); fedmq's users are made
    # per deployment by `fedmq broker add-user`, with passwords that are not in the repository
    assert [u["name"] for u in d["users"]] == ["guest"]
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
    # guest's password is public: it logs in from the broker's own loopback only
    assert conf["loopback_users.guest"] == "true"
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


# --- users by role (broker_config/README.md, "Users by role") --------------------------------

def readme_role_table() -> dict[str, tuple[str, str, str]]:
    """The role table of broker_config/README.md: role -> (configure, write, read)."""
    rows = {}
    for line in (CONFIG / "README.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 4 and cells[0].split()[0] in ("worker", "client", "coordinator"):
            code = [re.search(r"`([^`]*)`", c).group(1).replace("\\|", "|") for c in cells[1:]]
            rows[cells[0].split()[0]] = tuple(code)
    return rows


def test_the_readme_role_table_is_what_add_user_grants():
    """The README's table is fedmq.broker_admin.role_permissions, which
    tests/test_broker_roles.py tries on the broker."""
    from fedmq.broker_admin import role_permissions

    table = readme_role_table()
    assert set(table) == {"worker", "client", "coordinator"}
    for role, permissions in table.items():
        expected = role_permissions(role, "NAME")
        assert permissions == expected, role
