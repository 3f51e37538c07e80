"""Wire records of plans and protocols (record codes 80-89, reserved for fedmq.plans).

A plan travels as data, never as code: `PlanRecord` is an op list of `fedmq.messages.Command`s
(allowlisted wire names, `Ref(slot)` arguments, constants) plus its state tensors. A worker
turns nothing in it into a callable except through `fedmq.ops.lookup`, the same gate every
remote op passes; there is no pickle, TorchScript or eval anywhere on the path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmq import messages as m
from fedmq.serde import record


@record(80)
@dataclass(slots=True)
class RunPlan:
    """Run stored plan `plan_id` on `args` (Refs into the worker's store, or constants) in a
    scope of its own, and store the output tensors under `result_ids` (chosen by the caller,
    so the message is pipelined). `forward_to` stores them on that worker instead, worker to
    worker (protocols). With `reply=True` the worker stores them under fresh ids and answers
    with `PointerRef`s (when the caller cannot know the output shapes in advance)."""
    plan_id: int
    args: tuple
    result_ids: list
    reply: bool = False
    forward_to: str | None = None


@record(81)
@dataclass(slots=True)
class PlanRecord:
    """A built plan as data. Slots number the values of the plan's scope: inputs are
    `input_slots`, state tensors `state_slots` (the same order as `state`), and every op in
    `ops` reads `Ref(slot)`s and writes its tensor results to `result_ids` slots. `output` is
    the returned structure, with `Ref(slot)` leaves."""
    id: int
    name: str
    input_slots: list
    state_slots: list
    state: list
    ops: list
    output: Any
    include_state: bool = False
    kind: str = "Plan"

    def __fedmq_pointer_ref__(self, worker_id: str, obj_id: int, tags=(),
                              description: str | None = None) -> "PlanRef":
        """What `worker.search` answers for a stored plan (see pointers/tensor.py ref_for)."""
        return PlanRef(worker_id, obj_id, (), None, False, sorted(tags), description, "plan",
                       self.name)


@record(82)
@dataclass(slots=True)
class ProtocolRecord:
    """A protocol as data: `plans[i]` (a `PlanRecord`, or a `PlanRef` to a plan already
    deployed on a worker) runs as role `roles[i]`; `workers[i]` is the id of the worker it was
    deployed to, or None."""
    id: int
    roles: list
    plans: list
    workers: list
    tags: list = field(default_factory=list)
    description: str | None = None

    def __fedmq_pointer_ref__(self, worker_id: str, obj_id: int, tags=(),
                              description: str | None = None) -> "PlanRef":
        return PlanRef(worker_id, obj_id, (), None, False, sorted(tags), description,
                       "protocol", None)


@record(83)
@dataclass(slots=True)
class PlanRef(m.PointerRef):
    """A pointer to a stored plan (`kind="plan"`) or protocol (`kind="protocol"`) as data.
    It is a `PointerRef`, so search results and replies carry it like any pointer;
    `pointer_from_ref` turns it into a `PointerPlan` or `PointerProtocol` via `to_pointer`."""
    kind: str = "plan"
    name: str | None = None

    def to_pointer(self, owner: Any, network: Any, id: int | None = None,
                   gc: bool = True) -> Any:
        """The pointer this ref stands for (`pointer_from_ref` calls it): the class registered
        for its kind (`register_pointer_kind`) makes it; an unknown kind is a plan."""
        cls = POINTER_KINDS.get(self.kind) or POINTER_KINDS.get("plan")
        if cls is None:
            raise RuntimeError("no plan pointer class registered: import fedmq.plans first")
        return cls.from_ref(self, network.client(self.location), owner=owner, id=id, gc=gc)


@record(84)
@dataclass(slots=True)
class RunProtocol:
    """Run stored protocol `protocol_id` on `args` (Refs into the worker's store): the worker
    acts as the protocol's client, and answers with `PointerRef`s to the pointers it now holds
    to the results (on the last plan's worker)."""
    protocol_id: int
    args: tuple


@record(85)
@dataclass(slots=True)
class ModelPlanRecord:
    """A model (and optionally its loss) as plans: what a worker trains without model code.

    train / eval: the forward pass traced in `train()` and in `eval()` mode; input slot 0 is
        the batch, the state slots are the model's `state_dict()` entries in `state_names`
        order (`PlanRecord.state` is empty: the weights travel with each Fit / Evaluate).
    state_shapes / state_dtypes: of each entry, checked before anything runs.
    parameters: the trainable entries (`named_parameters()`); the others are buffers.
    batch_size: the batch size traced (1 when the model and its loss serve any batch size, so
        that one model has one digest whatever batch it was traced with).
    batch_generic: whether the same ops serve any batch size (False when the model froze the
        batch size into an op, e.g. `x.view(32, -1)`: the worker then trains full batches
        only and pads the last evaluation batch).
    loss: `(output, target) -> mean loss` as a plan, or None (the Fit names a loss).
    """
    name: str
    train: Any  # a PlanRecord (checked by fedmq.plans.module_plan.validate)
    eval: Any
    state_names: list
    state_shapes: list
    state_dtypes: list
    parameters: list
    batch_size: int
    batch_generic: bool
    loss: Any = None
    loss_generic: bool = True


# -- refs as pointers: the pointer classes live above this module ---------------------------------
# pointer_plan.py registers PointerPlan ("plan"), protocol.py PointerProtocol ("protocol"); each
# has `from_ref(ref, location, owner=, id=, gc=)`. Importing fedmq.plans imports both.

#: PlanRef.kind -> the pointer class a ref of that kind becomes
POINTER_KINDS: dict[str, type] = {}


def register_pointer_kind(kind: str, cls: type) -> None:
    """`cls.from_ref(ref, location, owner=, id=, gc=)` makes the pointers of `kind`."""
    POINTER_KINDS[kind] = cls
