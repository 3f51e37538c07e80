"""Broker users for the role tests (tests/test_broker_roles.py, tests/test_cli_broker.py): made
with fedmq.broker_admin on the run's vhost, named `fedmqt-<hex of the run's vhost>-<name>`
(users are node-wide), deleted at the end of the run; users left by a killed run are deleted
by the next (their vhost is gone by then, swept by tests/conftest.py).

Reads FEDMQ_AMQP_URL at import: import it from fixtures and test modules only."""
from __future__ import annotations

import re
import secrets
import urllib.parse

import pika

from broker_vhost import PREFIX as VHOST_PREFIX, credentials, management_url_for, vhost_of
from fedmq import broker_admin
from fedmq.management import api_request, list_vhosts, set_permissions
from fedmq.transport.amqp import queue_name
from worker_procs import AMQP_URL

VHOST = vhost_of(AMQP_URL)
ADMIN_USER, ADMIN_PASSWORD = credentials(AMQP_URL)
ADMIN = {"url": management_url_for(AMQP_URL), "admin_user": ADMIN_USER,
         "admin_password": ADMIN_PASSWORD}
USER_PREFIX = "fedmqt-"
#: this run's users: `fedmqt-<hex of the run's vhost>-<name>`
RUN_PREFIX = f"{USER_PREFIX}{VHOST.removeprefix(VHOST_PREFIX)}-"


def api(method: str, path: str, body=None):
    return api_request(method, path, ADMIN["url"], ADMIN_USER, ADMIN_PASSWORD, body=body)


def q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def url_for(user: str, password: str | None) -> str:
    """The run's broker URL logged in as `user` (percent-encoded, as a URL must be); without a
    password with None."""
    parts = urllib.parse.urlsplit(AMQP_URL)
    login = q(user) if password is None else f"{q(user)}:{q(password)}"
    return f"amqp://{login}@{parts.hostname}:{parts.port or 5672}/{q(VHOST)}"


def depth(queue: str) -> int:
    """Messages ready in `queue` now (a passive declare; the management API's counts lag)."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def sweep_stale_users() -> None:
    """Delete `fedmqt-<hex>-*` users whose run's vhost `fedmq-test-<hex>` no longer exists."""
    live = {v["name"].removeprefix(VHOST_PREFIX) for v in list_vhosts(**{
        "url": ADMIN["url"], "user": ADMIN_USER, "password": ADMIN_PASSWORD})}
    for user in api("GET", "users") or []:
        found = re.match(rf"{USER_PREFIX}([0-9a-f]{{12}})-", user["name"])
        if found and found.group(1) not in live:
            api("DELETE", f"users/{q(user['name'])}")


class Users:
    """This run's role users; each `add` returns (name, password, url)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, suffix: str, role: str) -> tuple[str, str, str]:
        name, password = RUN_PREFIX + suffix, secrets.token_urlsafe(18)
        broker_admin.add_user(name, role, password, vhost=VHOST, **ADMIN)
        self.names.append(name)
        return name, password, url_for(name, password)

    def add_raw(self, name: str, permissions: tuple[str, str, str]) -> tuple[str, str, str]:
        """A user made straight through the API (any name), with `permissions` on the vhost."""
        password = secrets.token_urlsafe(18)
        api("PUT", f"users/{q(name)}", {"password": password, "tags": ""})
        self.names.append(name)
        set_permissions(VHOST, name, *permissions, url=ADMIN["url"], user=ADMIN_USER,
                        password=ADMIN_PASSWORD)
        return name, password, url_for(name, password)

    def delete_all(self) -> None:
        for name in self.names:
            try:
                api("DELETE", f"users/{q(name)}")
            except Exception:  # noqa: BLE001 - deleted by its test already
                pass
            for queue in (queue_name(name),):
                try:
                    api("DELETE", f"queues/{q(VHOST)}/{q(queue)}")
                except Exception:  # noqa: BLE001 - not a worker's
                    pass
