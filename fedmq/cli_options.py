"""What the `fedmq` commands share, spelled the same everywhere: the URL options, one-line
usage errors, and the confirmation asked before a destructive action.

    add_url_option(p)              --url: the AMQP broker ($FEDMQ_URL, amqp://guest:guest@...)
    add_management_url_option(p)   --management-url: the HTTP API ($FEDMQ_MANAGEMENT_URL)
    add_management_options(p)      --management-url, --management-user, --management-password
                                   (user and password default to those of --url)
    management_credentials(args)   (user, password) for the management API
    usage_error(command, message)  print `fedmq <command>: <message>`, exit 2
    clean(value, limit)            untrusted text as one printable line (escapes shown, cut)
    check_amqp_url(url, option)    an AMQP URL with a host and a good port, else a UsageError
                                   naming the option (an http(s):// one: --management-url)
    url_option(url)                "--url", or "--url (here from $FEDMQ_URL)"
    url_login(url)                 (user, password, vhost) an AMQP URL names
    confirm(action, yes)           True to go on; False when a person answered no
    OneLineParser                  an argparse error is one line `fedmq <command>: ...`, exit 2

No torch and no aio-pika here: `fedmq queues --help` stays instant.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import urllib.parse
from typing import Any, Callable, NoReturn, TextIO

from fedmq.errors import FedmqError

#: the broker's AMQP URL when neither --url nor $FEDMQ_URL gives one
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: the management API's base URL when neither --management-url nor $FEDMQ_MANAGEMENT_URL does
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:15672"
URL_ENV = "FEDMQ_URL"
MANAGEMENT_URL_ENV = "FEDMQ_MANAGEMENT_URL"
#: exit code of a usage mistake, a refusal, or a broker / API that cannot be used
EXIT_USAGE = 2


class UsageError(FedmqError):
    """An operator command was given options it cannot use (one line for a person, exit 2)."""


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line (and exit 2), not the usage and then the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_url_option(p: argparse.ArgumentParser, **kwargs) -> None:
    """--url, the AMQP broker URL (default $FEDMQ_URL or DEFAULT_AMQP_URL); `kwargs` go to
    add_argument (e.g. default=argparse.SUPPRESS on a subcommand, which still shows the
    default the command uses). A password in the default is shown as ***."""
    default = os.environ.get(URL_ENV) or DEFAULT_AMQP_URL
    kwargs.setdefault("default", default)
    p.add_argument("--url", metavar="AMQP_URL",
                   help=f"the RabbitMQ broker, amqp://user:password@host:port/vhost "
                        f"({_default(URL_ENV, DEFAULT_AMQP_URL)})", **kwargs)


def add_management_url_option(p: argparse.ArgumentParser, *, hidden_alias: str | None = None,
                              **kwargs) -> None:
    """--management-url, the management API's base URL (default $FEDMQ_MANAGEMENT_URL or
    DEFAULT_MANAGEMENT_URL); `hidden_alias` (e.g. "--mgmt-url") is accepted and not shown."""
    default = os.environ.get(MANAGEMENT_URL_ENV) or DEFAULT_MANAGEMENT_URL
    kwargs.setdefault("default", default)
    p.add_argument("--management-url", dest="management_url", metavar="HTTP_URL",
                   help=f"the RabbitMQ management API "
                        f"({_default(MANAGEMENT_URL_ENV, DEFAULT_MANAGEMENT_URL)})", **kwargs)
    if hidden_alias:
        p.add_argument(hidden_alias, dest="management_url", help=argparse.SUPPRESS,
                       default=argparse.SUPPRESS)


def _default(env: str, fallback: str) -> str:
    """The help's "default ..." for an option read from $`env`: the value in use now (its
    password shown as ***), escaped for argparse's %-formatting."""
    value = os.environ.get(env)
    shown = f"default ${env}: {_masked(value)}" if value else f"default ${env} or {fallback}"
    return shown.replace("%", "%%")


def _masked(url: str) -> str:
    """`url` with its password (if any) shown as ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


#: what check_amqp_url says a broker URL looks like
AMQP_URL_FORM = "amqp://user:password@host:5672/vhost"


def url_option(url: str, option: str = "--url", envs: tuple[str, ...] = (URL_ENV,)) -> str:
    """How a message names the option `url` came from: `option`, or "--url (here from
    $FEDMQ_URL)" when it is the value of one of `envs` (the option's default)."""
    for env in envs:
        if url and url == os.environ.get(env):
            return f"{option} (here from ${env})"
    return option


