"""The `fedmq` command: `fedmq worker ...`, `fedmq train ...`, `fedmq queues ...`,
`fedmq broker add-user|delete-user ...` (see `fedmq --help`)."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmq", description=__doc__)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    from fedmq import management
    management.add_queues_command(sub)
    try:
        from fedmq.service import add_worker_command
    except ImportError:  # the RabbitMQ worker service is optional at import time
        pass
    else:
        add_worker_command(sub)
        from fedmq.broker_admin import add_broker_command
        add_broker_command(sub)
    from fedmq.fl.cli import add_train_command
    add_train_command(sub)
    return parser


def _version() -> str:
    from fedmq import __version__
    return f"fedmq {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
