"""Who a message acts for, as the code handling it sees it.

A worker handles each message on behalf of one *principal* (a name): over RabbitMQ the AMQP
`user_id` the broker checked against the sender's login, in-process the principal of the
client's hook (`LOCAL`, "me", unless the transport says otherwise). While a worker handles a
message, `acting()` holds an `Acting` record in a context variable, so that what the worker
sends on (a move, a plan's forwarded outputs, SMPC deals) goes out on behalf of the same
principal and carries the mark of private data it was computed from (`Envelope.on_behalf`,
`Envelope.private`, set by the request engine).

This module is the lowest layer: it imports nothing of fedmq.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

#: the principal of in-process clients and workers (the seed's local worker "me")
LOCAL = "me"


@dataclass(slots=True)
class Acting:
    """The principal a worker is acting for while it handles one message.

    principal: whose message it is.
    tainted: set once anything read while handling it is private data, or derived from it;
        then every message the worker sends on carries the private mark.
    may_forward_private: whether private values may be sent to a worker id (the policy's
        trusted peers); asked before such a message is sent.
    guard: called by the execution layer with an op's name and the tensors it is about to
        write (fedmq.ops.written).
    """
    principal: str
    tainted: bool = False
    #: set with `tainted` when what was read is the data owner's raw data (or a copy of it)
    raw: bool = False
    #: the worker's release policy ("none", "derived", "all"): private values it sends on
    #: carry it, and a worker that releases more refuses them
    release: str = "all"
    may_forward_private: Callable[[str], bool] = field(default=lambda worker_id: True)
    #: guard(op, tensors): raises if the principal may not write `tensors` (the data owner's
    #: data); None when it may write anything it can reach
    guard: Callable[[str, list], None] | None = None


_ACTING: ContextVar[Acting | None] = ContextVar("fedmq_acting", default=None)


def current() -> Acting | None:
    """What the code running now acts for (None outside a worker's handling of a message)."""
    return _ACTING.get()


@contextlib.contextmanager
def acting(record: Acting) -> Iterator[Acting]:
    """Run the block on behalf of `record.principal` (nested uses restore the outer one)."""
    token = _ACTING.set(record)
    try:
        yield record
    finally:
        _ACTING.reset(token)
