"""`fedmq dead-letters [list] | show N | requeue N...|--all | purge`: what workers and the broker
dead-lettered into `fedmq.dead-letters`, read over AMQP (fedmq/dead_letters.py).

* `list` (the default): one row per message, oldest first: its position, age, size, the queue
  it died in, its message type and why. Messages stay where they are (see fedmq.dead_letters
  for how the order is kept).
* `show N`: message N decoded as data (fedmq/frame_view.py, imported only here: the one part
  that needs torch), with its properties and headers.
* `requeue N... | --all`: each message back to the queue it died in, as its original sender,
  then out of the dead-letter queue; one that cannot be requeued stays (exit 1).
* `purge`: removes them all, after asking (y/N; --yes on a script).

Exit codes: 0 done, 1 some message could not be requeued or a person answered no, 2 a usage
mistake or a broker that cannot be used (one line, no traceback).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
from typing import Any

from fedmq.cli_options import (EXIT_USAGE, OneLineParser, UsageError, add_url_option,
                               check_amqp_url, clean, confirm, whole_number)
from fedmq.dead_letters import DeadLetter, DeadLetterError, DeadLetterQueue
from fedmq.errors import TransportError
from fedmq.transport.amqp import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE

#: list's `reason` column is cut to this many characters (`show` prints it whole)
REASON_WIDTH = 100
COLUMNS = ("#", "age", "size", "queue", "type", "reason")
#: messages `list` shows by default
DEFAULT_LIMIT = 1000


def format_age(when: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """How long ago `when` was, in the largest unit that fits: "42s", "5m", "3h", "2d"; "?"
    when unknown."""
    if when is None:
        return "?"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_size(size: int) -> str:
    """Bytes as "812 B", "1.5 KiB", "64.0 MiB"."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_table(letters: list[DeadLetter], now: datetime.datetime | None = None) -> str:
    """The rows `list` prints, under a header line, columns aligned (reason last, cut)."""
    rows = [COLUMNS] + [
        (str(d.position), format_age(d.died_at, now), format_size(d.size),
         clean(d.queue or "?", 80), clean(d.message_type, 40),
         clean(_one_line(d.reason, REASON_WIDTH), 2 * REASON_WIDTH)) for d in letters]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([row[0].rjust(widths[0]), row[1].rjust(widths[1]),
                                row[2].rjust(widths[2])]
                               + [cell.ljust(w) for cell, w in zip(row[3:5], widths[3:5])]
                               + [row[5]]).rstrip() for row in rows)


# --- the actions, each one connection ------------------------------------------------------------

async def _list(args: argparse.Namespace) -> int:
    async with DeadLetterQueue(args.url) as dlq:
        total = await dlq.count()
        letters = await dlq.take(args.limit)
    where = f"{DEAD_LETTER_QUEUE} on {dlq.where}"
    if not letters:
        print(f"no dead letters in {where}")
        return 0
    more = f" (the first {len(letters)} shown; --limit)" if total > len(letters) else ""
    print(f"{total} dead letter{'s' * (total != 1)} in {where}{more}")
    print(format_table(letters))
    return 0


async def _take_upto(dlq: DeadLetterQueue, positions: list[int]) -> list[DeadLetter]:
    """Take messages 1..max(positions), keeping the bodies of `positions`; a position past
    the end is a UsageError."""
    letters = await dlq.take(max(positions), keep_bodies=set(positions))
    if max(positions) > len(letters):
        held = f"holds {len(letters)}" if letters else "is empty"
        raise UsageError(f"no dead letter at position {max(positions)}: {DEAD_LETTER_QUEUE} "
                         f"{held} (`fedmq dead-letters list`)")
    return letters


async def _show(args: argparse.Namespace) -> int:
    async with DeadLetterQueue(args.url) as dlq:
        total = await dlq.count()
        letter = (await _take_upto(dlq, [args.position]))[args.position - 1]
    print("\n".join(show_lines(letter, total, f"{DEAD_LETTER_QUEUE} on {dlq.where}",
                               args.bytes)))
    return 0


