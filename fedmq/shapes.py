"""Result shapes without data: the client's one shape engine.

An op is run on `meta` tensors (shape, dtype and requires_grad, no storage) to learn the shapes
and dtypes of its results, so a caller can choose result ids and build pointers before any
worker has answered. That is what lets remote ops pipeline. Everything that needs a result's
metadata ahead of time asks here:

    spec_for    a torch call on pointers (fedmq.pointers.dispatch)
    op_spec     an allowlisted op by wire name (SMPC share ops, the provider's triple shapes)
    plan_specs  a plan's op list replayed (fedmq.plans.pointer_plan)

Inputs are read as metadata only: any tensor (a pointer, a remote parameter, a public value)
stands for a meta tensor with its shape, dtype and requires_grad (`local_meta`), and so does a
`TensorMeta` (an input known by its metadata alone). Results are cached in one bounded LRU
cache (`CACHE`) per (op, input metadata, constant arguments, grad mode), as DTensor caches its
sharding propagation, so a training loop or a protocol pays for each distinct call once. When
an op cannot run on meta tensors (data-dependent shapes such as `nonzero`, values such as
`item`) the answer is None and the caller asks the worker.

This module imports torch, fedmq.ops and fedmq.messages only.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fedmq import messages as m, ops


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """A tensor's metadata: a new result of an op, or an input known by its metadata only."""
    shape: tuple
    dtype: torch.dtype
    requires_grad: bool = False


@dataclass(frozen=True, slots=True)
class Alias:
    """The result is input tensor number `index` itself (in-place ops, `x.to(same)`); inputs
    are numbered in first-appearance order, args before kwargs."""
    index: int
    requires_grad: bool


@dataclass(frozen=True, slots=True)
class Spec:
    template: Any  # the result's structure: TensorMeta/Alias leaves, (type, [parts]) inside
    leaves: tuple  # TensorMeta/Alias in the order result ids are assigned


