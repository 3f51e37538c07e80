"""The `fedmq` command (also `python -m fedmq`): `fedmq COMMAND --help` for each of
worker, worker-health, train, events, dashboard, queues, dead-letters and broker.

Each command's module is imported only when that command runs (or its --help is asked), so
`fedmq --help` answers without importing torch. Exit codes: 0 done, 1 the work failed
(a run with no successful round, a worker that stopped on an error), 2 a usage or
configuration mistake (one line naming the option), 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from fedmq.cli_options import OneLineParser

#: command -> (module, function adding its subparser, one-line help shown by `fedmq --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "worker": ("fedmq.service", "add_worker_command",
               "run a worker service consuming fedmq.worker.<id>"),
    "worker-health": ("fedmq.health", "add_health_command",
                      "exit 0 if a worker's --health-file is fresh (container healthcheck)"),
    "train": ("fedmq.fl.cli", "add_train_command", "run federated rounds (seed §14)"),
    "queues": ("fedmq.management", "add_queues_command",
               "list fedmq queues with depth, consumers and rates; purge or delete one"),
    "dead-letters": ("fedmq.dead_letters_cli", "add_dead_letters_command",
                     "list, show, requeue or purge the messages in fedmq.dead-letters"),
    "broker": ("fedmq.broker_admin", "add_broker_command",
               "manage broker users by role (management API)"),
    "events": ("fedmq.events_cli", "add_events_command", "follow a run's events (fedmq.events)"),
    "dashboard": ("fedmq.dashboard.cli", "add_dashboard_command",
                  "a live web page of a run and its queues"),
}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given `argv`, only the command it names is built in full (the
    others are listed with their help line, their modules not imported)."""
    parser = OneLineParser(
        prog="fedmq", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = _command_in(argv) if argv is not None else None
    for name, (module, adder, help_line) in COMMANDS.items():
        if argv is None or name == wanted:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def _command_in(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _version() -> str:
    from fedmq import __version__
    return f"fedmq {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"fedmq {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
