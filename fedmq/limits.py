"""What one message may cost a worker: time, cancellation, and the bytes of one op's results.

While a worker handles a message (`Worker.respond`), a `Budget` for it sits in a context
variable (`current()`), as the `Acting` record does (fedmq.principals). The code that runs
long work asks it between steps:

    fedmq.execution.execute    before every op (the ops of a Batch, of a plan), `check`s the
                               budget, and refuses an op whose results would pass the bytes the
                               principal may still store (`check_op_size`), without running it
    fedmq.fl.training.fit      `check`s between training batches (Fit and Evaluate)

`Budget.check` raises `TimeLimitError` once the message has run longer than the worker's
`Policy.max_op_seconds`, and `RemoteCancelledError` once its sender cancelled it (a `Cancel`
message naming its `msg_id`; `Worker.cancel`). A single torch op is never interrupted: the
limit is checked between ops, and one op's size is bounded instead.

The size of one op's results is known before it runs: the shape engine (fedmq.shapes.spec_for)
runs it on meta tensors. So `repeat`, `expand` + `contiguous`, `zeros_like` of a broadcast,
`F.pad`, `cat` of many references, an outer product... that would pass the principal's room are
refused with `QuotaExceededError` and never allocate. The check costs nothing for small ops: it
is skipped when a quick bound (`result_bound`) already shows the results cannot pass the limit.
Ops whose result size depends on the values (`nonzero`, `masked_select`, `F.one_hot` without
`num_classes`, `tolist`) are sized from their inputs by `VALUE_SIZED`; anything else the shape
engine cannot size is bounded after it ran (results bigger than the room are dropped and
refused: `check_results`). Memory an op needs only while it runs is bounded by its inputs,
which the quota bounds.

This module imports torch, fedmq.errors and fedmq.shapes only.
"""
from __future__ import annotations

import contextlib
import math
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import torch

from fedmq import shapes
from fedmq.errors import QuotaExceededError, RemoteCancelledError, TimeLimitError

#: the largest element size of any dtype (complex128): what the quick bound assumes
MAX_ITEMSIZE = 16


class Budget:
    """What one message may still spend (see the module's docstring).

    worker_id, principal, msg_id: whose message it is (`msg_id` is `Envelope.msg_id`, what a
        `Cancel` names; 0: it cannot be cancelled).
    seconds: the time limit in seconds from now (None: none).
    view: the principal's StoreView (its `room()` bounds the bytes one op may make).
    max_op_bytes: the worker's cap on one op's results, in bytes, for every principal (None:
        only the room bounds them).
    """
    __slots__ = ("worker_id", "principal", "msg_id", "seconds", "deadline", "cancelled", "view",
                 "max_op_bytes", "transient")

    def __init__(self, worker_id: str, principal: str, msg_id: Any = 0, *,
                 seconds: float | None = None, view: Any = None,
                 max_op_bytes: int | None = None) -> None:
        self.worker_id = worker_id
        self.principal = principal
        self.msg_id = msg_id
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        #: set (from any thread) when the sender cancels the message
        self.cancelled = False
        self.view = view
        self.max_op_bytes = max_op_bytes
        #: bytes held for the message outside the principal's space (a plan's intermediate
        #: results, fedmq.plans.runner): they count against its room too
        self.transient = 0

    def check(self, what: str | None = None) -> None:
        """Raise RemoteCancelledError if the message was cancelled, TimeLimitError if it ran
        past its time limit; `what` names the step for the error message."""
        if self.cancelled:
            raise RemoteCancelledError(
                f"{what or 'the message'}: cancelled by its sender (a Cancel for message "
                f"{self.msg_id})", worker=self.worker_id, op=what)
        deadline = self.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise TimeLimitError(
                f"{what or 'the message'}: stopped after running longer than the time limit "
                f"of worker {self.worker_id!r}, {self.seconds:g} s per message "
                f"(--max-op-seconds)", worker=self.worker_id, op=what)

    def __repr__(self) -> str:
        return (f"<Budget {self.principal!r}:{self.msg_id} on {self.worker_id!r}"
                f"{' cancelled' if self.cancelled else ''}>")


_CURRENT: ContextVar[Budget | None] = ContextVar("fedmq_budget", default=None)


def current() -> Budget | None:
    """The budget of the message being handled now (None outside a worker's handling)."""
    return _CURRENT.get()


