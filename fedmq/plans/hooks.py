"""The worker side of plans and protocols: handlers for `RunPlan` and `RunProtocol`.

Declared in `EXTENSION`, applied by `fedmq.extensions.load_extensions` (TorchHook and the
worker service load it), so every worker answers both messages.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq import errors, messages as m
from fedmq.execution import flatten_tensors, resolve
from fedmq.ids import new_id
from fedmq.plans import runner
from fedmq.extensions import Extension
from fedmq.plans.messages import PlanRecord, PlanRef, ProtocolRecord, RunPlan, RunProtocol
from fedmq.store import FailedResult


def _stored(worker: Any, obj_id: int, cls: type, what: str) -> Any:
    obj = worker.store.get(obj_id)
    if not isinstance(obj, cls):
        raise errors.RemoteExecutionError(f"object {obj_id} is a {type(obj).__name__}, not a "
                                          f"{what}", worker=worker.id)
    return obj


def run_plan(worker: Any, msg: RunPlan) -> Any:
    """Run a stored plan on stored objects; its outputs go under the caller's result ids (or
    to `msg.forward_to`, or under fresh ids described in the reply when `msg.reply`)."""
    try:
        plan = _stored(worker, msg.plan_id, PlanRecord, "plan")
        runner.validate(plan, worker.id)
        args = resolve(msg.args, worker.store)
        if not isinstance(args, (tuple, list)):
            raise errors.RemoteExecutionError("RunPlan.args must be a tuple", worker=worker.id)
        out = runner.execute(plan, args, plan.state, worker.id)
        leaves = flatten_tensors(out, [])
        ids = [new_id() for _ in leaves] if msg.reply else list(msg.result_ids)
        if len(ids) != len(leaves):
            raise errors.RemoteExecutionError(
                f"plan {plan.name!r} returned {len(leaves)} tensors, the caller expected "
                f"{len(ids)}", worker=worker.id)
        if msg.forward_to is not None:
            _forward(worker, msg.forward_to, ids, leaves)
        else:
            for rid, leaf in zip(ids, leaves):
                worker.store.put(rid, leaf)
    except Exception as exc:
        if not msg.reply and msg.forward_to is None:
            _fail(worker, msg.result_ids, exc)
        raise
    if msg.reply:
        where = msg.forward_to or worker.id
        return _refs_like(out, iter(ids), where)
    return None


def _forward(worker: Any, to: str, ids: list, leaves: list) -> None:
    if worker.network is None:
        raise errors.RemoteExecutionError("this worker cannot reach other workers",
                                          worker=worker.id)
    target = worker.network.client(to)
    target.call(m.ObjectMessage([m.StoredObject(rid, leaf) for rid, leaf in zip(ids, leaves)]),
                sender=worker.id)


def _fail(worker: Any, result_ids: list, exc: Exception) -> None:
    """Results of a failed pipelined plan raise its error when used (like a failed Command)."""
    if isinstance(exc, errors.RemoteError):
        info = m.ErrorInfo(exc.code, exc.remote_message, worker.id, exc.op)
    elif isinstance(exc, errors.OpNotAllowedError):
        info = m.ErrorInfo("op_not_allowed", str(exc), worker.id)
    else:
        info = m.ErrorInfo("execution_error", f"{type(exc).__name__}: {exc}", worker.id)
    for rid in result_ids if isinstance(result_ids, list) else ():
        if rid is not None:
            worker.store.put(rid, FailedResult(info))


def _refs_like(value: Any, ids, location: str) -> Any:
    if isinstance(value, torch.Tensor):
        return m.PointerRef(location, next(ids), tuple(value.shape), value.dtype,
                            value.requires_grad)
    if isinstance(value, list):
        return [_refs_like(v, ids, location) for v in value]
    if isinstance(value, tuple):
        return tuple(_refs_like(v, ids, location) for v in value)
    return value


def run_protocol(worker: Any, msg: RunProtocol) -> Any:
    """Run a stored protocol, this worker acting as its client: its data goes to the first
    plan's worker, results go worker to worker; the pointers this worker then holds to the
    results are stored here and described in the reply (pointers to pointers)."""
    from fedmq.plans.protocol import Protocol, run_chain
    from fedmq.pointers.tensor import PointerTensor, ref_for

    record = _stored(worker, msg.protocol_id, ProtocolRecord, "protocol")
    if worker.network is None:
        raise errors.RemoteExecutionError("this worker cannot reach other workers",
                                          worker=worker.id)
    protocol = Protocol.from_record(record, owner=worker, network=worker.network)
    if not protocol.is_deployed:
        raise errors.RemoteExecutionError("this protocol was sent before it was deployed: fetch "
                                          "it, deploy it, and run it", worker=worker.id)
    args = resolve(msg.args, worker.store)
    out = run_chain(protocol.deployed, tuple(args), worker)
    clients = {p.location.id: p.location for p in protocol.deployed}
    del protocol, args
    for client in clients.values():  # the input copies it sent are released: delete them now
        client.flush()

    def store(value: Any) -> Any:
        if isinstance(value, PointerTensor):
            rid = new_id()
            worker.store.put(rid, value)
            return ref_for(worker.id, rid, value)
        if isinstance(value, (tuple, list)):
            return type(value)(store(v) for v in value)
        return value

    return store(out)


EXTENSION = Extension("plans", handlers={RunPlan: run_plan, RunProtocol: run_protocol},
                      records=(RunPlan, PlanRecord, ProtocolRecord, PlanRef, RunProtocol))
