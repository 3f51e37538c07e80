"""A worker service's health file, and `fedmq worker-health`, the check that reads it.

`fedmq worker --health-file PATH` writes PATH every `--health-interval` seconds while each of
its ids is connected to the broker and consuming its queue, and removes it as soon as one is
not (the connection was lost, the broker cancelled the consumer, the service is stopping).
The file's modification time is the proof of life: a process whose event loop is stuck, or
that is frozen or killed, stops writing it, so the file goes stale. A container healthcheck
then runs

    fedmq worker-health --file PATH --max-age 30

which exits 0 when the file exists and was written within the last `--max-age` seconds, and 1
otherwise, with one line saying why. Standard library only: the check starts in milliseconds
and never imports torch.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

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


def check(path: str | os.PathLike, max_age: float, now: float | None = None) -> tuple[int, str]:
    """(HEALTHY or UNHEALTHY, one line why) for the health file at `path`."""
    path = os.fspath(path)
    try:
        written = os.stat(path).st_mtime
    except FileNotFoundError:
        return UNHEALTHY, (f"unhealthy: no health file {path} (the worker is starting, lost its "
                           f"broker connection or its consumer, or stopped)")
    except OSError as exc:
        return UNHEALTHY, f"unhealthy: cannot read {path}: {exc.strerror or exc}"
    age = (time.time() if now is None else now) - written
    if age > max_age:
        return UNHEALTHY, (f"unhealthy: {path} was last written {age:.0f} s ago (more than "
                           f"--max-age {max_age:g} s): the worker process is stuck or gone")
    try:
        with open(path, encoding="utf-8") as file:
            what = file.readline().strip()
    except OSError:  # removed between stat and open: it just stopped serving
        return UNHEALTHY, f"unhealthy: {path} was removed (the worker stopped serving)"
    return HEALTHY, f"healthy: {what or 'serving'} (written {max(age, 0):.0f} s ago)"


def run_check(args: argparse.Namespace) -> int:
    status, line = check(args.file, args.max_age)
    print(line, file=sys.stdout if status == HEALTHY else sys.stderr)
    return status


def seconds_arg(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def add_health_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker-health",
                       help="exit 0 if a worker's --health-file is fresh (container healthcheck)",
                       description="Exit 0 if the health file `fedmq worker --health-file` "
                                   "writes exists and is recent, else 1 (a container "
                                   "healthcheck: the worker is connected and consuming).")
    p.add_argument("--file", default=os.environ.get(HEALTH_FILE_ENV),
                   required=os.environ.get(HEALTH_FILE_ENV) is None,
                   help=f"the worker's health file (default ${HEALTH_FILE_ENV})")
    p.add_argument("--max-age", type=seconds_arg, default=DEFAULT_MAX_AGE, metavar="SECONDS",
                   help="older than this, the file is stale: the worker is stuck "
                        "(default %(default)g; keep it a few times the worker's "
                        "--health-interval)")
    p.set_defaults(func=run_check)
