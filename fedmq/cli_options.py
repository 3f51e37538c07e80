"""Options that several `fedmq` commands share, spelled the same everywhere:

    --url                   the AMQP broker URL ($FEDMQ_URL, else amqp://guest:guest@127.0.0.1:5672/)
    --management-url        the RabbitMQ management API ($FEDMQ_MANAGEMENT_URL, else
                            http://127.0.0.1:15672)
    --management-user       its user ($FEDMQ_MANAGEMENT_USER, else the user of --url)
    --management-password   its password ($FEDMQ_MANAGEMENT_PASSWORD, else the one of --url)

and `usage_error`, the one-line usage mistake every command prints (exit 2). Standard library
only: a command's --help must not import torch or aio-pika.
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from typing import NoReturn

from fedmq.management import DEFAULT_URL as DEFAULT_MANAGEMENT_URL

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: exit code of a usage or configuration mistake (as argparse's own)
EXIT_USAGE = 2


def add_broker_url(parser: argparse.ArgumentParser) -> None:
    """`--url`: the AMQP broker URL, its vhost the one watched/used."""
    parser.add_argument(
        "--url", default=os.environ.get("FEDMQ_URL") or DEFAULT_AMQP_URL, metavar="AMQP_URL",
        help="RabbitMQ broker URL, amqp://user:password@host:port/vhost (default $FEDMQ_URL "
             f"or {DEFAULT_AMQP_URL})")


def add_management_options(parser: argparse.ArgumentParser) -> None:
    """`--management-url`, `--management-user`, `--management-password` (the user and password
    default to those of --url: see `management_credentials`)."""
    parser.add_argument(
        "--management-url", metavar="HTTP_URL",
        default=os.environ.get("FEDMQ_MANAGEMENT_URL") or DEFAULT_MANAGEMENT_URL,
        help="RabbitMQ management API base URL (default $FEDMQ_MANAGEMENT_URL or "
             f"{DEFAULT_MANAGEMENT_URL})")
    parser.add_argument(
        "--management-user", default=os.environ.get("FEDMQ_MANAGEMENT_USER"), metavar="USER",
        help="management API user (default $FEDMQ_MANAGEMENT_USER or the user of --url)")
    parser.add_argument(
        "--management-password", default=os.environ.get("FEDMQ_MANAGEMENT_PASSWORD"),
        metavar="PASSWORD",
        help="its password (default $FEDMQ_MANAGEMENT_PASSWORD or the password of --url)")


def url_credentials(amqp_url: str) -> tuple[str, str]:
    """The (percent-decoded) user and password an AMQP URL names; guest/guest when it names
    none."""
    parts = urllib.parse.urlsplit(amqp_url)
    return (urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"))


def url_vhost(amqp_url: str) -> str:
    """The vhost an AMQP URL names, as the AMQP clients read it ("/" for an empty path)."""
    path = urllib.parse.urlsplit(amqp_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def management_credentials(args: argparse.Namespace) -> tuple[str, str]:
    """(user, password) for the management API: the options, else those of --url."""
    user, password = url_credentials(args.url)
    return (args.management_user or user,
            args.management_password if args.management_password is not None else password)


def usage_error(command: str, message: str) -> NoReturn:
    """Print `fedmq <command>: <message>` on stderr and exit 2."""
    print(f"fedmq {command}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)
