"""`fedmq dashboard`: a live web page of a run, on this machine.

    fedmq dashboard --url amqp://user:pw@broker/vhost     then open http://127.0.0.1:8080/

It follows the `fedmq.events` exchange of the vhost in --url (rounds, accuracy and loss,
each worker's last Fit) and reads that vhost's fedmq.* queues from the RabbitMQ management
API every --refresh seconds (depths, consumers, the dead-letter count). Only events published
after it started are shown: start it before the run (or watch the next rounds).

The page has no login: it listens on 127.0.0.1 unless --host says otherwise, and then anyone
who can reach the port sees the run's worker ids, reasons and queue names.

Exit codes: 0 stopped (SIGTERM), 2 a usage mistake or a broker / management API / port that
cannot be used at start (one line on stderr), 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from fedmq.cli_options import (EXIT_USAGE, UsageError, add_broker_url, add_management_options,
                               check_amqp_url, management_credentials, url_vhost, usage_error)

EXIT_INTERRUPTED = 130
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_REFRESH = 2.0
#: the fastest queue sampling allowed (seconds); the broker samples every 5 s by default
MIN_REFRESH = 0.5


def _say(text: str) -> None:
    print(f"fedmq dashboard: {text}", file=sys.stderr, flush=True)


async def serve(args: argparse.Namespace) -> int:
    """Start the followers and the server, run until a signal; the exit code."""
    from fedmq.errors import TransportError
    from fedmq.management import ManagementAPIError
    from fedmq.dashboard.server import Dashboard, ManagementAPI, is_loopback

    user, password = management_credentials(args)
    management = ManagementAPI(args.management_url, user, password, url_vhost(args.url))
    dashboard = Dashboard(args.url, management, refresh=args.refresh)
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda sig=sig: (received.append(sig), stop.set()))
    try:
        starting = asyncio.ensure_future(dashboard.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return EXIT_INTERRUPTED
        try:
            starting.result()
        except ManagementAPIError as exc:
            _say(f"--management-url: {exc}")
            return EXIT_USAGE
        except TransportError as exc:
            _say(f"--url: {exc}")
            return EXIT_USAGE
        try:
            host, port = await dashboard.serve(args.host, args.port)
        except OSError as exc:
            _say(f"cannot listen on --host {args.host} --port {args.port}: "
                 f"{exc.strerror or exc}")
            return EXIT_USAGE
        if not is_loopback(args.host):
            _say(f"WARNING: listening on {args.host}, not on this machine only: anyone who "
                 f"can reach port {port} sees this run (worker ids, failure reasons, queue "
                 f"names), with no login. Use --host 127.0.0.1 and an SSH tunnel instead.")
        shown = f"[{host}]" if ":" in host else host
        print(f"fedmq dashboard: http://{shown}:{port}/ following {dashboard.subscription.where}"
              f" (Ctrl-C to stop)", flush=True)
        await stopping
        return EXIT_INTERRUPTED if received and received[0] == signal.SIGINT else 0
    finally:
        await dashboard.close()


def run_dashboard(args: argparse.Namespace) -> int:
    """The `fedmq dashboard` command."""
    from fedmq.eventstream import configure_logging

    try:
        check_amqp_url(args.url)
    except UsageError as exc:
        usage_error("dashboard", str(exc))
    if not args.host.strip():
        usage_error("dashboard", "--host must name an address to listen on, e.g. 127.0.0.1")
    if not 0 <= args.port <= 65535:
        usage_error("dashboard", f"--port must be 0 (any free port) to 65535, got {args.port}")
    if not args.refresh >= MIN_REFRESH:
        usage_error("dashboard", f"--refresh must be at least {MIN_REFRESH} seconds, "
                                 f"got {args.refresh}")
    configure_logging(args.log_level, "dashboard")
    try:
        code = asyncio.run(serve(args))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        _say("interrupted")
    return code


def add_dashboard_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedmq dashboard` on the `fedmq` parser's subcommands."""
    p = sub.add_parser("dashboard",
                       help="a live web page of a run and its queues",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_url(p)
    add_management_options(p)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port to listen on, 0 for any free one (default %(default)s)")
    p.add_argument("--refresh", type=float, default=DEFAULT_REFRESH, metavar="SECONDS",
                   help=f"seconds between two readings of the queues, at least {MIN_REFRESH} "
                        f"(default %(default)s)")
    p.add_argument("--log-level", default="warning",
                   choices=("debug", "info", "warning", "error"),
                   help="log records shown on stderr (default %(default)s)")
    p.set_defaults(func=run_dashboard)
