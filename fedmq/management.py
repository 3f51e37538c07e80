"""`fedmq queues [list|purge|delete]`: fedmq's queues as the RabbitMQ management API sees them.

Two layers, so other code (tests, a dashboard, the coordinator) can use the numbers without
the printing:

    api_get(path, ...) -> JSON            GET /api/<path> with basic auth, clear errors
    api_request(method, path, ...)        the same for PUT/DELETE/POST (with a JSON body)
    list_queues(...) -> list[QueueRow]    GET /api/queues/<vhost>, one row per queue
    format_table(rows) -> str             the table `fedmq queues` prints
    get_queue / purge_queue /             GET, DELETE .../contents, DELETE /api/queues/<vhost>/
      delete_queue                          <name> (`fedmq queues purge|delete QUEUE`)
    create_vhost / set_permissions /      PUT/DELETE /api/vhosts/<vhost>, PUT /api/permissions/
      delete_vhost / list_vhosts            <vhost>/<user>, GET /api/vhosts (a test run's vhost)

Only the standard library is used (urllib): the management API is plain HTTP + JSON with basic
auth. Depths and rates come from the broker's statistics, which the management plugin
refreshes every `collect_statistics_interval` (5 s by default), so a queue's numbers lag the
queue by up to that long.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from fedmq.cli_options import (DEFAULT_MANAGEMENT_URL, OneLineParser, UsageError,
                               add_management_url_option, add_url_option, check_amqp_url,
                               clean, confirm, url_login)
from fedmq.errors import FedmqError

DEFAULT_URL = DEFAULT_MANAGEMENT_URL
#: queues whose name starts with this are fedmq's (worker queues, the dead-letter queue)
FEDMQ_PREFIX = "fedmq."
#: exit code of `fedmq queues` when the management API cannot be used
EXIT_API_ERROR = 2

ENABLE_HINT = ("Is the management plugin enabled? On the broker run "
               "`rabbitmq-plugins enable rabbitmq_management` (the API then listens on port "
               "15672).")


class ManagementAPIError(FedmqError):
    """The RabbitMQ management API could not be reached or refused the request."""

    #: the HTTP status the API answered with (401, 404, ...); None when it was not reached
    status: int | None = None


@dataclass(frozen=True)
class QueueRow:
    """One queue's numbers, as last sampled by the management plugin."""

    name: str
    #: messages waiting to be delivered (the queue's depth)
    messages_ready: int
    #: delivered to a consumer, not yet acked (e.g. a Fit being trained)
    messages_unacknowledged: int
    consumers: int
    #: messages/s published into the queue
    publish_rate: float
    #: messages/s delivered to consumers or fetched with basic.get
    deliver_rate: float

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> "QueueRow":
        """Build a row from one element of GET /api/queues; missing numbers count as 0 (a
        fresh queue has no statistics until the plugin's next sample)."""
        stats = item.get("message_stats") or {}
        return cls(
            name=item["name"],
            messages_ready=int(item.get("messages_ready") or 0),
            messages_unacknowledged=int(item.get("messages_unacknowledged") or 0),
            consumers=int(item.get("consumers") or 0),
            publish_rate=_rate(stats, "publish"),
            deliver_rate=_rate(stats, "deliver_get"),
        )


def _rate(stats: dict[str, Any], key: str) -> float:
    details = stats.get(f"{key}_details") or {}
    return float(details.get("rate") or 0.0)


def list_queues(url: str = DEFAULT_URL, user: str = "guest", password: str = "guest",
                vhost: str = "/", include_all: bool = False,
                timeout: float = 10.0) -> list[QueueRow]:
    """Return the queues of `vhost`, sorted by name: only fedmq's (`fedmq.*`) unless
    `include_all`. Raises ManagementAPIError with a message meant for a person."""
    path = f"queues/{urllib.parse.quote(vhost, safe='')}"
    items = api_get(path, url, user, password, timeout)
    if not isinstance(items, list):
        raise ManagementAPIError(f"unexpected answer from {url}/api/{path}: not a list")
    rows = [QueueRow.from_api(item) for item in items]
    if not include_all:
        rows = [row for row in rows if row.name.startswith(FEDMQ_PREFIX)]
    return sorted(rows, key=lambda row: row.name)