class LRUCache:
    """A mapping that never holds more than `limit` entries: when a new one would exceed it,
    the least recently used entry is dropped."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an LRU cache holds at least one entry, got limit={limit}")
        self.limit = limit
        self._data: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Any, default: Any = None) -> Any:
        data = self._data
        value = data.get(key, _MISS)
        if value is _MISS:
            return default
        try:
            data.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile
            pass
        return value

    def put(self, key: Any, value: Any) -> None:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        while len(data) > self.limit:
            data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data


_MISS = object()
#: every result spec the engine computed (pointer ops, SMPC ops, plans, triples)
CACHE = LRUCache(16384)


def local_meta(t: torch.Tensor) -> tuple[tuple, torch.dtype, bool]:
    """(shape, dtype, requires_grad) of a tensor without dispatch (pointers cache it on
    themselves: `_fedmq_meta`)."""
    cached = t.__dict__.get("_fedmq_meta")
    if cached is not None:
        return cached
    with torch._C.DisableTorchFunctionSubclass():
        return tuple(t.shape), t.dtype, t.requires_grad


# -- one op ---------------------------------------------------------------------------------------

def spec_for(func: Callable, name: str, args: tuple, kwargs: dict, key: Any = None, *,
             aliases: bool = True, strict: bool = False) -> Spec | None:
    """The result spec of `func(*args, **kwargs)` (`name`: its wire name), or None when it cannot
    run on meta tensors.

    key: a precomputed cache key (the dispatcher builds one while unwrapping, for
        aliases=True), else one is computed here (no caching if an argument is unhashable).
    aliases: report a result that is an input as `Alias`; False: every result is a TensorMeta.
    strict: raise the op's own error (or ValueError for a non-tensor result) instead of None.
    """
    if key is None:
        key = _key((Spec, name, torch.is_grad_enabled(), aliases, args, kwargs), [], {})
    if key is not None:
        spec = CACHE.get(key, _MISS)
        if spec is not _MISS:
            if spec is None and strict:
                _compute(func, name, args, kwargs, aliases, True)
            return spec
    spec = _compute(func, name, args, kwargs, aliases, strict)
    if key is not None:
        CACHE.put(key, spec)
    return spec


def op_spec(name: str, args: tuple, kwargs: dict | None = None, *, aliases: bool = True,
            strict: bool = False) -> Spec | None:
    """`spec_for` the allowlisted op `name` (OpNotAllowedError if it is not on the list)."""
    return spec_for(ops.lookup(name).fn, name, args, kwargs or {}, aliases=aliases,
                    strict=strict)


_SCALARS = (int, float, bool, str, type(None))


def _key(value: Any, order: list, index: dict) -> Any:
    """A hashable summary of a call; None if some argument cannot be summarised."""
    cls = type(value)
    if cls in _SCALARS:
        return (cls, value)
    if cls is tuple and all(type(v) is int for v in value):  # sizes, strides, paddings
        return (tuple, value)
    if isinstance(value, torch.Tensor) or cls is TensorMeta:
        k = index.get(id(value))
        if k is None:
            k = index[id(value)] = len(order)
            order.append(value)
        return ("P", k) + (local_meta(value) if cls is not TensorMeta else
                           (tuple(value.shape), value.dtype, value.requires_grad))
    if cls in (tuple, list) or isinstance(value, tuple):
        items = []
        for v in value:
            part = _key(v, order, index)
            if part is None and v is not None:
                return None
            items.append(part if v is not None else ("N",))
        return (cls, tuple(items))
    if cls is dict:
        items = []
        for k, v in value.items():
            part = _key(v, order, index)
            if part is None and v is not None:
                return None
            items.append((k, part if v is not None else ("N",)))
        return (dict, tuple(items))
    if cls is slice:  # unhashable before Python 3.12
        parts = (_key(value.start, order, index), _key(value.stop, order, index),
                 _key(value.step, order, index))
        return None if None in parts else (slice, parts)
    try:
        hash(value)
    except TypeError:
        return None
    return (cls, value)


def _compute(func: Callable, name: str, args: tuple, kwargs: dict, aliases: bool,
             strict: bool) -> Spec | None:
    metas: dict[int, torch.Tensor] = {}
    order: list[int] = []  # ids of the tensor inputs, in first-appearance order
    meta_args = _to_meta(args, metas, order)
    meta_kwargs = _to_meta(kwargs, metas, order)
    try:
        out = func(*meta_args, **meta_kwargs)
    except Exception:  # not computable on meta: ask the worker
        if strict:
            raise
        return None
    alias_of = {id(metas[i]): n for n, i in enumerate(order)} if aliases else {}
    leaves: list = []
    template = _template(out, alias_of, leaves)
    if template is _OPAQUE:
        if strict:
            raise ValueError(f"{name} does not return tensors, so its result cannot be a "
                             f"pointer")
        return None
    return Spec(template, tuple(leaves))


def _meta_tensor(shape: tuple, dtype: torch.dtype, requires_grad: bool) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.requires_grad_(True) if requires_grad else t


# Module-level recursion rather than closures: a recursive closure is a reference cycle.
def _to_meta(value: Any, metas: dict, order: list) -> Any:
    if isinstance(value, torch.Tensor) or type(value) is TensorMeta:
        t = metas.get(id(value))
        if t is None:
            t = metas[id(value)] = _meta_tensor(*(
                local_meta(value) if type(value) is not TensorMeta
                else (value.shape, value.dtype, value.requires_grad)))
            order.append(id(value))
        return t
    if type(value) in (tuple, list):
        return type(value)(_to_meta(v, metas, order) for v in value)
    if type(value) is dict:
        return {k: _to_meta(v, metas, order) for k, v in value.items()}
    return value


def _template(value: Any, alias_of: dict, leaves: list) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        n = alias_of.get(id(value))
        leaf = (Alias(n, value.requires_grad) if n is not None
                else TensorMeta(tuple(value.shape), value.dtype, value.requires_grad))
        leaves.append(leaf)
        return leaf
    if isinstance(value, (tuple, list)):
        parts = [_template(v, alias_of, leaves) for v in value]
        if any(p is _OPAQUE for p in parts):
            return _OPAQUE
        return (type(value), parts)
    return _OPAQUE  # a plain value (bool, int, ...): data-dependent, ask the worker


_OPAQUE = object()


# -- a plan's op list -----------------------------------------------------------------------------

def plan_specs(plan: Any, state: list | Callable[[], list], args: tuple,
               token: Any = None) -> tuple | None:
    """((shape, dtype, requires_grad), ...) of the output tensors of plan record `plan` (its
    `ops`, `input_slots`, `state_slots` and `output`) run on `args` (tensors read as metadata,
    or plain values) and `state` (the state tensors, or a function returning them, called on a
    cache miss only), or None when the op list cannot run on meta tensors (data-dependent
    shapes): the caller then asks the worker to reply with the results.
    `token`: a hashable object standing for this plan and its state in the cache (None: not
    cached); the cache holds it, so it is never reused for another plan while cached."""
    key = None
    if token is not None:
        key = (plan_specs, token, tuple(local_meta(a) if isinstance(a, torch.Tensor)
                                        else (type(a), a) for a in args))
        try:
            hash(key)
        except TypeError:
            key = None
    if key is not None:
        specs = CACHE.get(key, _MISS)
        if specs is not _MISS:
            return specs
    specs = _replay(plan, state() if callable(state) else state, args)
    if key is not None:
        CACHE.put(key, specs)
    return specs


def _replay(plan: Any, state: list, args: tuple) -> tuple | None:
    scope: dict = {}
    try:
        for slot, value in zip(plan.input_slots, args):
            scope[slot] = (_meta_tensor(*local_meta(value)) if isinstance(value, torch.Tensor)
                           else value)
        for slot, t in zip(plan.state_slots, state):
            scope[slot] = _meta_tensor(*local_meta(t))
        for op in plan.ops:
            fn = ops.lookup(op.op).fn
            args_ = _replay_value(op.args, scope)
            kwargs = _replay_value(op.kwargs, scope) if op.kwargs else {}
            if op.grad_enabled == torch.is_grad_enabled():
                out = fn(*args_, **kwargs)
            else:
                with torch.set_grad_enabled(op.grad_enabled):
                    out = fn(*args_, **kwargs)
            leaves = _tensor_leaves(out, [])
            if len(leaves) != len(op.result_ids):
                return None
            for rid, leaf in zip(op.result_ids, leaves):
                if rid is not None:
                    scope[rid] = leaf
        out = _replay_value(plan.output, scope)
    except Exception:  # noqa: BLE001 - any failure means "ask the worker"
        return None
    return tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in _tensor_leaves(out, []))


def _replay_value(value: Any, scope: dict) -> Any:
    """An op argument on meta tensors: `Ref(slot)` -> the slot's meta tensor (or its .grad),
    a constant tensor -> a meta tensor like it."""
    cls = type(value)
    if cls is m.Ref:
        t = scope[value.id]
        if value.attr is None:
            return t
        if value.attr != "grad" or t.grad is None:
            raise LookupError(f"{value.id}.{value.attr} has no value")
        return t.grad
    if isinstance(value, torch.Tensor):  # a constant of the plan
        return value.to("meta")
    if cls is tuple or cls is list:
        return cls(_replay_value(v, scope) for v in value)
    if cls is dict:
        return {k: _replay_value(v, scope) for k, v in value.items()}
    return value


_tensor_leaves = ops.flatten_tensors  # result-id order, as fedmq.execution assigns ids