def check(what: str | None = None) -> None:
    """`Budget.check` on the current message's budget (nothing outside a message)."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.check(what)


@contextlib.contextmanager
def running(budget: Budget | None) -> Iterator[Budget | None]:
    """Run the block under `budget` (nested uses restore the outer one)."""
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


# -- the bytes of one op ----------------------------------------------------------------------------

def op_limit(store: Any, budget: Budget | None) -> int | None:
    """The most bytes the tensor results of one op stored into `store` may take, or None for
    no limit: the principal's room (`StoreView.room()`: its quota less what it stores) less
    what the message holds elsewhere (`Budget.transient`), and the worker's per-op cap. An op
    running against a plan's own scope (an ObjectStore) is bounded by the message's view."""
    room_of = getattr(store, "room", None)
    if room_of is not None:
        view, transient = store, 0
    elif budget is not None and budget.view is not None:
        view, transient = budget.view, budget.transient
    else:
        return None
    room = view.room()
    cap = budget.max_op_bytes if budget is not None else view.policy.max_op_bytes
    if room is None:
        return None if cap is None else max(0, cap - transient)
    if cap is not None and cap < room:
        room = cap
    return max(0, room - transient)


def result_bound(args: Any, kwargs: dict | None, limit: int) -> int:
    """A quick upper bound, in bytes, of what one op on `args`/`kwargs` can make, or `limit`
    + 1 once it is seen to pass `limit`: MAX_ITEMSIZE times the product, over the arguments,
    of (elements + 1) for each tensor, (|n| + 1) for each int and (length + 1) for each list
    or tuple. Every allowlisted op makes results of at most that many elements: a broadcast or
    an outer product multiplies its inputs' sizes, `repeat`, `expand`, `F.pad`, `one_hot`
    with `num_classes` multiply them by int literals, indexing with a list by its length (the
    ops whose result size depends on values are sized by VALUE_SIZED instead)."""
    stop = limit // MAX_ITEMSIZE + 1
    bound = _bound(args, 1, stop)
    if kwargs and bound < stop:
        bound = _bound(tuple(kwargs.values()), bound, stop)
    return bound * MAX_ITEMSIZE if bound < stop else limit + 1


def _bound(values: Any, bound: int, stop: int) -> int:
    for value in values:
        cls = type(value)
        if cls is torch.Tensor or cls is torch.nn.Parameter:
            bound *= value.numel() + 1
        elif cls is int:
            bound *= abs(value) + 1
        elif cls is tuple or cls is list or isinstance(value, tuple):
            bound = _bound(value, bound * (len(value) + 1), stop)
        elif isinstance(value, torch.Tensor):  # a stored pointer: its metadata only
            bound *= math.prod(shapes.local_meta(value)[0]) + 1
        elif cls is dict:
            bound = _bound(tuple(value.values()), bound, stop)
        if bound >= stop:
            return stop
    return bound


#: in-place ops whose names do not end in a single "_" (their result is their first input)
IN_PLACE = frozenset({"Tensor.__iadd__", "Tensor.__iand__", "Tensor.__imul__", "Tensor.__ior__",
                      "Tensor.__ipow__", "Tensor.__isub__", "Tensor.__itruediv__",
                      "Tensor.__setitem__", "fedmq.clear_grads"})


def in_place(op: str) -> bool:
    """Whether allowlisted op `op` only modifies its inputs (`add_`, `_foreach_mul_`, `x += y`,
    `x[i] = y`): its results, if any, are its inputs, and it makes no new ones."""
    return (op[-1] == "_" and op[-2] != "_") or op in IN_PLACE


#: (op, input shapes and dtypes, constant arguments) -> bytes of its results (None: unknown)
SIZES = shapes.LRUCache(4096)


def result_bytes(fn: Callable[..., Any], op: str, args: Any, kwargs: dict | None,
                 limit: int) -> int | None:
    """The bytes of the tensor results `fn(*args, **kwargs)` (allowlisted op `op`) would make,
    without running it; at most `limit` when it is seen not to pass it (the exact figure is
    not worked out then); None when it cannot be known before the op runs. Results that are
    inputs themselves (in-place ops) make nothing; views are counted whole, as the store
    counts them. Sizes the shape engine worked out are cached (SIZES) per op, input shapes
    and constants, so a training loop pays for each distinct call once."""
    if in_place(op):
        return 0
    sizer = VALUE_SIZED.get(op)
    if sizer is not None:
        need = sizer(args, kwargs or {}, limit)
        if need is not None:
            return need
    if result_bound(args, kwargs, limit) <= limit:
        return 0
    key = _flat_key(op, args, kwargs)
    if key is not None:
        need = SIZES.get(key, _UNKNOWN)
        if need is not _UNKNOWN:
            return need
    spec = shapes.spec_for(fn, op, tuple(args), kwargs or {})
    need = None if spec is None else sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in spec.leaves
        if type(leaf) is shapes.TensorMeta)
    if key is not None:
        SIZES.put(key, need)
    return need


_UNKNOWN = object()
_CONSTANTS = (int, float, bool, str, type(None))


def _flat_key(op: str, args: Any, kwargs: dict | None) -> tuple | None:
    """A cache key for a call whose arguments are plain tensors, scalars and tuples of ints
    (most ops); None for anything else (lists of tensors, pointers, ...)."""
    parts: list = [op]
    for value in (*args, *(kwargs.values() if kwargs else ())):
        cls = type(value)
        if cls is torch.Tensor or cls is torch.nn.Parameter:
            parts.append((value.shape, value.dtype))
        elif cls in _CONSTANTS:
            parts.append((cls, value))
        elif cls is tuple and all(type(v) is int for v in value):
            parts.append((tuple, value))
        else:
            return None
    if kwargs:
        parts.append(tuple(kwargs))
    return tuple(parts)


def check_op_size(fn: Callable[..., Any], op: str, args: Any, kwargs: dict | None,
                  limit: int, worker_id: str | None = None) -> bool:
    """Raise QuotaExceededError, without running the op, if its results would take more than
    `limit` bytes. Returns whether the size was known (False: check the results after the op
    ran, with `check_results`)."""
    need = result_bytes(fn, op, args, kwargs, limit)
    if need is None:
        return False
    if need > limit:
        raise QuotaExceededError(
            f"{op} would make {need} bytes of results; the principal may have at most {limit} "
            f"more bytes on worker {worker_id!r} (its quota, --max-bytes, less what it stores, "
            f"or --max-op-bytes): refused without running it", worker=worker_id, op=op)
    return True


def check_results(leaves: list, inputs: Any, op: str | None, limit: int,
                  worker_id: str | None = None) -> None:
    """After an op whose size could not be known in advance ran: raise QuotaExceededError if
    its new tensor results (`leaves`, not counting inputs returned as they are) take more than
    `limit` bytes (the caller drops them)."""
    seen = {id(t) for t in _tensors(inputs, [])}
    need = sum(t.numel() * t.element_size() for t in leaves if id(t) not in seen)
    if need > limit:
        raise QuotaExceededError(
            f"{op} made {need} bytes of results; the principal may have at most {limit} more "
            f"bytes on worker {worker_id!r} (--max-bytes / --max-op-bytes): dropped",
            worker=worker_id, op=op)


def _tensors(value: Any, out: list) -> list:
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _tensors(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors(v, out)
    return out


# -- ops whose result size depends on the values -----------------------------------------------------

def _arg(args: Any, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _nonzero_bytes(args: Any, kwargs: dict, limit: int) -> int | None:
    """`nonzero(x)` / `where(x)`: an int64 index per dimension per nonzero element."""
    if len(args) + len(kwargs) != 1:  # where(cond, x, y): sized by the shape engine
        return None
    x = _arg(args, kwargs, 0, "input")
    if type(x) is not torch.Tensor:
        return None
    per = 8 * max(1, x.dim())
    bound = x.numel() * per
    return bound if bound <= limit else int(torch.count_nonzero(x)) * per


def _masked_select_bytes(args: Any, kwargs: dict, limit: int) -> int | None:
    """`masked_select(x, mask)`: the selected elements of x and mask broadcast together."""
    x, mask = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "mask")
    if type(x) is not torch.Tensor or type(mask) is not torch.Tensor:
        return None
    try:
        shape = torch.broadcast_shapes(x.shape, mask.shape)
    except RuntimeError:
        return 0  # fails at once when run
    bound = math.prod(shape) * x.element_size()
    if bound <= limit:
        return bound
    selected = int(torch.count_nonzero(mask)) * (math.prod(shape) // max(1, mask.numel()))
    return selected * x.element_size()


def _one_hot_bytes(args: Any, kwargs: dict, limit: int) -> int | None:
    """`F.one_hot(x, num_classes=-1)`: -1 means max(x) + 1 classes."""
    x = _arg(args, kwargs, 0, "input")
    classes = _arg(args, kwargs, 1, "num_classes", -1)
    if type(x) is not torch.Tensor or type(classes) is not int:
        return None
    if classes < 0:
        if x.numel() == 0 or x.dtype != torch.int64:
            return 0  # fails or makes nothing
        classes = int(x.max()) + 1
    return x.numel() * max(classes, 0) * 8


#: bytes per element of `tolist()`: a Python number (up to 32 bytes) and its list slot
TOLIST_BYTES = 40


def _tolist_bytes(args: Any, kwargs: dict, limit: int) -> int | None:
    """`x.tolist()`: a Python object per element, not a tensor, but memory all the same."""
    x = _arg(args, kwargs, 0, "self")
    if not isinstance(x, torch.Tensor):
        return None
    return x.numel() * TOLIST_BYTES


#: op -> fn(args, kwargs, limit) -> bytes its results take (an upper bound when that is at most
#: `limit`; None: ask the shape engine)
VALUE_SIZED: dict[str, Callable[[Any, dict, int], int | None]] = {
    "torch.nonzero": _nonzero_bytes, "Tensor.nonzero": _nonzero_bytes,
    "torch.where": _nonzero_bytes,
    "torch.masked_select": _masked_select_bytes, "Tensor.masked_select": _masked_select_bytes,
    "F.one_hot": _one_hot_bytes, "Tensor.tolist": _tolist_bytes,
}