def api_get(path: str, url: str = DEFAULT_URL, user: str = "guest", password: str = "guest",
            timeout: float = 10.0) -> Any:
    """GET `<url>/api/<path>` (path already URL-quoted, e.g. "exchanges/%2F/fedmq.dlx") and
    return the decoded JSON. Raises ManagementAPIError with a message meant for a person."""
    return api_request("GET", path, url, user, password, timeout=timeout)


def api_request(method: str, path: str, url: str = DEFAULT_URL, user: str = "guest",
                password: str = "guest", body: Any = None, timeout: float = 10.0) -> Any:
    """Send `method` to `<url>/api/<path>` (path already URL-quoted), with `body` as JSON when
    given; return the decoded JSON answer, or None when the answer is empty (PUT and DELETE
    answer 201/204 without a body). Raises ManagementAPIError with a message meant for a
    person; its `status` is the HTTP status when the API answered with an error."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ManagementAPIError(f"management API URL must start with http:// or https://, "
                                 f"got {url!r} (e.g. {DEFAULT_URL})")
    endpoint = f"{url.rstrip('/')}/api/{path.lstrip('/')}"
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    # "*/*" too: RabbitMQ answers 406 to a purge (DELETE .../contents) that accepts JSON only
    headers = {"Authorization": f"Basic {token}", "Accept": "application/json, */*;q=0.5"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(endpoint, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        error = ManagementAPIError(_http_error_message(exc, endpoint, user))
        error.status = exc.code
        raise error from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ManagementAPIError(f"cannot reach the RabbitMQ management API at {endpoint} "
                                 f"({reason}). {ENABLE_HINT}") from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:  # json.JSONDecodeError
        raise ManagementAPIError(f"{endpoint} did not answer with JSON ({exc}); is this the "
                                 f"RabbitMQ management API? {ENABLE_HINT}") from None


def _http_error_message(exc: urllib.error.HTTPError, endpoint: str, user: str) -> str:
    if exc.code == 401:
        return (f"the management API at {endpoint} refused user {user!r} (401): wrong "
                f"user name or password, or the user lacks the 'management' or 'monitoring' tag")
    if exc.code == 404:
        return f"{endpoint} not found (404): does the vhost (or object) exist?"
    return f"the management API at {endpoint} answered {exc.code} {exc.reason}"


# --- virtual hosts (e.g. one per test run, see tests/conftest.py) -----------------------------

def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def create_vhost(name: str, url: str = DEFAULT_URL, user: str = "guest",
                 password: str = "guest", description: str = "",
                 timeout: float = 10.0) -> None:
    """Create virtual host `name` (PUT /api/vhosts/<name>; an existing one is left as it is
    apart from its description). The user needs the `administrator` tag; see
    set_permissions for the rights on it."""
    api_request("PUT", f"vhosts/{_quote(name)}", url, user, password,
                body={"description": description}, timeout=timeout)


def set_permissions(vhost: str, username: str, configure: str = ".*", write: str = ".*",
                    read: str = ".*", url: str = DEFAULT_URL, user: str = "guest",
                    password: str = "guest", timeout: float = 10.0) -> None:
    """Give `username` the configure/write/read regexes on `vhost` (default: everything), as
    `rabbitmqctl set_permissions -p <vhost> <username> ...` does."""
    api_request("PUT", f"permissions/{_quote(vhost)}/{_quote(username)}", url, user, password,
                body={"configure": configure, "write": write, "read": read}, timeout=timeout)


def delete_vhost(name: str, url: str = DEFAULT_URL, user: str = "guest",
                 password: str = "guest", missing_ok: bool = True,
                 timeout: float = 30.0) -> bool:
    """Delete virtual host `name` with everything in it (queues, exchanges, permissions; its
    connections are closed). Returns False when it did not exist (an error unless
    `missing_ok`)."""
    try:
        api_request("DELETE", f"vhosts/{_quote(name)}", url, user, password, timeout=timeout)
    except ManagementAPIError as exc:
        if missing_ok and exc.status == 404:
            return False
        raise
    return True


def list_vhosts(url: str = DEFAULT_URL, user: str = "guest", password: str = "guest",
                timeout: float = 10.0) -> list[dict[str, Any]]:
    """GET /api/vhosts: one dict per virtual host (name, description, messages, ...)."""
    items = api_get("vhosts", url, user, password, timeout)
    if not isinstance(items, list):
        raise ManagementAPIError(f"unexpected answer from {url}/api/vhosts: not a list")
    return items


COLUMNS = ("queue", "ready", "unacked", "consumers", "publish/s", "deliver/s")


def format_table(rows: list[QueueRow]) -> str:
    """The rows as a fixed-width text table with a header line."""
    cells = [COLUMNS] + [
        (clean(r.name, 255), str(r.messages_ready), str(r.messages_unacknowledged),
         str(r.consumers),
         f"{r.publish_rate:.1f}", f"{r.deliver_rate:.1f}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        name, *numbers = line
        lines.append("  ".join([name.ljust(widths[0])]
                               + [n.rjust(w) for n, w in zip(numbers, widths[1:])]).rstrip())
    return "\n".join(lines)


def get_queue(name: str, url: str = DEFAULT_URL, user: str = "guest", password: str = "guest",
              vhost: str = "/", timeout: float = 10.0) -> dict[str, Any] | None:
    """GET /api/queues/<vhost>/<name>: the queue's details (messages, consumers, ...), or None
    when it does not exist. Raises ManagementAPIError for anything else."""
    try:
        return api_get(f"queues/{_quote(vhost)}/{_quote(name)}", url, user, password, timeout)
    except ManagementAPIError as exc:
        if exc.status == 404:
            return None
        raise


def purge_queue(name: str, url: str = DEFAULT_URL, user: str = "guest",
                password: str = "guest", vhost: str = "/", timeout: float = 10.0) -> None:
    """Remove every ready message of queue `name` (DELETE /api/queues/<vhost>/<name>/contents;
    unacknowledged ones stay with their consumer). Raises ManagementAPIError (404: no such
    queue or vhost)."""
    api_request("DELETE", f"queues/{_quote(vhost)}/{_quote(name)}/contents", url, user, password,
                timeout=timeout)


def delete_queue(name: str, url: str = DEFAULT_URL, user: str = "guest",
                 password: str = "guest", vhost: str = "/", timeout: float = 10.0) -> None:
    """Delete queue `name` with its messages (DELETE /api/queues/<vhost>/<name>; its consumers
    are cancelled: a fedmq worker declares its queue again). Raises ManagementAPIError."""
    api_request("DELETE", f"queues/{_quote(vhost)}/{_quote(name)}", url, user, password,
                timeout=timeout)


# --- the command ----------------------------------------------------------------------------------

#: seconds `fedmq queues` waits for the management API (a host that drops packets)
COMMAND_TIMEOUT = 5.0


def _api_args(args: argparse.Namespace) -> dict[str, Any]:
    """url/user/password/vhost for the API calls: --user, --password and --vhost when given,
    else what --url names. Raises UsageError for a --url that is not an AMQP URL."""
    user, password, vhost = url_login(check_amqp_url(args.url))
    return {"url": args.management_url, "user": args.user or user,
            "password": args.password or password, "vhost": args.vhost or vhost,
            "timeout": COMMAND_TIMEOUT}


def run_queues(args: argparse.Namespace) -> int:
    """The `fedmq queues [list]` command: print the table, or a clear error and exit code 2."""
    try:
        api = _api_args(args)
        rows = list_queues(include_all=args.all, **api)
    except (ManagementAPIError, UsageError) as exc:
        print(f"fedmq queues: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    if not rows:
        which = "queues" if args.all else "fedmq queues (fedmq.*; --all shows every queue)"
        print(f"no {which} in vhost {api['vhost']!r}")
        return 0
    print(format_table(rows))
    return 0


def run_queue_action(args: argparse.Namespace) -> int:
    """`fedmq queues purge|delete QUEUE`: checked (a fedmq queue unless --any-queue; it exists),
    confirmed (see fedmq.cli_options.confirm), done. Exit 0 done, 1 not confirmed, 2 refused
    or the API could not be used."""
    action, name = args.queues_command, args.queue
    command = f"fedmq queues {action}"
    try:
        if not name.startswith(FEDMQ_PREFIX) and not args.any_queue:
            raise UsageError(f"{name!r} is not a fedmq queue ({FEDMQ_PREFIX}*); give "
                             f"--any-queue to {action} it anyway")
        api = _api_args(args)
        found = get_queue(name, **api)
        if found is None:
            raise UsageError(f"no queue {name!r} on vhost {api['vhost']!r} "
                             f"(`fedmq queues --all` lists them)")
        count, consumers = int(found.get("messages") or 0), int(found.get("consumers") or 0)
        what = f"{count} message{'s' * (count != 1)}"
        if action == "delete":
            what += f", {consumers} consumer{'s' * (consumers != 1)}"
        if not confirm(f"{action} queue {name!r} ({what}, sampled every 5 s) on vhost "
                       f"{api['vhost']!r}", args.yes):
            print(f"{command}: not confirmed; nothing done", file=sys.stderr)
            return 1
        (purge_queue if action == "purge" else delete_queue)(name, **api)
    except (ManagementAPIError, UsageError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_API_ERROR
    print(f"fedmq queues: {action}d {name!r} on vhost {api['vhost']!r}")
    return 0


def _connection_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every `fedmq queues` form takes. On a subcommand (`suppress`) they default
    to nothing, so `fedmq queues --vhost v purge q` keeps the --vhost given before it."""
    extra = {"default": argparse.SUPPRESS} if suppress else {}
    add_url_option(p, **extra)
    add_management_url_option(p, **extra)
    p.add_argument("--user", help="management API user (default: the user of --url)",
                   **({"default": argparse.SUPPRESS} if suppress else {"default": None}))
    p.add_argument("--password", help="its password (default: the password of --url)",
                   **({"default": argparse.SUPPRESS} if suppress else {"default": None}))
    p.add_argument("--vhost", help="virtual host (default: the vhost of --url, / for the "
                                   "default --url)",
                   **({"default": argparse.SUPPRESS} if suppress else {"default": None}))


