"""Running a plan's op list: on a worker (RunPlan), locally, and on meta tensors.

Every op goes through `fedmq.execution.run_command` against a scope of the plan's own (an
`ObjectStore` holding its inputs, state and intermediate results), so a plan uses exactly the
allowlist and executor a remote op uses. Before anything runs the whole op list is validated:
a plan with one op off the allowlist does nothing at all.

`output_specs` replays the op list on meta tensors to learn the shapes and dtypes of the
results for given input shapes, so the caller can choose result ids and hand out pointers
without waiting for the worker (the plan call is then pipelined like any remote op).
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq import messages as m, ops
from fedmq.errors import OpNotAllowedError, RemoteError, RemoteExecutionError
from fedmq.execution import flatten_tensors, resolve, run_command
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


def execute(plan: Any, args: list | tuple, state: list, worker_id: str) -> Any:
    """Run `plan`'s ops on `args` and `state`; return its output structure (real values)."""
    if len(args) != len(plan.input_slots):
        raise RemoteExecutionError(f"plan {plan.name!r} takes {len(plan.input_slots)} "
                                   f"argument(s), got {len(args)}", worker=worker_id)
    scope = ObjectStore(worker_id)
    for slot, value in zip(plan.input_slots, args):
        scope.put(slot, value)
    for slot, value in zip(plan.state_slots, state):
        scope.put(slot, value)
    for index, op in enumerate(plan.ops):
        try:
            run_command(op, scope, worker_id)
        except OpNotAllowedError:
            raise
        except RemoteError as exc:
            text = exc.remote_message
            if "the caller expected" in text:  # a None (e.g. a .grad) or a shape differs
                text += _DIVERGED
            raise type(exc)(f"plan {plan.name!r}, op {index} ({op.op}): {text}",
                            worker=worker_id, op=op.op) from exc
        except Exception as exc:
            raise RemoteExecutionError(f"plan {plan.name!r}, op {index} ({op.op}): "
                                       f"{type(exc).__name__}: {exc}", worker=worker_id,
                                       op=op.op) from exc
    return resolve(plan.output, scope)


# -- result metadata on meta tensors ------------------------------------------------------------

def output_specs(plan: Any, state: list, args: tuple) -> list | None:
    """[(shape, dtype, requires_grad)] of the output tensors of `plan` run on `args` (pointers
    or metadata-bearing tensors), or None when the op list cannot run on meta tensors
    (data-dependent shapes): the caller then asks the worker to reply with the results."""
    from fedmq.pointers.meta import local_meta

    scope = ObjectStore("meta")
    try:
        for slot, value in zip(plan.input_slots, args):
            scope.put(slot, _meta_like(local_meta(value)) if isinstance(value, torch.Tensor)
                      else value)
        for slot, t in zip(plan.state_slots, state):
            scope.put(slot, _meta_like(local_meta(t)))
        for op in plan.ops:
            run_command(_meta_command(op), scope, "meta")
        out = resolve(plan.output, scope)
    except Exception:  # noqa: BLE001 - any failure means "ask the worker"
        return None
    return [(tuple(t.shape), t.dtype, t.requires_grad) for t in flatten_tensors(out, [])]


def _meta_like(meta: tuple) -> torch.Tensor:
    shape, dtype, requires_grad = meta
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.requires_grad_(True) if requires_grad else t


def _meta_command(op: m.Command) -> m.Command:
    return m.Command(op.op, _to_meta(op.args), _to_meta(op.kwargs), op.result_ids,
                     op.grad_enabled)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):  # a constant of the plan
        return value.to("meta")
    cls = type(value)
    if cls in (tuple, list):
        return cls(_to_meta(v) for v in value)
    if cls is dict:
        return {k: _to_meta(v) for k, v in value.items()}
    return value
