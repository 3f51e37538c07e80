"""The messages workers exchange: small dataclasses, each a wire record (see fedmq.serde).

A worker's logic is `Worker.handle(message) -> Reply | None` (fedmq/worker.py); transports only
carry the encoded bytes. Messages whose result stays on the worker (storing, commands that make
pointers, deletes) need no reply, so a client can pipeline them; every other message is answered
with a `Reply` that carries the value or an `ErrorInfo`.

`WIRE_VERSION` is checked on every envelope: a worker refuses a version it does not speak.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmq.serde import record
from fedmq.serde.codec import use_ref_type

WIRE_VERSION = 1


# -- values that appear inside messages -------------------------------------------------------

@use_ref_type
@record(20)
@dataclass(slots=True)
class Ref:
    """An object in the receiving worker's store; `attr` names an allowlisted attribute of it
    (only "grad", the gradient of a stored leaf tensor)."""
    id: int
    attr: str | None = None


@record(21)
@dataclass(slots=True)
class PointerRef:
    """A pointer as data: "object `id_at_location` on worker `location`". Whoever decodes it
    becomes the owner of the pointer (sending a pointer hands over its ownership)."""
    location: str
    id_at_location: int
    shape: tuple
    dtype: Any
    requires_grad: bool
    tags: list = field(default_factory=list)
    description: str | None = None


@record(22)
@dataclass(slots=True)
class ErrorInfo:
    """An error as data. `code` is one of fedmq.errors.ERROR_CODES."""
    code: str
    message: str
    worker: str | None = None
    op: str | None = None


@record(23)
@dataclass(slots=True)
class StoredObject:
    """An object to store under `id`, with the tags and description search finds it by."""
    id: int
    obj: Any
    tags: list = field(default_factory=list)
    description: str | None = None


# -- messages -----------------------------------------------------------------------------------

@record(40)
@dataclass(slots=True)
class Envelope:
    """What travels: the message plus who sent it and which wire version it speaks. `sender`
    is the sender's claim, for logs; who a message acts for comes from the transport (AMQP
    `user_id`, checked by the broker), see fedmq.principals.
    `release` lists objects whose pointers were garbage collected: the worker deletes them
    after a Command or Batch (which may still read or create them), before anything else (deletes ride along instead of costing messages of their own)."""
    version: int
    sender: str
    message: Any
    msg_id: int = 0
    release: list[int] = field(default_factory=list)
    #: set by a worker forwarding on a principal's behalf (a move, a plan's outputs, SMPC
    #: deals): whose objects these are. Honoured only from a trusted peer (fedmq.policy).
    on_behalf: str | None = None
    #: what this message carries is private: None, or "KIND:RELEASE" with KIND "raw" (the
    #: data owner's data, copied) or "derived", and RELEASE the sending worker's release policy
    #: (a worker that releases more refuses it)
    private: str | None = None


@record(41)
@dataclass(slots=True)
class ObjectMessage:
    """Store these objects (a tensor's `.send`, a module's parameters in one message)."""
    objects: list


@record(42)
@dataclass(slots=True)
class GetRequest:
    """Reply with these objects; `delete` removes them (`.get()`), otherwise they are copied."""
    ids: list[int | Ref]
    delete: bool = True


@record(43)
@dataclass(slots=True)
class DeleteObjects:
    """Forget these objects (a pointer was garbage collected). Unknown ids are ignored."""
    ids: list[int]


@record(44)
@dataclass(slots=True)
class Command:
    """Run allowlisted op `op` on `args`/`kwargs` (which may hold `Ref`s) and store the tensor
    results under `result_ids` (pipelined: no reply needed). With `reply=True` the worker answers
    with the value instead (for ops whose result is data, such as `item`, or a result whose shape
    cannot be known in advance)."""
    op: str
    args: tuple
    kwargs: dict
    result_ids: list[int | None]
    grad_enabled: bool = True
    reply: bool = False


@record(45)
@dataclass(slots=True)
class ForwardObjects:
    """Send these objects straight to worker `to` under the same ids (`.move()`): the data
    never passes through the caller. `keep=False` deletes the local copies."""
    ids: list[int]
    to: str
    keep: bool = False


@record(46)
@dataclass(slots=True)
class ObjectsCount:
    """Reply with the number of objects in the store."""


@record(47)
@dataclass(slots=True)
class SearchRequest:
    """Reply with `PointerRef`s to every object carrying all of `query`'s tags (or ids)."""
    query: list


@record(48)
@dataclass(slots=True)
class ClearObjects:
    """Forget every object in the store."""


