"""PointerPlan: a plan stored on a worker. Calling it runs the whole plan there in ONE message.

    ptr_plan = plan.send(bob)
    y_ptr = ptr_plan(x_ptr)     # one RunPlan; y_ptr is a pointer to the result on bob

Result ids are chosen here, as for any remote op: the output shapes come from replaying the
op list on meta tensors (fedmq.shapes.plan_specs), so the call is pipelined and the pointers exist
at once. When the shapes cannot be known in advance (a data-dependent op, or a plan found by
search whose ops we do not have) the worker stores the results and replies with them.
Like a PointerTensor, the pointer owns the remote plan: when it is garbage collected the plan
is deleted there (pointers found by search do not own theirs).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

from fedmq import messages as m, shapes
from fedmq.errors import PointerError
from fedmq.ids import new_id
from fedmq.plans.messages import PlanRecord, RunPlan, register_pointer_kind
from fedmq.plans.plan import Plan, use_pointer_class
from fedmq.pointers import dispatch
from fedmq.pointers.ownership import OwnedRemote
from fedmq.pointers.tensor import PointerTensor, materialize


class PointerPlan(OwnedRemote):
    _what = "plan"
    _consumed = False

    def __init__(self, location: Any, id_at_location: int, *, owner: Any = None,
                 id: int | None = None, gc: bool = True, plan: Any = None, tags=None,
                 description: str | None = None, name: str | None = None) -> None:
        self.location = location
        self.id_at_location = id_at_location
        self.owner = owner
        self.id = id if id is not None else new_id()
        self.plan = plan  # the local Plan this was sent from, if any (for result shapes)
        self._record = getattr(plan, "_record", None)  # the op list as sent (a rebuild makes new)
        self._shape_token = object()  # this plan in the shape cache (fedmq.shapes.CACHE)
        self.tags = set(tags or ())
        self.description = description
        self.name = name or getattr(plan, "name", None)
        self._finalizer = weakref.finalize(self, location.release, id_at_location) if gc else None

    @classmethod
    def from_ref(cls, ref: Any, location: Any, *, owner: Any = None, id: int | None = None,
                 gc: bool = True) -> "PointerPlan":
        """The pointer a `PlanRef` (kind "plan": search results, protocols) stands for."""
        return cls(location, ref.id_at_location, owner=owner, id=id, gc=gc, tags=ref.tags,
                   description=ref.description, name=ref.name)

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, *args: Any) -> Any:
        """Run the plan on the worker: one message; returns pointers to its results."""
        return self._run(args)

    def _run(self, args: tuple, forward_to: Any = None) -> Any:
        """Run the plan; with `forward_to` (a worker) the worker sends the results straight
        there and the returned pointers point at that worker (protocols)."""
        self._check_usable()
        wire_args = [self._wire_arg(a, i) for i, a in enumerate(args)]
        loc = self.location
        specs = self._output_specs(args)
        if specs is None:  # the worker chooses the ids and tells us the shapes
            refs = loc.call(RunPlan(self.id_at_location, tuple(wire_args), [], reply=True,
                                    forward_to=None if forward_to is None else forward_to.id))
            return materialize(refs, self.owner, loc.network)
        ids = [new_id() for _ in specs]
        if forward_to is None:
            loc.post(RunPlan(self.id_at_location, tuple(wire_args), ids))
            where = loc
        else:  # wait: the next worker must hold the results before anyone uses them there
            loc.call(RunPlan(self.id_at_location, tuple(wire_args), ids,
                             forward_to=forward_to.id))
            where = forward_to
        pointers = iter([PointerTensor(where, rid, shape, dtype, rg, owner=self.owner)
                         for rid, (shape, dtype, rg) in zip(ids, specs)])
        return _shape_like(self._record.output, pointers)

    def _wire_arg(self, value: Any, index: int) -> Any:
        if isinstance(value, torch.Tensor):
            if not dispatch.is_remote(value):
                raise PointerError(f"plan {self.name!r}, argument {index}: a local tensor of "
                                   f"shape {tuple(value.shape)}; send it to "
                                   f"{self.location.id!r} first (a local tensor is never moved "
                                   f"implicitly)")
            where = dispatch.location_of(value)
            if where is not self.location and where.id != self.location.id:
                raise PointerError(f"plan {self.name!r} is on {self.location.id!r} but argument "
                                   f"{index} is on {where.id!r}; move it first")
            if dispatch.remote_id(value) is None:
                raise PointerError(f"plan {self.name!r}, argument {index}: not a stored object")
            if getattr(value, "_consumed", False):
                value._check_usable()
            return m.Ref(dispatch.remote_id(value), getattr(value, "attr", None))
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        raise PointerError(f"plan {self.name!r}, argument {index}: a {type(value).__name__} "
                           f"cannot be a plan argument")

    def _output_specs(self, args: tuple) -> tuple | None:
        record = self._record
        if record is None:
            return None
        if len(args) != len(record.input_slots):
            raise PointerError(f"plan {self.name!r} takes {len(record.input_slots)} "
                               f"argument(s), got {len(args)}")
        return shapes.plan_specs(record, self.plan.state_tensors, args, self._shape_token)

    # -- the pointer API ------------------------------------------------------------------------
    def get(self) -> Any:
        """Fetch the plan (deleting it remotely), with the state it has there now. A pointer
        made by `plan.send` updates and returns that plan (its parameters are loaded in place);
        otherwise a new `Plan` that runs the recorded ops is returned."""
        self._check_usable()
        record = self.location.call(m.GetRequest([self.id_at_location], delete=True))[0]
        self._disown()
        self._consumed = True
        if not isinstance(record, PlanRecord):
            raise PointerError(f"object {self.id_at_location} on {self.location.id!r} is a "
                               f"{type(record).__name__}, not a plan")
        if self.plan is not None:
            self.plan.load_state(record.state)
            self.plan._pointers.pop(self.location.id, None)
            return self.plan
        return Plan.from_record(record, owner=self.owner)

    def __repr__(self) -> str:
        owner = getattr(self.owner, "id", self.owner)
        return f"[PointerPlan | {owner}:{self.id} -> {self.location.id}:{self.id_at_location}]"


def _shape_like(template: Any, leaves) -> Any:
    """`template` (Refs in tuples/lists) with each Ref replaced by the next leaf."""
    if template is None:
        return None
    if type(template) is m.Ref:
        return next(leaves)
    if isinstance(template, (tuple, list)):
        return type(template)(_shape_like(t, leaves) for t in template)
    return template


use_pointer_class(PointerPlan)
register_pointer_kind("plan", PointerPlan)
