"""A worker service's health file, and `fedmq worker-health`, the check that reads it.

`fedmq worker --health-file PATH` writes PATH every `--health-interval` seconds while each of
its ids is connected to the broker and consuming its queue, and removes it as soon as one is
not (the connection was lost, the broker cancelled the consumer, the service is stopping).
The file's modification time is the proof of life: a process whose event loop is stuck, or
that is frozen or killed, stops writing it, so the file goes stale. A container healthcheck
then runs

    fedmq worker-health --file PATH --max-age 30

which exits 0 when the file exists and was written within the last `--max-age` seconds (and
not in the future), and the worker process it names (`pid N on HOST`) is alive when HOST is
this one (a container's healthcheck runs in the worker's PID namespace: a killed worker is
unhealthy at once), and 1 otherwise, with one line saying why. Standard library only: the check starts in milliseconds
and never imports torch.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import stat as statmod
import sys
import time

from fedmq.cli_options import clean, seconds, usage_error

#: seconds between two writes of the health file (`fedmq worker --health-interval`)
DEFAULT_INTERVAL = 5.0
#: a health file older than this (seconds) is stale (`fedmq worker-health --max-age`)
DEFAULT_MAX_AGE = 30.0
#: the environment variable both commands read the file's path from
HEALTH_FILE_ENV = "FEDMQ_HEALTH_FILE"

#: exit statuses of `fedmq worker-health`
HEALTHY, UNHEALTHY = 0, 1


class HealthFile:
    """The file a worker process writes while it serves (`beat`) and removes when it does not
    (`clear`). Each write goes to a temporary file renamed over PATH, so a reader never sees a
    half-written file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._tmp = f"{self.path}.tmp{os.getpid()}"

    def beat(self, text: str) -> None:
        """Write `text` (what is served, for a person reading the file) and so renew the file's
        modification time."""
        with open(self._tmp, "w", encoding="utf-8") as file:
            file.write(text.rstrip("\n") + "\n")
        os.replace(self._tmp, self.path)

    def clear(self) -> None:
        """Remove the file (nothing happens when there is none)."""
        for path in (self.path, self._tmp):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


#: a file written more than this many seconds in the future (by this host's clock) is not a
#: proof of life: a clock set back, or a file touched by hand
FUTURE_SLACK = 5.0
#: what `fedmq worker` writes in the file: "serving <ids> (pid <pid> on <host>)"
_PID = re.compile(r"\(pid (\d+)(?: on ([^)\s]+))?\)\s*$")


def beat_text(ids: str, pid: int | None = None, host: str | None = None) -> str:
    """The line a worker serving `ids` writes in its health file: the check reads the pid back
    (a pid that is gone on this host is a dead worker, whatever the file's age)."""
    return (f"serving {ids} (pid {os.getpid() if pid is None else pid} on "
            f"{host or socket.gethostname()})")


def _pid_gone(what: str) -> int | None:
    """The pid the file's line names when that process does not exist on this host (the
    line names this host, or none); else None."""
    found = _PID.search(what)
    if found is None:
        return None
    pid, host = int(found.group(1)), found.group(2)
    if host is not None and host != socket.gethostname():
        return None  # another host's (or container's) process: only the age tells
    if pid <= 0:
        return pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except OSError:  # EPERM: it exists, as another user's process
        return None
    return None


def check(path: str | os.PathLike, max_age: float, now: float | None = None) -> tuple[int, str]:
    """(HEALTHY or UNHEALTHY, one line why) for the health file at `path`."""
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return UNHEALTHY, (f"unhealthy: no health file {path} (the worker is starting, lost its "
                           f"broker connection or its consumer, or stopped)")
    except OSError as exc:
        return UNHEALTHY, f"unhealthy: cannot read {path}: {exc.strerror or exc}"
    if statmod.S_ISDIR(stat.st_mode):
        return UNHEALTHY, (f"unhealthy: {path} is a directory, not a health file (--file names "
                           f"the file `fedmq worker --health-file` writes)")
    age = (time.time() if now is None else now) - stat.st_mtime
    if age > max_age:
        return UNHEALTHY, (f"unhealthy: {path} was last written {age:.0f} s ago (more than "
                           f"--max-age {max_age:g} s): the worker process is stuck or gone")
    if age < -FUTURE_SLACK:
        return UNHEALTHY, (f"unhealthy: {path} was written {-age:.0f} s in the future (the "
                           f"clock was set back, or something else wrote it): not a proof "
                           f"of life")
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            what = file.readline(1000).strip()
    except OSError:  # removed between stat and open: it just stopped serving
        return UNHEALTHY, f"unhealthy: {path} was removed (the worker stopped serving)"
    gone = _pid_gone(what)
    if gone is not None:
        return UNHEALTHY, (f"unhealthy: {path} names pid {gone}, which is not running (the "
                           f"worker was killed)")
    return HEALTHY, f"healthy: {clean(what, 200) or 'serving'} (written {max(age, 0):.0f} s ago)"


def run_check(args: argparse.Namespace) -> int:
    if not args.file:
        usage_error("worker-health", f"give the health file with --file PATH or "
                                     f"${HEALTH_FILE_ENV}")
    status, line = check(args.file, args.max_age)
    print(line, file=sys.stdout if status == HEALTHY else sys.stderr)
    return status


def add_health_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker-health",
                       help="exit 0 if a worker's --health-file is fresh (container healthcheck)",
                       description="Exit 0 if the health file `fedmq worker --health-file` "
                                   "writes exists and is recent, else 1 (a container "
                                   "healthcheck: the worker is connected and consuming).")
    p.add_argument("--file", default=os.environ.get(HEALTH_FILE_ENV), metavar="PATH",
                   help=f"the worker's health file (default ${HEALTH_FILE_ENV}; one of the "
                        f"two is needed)")
    p.add_argument("--max-age", type=seconds(), default=DEFAULT_MAX_AGE, metavar="SECONDS",
                   help="older than this, the file is stale: the worker is stuck "
                        "(default %(default)g; keep it a few times the worker's "
                        "--health-interval)")
    p.set_defaults(func=run_check)
