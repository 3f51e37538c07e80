"""One fresh RabbitMQ virtual host per test run, so that test runs sharing a broker (two
`make test` at once, a developer and CI) never see each other's queues.

tests/conftest.py's pytest_configure creates `fedmq-test-<hex>` through the management API
(fedmq.management), gives the URL's user full permissions on it and points FEDMQ_AMQP_URL at
it, before any test module is imported (several read FEDMQ_AMQP_URL into module constants) and
before any `fedmq worker` process is started (they inherit the variable). pytest_unconfigure
deletes it, with everything in it. A run that was killed (SIGKILL, power cut) cannot delete its
vhost: every run deletes, at its start, the `fedmq-test-*` vhosts whose description names a
pytest process on this host that no longer exists.

The broker and its credentials come from FEDMQ_AMQP_URL when it is set (its vhost is replaced),
else amqp://guest:guest@127.0.0.1:5672/; the management API from FEDMQ_MANAGEMENT_URL, else
http://<the AMQP host>:15672.
"""
from __future__ import annotations

import datetime
import os
import re
import secrets
import socket
import urllib.parse
from dataclasses import dataclass

from fedmq.management import (ManagementAPIError, create_vhost, delete_vhost, list_vhosts,
                              set_permissions)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_PORT = 15672
#: every test run's vhost is named PREFIX + 12 hex digits
PREFIX = "fedmq-test-"
_OWNER = re.compile(r"\bpid=(\d+) host=(\S+)")


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names, as pika reads it ("/" when the path is empty or "/")."""
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def with_vhost(url: str, vhost: str) -> str:
    """`url` with its vhost replaced by `vhost` (URL-encoded; credentials and query kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(vhost, safe="")))


def credentials(url: str) -> tuple[str, str]:
    """The user and password of an AMQP URL (guest/guest when it names none)."""
    parts = urllib.parse.urlsplit(url)
    return (urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"))


def management_url_for(amqp_url: str) -> str:
    """FEDMQ_MANAGEMENT_URL, else the management API on the AMQP URL's host."""
    if os.environ.get("FEDMQ_MANAGEMENT_URL"):
        return os.environ["FEDMQ_MANAGEMENT_URL"]
    host = urllib.parse.urlsplit(amqp_url).hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{MANAGEMENT_PORT}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class RunVhost:
    """The run's vhost: its name, the AMQP URL that names it and the management API's
    address and credentials."""

    name: str
    base_url: str
    management_url: str
    user: str
    password: str
    created: bool = False

    @classmethod
    def new(cls, base_url: str | None = None) -> "RunVhost":
        base_url = base_url or os.environ.get("FEDMQ_AMQP_URL") or DEFAULT_AMQP_URL
        user, password = credentials(base_url)
        return cls(PREFIX + secrets.token_hex(6), base_url, management_url_for(base_url),
                   user, password)

    @property
    def amqp_url(self) -> str:
        return with_vhost(self.base_url, self.name)

    def _api(self) -> dict:
        return {"url": self.management_url, "user": self.user, "password": self.password}

    def description(self) -> str:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return (f"fedmq test run: pid={os.getpid()} host={socket.gethostname()} "
                f"started={started}; deleted at the end of the run")

    def create(self) -> None:
        """Create the vhost and give the URL's user full permissions on it (raises
        ManagementAPIError, with a message meant for a person, when the API is not usable)."""
        create_vhost(self.name, description=self.description(), timeout=5.0, **self._api())
        self.created = True
        set_permissions(self.name, self.user, timeout=5.0, **self._api())

    def delete(self) -> bool:
        """Delete the vhost (once; False when there was nothing to delete)."""
        if not self.created:
            return False
        self.created = False
        return delete_vhost(self.name, **self._api())

    def sweep_stale(self) -> list[str]:
        """Delete the `fedmq-test-*` vhosts left by runs on this host whose pytest process is
        gone (killed before it could delete its own); return their names. Vhosts of other
        hosts, of live processes, or without an owner in their description are left alone."""
        removed = []
        for vhost in list_vhosts(timeout=5.0, **self._api()):
            name = vhost.get("name", "")
            owner = _OWNER.search(vhost.get("description") or "")
            if not name.startswith(PREFIX) or name == self.name or owner is None:
                continue
            pid, host = int(owner.group(1)), owner.group(2)
            if host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid):
                try:
                    if delete_vhost(name, **self._api()):
                        removed.append(name)
                except ManagementAPIError:
                    pass  # another run may be sweeping it at the same moment
        return removed
