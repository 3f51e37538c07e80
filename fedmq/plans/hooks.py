"""The worker side of plans and protocols: handlers for `RunPlan` and `RunProtocol`.

Declared in `EXTENSION`, applied by `fedmq.extensions.load_extensions` (TorchHook and the
worker service load it), so every worker answers both messages.
"""
from __future__ import annotations

from typing import Any

from fedmq import errors, messages as m
from fedmq.execution import check_count, execute, flatten_tensors, refs_like, reply_refs
from fedmq.extensions import Extension
from fedmq.ids import new_id
from fedmq.plans import runner
from fedmq.plans.messages import (ModelPlanRecord, PlanRecord, PlanRef, ProtocolRecord, RunPlan,
                                  RunProtocol)
from fedmq.plans.protocol import Protocol, run_chain
from fedmq.pointers.tensor import PointerTensor


def _expect(obj: Any, obj_id: Any, cls: type, what: str, worker_id: str) -> None:
    if not isinstance(obj, cls):
        raise errors.RemoteExecutionError(f"object {obj_id} is a {type(obj).__name__}, not a "
                                          f"{what}", worker=worker_id)


def run_plan(worker: Any, msg: RunPlan) -> Any:
    """Run a stored plan on stored objects; its outputs go under the caller's result ids (or
    to `msg.forward_to`, or under fresh ids described in the reply when `msg.reply`)."""
    pipelined = not msg.reply and msg.forward_to is None
    out = execute(_run_stored_plan, (m.Ref(msg.plan_id), msg.args, msg.plan_id, worker.id), None,
                  msg.result_ids if pipelined else None, worker.store, worker.id,
                  what="the plan")
    if pipelined:
        return None
    if msg.forward_to is None:
        return reply_refs(out, worker.store, worker.id)
    leaves = flatten_tensors(out, [])
    ids = [new_id() for _ in leaves] if msg.reply else list(msg.result_ids)
    check_count(leaves, ids, worker.id, what="the plan")
    _forward(worker, msg.forward_to, ids, leaves)
    return refs_like(out, iter(ids), msg.forward_to) if msg.reply else None


def _run_stored_plan(plan: Any, args: Any, plan_id: Any, worker_id: str) -> Any:
    _expect(plan, plan_id, PlanRecord, "plan", worker_id)
    runner.validate(plan, worker_id)
    if not isinstance(args, (tuple, list)):
        raise errors.RemoteExecutionError("RunPlan.args must be a tuple", worker=worker_id)
    return runner.run(plan, args, plan.state, worker_id)


def _forward(worker: Any, to: str, ids: list, leaves: list) -> None:
    if worker.network is None:
        raise errors.RemoteExecutionError("this worker cannot reach other workers",
                                          worker=worker.id)
    target = worker.network.client(to)
    target.call(m.ObjectMessage([m.StoredObject(rid, leaf) for rid, leaf in zip(ids, leaves)]),
                sender=worker.id)


def run_protocol(worker: Any, msg: RunProtocol) -> Any:
    """Run a stored protocol, this worker acting as its client: its data goes to the first
    plan's worker, results go worker to worker; the pointers this worker then holds to the
    results are stored here and described in the reply (pointers to pointers)."""
    return execute(_run_stored_protocol, (m.Ref(msg.protocol_id), msg.args, msg.protocol_id,
                                          worker), None, None, worker.store, worker.id)


def _run_stored_protocol(record: Any, args: Any, protocol_id: Any, worker: Any) -> Any:
    _expect(record, protocol_id, ProtocolRecord, "protocol", worker.id)
    if worker.network is None:
        raise errors.RemoteExecutionError("this worker cannot reach other workers",
                                          worker=worker.id)
    protocol = Protocol.from_record(record, owner=worker, network=worker.network)
    if not protocol.is_deployed:
        raise errors.RemoteExecutionError("this protocol was sent before it was deployed: fetch "
                                          "it, deploy it, and run it", worker=worker.id)
    out = run_chain(protocol.deployed, tuple(args), worker)
    clients = {p.location.id: p.location for p in protocol.deployed}
    del protocol, args
    for client in clients.values():  # the input copies it sent are released: delete them now
        client.flush()
    return _store_pointers(out, worker)


def _store_pointers(value: Any, worker: Any) -> Any:
    """Pointers the protocol returned, stored here and described (pointers to pointers)."""
    if isinstance(value, PointerTensor):
        rid = new_id()
        worker.store.put(rid, value)
        return m.describe(worker.id, rid, value)
    if isinstance(value, (tuple, list)):
        return type(value)(_store_pointers(v, worker) for v in value)
    return value


EXTENSION = Extension("plans", handlers={RunPlan: run_plan, RunProtocol: run_protocol},
                      records=(RunPlan, PlanRecord, ProtocolRecord, PlanRef, RunProtocol,
                               ModelPlanRecord))
