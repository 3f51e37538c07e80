"""Result metadata without data: run the op on `meta` tensors to learn the shapes and dtypes
of its results, so a pointer to each result can be built before the worker has answered.

This is what lets remote ops pipeline. Results are cached per (op, input metadata, constant
arguments, grad mode), as DTensor caches its sharding propagation, so a training loop pays for
each distinct op once. When an op cannot run on meta tensors (data-dependent shapes such as
`nonzero`, or values such as `item`) `spec_for` returns None and the caller asks the worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

_CACHE: dict[Any, "Spec | None"] = {}
_CACHE_LIMIT = 16384


@dataclass(frozen=True, slots=True)
class New:
    shape: tuple
    dtype: torch.dtype
    requires_grad: bool


@dataclass(frozen=True, slots=True)
class Alias:
    """The result is input pointer number `index` itself (in-place ops, `x.to(same)`)."""
    index: int
    requires_grad: bool


@dataclass(frozen=True, slots=True)
class Spec:
    template: Any  # the result's structure, with New/Alias leaves
    leaves: tuple  # New/Alias in the order result ids are assigned


def local_meta(t: torch.Tensor) -> tuple[tuple, torch.dtype, bool]:
    """(shape, dtype, requires_grad) of a remote tensor, without dispatch (cached on it)."""
    cached = t.__dict__.get("_fedmq_meta")
    if cached is not None:
        return cached
    with torch._C.DisableTorchFunctionSubclass():
        return tuple(t.shape), t.dtype, t.requires_grad


def spec_for(func: Callable, name: str, args: tuple, kwargs: dict,
             is_remote: Callable[[Any], bool], key: Any = None) -> Spec | None:
    """The result spec of `func(*args, **kwargs)`; `key` is a precomputed cache key (the
    dispatcher builds one while unwrapping), else one is computed here."""
    if key is None:
        key = _key((name, torch.is_grad_enabled(), args, kwargs), is_remote, [], {})
    if key is not None:
        try:
            return _CACHE[key]
        except KeyError:
            pass
    spec = _compute(func, args, kwargs, is_remote)
    if key is not None:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = spec
    return spec


_SCALARS = (int, float, bool, str, type(None))


def _key(value: Any, is_remote, order: list, index: dict) -> Any:
    """A hashable summary of the call; None if some argument cannot be summarised."""
    cls = type(value)
    if cls in _SCALARS:
        return (cls, value)
    if cls is tuple and all(type(v) is int for v in value):  # sizes, strides, paddings
        return (tuple, value)
    if isinstance(value, torch.Tensor):
        if not is_remote(value):
            return None
        k = index.get(id(value))
        if k is None:
            k = index[id(value)] = len(order)
            order.append(value)
        return ("P", k) + local_meta(value)
    if cls in (tuple, list) or isinstance(value, tuple):
        items = []
        for v in value:
            part = _key(v, is_remote, order, index)
            if part is None and v is not None:
                return None
            items.append(part if v is not None else ("N",))
        return (cls.__name__, tuple(items))
    if cls is dict:
        items = []
        for k, v in value.items():
            part = _key(v, is_remote, order, index)
            if part is None and v is not None:
                return None
            items.append((k, part if v is not None else ("N",)))
        return ("dict", tuple(items))
    try:
        hash(value)
    except TypeError:
        return None
    return (cls, value)


def _compute(func: Callable, args: tuple, kwargs: dict, is_remote) -> Spec | None:
    metas: dict[int, torch.Tensor] = {}
    order: list[int] = []  # ids of remote inputs, in first-appearance order
    meta_args = _to_meta(args, is_remote, metas, order)
    meta_kwargs = _to_meta(kwargs, is_remote, metas, order)
    try:
        out = func(*meta_args, **meta_kwargs)
    except Exception:  # not computable on meta: ask the worker
        return None
    alias_of = {id(metas[i]): n for n, i in enumerate(order)}
    leaves: list = []
    template = _template(out, alias_of, leaves)
    if template is _OPAQUE:
        return None
    return Spec(template, tuple(leaves))


# Module-level recursion rather than closures: a recursive closure is a reference cycle.
def _to_meta(value: Any, is_remote, metas: dict, order: list) -> Any:
    if isinstance(value, torch.Tensor) and is_remote(value):
        if id(value) not in metas:
            shape, dtype, rg = local_meta(value)
            t = torch.empty(shape, dtype=dtype, device="meta")
            if rg:
                t.requires_grad_(True)
            metas[id(value)] = t
            order.append(id(value))
        return metas[id(value)]
    if type(value) in (tuple, list):
        return type(value)(_to_meta(v, is_remote, metas, order) for v in value)
    if type(value) is dict:
        return {k: _to_meta(v, is_remote, metas, order) for k, v in value.items()}
    return value


def _template(value: Any, alias_of: dict, leaves: list) -> Any:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        n = alias_of.get(id(value))
        leaf = (Alias(n, value.requires_grad) if n is not None
                else New(tuple(value.shape), value.dtype, value.requires_grad))
        leaves.append(leaf)
        return leaf
    if isinstance(value, (tuple, list)):
        parts = [_template(v, alias_of, leaves) for v in value]
        if any(p is _OPAQUE for p in parts):
            return _OPAQUE
        return (type(value), parts)
    return _OPAQUE  # a plain value (bool, int, ...): data-dependent, ask the worker


_OPAQUE = object()