def show_lines(letter: DeadLetter, total: int, where: str, head: int = 64) -> list[str]:
    """What `show` prints for `letter`: a summary, its properties, its headers and its body
    decoded as data (or its first `head` bytes in hex)."""
    died = letter.died_at
    when = (f"{died.isoformat(timespec='seconds')} ({format_age(died)} ago)" if died else "?")
    lines = [f"dead letter {letter.position} of {total} in {where}",
             f"reason        {letter.reason}",
             f"queue         {letter.queue or '? (it names none: cannot be requeued)'}",
             f"message type  {letter.message_type}",
             f"dead since    {when}",
             f"sender        {_sender(letter)}",
             f"size          {letter.size} bytes", "properties"]
    props = letter.properties
    for name, value in (("message_id", props.message_id),
                        ("correlation_id", props.correlation_id),
                        ("reply_to", props.reply_to), ("user_id", props.user_id),
                        ("type", props.message_type), ("content_type", props.content_type),
                        ("delivery_mode", props.delivery_mode),
                        ("expiration", props.expiration), ("timestamp", props.timestamp),
                        ("app_id", props.app_id), ("redelivered", letter.redelivered)):
        if value not in (None, ""):
            lines.append(f"  {name:<15} {value}")
    lines.append("headers")
    headers = sorted(letter.headers.items())
    width = max([15] + [len(key) for key, _ in headers])
    for key, value in headers:
        if key == "x-death" and isinstance(value, list):
            for i, entry in enumerate(value):
                shown = " ".join(f"{k}={_header(v)}" for k, v in sorted(dict(entry).items()))
                lines.append(f"  {f'x-death[{i}]':<{width}} {shown}")
        else:
            lines.append(f"  {key:<{width}} {_header(value)}")
    lines.append("body")
    chunk = letter.chunk
    if chunk is not None:
        index, count, frame = chunk
        from fedmq.frame_view import hex_head
        lines += [f"  chunk {index} of {count} of frame {frame}: a piece of a frame, not "
                  f"decoded alone",
                  f"  first {min(head, letter.size)} bytes: {hex_head(letter.body or b'', head)}"]
        return [clean(line, 4000) for line in lines]
    from fedmq.frame_view import view_frame  # torch, only for this
    lines += ["  " + line for line in view_frame(letter.body or b"", head)]
    return [clean(line, 4000) for line in lines]  # headers and bodies are others' text


def _sender(letter: DeadLetter) -> str:
    """The sender `show` prints, saying where it comes from: a worker's copy names it in a
    header (anyone who may publish to fedmq.dlx can write one); the broker's dead letters
    keep the user_id the broker checked when it was published."""
    if letter.by_worker:
        return (f"{letter.sender or '(none)'} (header x-fedmq-user-id: anyone who may publish "
                f"to {DEAD_LETTER_EXCHANGE} can write it; requeue publishes as this user)")
    return letter.sender or "(no user_id)"


