"""Running a plan's op list, on a worker (RunPlan) or locally.

Every op goes through `fedmq.execution.run_command` (the worker's one execution primitive)
against a scope of the plan's own (an `ObjectStore` holding its inputs, state and intermediate
results), so a plan uses exactly the allowlist and executor a remote op uses. Before anything
runs the whole op list is validated: a plan with one op off the allowlist does nothing at all.

The shapes and dtypes of a plan's results, for a caller that wants to choose result ids before
the plan has run, come from the client's shape engine (`fedmq.shapes.plan_specs`).
"""
from __future__ import annotations

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


def run(plan: Any, args: list | tuple, state: list, worker_id: str) -> Any:
    """Run `plan`'s ops on `args` and `state`; return its output structure (real values).
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
    try:
        for index, op in enumerate(plan.ops):
            if budget is not None:  # what the plan made so far is held for the principal
                budget.transient = outer + scope.usage(scope.policy.owner)[0] - base
            try:
                run_command(op, scope, worker_id)
            except RemoteError as exc:  # every failure of an op (execution.execute)
                text = exc.remote_message
                if "the caller expected" in text:  # a None (e.g. a .grad) or a shape differs
                    text += _DIVERGED
                raise type(exc)(f"plan {plan.name!r}, op {index} ({op.op}): {text}",
                                worker=worker_id, op=op.op) from exc
        return resolve(plan.output, scope)
    finally:
        if budget is not None:
            budget.transient = outer