def add_queues_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedmq queues [list|purge|delete]` on the `fedmq` parser's subcommands."""
    p = sub.add_parser(
        "queues", help="list fedmq queues with depth, consumers and rates; purge or delete one",
        description="List fedmq's queues (fedmq.*) with depth, unacked messages, consumers "
                    "and publish/deliver rates, from the RabbitMQ management API (`fedmq "
                    "queues` or `fedmq queues list`; numbers are sampled by the broker every "
                    "5 s by default); `purge QUEUE` removes a queue's ready messages, "
                    "`delete QUEUE` the queue. Both ask first (--yes on a script). --url names "
                    "the broker user and vhost; --management-url where the API listens.")
    _connection_options(p, suppress=False)
    p.add_argument("--all", action="store_true", help="list queues that are not fedmq's too")
    p.set_defaults(func=run_queues)
    actions = p.add_subparsers(dest="queues_command", metavar="ACTION",
                               parser_class=OneLineParser)
    listing = actions.add_parser("list", help="list the queues (the default)")
    _connection_options(listing, suppress=True)
    listing.add_argument("--all", action="store_true", default=argparse.SUPPRESS,
                         help="list queues that are not fedmq's too")
    listing.set_defaults(func=run_queues)
    for action, helps in (("purge", "remove every ready message of QUEUE"),
                          ("delete", "delete QUEUE and its messages")):
        q = actions.add_parser(action, help=helps, description=f"{helps[0].upper()}{helps[1:]}, "
                                                              f"after asking (y/N).")
        q.add_argument("queue", metavar="QUEUE", help="the queue's name, e.g. fedmq.worker.alice")
        q.add_argument("--yes", action="store_true",
                       help="do not ask (needed when stdin is not a terminal)")
        q.add_argument("--any-queue", action="store_true",
                       help=f"allow a queue that is not fedmq's ({FEDMQ_PREFIX}*)")
        _connection_options(q, suppress=True)
        q.set_defaults(func=run_queue_action)
