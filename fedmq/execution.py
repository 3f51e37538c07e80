"""The worker's execution layer: one primitive, `execute`, that every message doing work uses.

    execute(fn, args, kwargs, result_ids, store, worker_id) -> value
        resolve the inputs (`Ref`s -> stored objects), run `fn`, bind the tensor leaves of its
        result under the caller's `result_ids`; if anything fails, record one `ErrorInfo`
        (as a `FailedResult`) under every result id, so a later use of any of them raises the
        original error, and raise it as a `RemoteError` carrying that ErrorInfo.

Commands (`run_command`), plans and protocols (fedmq.plans.hooks), SMPC local steps
(fedmq.smpc.local_steps) and the federated Fit/Evaluate handlers (fedmq.fl.hooks) all run
through it, and `error_info` is the one place an exception becomes an ErrorInfo (the worker's
replies use it too). On a worker, nothing else turns an op name from the wire into a call.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from fedmq import limits, ops, principals, shapes
from fedmq.ops import flatten_tensors
from fedmq.errors import (AccessDeniedError, ObjectNotFoundError, OpNotAllowedError,
                          QuotaExceededError, RemoteError, RemoteExecutionError,
                          remote_error_from)
from fedmq.ids import new_id
from fedmq.messages import Command, ErrorInfo, PointerRef, Ref
from fedmq.store import FailedResult, ObjectStore, StoreView


class PreviousOpFailed(RemoteExecutionError):
    """An input of this op is the result of an earlier pipelined op that failed."""


def error_info(exc: BaseException, worker_id: str | None, op: str | None = None) -> ErrorInfo:
    """The ErrorInfo a worker reports (and records) for `exc`: a RemoteError keeps its own code,
    message and op; an op off the allowlist is "op_not_allowed"; anything else raised while
    running is "execution_error", worded "<ExceptionType>: <message>"."""
    if isinstance(exc, RemoteError):
        return ErrorInfo(exc.code, exc.remote_message, worker_id, exc.op)
    if isinstance(exc, OpNotAllowedError):
        return ErrorInfo("op_not_allowed", str(exc), worker_id, op)
    return ErrorInfo("execution_error", f"{type(exc).__name__}: {exc}", worker_id, op)


def execute(fn: Callable[..., Any] | None, args: Any, kwargs: dict | None, result_ids: Any,
            store: ObjectStore, worker_id: str, *, op: str | None = None,
            grad_enabled: bool | None = None, split: bool = False,
            what: str | None = None) -> Any:
    """Run `fn(*args, **kwargs)` on this worker and return its value.

    fn: the callable; None runs the allowlisted op named `op` (fedmq.ops.lookup: a name that
        is not on the allowlist fails like the op did, as "op_not_allowed"); a random op
        draws from the acting principal's generator on this worker (fedmq.ops.rng).
    args, kwargs: may hold `Ref`s (nested in tuples, lists, dicts): replaced by stored objects.
    result_ids: the caller's ids for the tensor leaves of the result, in `flatten_tensors`
        order; a None id is an alias of an input (an in-place op's result) and is not stored.
        The number of leaves must match. None: nothing is bound (the caller replies with the
        value), and a failure is not recorded.
    op: the op name errors carry (and count mismatches name).
    grad_enabled: the grad mode to run in (None: the current one).
    split: `fn` returns (results, value): `results` are bound, `value` is returned.
    what: how count mismatches name the call when there is no `op` (default: fn's name).

    Limits (fedmq.limits): while a worker handles a message, its time limit and cancellation
    are checked first (TimeLimitError, RemoteCancelledError), and an allowlisted op (`fn`
    None) whose results would take more bytes than the principal may still store (or than the
    worker's --max-op-bytes) is refused with QuotaExceededError without running it.

    On any exception: a `FailedResult` with one ErrorInfo (`error_info`) is stored under every
    result id and a `RemoteError` carrying it as `.info` is raised (the exception itself if it
    already was a RemoteError, else the one its code maps to, chained to it)."""
    view = store if type(store) is StoreView else None
    refs = args, kwargs
    try:
        budget = limits.current()
        if budget is not None:
            budget.check(op)
        allowlisted = fn is None  # sized before it runs, when a limit applies
        if fn is None:
            entry = ops.lookup(op)
            # a random op draws from the acting principal's generator (fedmq.ops.rng)
            fn = entry.fn if entry.random is None else ops.seeded(entry, worker_id)
        if view is not None:
            view.begin_op()
        args = resolve(args, store)
        kwargs = resolve(kwargs, store) if kwargs else {}
        acting = principals.current()
        if acting is not None and acting.guard is not None and op is not None:
            targets = ops.written(op, args, kwargs)
            if targets:
                acting.guard(op, targets)
        versions = None
        if view is not None and view.op_tainted:
            versions = _own_versions(view, refs)
            if op is not None and not view.may_release_tainted(False) and \
                    _data_dependent_shape(op, args, kwargs):
                raise _refusal(view, worker_id, op)
        limit, sized = None, True
        if allowlisted and (view is not None or budget is not None):
            limit = limits.op_limit(store, budget)
            if limit is not None:
                sized = limits.check_op_size(fn, op, args, kwargs, limit, worker_id)
        if grad_enabled is None or grad_enabled == torch.is_grad_enabled():
            value = fn(*args, **kwargs)
        else:
            with torch.set_grad_enabled(grad_enabled):
                value = fn(*args, **kwargs)
        if view is not None and view.op_tainted:
            if view.read_shared:
                view.check_unmodified(op)
            _mark_written(view, op, refs, args, kwargs, versions)
            # what an op only rearranges or copies of raw data (a view, a clone, an index) is
            # raw data still; so is whatever a plan returns of it (it may be the identity)
            view.result_raw = view.op_raw and (op is None or op in ops.STRUCTURAL or
                                               op in ops.RETURNS_VALUE)
        results = value
        if split:
            results, value = value
        if not sized:  # its size depends on the values: bounded now that it ran
            limits.check_results(flatten_tensors(results, []), (args, kwargs), op, limit,
                                 worker_id)
        if result_ids is not None:
            leaves = flatten_tensors(results, [])
            if len(leaves) != len(result_ids):
                check_count(leaves, result_ids, worker_id, op, what or _name(fn))
            for rid, leaf in zip(result_ids, leaves):
                if rid is not None:
                    store.put(rid, leaf)
        return value
    except Exception as exc:
        info = error_info(exc, worker_id, op)
        silent = view is not None and info.code in SILENT_CODES and view.op_tainted and \
            not view.may_release_tainted()
        if silent:
            # Whether an op on private data failed, and why, depends on the data ("index 7 is
            # out of bounds"): one bit per query is enough to read it out by binary search. So
            # the failure is recorded (private) under the result ids, and what the caller sees
            # is what it sees when the op works: nothing for a pipelined op, the release
            # refusal for a call that wants a reply. Whatever it may have written is private.
            if op is None or ops.writes(op) or (type(refs[1]) is dict and (
                    "out" in refs[1] or refs[1].get("inplace"))):  # it may have written
                _mark_refs_private(view, refs)
            info = ErrorInfo(info.code, "an op on private data failed (withheld)", worker_id,
                             info.op)
        if type(result_ids) is list or type(result_ids) is tuple:
            failed = FailedResult(info)
            for rid in result_ids:
                if rid is not None:
                    try:
                        store.put(rid, failed)
                    except TypeError:  # an unhashable id from the wire: nothing to record
                        pass
                    except QuotaExceededError:  # the principal's objects are at their quota:
                        break  # the failure is still reported, just not recorded
        if silent:
            if type(result_ids) is list or type(result_ids) is tuple:
                _stand_in(fn, op, args, kwargs, result_ids, store)
                return None
            raise _refusal(view, worker_id, op) from None
        if isinstance(exc, RemoteError):
            exc.info = info
            raise exc
        error = remote_error_from(info.code, info.message, worker_id, info.op)
        error.info = info
        raise error from exc


#: failures of an op on private data the caller never sees (where values are not released):
#: their words, and the fact of them, depend on the data
SILENT_CODES = frozenset({"execution_error", "quota_exceeded", "object_not_found"})


def _refusal(view: StoreView, worker_id: str, op: str | None) -> AccessDeniedError:
    return AccessDeniedError(
        f"{op or 'the call'} computed a value from private data; worker {worker_id!r} "
        f"does not release it (--release {view.policy.release})", worker=worker_id, op=op)


def _data_dependent_shape(op: str, args: Any, kwargs: dict) -> bool:
    """Whether the shape of `op`'s result depends on its input's values (`nonzero`,
    `masked_select`, one-argument `where`, `one_hot` without `num_classes`, `tolist`)."""
    if op not in limits.VALUE_SIZED:
        return False
    if op == "torch.where":
        return len(args) + len(kwargs or {}) == 1
    if op == "F.one_hot":
        return not (len(args) > 1 or (kwargs or {}).get("num_classes", -1) != -1)
    return True


def _stand_in(fn: Any, op: str | None, args: Any, kwargs: Any, result_ids: Any,
              store: StoreView) -> bool:
    """After an op on private data failed where values are kept in: store zeros of the shapes
    its results would have had (from the shape engine) under its result ids, marked private,
    so that nothing the caller can observe (what it stores, how big, how long later ops take)
    differs from when the op works. False when the shapes cannot be known (a plan): the
    failure stays recorded instead."""
    if op is None or fn is None or not isinstance(args, (tuple, list)):
        return False
    try:
        spec = shapes.spec_for(fn, op, tuple(args), kwargs if isinstance(kwargs, dict) else {})
    except Exception:  # noqa: BLE001 - no stand-in: the failure stays recorded
        return False
    if spec is None:
        return False
    leaves = [leaf for leaf in spec.leaves if type(leaf) is shapes.TensorMeta]
    if len(leaves) != len(result_ids):
        return False
    for rid, leaf in zip(result_ids, leaves):
        if rid is not None:
            store.put(rid, torch.zeros(leaf.shape, dtype=leaf.dtype), private=True)
    return True


def _mark_refs_private(view: StoreView, refs: tuple) -> None:
    for ref in _refs(refs, []):
        view.mark_private(ref.id)
        entry = view.find(ref.id)
        if entry is not None and isinstance(entry.obj, torch.Tensor):
            view.mark_private_memory([entry.obj])


def _own_versions(view: StoreView, refs: tuple) -> list:
    """(id, tensor, version) of the principal's own tensors an op is about to get."""
    out = []
    for ref in _refs(refs, []):
        entry = view.find(ref.id)
        if entry is not None and isinstance(entry.obj, torch.Tensor):
            out.append((ref.id, entry.obj, entry.obj._version))
    return out


def _mark_written(view: StoreView, op: str | None, refs: tuple, args: Any, kwargs: dict,
                  versions: list | None) -> None:
    """An op (or a plan, a local step) that read private data wrote into objects of the
    principal's own (`x.copy_(d)`, `x.add_(d)`, `x.data = d`, `x.grad = d`, `out=x`, a plan
    writing into an argument, a backward pass into its parameters' gradients): those objects,
    and every object of the principal's that shares their memory (the tensor a view was taken
    of, other views of it), hold private values now, and are marked so (a later get is a
    release)."""
    written = [tensor for _, tensor, version in versions or () if tensor._version != version]
    if op == "Tensor.backward":
        for obj_id in view.ids_with_grad():
            view.mark_private(obj_id)
    elif op is not None:
        written += ops.written(op, args, kwargs)
        if op == "Tensor.data.__set__" and len(args) > 1:  # aliases the value's memory
            written.append(args[1])
    if written:
        view.mark_private_memory(written)


def _refs(value: Any, out: list) -> list:
    if type(value) is Ref:
        out.append(value)
    elif type(value) in (tuple, list):
        for item in value:
            _refs(item, out)
    elif type(value) is dict:
        for item in value.values():
            _refs(item, out)
    return out


def check_count(leaves: list, result_ids: Any, worker_id: str, op: str | None = None,
                what: str | None = None) -> None:
    """The caller chose one id per tensor leaf; a different number is an error."""
    if len(leaves) != len(result_ids):
        raise RemoteExecutionError(
            f"{op or what} returned {len(leaves)} tensors, the caller expected "
            f"{len(result_ids)}", worker=worker_id, op=op)


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def run_command(cmd: Command, store: ObjectStore, worker_id: str) -> Any:
    """Run `cmd`; store tensor results under `cmd.result_ids` (None = aliases an input, not
    stored). With `cmd.reply` the value is returned, tensors as `PointerRef`s to fresh ids."""
    value = execute(None, cmd.args, cmd.kwargs, None if cmd.reply else cmd.result_ids, store,
                    worker_id, op=cmd.op, grad_enabled=cmd.grad_enabled)
    if cmd.op == "Tensor.backward":
        return store.ids_with_grad()
    if cmd.reply:
        return reply_refs(value, store, worker_id, cmd.op)
    return None


def check_release(value: Any, store: Any, worker_id: str, op: str | None = None, *,
                  tensors_leave: bool = False) -> None:
    """Raise AccessDeniedError if `value`, about to leave in a reply, carries plain values (a
    number, a bool: anything but tensors, which stay and go back as pointers; with
    `tensors_leave`, tensors too, as an SMPC step's opened values) that the op just run
    computed from private data the policy keeps in."""
    if type(store) is not StoreView:
        return
    if tensors_leave:  # opened with a mask of the caller's choice: raw if it read raw data
        refused = bool(value) and not store.may_release_tainted(store.op_raw)
    else:  # a tensor stays, but its description (its shape: `nonzero`'s) leaves
        refused = value is not None and not store.may_release_tainted()
    if refused:
        raise _refusal(store, worker_id, op)


def _plain_values(value: Any) -> bool:
    """Whether a reply value carries anything but tensors (which stay on the worker and go
    back as pointers): a number, a bool, a list of numbers..."""
    if isinstance(value, torch.Tensor):
        return False
    if isinstance(value, (tuple, list)):
        return any(_plain_values(v) for v in value)
    return value is not None


EARLIER = "an earlier op failed: "


def earlier_failure(message: str) -> str:
    """The error of an op whose input is the failed result of an earlier one: that one's
    message, said once however long the chain of failures (not once per op)."""
    return message if message.startswith(EARLIER) else EARLIER + message


def resolve(value: Any, store: ObjectStore) -> Any:
    """Replace every `Ref` in `value` (nested in tuples, lists, dicts) with the stored object."""
    cls = type(value)
    if cls is int or cls is float or value is None or cls is bool:
        return value
    if cls is Ref:
        obj = store.get(value.id)
        if isinstance(obj, FailedResult):
            raise PreviousOpFailed(earlier_failure(obj.error.message),
                                   worker=store.worker_id, op=obj.error.op)
        if value.attr is None:
            return obj
        if value.attr != "grad":
            raise ObjectNotFoundError(f"attribute {value.attr!r} cannot be referenced",
                                      worker=store.worker_id)
        grad = obj.grad
        if grad is None:
            raise ObjectNotFoundError(f"object {value.id} has no gradient", worker=store.worker_id)
        return grad
    if cls is tuple or cls is list:
        return cls(resolve(v, store) for v in value)
    if cls is dict:
        return {k: resolve(v, store) for k, v in value.items()}
    return value


def reply_refs(value: Any, store: ObjectStore, worker_id: str, op: str | None = None) -> Any:
    """`value` for a reply: each tensor stored under a fresh id and described by a PointerRef;
    plain values computed from private data only where the policy releases them
    (`check_release`)."""
    check_release(value, store, worker_id, op)
    leaves = flatten_tensors(value, [])
    ids = [new_id() for _ in leaves]
    for rid, leaf in zip(ids, leaves):
        store.put(rid, leaf)
    return refs_like(value, iter(ids), worker_id)


def refs_like(value: Any, ids: Any, location: str) -> Any:
    """`value` with its tensor leaves replaced, in order, by PointerRefs to `location`:`ids`."""
    if isinstance(value, torch.Tensor):
        return PointerRef(location, next(ids), tuple(value.shape), value.dtype,
                          value.requires_grad)
    if isinstance(value, list):
        return [refs_like(v, ids, location) for v in value]
    if isinstance(value, tuple):  # namedtuples (torch.return_types) come back as tuples
        return tuple(refs_like(v, ids, location) for v in value)
    return value
