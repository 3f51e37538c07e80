"""Tracing: run a function once on real tensors and record every torch call it makes.

`trace(fn, inputs, state)` runs `fn()` under a `TorchFunctionMode` that sees each torch call
(functions, tensor methods, operators, attribute reads such as `.grad`, `backward`) and records
it as a `fedmq.messages.Command`: the op's wire name from `fedmq.ops.name_of`, its arguments
with every tensor the plan knows replaced by `Ref(slot)`, and the slots its tensor results go
to. The result is the plan's op list: the same records, the same allowlist and the same
executor (`fedmq.execution.run_command`) as a remote op, so a plan can do nothing a pointer
could not.

What is not recorded, and why:
  * metadata reads (`x.shape`, `x.dim()`, `requires_grad`, ...) run as usual; their values are
    frozen into the plan as constants (a shape read at build time stays that shape).
  * grad-mode switches (`torch.no_grad()`) are not ops: each op carries the grad mode it ran in.
  * deterministic factories (`torch.tensor`, `zeros`, `ones`, `full`, `arange`, `eye`,
    `linspace`) called without plan tensors make constants, stored in the op that uses them.
  * Anything else off the allowlist raises `OpNotAllowedError` naming the op, and an op whose
    result is a Python value computed from the data (`item`, `bool(x)`, `tolist`) raises
    `PlanBuildError`: the value, and any branch taken on it, would be frozen at build time.
Python control flow runs once at build time: loops unroll and branches take the path they took.

Memory: the tracer knows a tensor by its id and holds it weakly (`Tracer.new_slot`), so a
traced loop costs what the function itself keeps alive, not one tensor per op (issue 14: 500
steps of `x = tanh(x @ w)` on 600x600 tensors took 1370 MB more before, a few MB now).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from fedmq import messages as m, ops
from fedmq.errors import FedmqError, OpNotAllowedError
from fedmq.execution import flatten_tensors
from fedmq.pointers import dispatch


class PlanBuildError(FedmqError, ValueError):
    """A plan cannot be built from this function (the message says which call and why)."""


def _passthrough() -> set:
    funcs = {fn for fn, how in dispatch._LOCAL.items() if how is dispatch._plain}
    funcs.update({torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.__str__,
                  torch._C._set_grad_enabled, torch.Tensor.grad_fn.__get__,
                  torch.Tensor.is_leaf.__get__})
    return funcs


#: calls run without being recorded (metadata, printing, grad-mode switches)
PASSTHROUGH = _passthrough()
#: factories whose result, made without plan tensors, is a constant of the plan
CONSTANT_FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full,
                      torch.arange, torch.eye, torch.linspace}
_PLAIN = (int, float, bool, str, complex, type(None), slice, type(Ellipsis), torch.dtype,
          torch.device, torch.memory_format)


@dataclass
class Trace:
    ops: list            # [Command], results written to slots
    input_slots: list    # slot of each input
    state_slots: list    # slot of each state tensor
    output: Any          # the returned structure, Ref(slot) leaves
    output_value: Any    # what the function returned while tracing (real tensors)


class Tracer(TorchFunctionMode):
    """Records torch calls on the tensors it knows (inputs, state, results of recorded ops)."""

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[int, int] = {}  # id(tensor) -> slot, for the slotted tensors alive
        self._refs: dict[int, weakref.ref] = {}  # id(tensor) -> a weak reference to it
        self.ops: list = []
        self.next_slot = 1

    def new_slot(self, t: torch.Tensor) -> int:
        """A fresh slot for `t`. The tracer holds `t` weakly: when it dies its id -> slot entry
        goes (an id Python reuses for a new tensor must not name the dead one's slot), so
        tracing costs memory in proportion to the tensors the function keeps alive, not to
        the number of ops it runs."""
        slot = self.next_slot
        self.next_slot += 1
        key = id(t)
        self.slots[key] = slot
        self._refs[key] = weakref.ref(t, _forgetter(weakref.ref(self), key))
        return slot

    def forget(self, key: int, ref: weakref.ref) -> None:
        """The tensor `ref` pointed to, of id `key`, died: its id no longer names a slot."""
        if self._refs.get(key) is ref:
            del self._refs[key]
            self.slots.pop(key, None)

    def close(self) -> None:
        """Stop watching the tensors (after tracing): the id map is no longer consulted."""
        self._refs.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            passthrough, factory = func in PASSTHROUGH, func in CONSTANT_FACTORIES
        except TypeError:  # unhashable callable
            passthrough = factory = False
        if passthrough or _is_profiler_marker(func):
            return func(*args, **kwargs)
        if factory and not self._touches_plan(args, kwargs):
            return func(*args, **kwargs)
        name = ops.name_of(func)
        if name is None:
            raise OpNotAllowedError(
                f"{dispatch._func_name(func)} is not on fedmq's allowlist, so it cannot be "
                f"recorded in a plan (see fedmq/ops/allowlist.py)")
        wire_args = self.to_wire(args, name)
        wire_kwargs = self.to_wire(kwargs, name) if kwargs else {}
        grad = torch.is_grad_enabled()
        result = func(*args, **kwargs)
        _check_tensor_result(result, name)
        inputs = {id(t) for t in flatten_tensors(list(args) + list(kwargs.values()), [])}
        result_ids = []
        for leaf in flatten_tensors(result, []):
            # an in-place op returns its input: no new value, later ops keep the input's slot
            # (a constant changed in place gets a slot, so later ops see the change)
            known = id(leaf) in inputs and id(leaf) in self.slots
            result_ids.append(None if known else self.new_slot(leaf))
        self.ops.append(m.Command(name, wire_args, wire_kwargs, result_ids, grad))
        return result

    def _touches_plan(self, args: tuple, kwargs: dict) -> bool:
        return any(id(t) in self.slots
                   for t in flatten_tensors(list(args) + list(kwargs.values()), []))

    def to_wire(self, value: Any, name: str) -> Any:
        """`value` as an op argument: plan tensors -> Ref(slot); other tensors -> constants."""
        if isinstance(value, torch.Tensor):
            if dispatch.is_remote(value):
                raise PlanBuildError(f"{name}: a plan is built on local example tensors, not on "
                                     f"pointers (build it, then send it)")
            slot = self.slots.get(id(value))
            if slot is not None:
                return m.Ref(slot)
            with torch._C.DisableTorchFunctionSubclass():
                return value.detach().clone()  # frozen at build time, travels with the plan
        if isinstance(value, torch.Size):
            return value
        cls = type(value)
        if cls in (tuple, list):
            return cls(self.to_wire(v, name) for v in value)
        if isinstance(value, tuple):  # namedtuples travel as tuples
            return tuple(self.to_wire(v, name) for v in value)
        if cls is dict:
            return {k: self.to_wire(v, name) for k, v in value.items()}
        if isinstance(value, _PLAIN):
            return value
        raise PlanBuildError(f"{name}: an argument of type {cls.__module__}.{cls.__qualname__} "
                             f"cannot be recorded in a plan (tensors, numbers, strings, slices, "
                             f"dtypes and tuples of them can)")

    def output(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, torch.Tensor):
            slot = self.slots.get(id(value))
            if slot is None:
                raise PlanBuildError("the plan returns a tensor that it did not compute from its "
                                     "inputs or state; return a result of its ops instead")
            return m.Ref(slot)
        if type(value) in (tuple, list) or isinstance(value, tuple):
            return tuple(self.output(v) for v in value) if isinstance(value, tuple) else \
                [self.output(v) for v in value]
        raise PlanBuildError(f"a plan returns tensors (or a tuple or list of them), not a "
                             f"{type(value).__name__}")


def _forgetter(tracer: weakref.ref, key: int) -> Callable[[weakref.ref], None]:
    """The weakref callback of a slotted tensor (holds the tracer weakly: no cycle)."""
    def forget(ref: weakref.ref) -> None:
        owner = tracer()
        if owner is not None:
            owner.forget(key, ref)
    return forget


def _is_profiler_marker(func: Any) -> bool:
    """`torch.ops.profiler.*` (optimizers mark their steps with them): bookkeeping, no data."""
    return str(getattr(func, "_qualified_op_name", "")).startswith("profiler::") or \
        str(getattr(func, "__module__", "")).startswith("torch._ops.profiler")


def _check_tensor_result(result: Any, name: str) -> None:
    if result is None or isinstance(result, torch.Tensor):
        return
    if isinstance(result, (tuple, list)):
        for r in result:
            _check_tensor_result(r, name)
        return
    raise PlanBuildError(
        f"{name} returns a Python {type(result).__name__} computed from the data; a plan records "
        f"tensor ops only, so that value (and any branch taken on it) would be frozen at build "
        f"time. Keep it a tensor (torch.where instead of if, no .item())")


def trace(fn: Callable[[], Any], inputs: list, state: list) -> Trace:
    """Run `fn()` once, recording its torch calls; `inputs` and `state` get the first slots."""
    tracer = Tracer()
    input_slots = [tracer.new_slot(t) for t in inputs]
    state_slots = [tracer.new_slot(t) for t in state]
    try:
        with tracer:
            value = fn()
        return Trace(tracer.ops, input_slots, state_slots, tracer.output(value), value)
    finally:
        tracer.close()