def _where(url: str) -> str:
    """`url` without its user and password (for a message), as one printable line."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return clean(url.rpartition("@")[2], 80)
    return clean(f"{scheme}://{rest.rpartition('@')[2]}", 80)  # a password may hold a /


def check_amqp_url(url: str, option: str | None = None, *,
                   management_option: str | None = "--management-url") -> str:
    """`url` when it is an amqp:// or amqps:// URL naming a broker host, with a port (if any)
    from 1 to 65535. Raises UsageError (one line, never the password) otherwise, naming
    `option` (default: --url, "--url (here from $FEDMQ_URL)" when it is that variable's value)
    and, for an http(s):// one (what `fedmq queues --url` used to take), `management_option`
    (None: a command with no management API option)."""
    option = option or url_option(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        if management_option:
            raise UsageError(f"{option} is the AMQP broker URL (amqp://...); {scheme}:// is the "
                             f"management API: give it with {management_option}")
        raise UsageError(f"{option} is the AMQP broker URL ({AMQP_URL_FORM}); {scheme}:// is "
                         f"the management API, which this command does not use")
    if scheme not in ("amqp", "amqps"):
        raise UsageError(f"{option} must be an amqp:// or amqps:// URL ({AMQP_URL_FORM}), "
                         f"not {_where(url)!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        if "port" in str(exc).lower():
            raise UsageError(f"{option}: the port of {_where(url)!r} is not a number from 1 to "
                             f"65535") from None
        raise UsageError(f"{option}: {_where(url)!r} is not a broker URL ({clean(exc, 80)}; "
                         f"{AMQP_URL_FORM}, an IPv6 address in [ ])") from None
    if port == 0:
        raise UsageError(f"{option}: the port of {_where(url)!r} is not a number from 1 to "
                         f"65535")
    host = parts.hostname
    if not host:
        raise UsageError(f"{option}: {_where(url)!r} names no broker host ({AMQP_URL_FORM})")
    if ":" not in host and not _host_name(host):
        raise UsageError(f"{option}: {_where(url)!r}: {clean(host, 60)!r} is not a host name "
                         f"or address ({AMQP_URL_FORM})")
    return url


def _host_name(host: str) -> bool:
    """Whether `host` is a name the resolver takes: dot-separated labels of 1-63 characters
    (a trailing dot allowed), nothing blank or non-printable, encodable as IDNA."""
    labels = urllib.parse.unquote(host).removesuffix(".").split(".")
    if any(not label or len(label) > 63 or not label.isprintable() or " " in label
           for label in labels):
        return False
    try:
        ".".join(labels).encode("idna")
    except UnicodeError:
        return False
    return True


def url_login(url: str) -> tuple[str, str, str]:
    """The user, password and vhost an AMQP URL names (guest, guest and "/" when it names none;
    percent-decoded, as the broker reads them)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    vhost = urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
    return (urllib.parse.unquote(parts.username or "guest"),
            urllib.parse.unquote(parts.password or "guest"), vhost)


def confirm(action: str, yes: bool, *, stdin: TextIO | None = None,
            stdout: TextIO | None = None) -> bool:
    """Whether to go on with a destructive `action` ("purge queue 'x' (3 messages)"): True at
    once with `yes` (--yes); on a terminal, asks `<action>? [y/N]` and returns True only for an
    answer y or yes. Raises UsageError when stdin is not a terminal and `yes` is not given (a
    script must say --yes)."""
    if yes:
        return True
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if stdin is None or stdin.closed or not stdin.isatty():
        raise UsageError(f"refusing to {action} without asking: stdin is not a terminal; give "
                         f"--yes to go on")
    stdout.write(f"{action[0].upper()}{action[1:]}? [y/N] ")
    stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def add_broker_url(parser: argparse.ArgumentParser) -> None:
    """`--url`, as add_url_option (the commands that watch a run)."""
    add_url_option(parser)


def add_management_options(parser: argparse.ArgumentParser) -> None:
    """`--management-url`, `--management-user`, `--management-password` (the user and password
    default to those of --url: see `management_credentials`)."""
    add_management_url_option(parser)
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
    user, password, _ = url_login(amqp_url)
    return user, password


def url_vhost(amqp_url: str) -> str:
    """The vhost an AMQP URL names, as the AMQP clients read it ("/" for an empty path)."""
    return url_login(amqp_url)[2]


def management_credentials(args: argparse.Namespace) -> tuple[str, str]:
    """(user, password) for the management API: the options, else those of --url."""
    user, password = url_credentials(args.url)
    return (args.management_user or user,
            args.management_password if args.management_password is not None else password)


def usage_error(command: str, message: str) -> NoReturn:
    """Print `fedmq <command>: <message>` on stderr and exit 2."""
    print(f"fedmq {command}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


#: what `clean` keeps of a text by default (characters)
MAX_TEXT = 300


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """`value` as one line of printable text for a terminal: control, format and other
    non-printable characters (escape sequences, newlines, bidi overrides) shown as
    \\xNN / \\uNNNN escapes, cut to `limit` characters. Worker ids, reasons, queue names and
    headers are other people's text: print them through this."""
    text = str(value)
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    return out if len(out) <= limit else out[:limit - 1] + "…"


#: what a worker id may hold: it names the queue fedmq.worker.<id> and folders and log files
WORKER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
MAX_WORKER_ID = 200


def check_worker_id(value: str, option: str) -> str:
    """`value` when it is a worker id (1-200 of letters, digits, _ - .; not . or ..).
    Raises UsageError naming `option` otherwise."""
    if not value or value in (".", "..") or len(value) > MAX_WORKER_ID or \
            not set(value) <= WORKER_ID_CHARS:
        raise UsageError(f"{option}: {clean(value, 60)!r} is not a worker id (1-"
                         f"{MAX_WORKER_ID} letters, digits, _ - . only)")
    return value


# -- argparse types, one of each for every command ----------------------------------------------

def whole_number(minimum: int = 0, maximum: int | None = None,
                 why: str = "") -> Callable[[str], int]:
    """argparse type: a whole number from `minimum` to `maximum` (None: no bound); `why`
    says where the maximum comes from (", AMQP's largest prefetch")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            bound = "0 or more" if minimum == 0 else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}{why}, got {value}")
        return value
    return parse


def seconds(zero: str | None = None) -> Callable[[str], float]:
    """argparse type: a finite number of seconds, more than 0 (or 0 too, meaning `zero`:
    "no limit", "do not wait")."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and zero is None):
            allowed = f"0 ({zero}) or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds, {allowed}; got "
                                             f"{text!r}")
        return value
    return parse
