"""The test run's own RabbitMQ vhost (tests/broker_vhost.py, tests/conftest.py)."""
from __future__ import annotations

import os
import secrets
import socket
import urllib.parse

import pytest

from broker_vhost import (PREFIX, RunVhost, credentials, management_url_for, vhost_of,
                          with_vhost)
from fedmq.management import api_get, create_vhost, delete_vhost, list_vhosts


def test_vhost_of_reads_the_url_as_pika_does():
    assert vhost_of("amqp://guest:guest@127.0.0.1:5672/") == "/"
    assert vhost_of("amqp://guest:guest@127.0.0.1:5672") == "/"
    assert vhost_of("amqp://h:5672/%2F") == "/"
    assert vhost_of("amqp://h:5672/fedmq-test-ab12?heartbeat=1") == "fedmq-test-ab12"


def test_with_vhost_keeps_broker_credentials_and_query_and_encodes_the_name():
    url = with_vhost("amqp://us%40er:p%2Fw@10.0.0.5:5673/old?heartbeat=5", "a/b c")
    assert url == "amqp://us%40er:p%2Fw@10.0.0.5:5673/a%2Fb%20c?heartbeat=5"
    assert vhost_of(url) == "a/b c"
    assert credentials(url) == ("us@er", "p/w")
    assert credentials("amqp://10.0.0.5/") == ("guest", "guest")


def test_management_url_follows_the_amqp_host_unless_given(monkeypatch):
    monkeypatch.delenv("FEDMQ_MANAGEMENT_URL", raising=False)
    assert management_url_for("amqp://g:g@broker.example:5672/") == "http://broker.example:15672"
    assert management_url_for("amqp://g:g@[::1]:5672/") == "http://[::1]:15672"
    monkeypatch.setenv("FEDMQ_MANAGEMENT_URL", "http://mgmt:8080")
    assert management_url_for("amqp://g:g@broker.example:5672/") == "http://mgmt:8080"


def test_a_new_run_vhost_is_named_fedmq_test_hex():
    run = RunVhost.new("amqp://alice:secret@10.1.2.3:5672/prod")
    assert run.name.startswith(PREFIX) and len(run.name) == len(PREFIX) + 12
    assert run.amqp_url == f"amqp://alice:secret@10.1.2.3:5672/{run.name}"
    assert (run.user, run.password) == ("alice", "secret")


@pytest.mark.amqp
def test_this_run_uses_its_own_vhost_with_full_permissions():
    url = os.environ["FEDMQ_AMQP_URL"]
    name = vhost_of(url)
    assert name.startswith(PREFIX)
    user, password = credentials(url)
    mgmt = os.environ["FEDMQ_MANAGEMENT_URL"]
    quoted = urllib.parse.quote(name, safe="")
    assert api_get(f"vhosts/{quoted}", mgmt, user, password)["name"] == name
    perms = api_get(f"permissions/{quoted}/{urllib.parse.quote(user, safe='')}", mgmt, user,
                    password)
    assert (perms["configure"], perms["write"], perms["read"]) == (".*", ".*", ".*")


@pytest.mark.amqp
def test_sweep_deletes_only_vhosts_of_dead_runs_on_this_host():
    url = os.environ["FEDMQ_AMQP_URL"]
    user, password = credentials(url)
    api = {"url": os.environ["FEDMQ_MANAGEMENT_URL"], "user": user, "password": password}
    host = socket.gethostname()
    dead_pid = 2 ** 22 + 1  # above Linux's pid_max (4194304): no such process
    tag = secrets.token_hex(3)
    owners = {
        f"{PREFIX}sweep{tag}dead": f"fedmq test run: pid={dead_pid} host={host} started=x",
        f"{PREFIX}sweep{tag}live": f"fedmq test run: pid={os.getpid()} host={host} started=x",
        f"{PREFIX}sweep{tag}away": f"fedmq test run: pid={dead_pid} host=not-{host} started=x",
        f"{PREFIX}sweep{tag}anon": "made by hand",
    }
    try:
        for name, description in owners.items():
            create_vhost(name, description=description, **api)
        swept = RunVhost.new(url).sweep_stale()
        left = {v["name"] for v in list_vhosts(**api)}
        # (a run starting at this moment could sweep it first: only its absence is checked)
        assert f"{PREFIX}sweep{tag}dead" not in left
        for kept in ("live", "away", "anon"):
            assert f"{PREFIX}sweep{tag}{kept}" in left, kept
            assert f"{PREFIX}sweep{tag}{kept}" not in swept, kept
        assert vhost_of(url) in left  # this run's own
    finally:
        for name in owners:
            delete_vhost(name, **api)
