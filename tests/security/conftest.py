"""The trust-boundary suite's world: one worker holding a data owner's private data, and
clients for four principals, in-process and over RabbitMQ.

    owner      the data owner (the worker's own login): sends the private data
    coord      granted `coordinator`: may send Fit / Evaluate
    sci        granted `scientist`: may find and compute on the data
    mallory    a stranger with a valid broker login and nothing else

Over RabbitMQ each principal is a broker user of its own (created for this run, with a random
name and password, full permissions on the run's vhost only, deleted at the end), and the
worker is a real `fedmq worker` process started with `--grant` options; the broker stamps
every message with its sender's login (AMQP user_id). In-process, each principal is a hook of
its own (`TorchHook(principal=...)`) reaching the same Worker.
"""
from __future__ import annotations

import os
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import fedmq
from fedmq.management import api_request
from fedmq.policy import Policy

PRINCIPALS = ("owner", "coord", "sci", "mallory")


@dataclass
class World:
    transport: str
    worker_id: str
    clients: dict[str, Any]
    names: dict[str, str]  # role in this suite -> principal name
    hooks: list = field(default_factory=list)
    #: ids and values of the owner's private data
    data_id: int = 0
    target_id: int = 0
    data: torch.Tensor | None = None

    def client(self, who: str) -> Any:
        return self.clients[who]


def _broker_admin() -> dict:
    from broker_vhost import credentials, management_url_for
    url = os.environ["FEDMQ_AMQP_URL"]
    user, password = credentials(url)
    return {"url": management_url_for(url), "user": user, "password": password}


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


@pytest.fixture(scope="session")
def make_broker_user():
    """make(role) -> (name, AMQP URL): a broker user of this run's own (random name and
    password, full permissions on the run's vhost only); all deleted at the end."""
    from broker_vhost import vhost_of
    base = os.environ["FEDMQ_AMQP_URL"]
    vhost = vhost_of(base)
    admin = _broker_admin()
    tag = secrets.token_hex(4)
    made: list[str] = []

    def make(role: str) -> tuple[str, str]:
        name, password = f"fedmq-test-{tag}-{role}", secrets.token_urlsafe(16)
        api_request("PUT", f"users/{_q(name)}", body={"password": password, "tags": ""},
                    **admin)
        made.append(name)
        api_request("PUT", f"permissions/{_q(vhost)}/{_q(name)}",
                    body={"configure": ".*", "write": ".*", "read": ".*"}, **admin)
        parts = urllib.parse.urlsplit(base)
        netloc = f"{_q(name)}:{_q(password)}@{parts.hostname}:{parts.port or 5672}"
        return name, urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    try:
        yield make
    finally:
        for name in made:
            try:
                api_request("DELETE", f"users/{_q(name)}", **admin)
            except Exception:  # noqa: BLE001 - best effort
                pass


@pytest.fixture(scope="session")
def broker_users(make_broker_user):
    """A broker user per principal of the world (principal -> (name, AMQP URL))."""
    return {who: make_broker_user(who) for who in PRINCIPALS}


def _send_private_data(owner: Any) -> tuple[int, int, torch.Tensor]:
    data = torch.randn(24, 1, 28, 28)
    target = torch.randint(0, 10, (24,))
    d = data.clone().tag("#data", "#train").describe("the owner's images").send(owner)
    t = target.clone().tag("#target", "#train").describe("the owner's labels").send(owner)
    ids = d.id_at_location, t.id_at_location
    # the owner keeps the objects: the pointers' garbage collection must not delete them
    d.garbage_collect_data = t.garbage_collect_data = False
    assert owner.objects_count() == 2  # stored before anyone else asks (other connections)
    return ids[0], ids[1], data


@pytest.fixture(params=["local", pytest.param("amqp", marks=pytest.mark.amqp)])
def world(request, tmp_path):
    marker = request.node.get_closest_marker("allow_models")  # --allow-model of the worker
    models = list(marker.args) if marker else []
    if request.param == "local":
        hooks = {who: fedmq.TorchHook(torch, principal=who) for who in PRINCIPALS}
        policy = Policy(owner="owner", grants={"coordinator": {"coord"}, "scientist": {"sci"}},
                        release="none", max_bytes=4 << 20, max_objects=1000,
                        models=frozenset(models) or None)
        bob = fedmq.VirtualWorker(hooks["owner"], id="sec_bob", policy=policy)
        clients = {"owner": bob}
        for who in PRINCIPALS[1:]:
            clients[who] = bob.connect(hooks[who])
        w = World("local", "sec_bob", clients, {who: who for who in PRINCIPALS},
                  list(hooks.values()))
        w.data_id, w.target_id, w.data = _send_private_data(clients["owner"])
        yield w
        for hook in hooks.values():
            hook.context.close()
        return
    users = request.getfixturevalue("broker_users")
    from worker_procs import WorkerProcesses
    worker_id = f"sec_{secrets.token_hex(3)}"
    procs = WorkerProcesses(tmp_path, url=users["owner"][1])
    procs.start(worker_id, "--grant", f"coordinator:{users['coord'][0]}",
                "--grant", f"scientist:{users['sci'][0]}", "--max-bytes", "4M",
                "--max-objects", "1000", *[a for m in models for a in ("--allow-model", m)])
    hooks, clients = [], {}
    try:
        for who in PRINCIPALS:
            hook = fedmq.TorchHook(torch)
            hooks.append(hook)
            clients[who] = fedmq.AMQPClientWorker(hook, id=worker_id, url=users[who][1],
                                                  timeout=30)
        w = World("amqp", worker_id, clients, {who: users[who][0] for who in PRINCIPALS},
                  hooks)
        w.data_id, w.target_id, w.data = _send_private_data(clients["owner"])
        w.procs = procs
        yield w
    finally:
        for hook in hooks:
            hook.context.close()
        procs.stop_all(delete_queues=True)