def _header(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return str(value)


async def _requeue(args: argparse.Namespace) -> int:
    failed = 0
    async with DeadLetterQueue(args.url) as dlq:
        if args.all:
            letters = await dlq.take(keep_bodies=True)
            if not letters:
                print(f"no dead letters in {DEAD_LETTER_QUEUE} on {dlq.where}")
                return 0
            chosen = letters
        else:
            positions = sorted(set(args.positions))
            letters = await _take_upto(dlq, positions)
            chosen = [letters[p - 1] for p in positions]
        for letter in chosen:
            what = f"dead letter {letter.position} ({clean(letter.message_type, 40)})"
            try:
                queue = await dlq.requeue(letter, new_ids=args.new_message_id,
                                          any_queue=args.any_queue)
            except DeadLetterError as exc:
                failed += 1
                print(f"fedmq dead-letters requeue: {what}: {clean(exc, 1000)}",
                      file=sys.stderr)
            else:
                print(f"requeued {what} to {clean(queue, 300)}")
    return 1 if failed else 0


async def _purge(args: argparse.Namespace) -> int:
    async with DeadLetterQueue(args.url) as dlq:
        count = await dlq.count()
        if count == 0:
            print(f"no dead letters in {DEAD_LETTER_QUEUE} on {dlq.where}")
            return 0
        if not confirm(f"purge {count} dead letter{'s' * (count != 1)} from "
                       f"{DEAD_LETTER_QUEUE} on {dlq.where}", args.yes):
            print("fedmq dead-letters purge: not confirmed; nothing done", file=sys.stderr)
            return 1
        purged = await dlq.purge()
    print(f"purged {purged} dead letter{'s' * (purged != 1)} from {DEAD_LETTER_QUEUE}")
    return 0


ACTIONS = {"list": _list, "show": _show, "requeue": _requeue, "purge": _purge}


def run_dead_letters(args: argparse.Namespace) -> int:
    """Run the action `args` names; a usage mistake or a broker that cannot be used is one line
    on stderr and exit 2."""
    action = getattr(args, "dl_command", None) or "list"
    if action != "list" and args.limit is not None:
        print(f"fedmq dead-letters {action}: --limit is for list (fedmq dead-letters list "
              f"--limit N)", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is None:
        args.limit = DEFAULT_LIMIT
    quiet = logging.getLogger("aiormq")  # it logs a failed connect; we say it in one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        check_amqp_url(args.url, management_option=None)
        if action == "requeue" and not args.all and not args.positions:
            raise UsageError("give the positions to requeue (N ...) or --all")
        if action == "requeue" and args.all and args.positions:
            raise UsageError("give the positions to requeue (N ...) or --all, not both")
        return asyncio.run(ACTIONS[action](args))
    except (UsageError, DeadLetterError, TransportError) as exc:
        print(f"fedmq dead-letters {action}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        quiet.setLevel(level)


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (1, 2, ... as `list` "
                                         f"shows them)")
    return value


def add_dead_letters_command(sub: argparse._SubParsersAction) -> None:
    """Register `fedmq dead-letters [list|show|requeue|purge]` on the `fedmq` parser."""
    p = sub.add_parser(
        "dead-letters", help="list, show, requeue or purge the messages in fedmq.dead-letters",
        description="What workers and the broker dead-lettered into fedmq.dead-letters, read "
                    "over AMQP: `list` (the default) leaves the messages in place and in "
                    "order (`fedmq dead-letters --limit N` is `list --limit N`); `show N` "
                    "decodes one as data (never run); `requeue N...|--all` sends them back to "
                    "the worker queue they died in; `purge` removes them all (asks first). "
                    "Positions are those `list` shows (1 = the oldest).")
    add_url_option(p)
    p.add_argument("--limit", type=whole_number(1), default=None, metavar="N",
                   help=f"with no ACTION (list): show at most N (default {DEFAULT_LIMIT})")
    p.set_defaults(func=run_dead_letters)
    actions = p.add_subparsers(dest="dl_command", metavar="ACTION", parser_class=OneLineParser)
    listing = actions.add_parser("list", help="one line per message, oldest first (default)")
    listing.add_argument("--limit", type=whole_number(1), default=argparse.SUPPRESS,
                         metavar="N", help=f"show at most N (default {DEFAULT_LIMIT})")
    show = actions.add_parser("show", help="one message decoded as data, with its headers")
    show.add_argument("position", type=_position, metavar="N", help="its position in `list`")
    show.add_argument("--bytes", type=whole_number(1), default=64, metavar="N",
                      help="hex bytes shown of a body that does not decode (default "
                           "%(default)s)")
    requeue = actions.add_parser(
        "requeue", help="send messages back to the queue they died in",
        description="Publish each message to the worker queue it died in, with its "
                    "properties (reply_to, correlation_id, message_id...) and its original "
                    "sender as user_id (RabbitMQ accepts that only from the sender's own login "
                    "or a user tagged 'impersonator'), then remove it from fedmq.dead-letters. "
                    "Messages the broker dead-lettered (expired, rejected, over a length limit) "
                    "never ran and run when they arrive; a worker acks a message id it already "
                    "handled without running it again (see --new-message-id). "
                    "A message that cannot be requeued (its queue is gone or is not a worker "
                    "queue, the broker refuses it) stays, and the exit code is 1. The queue "
                    "and, on a worker's copy, the sender (x-fedmq-user-id) are headers that "
                    "anyone who may publish to fedmq.dlx can write: look with `show N` first, "
                    "above all when logged in as an 'impersonator'.")
    requeue.add_argument("positions", type=_position, nargs="*", metavar="N",
                         help="positions in `list`")
    requeue.add_argument("--all", action="store_true", help="every message in the queue")
    requeue.add_argument("--any-queue", action="store_true",
                         help="also requeue into a queue that is not a worker queue "
                              "(fedmq.worker.*); the queue comes from the dead letter's headers "
                              "(x-fedmq-worker, x-death), which anyone who may publish to "
                              "fedmq.dlx can write (default: worker queues only)")
    requeue.add_argument("--new-message-id", action="store_true",
                         help="give each a new message id: a worker runs a message id once, so "
                              "one it handled already (that failed while it ran) is otherwise "
                              "acked without running again; with this it runs a second time "
                              "(only for messages that did nothing before failing)")
    purge = actions.add_parser("purge", help="remove every message (asks first)")
    purge.add_argument("--yes", action="store_true",
                       help="do not ask (needed when stdin is not a terminal)")
    for action in (listing, show, requeue, purge):
        add_url_option(action, default=argparse.SUPPRESS)

