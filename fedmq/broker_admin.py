"""`fedmq broker add-user` / `fedmq broker delete-user`: broker users by role, through the
RabbitMQ management API (fedmq/management.py), so each worker, client and coordinator logs in
with credentials of its own and may do only what its role needs.

    role_permissions(role, name) -> (configure, write, read)   the regexes, checked on RabbitMQ
    add_user(name, role, password, ...)    the user, its permissions on the vhost, fedmq's
                                           exchanges; for a worker its queue and binding
    delete_user(name, ...)                 the user (and, if asked, a worker's queue)

Every role has configure `^$`: no user but the administrator declares or deletes anything. So a
worker's queue `fedmq.worker.<name>` and its binding on `fedmq.commands` are made here, with the
arguments the worker service declares (fedmq.transport.amqp.worker_queue_arguments), and the
worker service, refused the declare and the bind, uses them as they are (service.py,
`_declare_queue`). Every message a fedmq connection publishes carries its login as `user_id`,
which the broker checks, so what a role may publish is always attributed to that user.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import sys
import urllib.parse
from typing import Any

from fedmq.cli_options import (EXIT_USAGE, OneLineParser, UsageError, add_management_url_option,
                               add_url_option, check_amqp_url, url_vhost)
from fedmq.errors import FedmqError
from fedmq.management import DEFAULT_URL, ManagementAPIError, api_request
from fedmq.transport.amqp import (COMMANDS_EXCHANGE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE,
                                  EXCHANGES, QUEUE_TYPES, queue_name, worker_queue_arguments)

ROLES = ("worker", "client", "coordinator")
#: a user (and worker) name: what a queue name, a permission regex and a shell word all take
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: exit code of `fedmq broker` on an error
EXIT_ERROR = EXIT_USAGE

NOTHING = "^$"


class BrokerAdminError(FedmqError):
    """A `fedmq broker` request is wrong, or the broker refused it (one line, for a person)."""


def role_permissions(role: str, name: str) -> tuple[str, str, str]:
    """The configure, write and read regexes of `role` for user `name` on a vhost, each worked
    out on RabbitMQ 3.10 (tests/test_broker_roles.py checks every one):

    * worker: reads (consumes) only its queue `fedmq.worker.<name>`; writes `fedmq.commands`
      (objects moved to other workers, SMPC dealing), `fedmq.dlx` (dead-letter copies that say
      why) and `amq.default` (replies: direct reply-to answers go through the default
      exchange, so the permission cannot name the caller's reply queue);
    * client: writes `fedmq.commands` only; reads nothing (consuming `amq.rabbitmq.reply-to`
      for direct reply-to needs no permission);
    * coordinator: a client that also publishes round events on `fedmq.events`.
    """
    if role == "worker":
        return (NOTHING, r"^(fedmq\.commands|fedmq\.dlx|amq\.default)$",
                f"^{re.escape(queue_name(name))}$")
    if role == "client":
        return NOTHING, r"^fedmq\.commands$", NOTHING
    if role == "coordinator":
        return NOTHING, r"^(fedmq\.commands|fedmq\.events)$", NOTHING
    raise BrokerAdminError(f"role {role!r} is not one of {', '.join(ROLES)}")


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password)), with
    a random 4-byte salt. The management API gets the hash, never the password."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BrokerAdminError(f"user name {name!r}: use letters, digits, '_', '.' and '-' "
                               f"(at most 100, starting with a letter or digit)")
    return name


class _API:
    """The management API at `url` as `user`."""

    def __init__(self, url: str, user: str, password: str) -> None:
        self.url, self.user, self.password = url, user, password

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        return api_request(method, path, self.url, self.user, self.password, body=body)

    def get(self, path: str) -> Any:
        """GET `path`; None when the API answers 404."""
        try:
            return self("GET", path)
        except ManagementAPIError as exc:
            if exc.status == 404:
                return None
            raise


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def ensure_topology(api: _API, vhost: str) -> None:
    """fedmq's exchanges, the dead-letter queue and its binding on `vhost`, as
    broker_config/definitions.json declares them (idempotent; an exchange of another type is
    an error)."""
    v = _q(vhost)
    for name, kind in EXCHANGES:
        api("PUT", f"exchanges/{v}/{_q(name)}", {"type": kind, "durable": True,
                                                  "auto_delete": False, "internal": False,
                                                  "arguments": {}})
    api("PUT", f"queues/{v}/{_q(DEAD_LETTER_QUEUE)}", {"durable": True, "auto_delete": False,
                                                      "arguments": {}})
    api("POST", f"bindings/{v}/e/{_q(DEAD_LETTER_EXCHANGE)}/q/{_q(DEAD_LETTER_QUEUE)}",
        {"routing_key": "", "arguments": {}})


def add_user(name: str, role: str, password: str, *, vhost: str = "/",
             url: str = DEFAULT_URL, admin_user: str = "guest", admin_password: str = "guest",
             queue_type: str = "classic", update: bool = False) -> tuple[str, str, str]:
    """Create (or, with `update`, reset) user `name` with `role`'s permissions on `vhost`,
    fedmq's exchanges there, and for a worker its queue and binding. Returns the permissions.
    Raises BrokerAdminError (one line)."""
    check_name(name)
    permissions = role_permissions(role, name)
    api = _API(url, admin_user, admin_password)
    try:
        if api.get(f"vhosts/{_q(vhost)}") is None:
            raise BrokerAdminError(f"vhost {vhost!r} does not exist on {url} (create it, or "
                                   f"give --vhost)")
        existing = api.get(f"users/{_q(name)}")
        if existing is not None:
            tags = existing.get("tags") or []
            tags = tags.split(",") if isinstance(tags, str) else list(tags)
            if any(tag.strip() for tag in tags):
                raise BrokerAdminError(f"user {name!r} exists with tags {','.join(tags)}: not a "
                                       f"fedmq role user; refusing to change it")
            if not update:
                raise BrokerAdminError(f"user {name!r} exists; give --update to reset its "
                                       f"password and permissions")
        ensure_topology(api, vhost)
        api("PUT", f"users/{_q(name)}", {"password_hash": password_hash(password),
                                         "hashing_algorithm": "rabbit_password_hashing_sha256",
                                         "tags": ""})
        configure, write, read = permissions
        api("PUT", f"permissions/{_q(vhost)}/{_q(name)}",
            {"configure": configure, "write": write, "read": read})
        if role == "worker":
            queue = queue_name(name)
            api("PUT", f"queues/{_q(vhost)}/{_q(queue)}",
                {"durable": True, "auto_delete": False,
                 "arguments": worker_queue_arguments(queue_type)})
            api("POST", f"bindings/{_q(vhost)}/e/{_q(COMMANDS_EXCHANGE)}/q/{_q(queue)}",
                {"routing_key": name, "arguments": {}})
    except ManagementAPIError as exc:
        raise BrokerAdminError(str(exc)) from None
    return permissions


def delete_user(name: str, *, vhost: str = "/", delete_queue: bool = False,
                url: str = DEFAULT_URL, admin_user: str = "guest",
                admin_password: str = "guest") -> None:
    """Delete user `name` (its permissions go with it) and, with `delete_queue`, the worker
    queue `fedmq.worker.<name>` on `vhost` (its messages are lost). Raises BrokerAdminError."""
    check_name(name)
    if name == admin_user:
        raise BrokerAdminError(f"refusing to delete {name!r}, the administrator this command "
                               f"logs in as")
    api = _API(url, admin_user, admin_password)
    try:
        if api.get(f"users/{_q(name)}") is None:
            raise BrokerAdminError(f"no user {name!r} on {url}")
        api("DELETE", f"users/{_q(name)}")
        if delete_queue:
            api("DELETE", f"queues/{_q(vhost)}/{_q(queue_name(name))}")
    except ManagementAPIError as exc:
        raise BrokerAdminError(str(exc)) from None


# --- the command ----------------------------------------------------------------------------------

def read_secret(path: str, what: str) -> str:
    """The first line of file `path` (a password), checked before anything is sent."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.readline().rstrip("\r\n")
    except OSError as exc:
        raise BrokerAdminError(f"cannot read {what} {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BrokerAdminError(f"{what} {path!r} is not UTF-8 text") from None
    if not text:
        raise BrokerAdminError(f"{what} {path!r} is empty")
    return text


def _vhost(args: argparse.Namespace) -> str:
    """--vhost, else the vhost of --url ($FEDMQ_URL): the one the services connect to."""
    if args.vhost is not None:
        return args.vhost
    try:
        return url_vhost(check_amqp_url(args.url))
    except UsageError as exc:
        raise BrokerAdminError(str(exc)) from None


def _admin(args: argparse.Namespace) -> dict[str, str]:
    if args.admin_password_file:
        password = read_secret(args.admin_password_file, "--admin-password-file")
    else:
        password = os.environ.get("FEDMQ_ADMIN_PASSWORD") or "guest"
    return {"url": args.management_url, "admin_user": args.admin_user, "admin_password": password}


def run_add_user(args: argparse.Namespace) -> int:
    out_fd = None
    try:
        check_name(args.name)
        if args.password_file and args.password_out:
            raise BrokerAdminError("--password-out is for a generated password; --password-file "
                                   "gives one already")
        args.vhost = _vhost(args)
        admin = _admin(args)
        password = (read_secret(args.password_file, "--password-file") if args.password_file
                    else secrets.token_urlsafe(24))
        if args.password_out:  # claimed now (never overwritten), written once the user exists
            try:
                out_fd = os.open(args.password_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise BrokerAdminError(f"--password-out {args.password_out!r} exists (it is "
                                       f"never overwritten)") from None
            except OSError as exc:
                raise BrokerAdminError(f"--password-out {args.password_out!r}: "
                                       f"{exc.strerror}") from None
        configure, write, read = add_user(args.name, args.role, password, vhost=args.vhost,
                                          queue_type=args.queue_type, update=args.update,
                                          **admin)
    except BrokerAdminError as exc:
        if out_fd is not None:
            os.close(out_fd)
            os.unlink(args.password_out)
        print(f"fedmq broker add-user: {exc}", file=sys.stderr)
        return EXIT_ERROR
    queue = (f"; queue {queue_name(args.name)} bound to {COMMANDS_EXCHANGE} under "
             f"{args.name!r}" if args.role == "worker" else "")
    print(f"fedmq broker: user {args.name!r} ({args.role}) on vhost {args.vhost!r}: configure "
          f"{configure} write {write} read {read}{queue}")
    if out_fd is not None:
        with os.fdopen(out_fd, "w") as file:
            file.write(password + "\n")
        print(f"fedmq broker: its password is in {args.password_out}")
    elif not args.password_file:
        print(f"password (shown once): {password}")
    return 0


def run_delete_user(args: argparse.Namespace) -> int:
    try:
        args.vhost = _vhost(args)
        delete_user(args.name, vhost=args.vhost, delete_queue=args.delete_queue, **_admin(args))
    except BrokerAdminError as exc:
        print(f"fedmq broker delete-user: {exc}", file=sys.stderr)
        return EXIT_ERROR
    gone = f" and queue {queue_name(args.name)}" if args.delete_queue else ""
    print(f"fedmq broker: deleted user {args.name!r}{gone}")
    return 0


def _management_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vhost", default=None,
                   help="virtual host (default: the vhost of --url, / when it names none)")
    add_url_option(p, default=argparse.SUPPRESS)
    add_management_url_option(p, hidden_alias="--mgmt-url")
    p.add_argument("--admin-user", default=os.environ.get("FEDMQ_ADMIN_USER", "guest"),
                   help="an administrator of the broker ($FEDMQ_ADMIN_USER; default "
                        "%(default)s)")
    p.add_argument("--admin-password-file", metavar="FILE",
                   help="file holding its password (default $FEDMQ_ADMIN_PASSWORD or guest)")


def add_broker_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedmq broker add-user|delete-user` on the `fedmq` parser's subcommands."""
    broker = sub.add_parser("broker", help="manage broker users by role (management API)",
                            description="Broker users by role (worker, client, coordinator), "
                                        "through the RabbitMQ management API: each fedmq "
                                        "service logs in as its own user and may do only what "
                                        "its role needs.")
    add_url_option(broker)  # only its vhost is used: the default of --vhost
    actions = broker.add_subparsers(dest="broker_command", required=True,
                                    parser_class=OneLineParser)
    add = actions.add_parser(
        "add-user", help="create a user with a role's permissions (a worker: also its queue)",
        description="Create broker user NAME with the permissions of ROLE on the vhost, and "
                    "fedmq's exchanges if missing; for a worker also its queue fedmq.worker.NAME "
                    "and its binding on fedmq.commands, so the worker needs no configure "
                    "permission. The password comes from --password-file, or is generated and "
                    "printed once (or written to --password-out).")
    add.add_argument("name", metavar="NAME", help="user name (a worker's: its id)")
    add.add_argument("--role", required=True, choices=ROLES,
                     help=f"what the user may do: {', '.join(ROLES)} (required)")
    add.add_argument("--password-file", metavar="FILE",
                     help="file holding the password (default: a generated one)")
    add.add_argument("--password-out", metavar="FILE",
                     help="write the generated password to FILE (mode 0600; never overwritten) "
                          "instead of printing it")
    add.add_argument("--queue-type", choices=QUEUE_TYPES, default="classic",
                     help="a worker's queue type (as `fedmq worker --queue-type`; default "
                          "%(default)s)")
    add.add_argument("--update", action="store_true",
                     help="the user may exist already: reset its password and permissions")
    _management_options(add)
    add.set_defaults(func=run_add_user)
    delete = actions.add_parser("delete-user", help="delete a user",
                                description="Delete broker user NAME (and its permissions).")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--delete-queue", action="store_true",
                        help="also delete its worker queue fedmq.worker.NAME (messages lost)")
    _management_options(delete)
    delete.set_defaults(func=run_delete_user)
