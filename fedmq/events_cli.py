"""`fedmq events`: a run's events (the `fedmq.events` exchange) in the terminal, as they happen.

    fedmq events --url amqp://.../vhost                 every event, one readable line each
    fedmq events --filter 'round.*' --filter fit.failed  only these routing keys
    fedmq events --json                                 one JSON object a line, for scripts

A line: local time, routing key, round (or version) with the run's total when the event
says it, the worker (or the evaluated model), then what the event carries among status,
loss, accuracy, samples, workers and reason. Worker ids and reasons are untrusted text:
control characters are shown escaped, never sent to the terminal.

Exit codes: 0 after --count events, 2 a usage or broker problem (one line on stderr), 130
interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from typing import Any

from fedmq.cli_options import (EXIT_USAGE, UsageError, add_broker_url, check_amqp_url, clean,
                               usage_error)
from fedmq.errors import TransportError
from fedmq.eventstream import (ALL_EVENTS, LOG_LEVELS, Event, EventSubscription, check_pattern,
                              configure_logging)

EXIT_INTERRUPTED = 130
#: longest untrusted text (worker id, reason) shown on a line, in characters
MAX_TEXT = 160


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_accuracy(body: dict[str, Any]) -> float | None:
    """The event's accuracy as a fraction in [0, 1]: its `accuracy`, else `correct/total`."""
    accuracy = _number(body.get("accuracy"))
    if accuracy is None:
        correct, total = _integer(body.get("correct")), _integer(body.get("total"))
        if correct is not None and total:
            accuracy = correct / total
    return accuracy if accuracy is not None and 0.0 <= accuracy <= 1.0 else None


def format_event(event: Event) -> str:
    """One readable line for `event` (see the module docstring)."""
    body = event.body
    stamp = event.received
    if body is not None and _number(body.get("time")) is not None:
        stamp = float(body["time"])
    parts = [time.strftime("%H:%M:%S", time.localtime(stamp)), f"{clean(event.routing_key):<15}"]
    if body is None:
        parts.append(f"(not a JSON object: {len(event.raw)} bytes)")
        return "  ".join(parts)
    for unit in ("round", "version"):
        step = _integer(body.get(unit))
        if step is not None:
            total = _integer(body.get(f"{unit}s"))
            parts.append(f"{unit} {step}" + (f"/{total}" if total else ""))
            break
    if isinstance(body.get("worker"), str):
        parts.append(f"worker {clean(body['worker'])}")
    elif isinstance(body.get("model"), str):
        parts.append(f"model {clean(body['model'])}")
    if isinstance(body.get("status"), str):
        parts.append(clean(body["status"], 20))
    if isinstance(body.get("workers"), (list, dict)):
        parts.append(f"{len(body['workers'])} worker(s)")
    loss = _number(body.get("loss"))
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    accuracy = event_accuracy(body)
    if accuracy is not None:
        parts.append(f"accuracy {100 * accuracy:.2f}%")
    test_loss = _number(body.get("test_loss"))
    if test_loss is not None:
        parts.append(f"test loss {test_loss:.4f}")
    samples = _integer(body.get("samples"))
    if samples is not None:
        parts.append(f"{samples} samples")
    if isinstance(body.get("failed"), dict) and body["failed"]:
        parts.append(f"failed: {clean(', '.join(map(str, body['failed'])))}")
    if body.get("reason") is not None:
        parts.append(f"reason: {clean(body['reason'])}")
    return "  ".join(parts)


def json_line(event: Event) -> str:
    """One JSON object: {"routing_key", "received" (Unix time), "body"}; a body that is not a
    JSON object is null, with "raw" (its text, undecodable bytes replaced)."""
    line: dict[str, Any] = {"routing_key": event.routing_key,
                            "received": round(event.received, 3), "body": event.body}
    if event.body is None:
        line["raw"] = event.raw.decode("utf-8", "replace")
    return json.dumps(line, ensure_ascii=True)


async def follow(args: argparse.Namespace) -> int:
    """Subscribe, print until --count events or a signal; the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    subscription = EventSubscription(
        args.url, args.filter or [ALL_EVENTS], connection_name="fedmq events",
        on_status=lambda text: print(f"fedmq events: {text}", file=sys.stderr, flush=True))
    starting = asyncio.ensure_future(subscription.start())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        starting.cancel()
        await subscription.close()
        return EXIT_INTERRUPTED
    try:
        starting.result()
    except TransportError as exc:
        stopped.cancel()
        print(f"fedmq events: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    if not args.quiet:
        keys = ", ".join(subscription.patterns)
        print(f"fedmq events: following {keys} on {subscription.where} "
              f"(Ctrl-C to stop)", file=sys.stderr, flush=True)
    printed = 0
    try:
        while not stop.is_set():
            getting = asyncio.ensure_future(subscription.next())
            await asyncio.wait([getting, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            event = getting.result()
            if event is None:
                break
            print(json_line(event) if args.json else format_event(event), flush=True)
            printed += 1
            if args.count and printed >= args.count:
                return 0
        return EXIT_INTERRUPTED
    finally:
        stopped.cancel()
        await subscription.close()


def run_events(args: argparse.Namespace) -> int:
    """The `fedmq events` command."""
    try:
        check_amqp_url(args.url, management_option=None)
    except UsageError as exc:
        usage_error("events", str(exc))
    for pattern in args.filter:
        try:
            check_pattern(pattern)
        except ValueError as exc:
            usage_error("events", f"--filter: {exc}")
    if args.count < 0:
        usage_error("events", f"--count must be 0 (no limit) or more, got {args.count}")
    configure_logging(args.log_level, "events")
    try:
        code = asyncio.run(follow(args))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `fedmq events | head`
        sys.stderr.close()
        return 0
    if code == EXIT_INTERRUPTED:
        print("fedmq events: interrupted", file=sys.stderr)
    return code


def add_events_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedmq events` on the `fedmq` parser's subcommands."""
    p = sub.add_parser("events", help="follow a run's events (fedmq.events)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_url(p)
    p.add_argument("--filter", action="append", default=[], metavar="PATTERN",
                   help="topic binding pattern, e.g. 'round.*' or fit.failed; repeatable "
                        f"(default {ALL_EVENTS}: every event)")
    p.add_argument("--json", action="store_true",
                   help="print each event as one JSON object a line (default: readable lines)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N events (default 0: until Ctrl-C)")
    p.add_argument("--quiet", action="store_true",
                   help="no 'following ...' line on stderr at start (default: printed)")
    p.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                   help="log records shown on stderr (default %(default)s)")
    p.set_defaults(func=run_events)
