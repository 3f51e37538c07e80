"""`Plan` and `@func2plan`: a function (or an `nn.Module`-like class) recorded once as an op
list, then sent to workers and run there with one message per call.

    @fedmq.func2plan(args_shape=[(-1, 2)])
    def double_abs(x):
        return torch.abs(x + x)

    ptr_plan = double_abs.send(bob)      # a PointerPlan
    y_ptr = ptr_plan(x_ptr)              # ONE RunPlan message, a pointer back

A plan is data: its ops (allowlisted wire names, see tracer.py), its state tensors, and which
slots hold its inputs and output (`PlanRecord`). Calling a built plan locally runs that same op
list; calling it on pointers sends it to their worker (once per worker) and runs it there.

A training step can be a plan: `loss.backward()`, the `.grad` reads and the in-place updates
(by hand under `torch.no_grad()`, or `torch.optim.SGD(..., foreach=False).step()`) are recorded
like any op, and the state (the weights) is updated on the worker at every run.

Limits (those of tracing): Python control flow runs once, at build time: loops unroll and
branches keep the path they took. So clear gradients *after* the update (`opt.zero_grad()` before
the first backward sees no `.grad` and records nothing); a run that takes another path than the
build (a `.grad` that was None then) fails with an error that says so, never silently.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from fedmq import messages as m
from fedmq.context import latest_local_worker
from fedmq.errors import FedmqError
from fedmq.ids import new_id
from fedmq.module import module_tensors
from fedmq.ops import allowlist
from fedmq.plans import runner, state as state_mod, tracer
from fedmq.plans.messages import PlanRecord
from fedmq.pointers import dispatch
from fedmq.pointers.tensor import one_location


# `Plan.send` makes a PointerPlan, and a PointerPlan fetches plans back as `Plan`s: the pointer is
# the layer above (pointer_plan.py), which registers its class here when it is imported
# (as fedmq.pointers.tensor does for dispatch.py); importing fedmq.plans imports it.
_pointer_classes: list = []


def use_pointer_class(cls: type) -> None:
    """`cls(location, id_at_location, owner=, plan=, tags=, description=, name=)` is what
    `Plan.send` returns (PointerPlan, set by pointer_plan.py)."""
    _pointer_classes[:] = [cls]


def _pointer_class() -> type:
    if not _pointer_classes:
        raise RuntimeError("no plan pointer class registered: import fedmq.plans first")
    return _pointer_classes[0]


def _owner_id(owner: Any) -> str:
    return str(getattr(owner, "id", owner or "me"))


class Plan(nn.Module):
    """A recorded sequence of torch ops with its state; send it, then call the pointer.

    Function plans come from `@func2plan`. Class plans subclass `Plan` like an `nn.Module`
    (layers in `__init__`, a `forward`); their parameters and buffers are the plan's state."""

    def __init__(self, name: str | None = None, include_state: bool = False,
                 forward_func: Callable | None = None, state_tensors=(), id: int | None = None,
                 owner: Any = None, tags=None, description: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.include_state = include_state
        self._forward_func = forward_func
        self._state = state_mod.State(state_tensors)
        self.id = id if id is not None else new_id()
        self.owner = owner if owner is not None else latest_local_worker()
        self.tags = set(tags or ())
        self.description = description
        self._record: PlanRecord | None = None  # the op list, once built (state not filled in)
        self._kind = type(self).__name__
        self._pointers: dict[str, Any] = {}     # location id -> PointerPlan (one send per worker)

    # -- building ---------------------------------------------------------------------------------
    @property
    def is_built(self) -> bool:
        return self._record is not None

    @property
    def ops(self) -> list:
        """The recorded ops (`fedmq.messages.Command`s with slot references)."""
        return list(self._record.ops) if self._record is not None else []

    @property
    def state(self) -> state_mod.State:
        return state_mod.State(self.state_tensors())

    def state_tensors(self) -> list:
        """The plan's state: its parameters and buffers, then tensors given as `state`."""
        seen: dict[int, torch.Tensor] = {}
        for t in module_tensors(self) + list(self._state.tensors):
            seen.setdefault(id(t), t)
        return list(seen.values())

    def build(self, *args: Any) -> Any:
        """Trace the plan on example tensors `args` and keep its op list. Returns what the
        function returned. The state is left as it was (a traced training step does not
        train); the example tensors are used as given."""
        inputs = _example_inputs(args, self.name)
        state = self.state_tensors()
        saved = state_mod.snapshot(state)
        try:
            traced = tracer.trace(lambda: self._call_python(*inputs), inputs, state)
        finally:
            state_mod.restore(saved)
        self._record = PlanRecord(self.id, self.name, traced.input_slots, traced.state_slots, [],
                                  traced.ops, traced.output, self.include_state, self._kind)
        self._pointers.clear()
        return traced.output_value

    def _call_python(self, *args: Any) -> Any:
        if self._forward_func is not None:
            if self.include_state:
                return self._forward_func(*args, self._state)
            return self._forward_func(*args)
        if type(self).forward is nn.Module.forward:
            raise RuntimeError(f"plan {self.name!r} has neither a function nor a forward method "
                               f"(a plan fetched from a worker runs its recorded ops only)")
        return self.forward(*args)

    @staticmethod
    def _create_placeholders(args_shape) -> list:
        """Example tensors of the shapes in `args_shape` (-1: any size, built with 1)."""
        if not isinstance(args_shape, (list, tuple)):
            raise TypeError(f"args_shape is a list of shapes, not a {type(args_shape).__name__}")
        out = []
        for i, shape in enumerate(args_shape):
            if not isinstance(shape, (list, tuple)) or not all(
                    type(d) is int and (d > 0 or d == -1) for d in shape):
                raise ValueError(f"args_shape[{i}] = {shape!r}: a shape is a tuple of positive "
                                 f"ints, with -1 for a dimension of any size")
            out.append(torch.ones([1 if d == -1 else d for d in shape]))
        return out

    # -- running ----------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """On pointers: run on their worker (the plan is sent there once). Otherwise, built:
        run the recorded ops here; not built: run the function as plain PyTorch."""
        if kwargs:
            raise TypeError(f"plan {self.name!r} takes positional arguments only")
        remote = [a for a in args if dispatch.is_remote(a)]
        if remote:
            return self.send(dispatch.location_of(remote[0]))(*args)
        if self.is_built:
            return runner.run(self._record, args, self.state_tensors(), _owner_id(self.owner))
        return self._call_python(*args)

    def forward(self, *args: Any) -> Any:  # class plans override this
        if self._forward_func is None:
            raise RuntimeError(f"plan {self.name!r} has no function to run")
        return self._call_python(*args)

    # -- sending ----------------------------------------------------------------------------------
    def to_record(self) -> PlanRecord:
        """The plan as a wire record, with its current state tensors."""
        if self._record is None:
            raise RuntimeError(f"plan {self.name!r} is not built: call .build(*example_tensors) "
                               f"first, or give @func2plan an args_shape")
        state = self.state_tensors()
        if len(state) != len(self._record.state_slots):
            raise RuntimeError(f"plan {self.name!r} had {len(self._record.state_slots)} state "
                               f"tensors when it was built and has {len(state)} now: build it "
                               f"again")
        rec = self._record
        return PlanRecord(rec.id, rec.name, rec.input_slots, rec.state_slots, state, rec.ops,
                          rec.output, rec.include_state, rec.kind)

    def send(self, *locations: Any, **_ignored: Any) -> Any:
        """Store the plan (ops and state) on a worker; returns a `PointerPlan`. Sending to the
        same worker again returns the same pointer (the plan is not sent twice)."""
        location = one_location(locations)
        cached = self._pointers.get(location.id)
        if cached is not None and cached.location is location and not cached._consumed:
            return cached
        record = self.to_record()
        rid = new_id()
        location.post(m.ObjectMessage([m.StoredObject(rid, record, sorted(self.tags),
                                                      self.description)]))
        owner = getattr(location.network, "local_worker", None) or self.owner
        ptr = _pointer_class()(location, rid, owner=owner, plan=self, tags=self.tags,
                               description=self.description, name=self.name)
        self._pointers[location.id] = ptr
        return ptr

    def get_pointers(self) -> list:
        return list(self._pointers.values())

    def get(self) -> "Plan":
        """A local plan is already here."""
        return self

    def copy(self) -> "Plan":
        """An independent plan with the same ops and a copy of the state (runs its ops only)."""
        rec = self.to_record()
        state = [t.detach().clone().requires_grad_(t.requires_grad) for t in rec.state]
        return Plan.from_record(PlanRecord(new_id(), rec.name, rec.input_slots, rec.state_slots,
                                           state, rec.ops, rec.output, rec.include_state,
                                           rec.kind), owner=self.owner)

    @classmethod
    def from_record(cls, rec: PlanRecord, owner: Any = None) -> "Plan":
        """A plan made from a record (fetched from a worker): it runs its recorded ops."""
        runner.validate(rec)
        plan = Plan(rec.name, rec.include_state, None, tuple(rec.state), id=rec.id, owner=owner)
        plan._record = PlanRecord(rec.id, rec.name, list(rec.input_slots), list(rec.state_slots),
                                  [], list(rec.ops), rec.output, rec.include_state, rec.kind)
        plan._kind = rec.kind
        return plan

    def __deepcopy__(self, memo: dict) -> "Plan":
        """A deep copy (as for any nn.Module) with a new id; the owner is shared and the copy
        has not been sent anywhere."""
        memo[id(self.owner)] = self.owner
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = {} if key == "_pointers" else copy.deepcopy(value, memo)
        new.__dict__["id"] = new_id()
        return new

    def load_state(self, tensors: list) -> None:
        """Copy `tensors` (values and gradients) into the plan's state, in place (optimizers
        holding the parameters keep working)."""
        state = self.state_tensors()
        if len(tensors) != len(state):
            raise RuntimeError(f"plan {self.name!r} has {len(state)} state tensors, got "
                               f"{len(tensors)}")
        with torch.no_grad():
            for t, new in zip(state, tensors):
                t.copy_(new)
                t.grad = None if new.grad is None else new.grad.detach().clone()

    def tag(self, *tags: str) -> "Plan":
        self.tags.update(tags)
        return self

    def describe(self, description: str) -> "Plan":
        self.description = description
        return self

    # -- printing ---------------------------------------------------------------------------------
    def __repr__(self) -> str:
        head = f"<{self._kind} {self.name} id:{self.id} owner:{_owner_id(self.owner)}" \
               f"{' built' if self.is_built else ''}>"
        return head + "\n" + plan_source(self.name, self._record, self.state_tensors())

    __str__ = __repr__


def _example_inputs(args: tuple, name: str) -> list:
    inputs: list = []
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"plan {name!r}: argument {i} is a {type(a).__name__}; plans take "
                            f"tensors (a number would be frozen into the plan at build time, "
                            f"pass a tensor instead)")
        if dispatch.is_remote(a):
            raise TypeError(f"plan {name!r}: build a plan on local example tensors, then send "
                            f"it; argument {i} is a pointer")
        if any(a is b for b in inputs):  # the same tensor twice: two inputs all the same
            a = a.clone()
        inputs.append(a)
    return inputs


# -- the printed form -----------------------------------------------------------------------------

def plan_source(name: str, rec: PlanRecord | None, state: list) -> str:
    """The op list as Python-like source, as PySyft printed it (`_2 = _1.add(1)`)."""
    if rec is None:
        return f"def {name}():\n    return"
    args = ", ".join(f"arg_{s}" for s in rec.input_slots)
    lines = [f"def {name}({args}):"]
    if rec.state_slots:
        shapes = ", ".join(str(tuple(t.shape)) for t in state) if len(state) == len(
            rec.state_slots) else ""
        names = ", ".join(f"_{s}" for s in rec.state_slots)
        lines.append(f"    {names}{',' if len(rec.state_slots) == 1 else ''} = state.read()"
                     + (f"  # {shapes}" if shapes else ""))
    no_grad = False
    for op in rec.ops:
        if op.grad_enabled == no_grad:  # entering or leaving a no_grad block
            no_grad = not op.grad_enabled
            if no_grad:
                lines.append("    with torch.no_grad():")
        indent = "        " if no_grad else "    "
        lines.append(indent + _op_source(op))
    lines.append("    return" + (f" {_value_source(rec.output, top=True)}"
                                 if rec.output is not None else ""))
    return "\n".join(lines)


def _op_source(op: m.Command) -> str:
    targets = [f"_{r}" for r in op.result_ids if r is not None]
    lhs = f"{', '.join(targets)} = " if targets else ""
    args = list(op.args)
    params = [_value_source(a) for a in args[1:]] + [f"{k}={_value_source(v)}"
                                                      for k, v in op.kwargs.items()]
    if op.op.startswith("Tensor."):
        attr = op.op[len("Tensor."):]
        this = _value_source(args[0]) if args else "?"
        if attr.endswith(".__set__"):
            return f"{this}.{attr[:-len('.__set__')]} = {', '.join(params)}"
        if not _callable_attr(attr):
            return f"{lhs}{this}.{attr}"
        return f"{lhs}{this}.{attr}({', '.join(params)})"
    call = [_value_source(a) for a in args] + [f"{k}={_value_source(v)}"
                                               for k, v in op.kwargs.items()]
    return f"{lhs}{op.op}({', '.join(call)})"


def _callable_attr(attr: str) -> bool:
    return attr not in allowlist.TENSOR_GETTERS


def _value_source(value: Any, top: bool = False) -> str:
    if type(value) is m.Ref:
        return f"_{value.id}"
    if isinstance(value, torch.Tensor):
        return repr(value) if value.numel() <= 8 else \
            f"<constant {tuple(value.shape)} {str(value.dtype).replace('torch.', '')}>"
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        inner = ", ".join(_value_source(v) for v in value)
        if top:
            return inner
        return f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, list):
        return "[" + ", ".join(_value_source(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_value_source(v)}" for k, v in value.items()) + "}"
    return repr(value)


# -- the decorator --------------------------------------------------------------------------------

_AUTO_BUILD_FAILED = (
    "Automatic build using @func2plan failed!\nCheck that:\n"
    " - you have provided the correct number of shapes in args_shape\n"
    " - you have no simple numbers like int or float as args. If you do so, please consider "
    "using a tensor instead.")


class func2plan:
    """Decorator turning a function into a `Plan`.

    `args_shape=[(1, 2), (-1, 2)]` builds it at once from placeholder tensors (-1: any size).
    `state=(t1, t2)` gives the function a last argument `state`; `state.read()` returns the
    tensors, which travel with the plan."""

    def __init__(self, args_shape=None, state=None) -> None:
        self.args_shape = args_shape
        self.state_tensors = tuple(state or ())
        # a function receives its state as an argument only when a state was given
        self.include_state = state is not None

    def __call__(self, plan_function: Callable) -> Plan:
        plan = Plan(name=plan_function.__name__, include_state=self.include_state,
                    forward_func=plan_function, state_tensors=self.state_tensors)
        if self.args_shape:
            try:
                plan.build(*Plan._create_placeholders(self.args_shape))
            except FedmqError:
                raise  # a refused op or an unrecordable call: its own message says it best
            except (TypeError, ValueError, RuntimeError, IndexError) as exc:
                raise ValueError(f"{_AUTO_BUILD_FAILED}\n(building {plan.name!r} failed with "
                                 f"{type(exc).__name__}: {exc})") from exc
        return plan
