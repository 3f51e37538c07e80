"""Running a plan's op list, on a worker (RunPlan) or locally.

Every op goes through `fedmq.execution.run_command` (the worker's one execution primitive)
against a scope of the plan's own (an `ObjectStore` holding its inputs, state and intermediate
results), so a plan uses exactly the allowlist and executor a remote op uses. Before anything
runs the whole op list is validated: a plan with one op off the allowlist does nothing at all.

The shapes and dtypes of a plan's results, for a caller that wants to choose result ids before
the plan has run, come from the client's shape engine (`fedmq.shapes.plan_specs`).

Memory: a slot is dropped from the scope right after the last op that names it (`frees`, a
liveness pass over the op list, done once per op list and cached), so running a plan holds
what its live values need, not every intermediate of every op: a 500-step loop of 600x600
matmuls peaks at a few of those tensors. Inputs, state and output slots are never dropped.
Dropping a slot only drops the scope's reference: a view, an in-place op's alias, a tensor
autograd saved for backward, or a later op's result keeps the storage as long as it needs it.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from fedmq import limits, messages as m, ops
from fedmq.errors import RemoteError, RemoteExecutionError
from fedmq.execution import resolve, run_command
from fedmq.store import ObjectStore


def validate(plan: Any, worker_id: str | None = None) -> None:
    """Check a plan record that came from the wire before running any of it."""
    name = getattr(plan, "name", "?")
    if not isinstance(plan.ops, list) or not all(type(op) is m.Command for op in plan.ops):
        raise RemoteExecutionError(f"plan {name!r} is malformed: its ops must be Commands",
                                   worker=worker_id)
    if len(plan.state_slots) != len(plan.state):
        raise RemoteExecutionError(f"plan {name!r} is malformed: {len(plan.state)} state tensors "
                                   f"for {len(plan.state_slots)} state slots", worker=worker_id)
    for op in plan.ops:
        ops.lookup(op.op)  # OpNotAllowedError names the op


_DIVERGED = (" (the plan took another path when it was built: a value that was None then, such "
             "as a .grad read before the first backward, is not None now; zero gradients after "
             "the update, not before it)")


def _slots_in(value: Any, out: set) -> set:
    """The slots `Ref`s in `value` (nested in tuples, lists, dicts) name."""
    cls = type(value)
    if cls is m.Ref:
        out.add(value.id)
    elif cls is tuple or cls is list:
        for v in value:
            _slots_in(v, out)
    elif cls is dict:
        for v in value.values():
            _slots_in(v, out)
    return out


def liveness(ops_list: list, keep: set) -> list[list]:
    """For each op of `ops_list`, the slots no later op names (as an argument or a result)
    and that are not in `keep`: what may leave the scope once that op has run."""
    last: dict = {}
    for index, op in enumerate(ops_list):
        for slot in _slots_in((op.args, op.kwargs), set()):
            last[slot] = index
        for slot in op.result_ids if type(op.result_ids) is list else ():
            if slot is not None:
                last[slot] = index
    frees: list[list] = [[] for _ in ops_list]
    for slot, index in last.items():
        if slot not in keep:
            frees[index].append(slot)
    return frees


#: op list -> (the op list, its length, kept slots, frees): the last plans run, most recent
#: last (each holds its op list alive, so that an id cannot be reused by another list)
_FREES: collections.OrderedDict = collections.OrderedDict()
_FREES_LIMIT = 64
_FREES_LOCK = threading.Lock()


def frees(plan: Any) -> list[list]:
    """`liveness` of `plan`'s ops, keeping its input, state and output slots (cached per op
    list object)."""
    ops_list = plan.ops
    keep = set(plan.input_slots) | set(plan.state_slots) | _slots_in(plan.output, set())
    key = id(ops_list)
    with _FREES_LOCK:
        hit = _FREES.get(key)
        if hit is not None and hit[0] is ops_list and hit[1] == len(ops_list) \
                and hit[2] == keep:
            _FREES.move_to_end(key)
            return hit[3]
    found = liveness(ops_list, keep)
    with _FREES_LOCK:
        _FREES[key] = (ops_list, len(ops_list), keep, found)
        _FREES.move_to_end(key)
        while len(_FREES) > _FREES_LIMIT:
            _FREES.popitem(last=False)
    return found


def run(plan: Any, args: list | tuple, state: list, worker_id: str, *,
        grad: bool = True) -> Any:
    """Run `plan`'s ops on `args` and `state`; return its output structure (real values).
    Each op runs in the grad mode it was recorded in; `grad=False` turns autograd off for
    every op (a model's forward pass under the caller's `torch.no_grad()`, as the module
    would run: no graph kept, and the kernels' inference paths).
    On a worker, each op checks the message's budget first (fedmq.limits, in
    `execution.execute`: time limit, cancellation, and the op's result size), and the plan's
    intermediate results count against the room of the principal running it."""
    if len(args) != len(plan.input_slots):
        raise RemoteExecutionError(f"plan {plan.name!r} takes {len(plan.input_slots)} "
                                   f"argument(s), got {len(args)}", worker=worker_id)
    scope = ObjectStore(worker_id)
    for slot, value in zip(plan.input_slots, args):
        scope.put(slot, value)
    for slot, value in zip(plan.state_slots, state):
        scope.put(slot, value)
    budget = limits.current()
    outer = budget.transient if budget is not None else 0
    base = scope.usage(scope.policy.owner)[0]  # inputs and state: stored already
    dead = frees(plan)
    try:
        for index, op in enumerate(plan.ops):
            if budget is not None:  # what the plan made so far is held for the principal
                budget.transient = outer + scope.usage(scope.policy.owner)[0] - base
            if not grad and op.grad_enabled:
                op = m.Command(op.op, op.args, op.kwargs, op.result_ids, False, op.reply)
            try:
                run_command(op, scope, worker_id)
            except RemoteError as exc:  # every failure of an op (execution.execute)
                text = exc.remote_message
                if "the caller expected" in text:  # a None (e.g. a .grad) or a shape differs
                    text += _DIVERGED
                raise type(exc)(f"plan {plan.name!r}, op {index} ({op.op}): {text}",
                                worker=worker_id, op=op.op) from exc
            for slot in dead[index]:
                scope.delete(slot)
        return resolve(plan.output, scope)
    finally:
        if budget is not None:
            budget.transient = outer
