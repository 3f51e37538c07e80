"""The execution engine: run one allowlisted op for a `Command` against a worker's store.

Plans and every transport use this one function; nothing else turns a name into a call.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq import ops
from fedmq.errors import ObjectNotFoundError, RemoteExecutionError
from fedmq.messages import Command, PointerRef, Ref
from fedmq.store import FailedResult, ObjectStore


class PreviousOpFailed(RemoteExecutionError):
    """An input of this op is the result of an earlier pipelined op that failed."""


def resolve(value: Any, store: ObjectStore) -> Any:
    """Replace every `Ref` in `value` (nested in tuples, lists, dicts) with the stored object."""
    cls = type(value)
    if cls is int or cls is float or value is None or cls is bool:
        return value
    if cls is Ref:
        obj = store.get(value.id)
        if isinstance(obj, FailedResult):
            raise PreviousOpFailed(f"an earlier op failed: {obj.error.message}",
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


def flatten_tensors(value: Any, out: list) -> list:
    """Tensor leaves of a result in a fixed order (the order result ids are assigned in)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            flatten_tensors(v, out)
    return out


def run_command(cmd: Command, store: ObjectStore, worker_id: str) -> Any:
    """Run `cmd`; store tensor results under `cmd.result_ids` (None = aliases an input, not
    stored). With `cmd.reply` the value is returned, tensors as `PointerRef`s to fresh ids."""
    op = ops.lookup(cmd.op)
    args = resolve(cmd.args, store)
    kwargs = resolve(cmd.kwargs, store) if cmd.kwargs else {}
    if cmd.grad_enabled == torch.is_grad_enabled():
        result = op.fn(*args, **kwargs)
    else:
        with torch.set_grad_enabled(cmd.grad_enabled):
            result = op.fn(*args, **kwargs)
    if cmd.op == "Tensor.backward":
        return store.ids_with_grad()
    if cmd.reply:
        return _store_reply(result, store, worker_id)
    leaves = flatten_tensors(result, [])
    if len(leaves) != len(cmd.result_ids):
        raise RemoteExecutionError(
            f"{cmd.op} returned {len(leaves)} tensors, the caller expected {len(cmd.result_ids)}",
            worker=worker_id, op=cmd.op)
    for rid, leaf in zip(cmd.result_ids, leaves):
        if rid is not None:
            store.put(rid, leaf)
    return None


def _store_reply(value: Any, store: ObjectStore, worker_id: str) -> Any:
    from fedmq.ids import new_id

    if isinstance(value, torch.Tensor):
        rid = new_id()
        store.put(rid, value)
        return PointerRef(worker_id, rid, tuple(value.shape), value.dtype, value.requires_grad)
    if isinstance(value, list):
        return [_store_reply(v, store, worker_id) for v in value]
    if isinstance(value, tuple):  # namedtuples (torch.return_types) come back as tuples
        return tuple(_store_reply(v, store, worker_id) for v in value)
    return value


def fail_results(cmd: Command, store: ObjectStore, error) -> None:
    """Mark the results of a failed pipelined command, so using them raises the error."""
    for rid in cmd.result_ids:
        if rid is not None:
            store.put(rid, FailedResult(error))