@record(49)
@dataclass(slots=True)
class Batch:
    """Several pipelined messages (Commands) in one frame, run in order. A failure is recorded
    under the failed command's result ids and the rest of the batch still runs (ops that use a
    failed result fail in turn). The reply's value lists `[index, ErrorInfo]` per failure.
    With `reply_last`, the last message is a call riding along with the buffered commands: the
    reply is that call's own (value or error), its value wrapped in a `BatchReply`."""
    messages: list
    reply_last: bool = False


@record(52)
@dataclass(slots=True)
class BatchReply:
    """The reply to a `Batch(reply_last=True)`: failures of the buffered commands, and the
    value of the last message."""
    errors: list
    value: Any = None


@record(50)
@dataclass(slots=True)
class ListObjects:
    """Reply with {id: object} for every stored object (pointers held there come back as
    `PointerRef`s that do not take ownership): PySyft's `worker._objects`, remotely."""


@record(51)
@dataclass(slots=True)
class WorkerStats:
    """Reply with {"message_count": ..., "objects": ...}. With `datasets`, also "datasets":
    what the data owner holds (fedmq.dataset_info.describe_datasets: tags, samples, per-label
    counts) if the policy shares such statistics with the sender
    (`Policy.shares_statistics`), else None."""
    datasets: bool = False


@record(53)
@dataclass(slots=True)
class Cancel:
    """Stop the message this principal sent with `Envelope.msg_id == msg_id` (not 0): a running
    Batch, plan or Fit stops at its next check, between two ops or two training batches, and is
    answered with a `RemoteCancelledError` (code "cancelled"); one that has not started yet is
    refused so when it comes (the worker remembers the last 1 024 such ids per principal).
    Only the principal that sent a message may cancel it. A worker service handles a Cancel
    on its event loop as it arrives, not behind the message it stops (unless its prefetch
    window is full of messages queued before it). The reply's value is True if the message
    was running, False if not (finished, not arrived yet, or someone else's)."""
    msg_id: int


@record(60)
@dataclass(slots=True)
class Reply:
    """The answer to a message: `value`, or `error` when the worker refused or failed it.
    `incarnation` is the answering worker's: drawn at random when it starts, so a client that
    sees it change knows the worker restarted and lost what it held in memory."""
    value: Any = None
    error: ErrorInfo | None = None
    incarnation: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None



# -- pointers as data: how a decoded PointerRef becomes a live pointer ---------------------------
# The worker and the client only see `PointerRef`s; the pointer classes live in a layer above
# them (fedmq.pointers), which registers the function that builds a pointer from a ref.

_pointer_factory: list = []


def register_pointer_factory(factory: Any) -> None:
    """`factory(ref, owner=, network=, id=, gc=)` -> a pointer (set once by fedmq.pointers)."""
    _pointer_factory[:] = [factory]


def adopt(ref: PointerRef, *, owner: Any, network: Any, id: int | None = None,
          gc: bool = True) -> Any:
    """The pointer a decoded `PointerRef` stands for, owned by `owner` (`gc=False`: dropping
    it does not delete the remote object)."""
    if not _pointer_factory:
        raise RuntimeError("no pointer factory registered: import fedmq.pointers first")
    return _pointer_factory[0](ref, owner=owner, network=network, id=id, gc=gc)


def adopt_all(value: Any, *, owner: Any, network: Any) -> Any:
    """`value` with every PointerRef in it (nested in lists and tuples) adopted as a pointer."""
    if isinstance(value, PointerRef):
        return adopt(value, owner=owner, network=network)
    if type(value) in (list, tuple):
        return type(value)(adopt_all(v, owner=owner, network=network) for v in value)
    return value


def describe(worker_id: str, obj_id: int, obj: Any, tags: Any = (),
             description: str | None = None) -> PointerRef:
    """A PointerRef describing stored object `obj_id` on `worker_id` (search results, replies):
    objects that know how to describe themselves (pointers, plans, protocols) do so through
    `__fedmq_pointer_ref__`; tensors give their shape, dtype and requires_grad."""
    describe_self = getattr(obj, "__fedmq_pointer_ref__", None)
    if describe_self is not None:
        return describe_self(worker_id, obj_id, tags, description)
    shape = getattr(obj, "shape", None)
    if shape is not None and hasattr(obj, "dtype"):
        return PointerRef(worker_id, obj_id, tuple(shape), obj.dtype,
                          bool(getattr(obj, "requires_grad", False)), sorted(tags), description)
    return PointerRef(worker_id, obj_id, (), None, False, sorted(tags), description)
