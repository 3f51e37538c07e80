"""Protocols: plans run one after the other on several workers, data moving worker to worker.

    protocol = fedmq.Protocol([("worker1", inc1), ("worker2", inc2), ("worker3", inc3)])
    protocol.deploy(alice, bob, charlie)   # roles -> workers; each plan is sent to its worker
    ptr = protocol.run(x)                  # x to alice, alice's output to bob, ... -> charlie

`run` sends the input to the first worker and runs each plan with ONE message; a plan whose
successor is on another worker is told to store its results there (`RunPlan.forward_to`), so
intermediate results go worker to worker and never pass through the caller.

A protocol is also an object workers store: `protocol.send(cloud)` ships it (with the plans
inline if it is not deployed, with references to the deployed plans if it is); `protocol.run`
then asks the cloud to run it (one `RunProtocol`), which returns a pointer (on the cloud) to
the pointer (to the last worker) the cloud now holds. Tagged protocols are found with
`search`, fetched with `.get()` and can be deployed again.

PySyft printed "send alice", "move alice -> bob", ... while running; fedmq logs the same lines
on the "fedmq.plans" logger (level INFO) instead of printing them.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from fedmq import messages as m
from fedmq.context import latest_local_worker
from fedmq.errors import PointerError
from fedmq.ids import new_id
from fedmq.plans.messages import (PlanRecord, PlanRef, ProtocolRecord, RunProtocol,
                                  register_pointer_kind)
from fedmq.plans.plan import Plan
from fedmq.plans.pointer_plan import PointerPlan
from fedmq.pointers import dispatch
from fedmq.pointers.ownership import OwnedRemote
from fedmq.pointers.tensor import PointerTensor, materialize, one_location

log = logging.getLogger("fedmq.plans")


def _role_name(role: Any) -> str:
    return role if isinstance(role, str) else str(getattr(role, "id", role))


class Protocol:
    """An ordered list of (role, plan) pairs; `deploy` maps the roles to workers."""

    def __init__(self, plans: list, id: int | None = None, owner: Any = None, tags=None,
                 description: str | None = None) -> None:
        self.id = id if id is not None else new_id()
        self.owner = owner if owner is not None else latest_local_worker()
        self.tags = set(tags or ())
        self.description = description
        self.roles: list = []
        self.plans: list = []
        for i, entry in enumerate(plans):
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise TypeError(f"protocol entry {i} must be a (worker, plan) pair")
            role, plan = entry
            if not isinstance(plan, (Plan, PointerPlan)):
                raise TypeError(f"protocol entry {i}: {type(plan).__name__} is not a Plan or "
                                f"a PointerPlan")
            self.roles.append(role)
            self.plans.append(plan)
        if not self.plans:
            raise ValueError("a protocol needs at least one plan")
        #: the PointerPlan each plan was deployed as (None: not deployed)
        self.deployed: list = [p if isinstance(p, PointerPlan) else None for p in self.plans]
        self._remote: PointerProtocol | None = None  # set by send(): run() then runs it there

    # -- deployment --------------------------------------------------------------------------------
    @property
    def is_deployed(self) -> bool:
        return all(p is not None for p in self.deployed)

    def deploy(self, *workers: Any) -> "Protocol":
        """Map the roles to `workers` and send each plan to its worker. Roles that are the ids
        of given workers go to those workers; otherwise workers are given one per plan, or one
        per distinct role (in order of first appearance). With no workers, roles that are
        workers are used as they are."""
        if self.is_deployed:
            raise RuntimeError("this protocol is already deployed; fetch or create a new one "
                               "to deploy it elsewhere")
        assigned = self._assign(workers)
        deployed = []
        for plan, pointer, worker in zip(self.plans, self.deployed, assigned):
            if pointer is not None:
                if pointer.location.id != worker.id:
                    raise RuntimeError(f"plan {pointer.name!r} is already on "
                                       f"{pointer.location.id!r}, not {worker.id!r}")
                deployed.append(pointer)
            else:
                deployed.append(plan.send(worker))
        self.deployed = deployed
        return self

    def _assign(self, workers: tuple) -> list:
        names = [_role_name(r) for r in self.roles]
        if not workers:
            if all(not isinstance(r, str) for r in self.roles):
                return list(self.roles)
            raise RuntimeError("deploy(*workers) needs the workers to deploy the protocol to")
        by_id = {w.id: w for w in workers}
        if all(n in by_id for n in names):  # roles named after the workers: the clearest
            return [by_id[n] for n in names]
        if len(workers) == len(self.plans):
            return list(workers)
        distinct = list(dict.fromkeys(names))
        if len(workers) == len(distinct):
            by_role = dict(zip(distinct, workers))
            return [by_role[n] for n in names]
        raise RuntimeError(f"cannot map the roles {distinct} to {len(workers)} worker(s): give "
                           f"one worker per plan ({len(self.plans)}), one per role "
                           f"({len(distinct)}), or workers whose ids are the role names")

    # -- running -----------------------------------------------------------------------------------
    def run(self, *args: Any) -> Any:
        """Run the plans in order. Local tensors are sent to the first worker; the result is a
        pointer on the last worker. After `send(cloud)`: run there, on pointers to the cloud's
        data; the result is a pointer to a pointer."""
        if self._remote is not None:
            return self._remote.run(*args)
        if not self.is_deployed:
            raise RuntimeError("deploy the protocol before running it: protocol.deploy(*workers)")
        return run_chain(self.deployed, args, self.owner)

    __call__ = run

    # -- as an object on workers -----------------------------------------------------------------
    def to_record(self) -> ProtocolRecord:
        plans = []
        for plan, pointer in zip(self.plans, self.deployed):
            if pointer is not None:
                plans.append(PlanRef(pointer.location.id, pointer.id_at_location, (), None, False,
                                     [], None, "plan", pointer.name))
            else:
                plans.append(plan.to_record())
        workers = [None if p is None else p.location.id for p in self.deployed]
        return ProtocolRecord(self.id, [_role_name(r) for r in self.roles], plans, workers,
                              sorted(self.tags), self.description)

    @classmethod
    def from_record(cls, rec: ProtocolRecord, owner: Any = None, network: Any = None) -> "Protocol":
        """A protocol from a record; deployed plans become PointerPlans that do not own their
        plan (the protocol's original owner does)."""
        if not isinstance(rec, ProtocolRecord) or len(rec.roles) != len(rec.plans):
            raise PointerError("not a valid protocol record")
        entries = []
        for role, plan in zip(rec.roles, rec.plans):
            if isinstance(plan, PlanRef):
                if network is None:
                    raise PointerError(f"cannot reach worker {plan.location!r} holding plan "
                                       f"{plan.name!r}")
                plan = plan.to_pointer(owner, network, gc=False)
            elif isinstance(plan, PlanRecord):
                plan = Plan.from_record(plan, owner=owner)
            else:
                raise PointerError(f"a protocol holds plans, not {type(plan).__name__}")
            entries.append((role, plan))
        return cls(entries, id=rec.id, owner=owner, tags=rec.tags, description=rec.description)

    def send(self, *locations: Any, **_ignored: Any) -> "PointerProtocol":
        """Store the protocol on a worker; `run` then runs it from there."""
        location = one_location(locations)
        record = self.to_record()
        rid = new_id()
        location.post(m.ObjectMessage([m.StoredObject(rid, record, sorted(self.tags),
                                                      self.description)]))
        owner = getattr(location.network, "local_worker", None) or self.owner
        self._remote = PointerProtocol(location, rid, owner=owner, protocol=self,
                                       tags=self.tags, description=self.description)
        return self._remote

    def tag(self, *tags: str) -> "Protocol":
        self.tags.update(tags)
        return self

    def describe(self, description: str) -> "Protocol":
        self.description = description
        return self

    def __repr__(self) -> str:
        owner = getattr(self.owner, "id", self.owner or "me")
        head = f"<Protocol id:{self.id} owner:{owner}{' resolved' if self.is_deployed else ''}>"
        lines = [head]
        for role, plan, pointer in zip(self.roles, self.plans, self.deployed):
            if pointer is not None:
                lines.append(f" - {pointer.location.id}: {pointer!r}")
            else:
                lines.append(f" - {_role_name(role)}: {plan!r}")
        return "\n".join(lines)


def run_chain(pointer_plans: list, args: tuple, owner: Any) -> Any:
    """Run deployed plans in order: args to the first worker, then each plan's results
    straight to the next plan's worker. Returns the last plan's result (pointers)."""
    first = pointer_plans[0].location
    current = []
    for value in args:
        if isinstance(value, torch.Tensor) and dispatch.is_remote(value):
            where = dispatch.location_of(value)
            if where.id != first.id:
                log.info("move %s  ->  %s", where.id, first.id)
                value = value.move(first)
        elif isinstance(value, torch.Tensor):
            log.info("send %s", first.id)
            value = _send_tensor(value, first, owner)
        current.append(value)
    out = None
    for i, pointer_plan in enumerate(pointer_plans):
        nxt = pointer_plans[i + 1].location if i + 1 < len(pointer_plans) else None
        if nxt is not None and nxt.id != pointer_plan.location.id:
            log.info("move %s  ->  %s", pointer_plan.location.id, nxt.id)
            if nxt.id == getattr(owner, "id", None) and hasattr(owner, "store"):
                # The next hop is the worker running this protocol: it is busy handling the
                # RunProtocol message, so the previous worker cannot deliver to it (that would
                # wait behind this very message). It fetches the results itself instead.
                out = _bring_home(pointer_plan._run(tuple(current)), owner, nxt)
            else:
                out = pointer_plan._run(tuple(current), forward_to=nxt)
        else:
            out = pointer_plan._run(tuple(current))
        current = list(out) if isinstance(out, (tuple, list)) else [out]
    return out


def _bring_home(value: Any, worker: Any, here: Any) -> Any:
    """Fetch remote results into `worker`'s own store; pointers to them through `here`."""
    if isinstance(value, PointerTensor):
        data = value.get()
        rid = new_id()
        worker.store.put(rid, data)
        return PointerTensor(here, rid, tuple(data.shape), data.dtype, data.requires_grad,
                             owner=worker)
    if isinstance(value, (tuple, list)):
        return type(value)(_bring_home(v, worker, here) for v in value)
    return value


def _send_tensor(t: torch.Tensor, location: Any, owner: Any) -> Any:
    rid = new_id()
    location.post(m.ObjectMessage([m.StoredObject(rid, t)]))
    return PointerTensor(location, rid, tuple(t.shape), t.dtype, t.requires_grad, owner=owner)


class PointerProtocol(OwnedRemote):
    """A protocol stored on a worker: `run` runs it there, `get` fetches it."""
    _what = "protocol"

    _consumed = False

    def __init__(self, location: Any, id_at_location: int, *, owner: Any = None,
                 id: int | None = None, gc: bool = True, protocol: Protocol | None = None,
                 tags=None, description: str | None = None) -> None:
        self.location = location
        self.id_at_location = id_at_location
        self.owner = owner
        self.id = id if id is not None else new_id()
        self.protocol = protocol
        self.tags = set(tags or ())
        self.description = description
        self._finalizer = weakref.finalize(self, location.release, id_at_location) if gc else None

    @classmethod
    def from_ref(cls, ref: Any, location: Any, *, owner: Any = None, id: int | None = None,
                 gc: bool = True) -> "PointerProtocol":
        """The pointer a `PlanRef` of kind "protocol" (search results) stands for."""
        return cls(location, ref.id_at_location, owner=owner, id=id, gc=gc, tags=ref.tags,
                   description=ref.description)

    def run(self, *args: Any) -> Any:
        """Run the protocol on its worker, on pointers to data there (one message); returns
        pointers there to the pointers it holds to the results."""
        self._check_usable()
        wire = []
        for i, value in enumerate(args):
            if not (isinstance(value, torch.Tensor) and dispatch.is_remote(value)):
                raise RuntimeError(f"this protocol is on {self.location.id!r}: run it on "
                                   f"pointers to data there (argument {i} is local)")
            if dispatch.location_of(value).id != self.location.id:
                raise RuntimeError(f"this protocol is on {self.location.id!r} but argument {i} "
                                   f"is on {dispatch.location_of(value).id!r}")
            wire.append(m.Ref(dispatch.remote_id(value)))
        log.info("send remote run request to %s", self.location.id)
        refs = self.location.call(RunProtocol(self.id_at_location, tuple(wire)))
        return materialize(refs, self.owner, self.location.network)

    __call__ = run

    def get(self) -> Protocol:
        """Fetch the protocol (deleting it remotely)."""
        self._check_usable()
        record = self.location.call(m.GetRequest([self.id_at_location], delete=True))[0]
        self._disown()
        self._consumed = True
        if self.protocol is not None and self.protocol._remote is self:
            self.protocol._remote = None
        return Protocol.from_record(record, owner=self.owner, network=self.location.network)

    def __repr__(self) -> str:
        owner = getattr(self.owner, "id", self.owner)
        return f"[PointerProtocol | {owner}:{self.id} -> {self.location.id}:{self.id_at_location}]"


register_pointer_kind("protocol", PointerProtocol)
