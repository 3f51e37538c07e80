"""The op registry: wire name <-> callable, built once from the lists in `allowlist.py`.

`lookup(name)` is what a worker runs (and the only way a name from the wire becomes a
callable); `name_of(func)` is how a client names the function `__torch_function__` received.
`Op.fn` is the torch function, or what a worker runs in its place (safe.py: `empty_like`
zero-filled, CPU-only `to` and `*_like`, a capped `tolist`); `Op.random` says how a random op
gets its principal's generator (rng.py); `Op.kinds` are the op's classes (allowlist.py:
"pure", "random", "allocates", "value", "writes"), also as the sets `PURE`, `RANDOM`,
`ALLOCATES_BY_SIZE`, `RETURNS_VALUE`, `RETURNS_METADATA` of wire names.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fedmq.errors import OpNotAllowedError
from fedmq.ops import allowlist, rng, safe
from fedmq.ops.allowlist import (ALLOCATES_BY_SIZE, PURE, RANDOM, RETURNS_METADATA,
                                 RETURNS_VALUE, STRUCTURAL)
from fedmq.ops.rng import seeded

__all__ = ["ALLOCATES_BY_SIZE", "Op", "PURE", "RANDOM", "RETURNS_METADATA", "RETURNS_VALUE",
           "STRUCTURAL",
           "kinds", "lookup", "name_of", "seeded", "writes", "written"]


@dataclass(frozen=True, slots=True)
class Op:
    """name: the wire name. fn: what a worker runs.
    random: None for an op that draws no random numbers; else how it gets the principal's
        generator (fedmq.ops.rng.seeded): "generator" (a `generator=` keyword), "equivalent"
        (rng.WITH_GENERATOR_ARG), "fork" (the global RNG swapped around it).
    kinds: its classes (see `kinds`)."""
    name: str
    fn: Callable[..., Any]
    random: str | None = None
    kinds: frozenset = frozenset()


def _getter(attr: str) -> Callable[[torch.Tensor], Any]:
    def get(t: torch.Tensor) -> Any:
        return getattr(t, attr)
    get.__name__ = f"get_{attr}"
    return get


def _setter(attr: str) -> Callable[[torch.Tensor, Any], None]:
    def set_(t: torch.Tensor, value: Any) -> None:
        setattr(t, attr, value)
    set_.__name__ = f"set_{attr}"
    return set_


def clear_grads(tensors: list[torch.Tensor]) -> None:
    """`p.grad = None` for many tensors at once (an optimizer's `zero_grad()`, one Command)."""
    for t in tensors:
        t.grad = None


#: fedmq's own ops (no torch function has these names)
FEDMQ_OPS = {"fedmq.clear_grads": clear_grads}


def _build() -> tuple[dict[str, Op], dict[Any, str]]:
    """The allowlist by wire name and by function; a name this torch build lacks is skipped."""
    by_name: dict[str, Op] = {}
    by_func: dict[Any, str] = {}

    def add(name: str, fn: Any, keys: list[Any]) -> None:
        random = None
        if name in RANDOM:
            random = ("equivalent" if name in rng.WITH_GENERATOR_ARG else
                      "generator" if rng.takes_generator(fn) else "fork")
        by_name[name] = Op(name, safe.REPLACEMENTS.get(name, fn), random, kinds(name))
        for key in keys:
            by_func.setdefault(key, name)

    for prefix, owner, names in (("F.", F, allowlist.NN_FUNCTIONAL),
                                 ("torch.", torch, allowlist.TORCH_FUNCTIONS),
                                 ("Tensor.", torch.Tensor, allowlist.TENSOR_METHODS)):
        for attr in names:
            fn = getattr(owner, attr, None)
            if fn is not None:
                add(prefix + attr, fn, [fn])
    for attr in allowlist.TENSOR_GETTERS:
        add(f"Tensor.{attr}", _getter(attr), [getattr(torch.Tensor, attr).__get__])
    for attr in allowlist.TENSOR_SETTERS:
        add(f"Tensor.{attr}.__set__", _setter(attr), [getattr(torch.Tensor, attr).__set__])
    for name, fn in FEDMQ_OPS.items():
        add(name, fn, [])
    for name, op in by_name.items():
        positions = _positional_writes(op.fn)
        if positions != (None, None):
            _POSITIONAL[name] = positions
    return by_name, by_func


def _positional_writes(fn: Any) -> tuple[int | None, int | None]:
    """Where `fn` takes `inplace` and `out` positionally (Python functions: `F.relu(x, True)`,
    `torch.norm(x, 2, 0, False, out)`); torch's builtins take `out` by keyword only."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return None, None
    found = {p.name: i for i, p in enumerate(params)
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return found.get("inplace"), found.get("out")



def lookup(name: str) -> Op:
    """The op a message names, or OpNotAllowedError."""
    op = _BY_NAME.get(name) if isinstance(name, str) else None
    if op is None:
        raise OpNotAllowedError(f"op {name!r} is not on fedmq's allowlist")
    return op


#: ops that write into an argument other than by the naming rules of `written` (position of
#: the written argument(s))
_WRITES = {"Tensor.__setitem__": (0,), "Tensor.data.__set__": (0,), "Tensor.grad.__set__": (0,),
           "fedmq.clear_grads": (0,), "F.batch_norm": (1, 2), "Tensor.backward": ()}


def kinds(name: str) -> frozenset:
    """The classes of op `name` (allowlist.py): any of "random", "allocates" (its result size
    is set by a non-tensor argument), "value" (returns Python values), "writes" (`writes`), or
    only "pure". Empty for a name no class lists (the audit test fails on it)."""
    found = {kind for kind, names in (("pure", PURE), ("random", RANDOM),
                                      ("allocates", ALLOCATES_BY_SIZE),
                                      ("value", RETURNS_VALUE)) if name in names}
    if writes(name):
        found.add("writes")
    return frozenset(found)


def writes(name: str) -> bool:
    """Whether op `name` may modify one of its arguments in place (by its name: a trailing
    underscore, an augmented operator, a setter, `__setitem__`; `out=`/`inplace=True` are
    seen by `written`)."""
    if name in _WRITES:
        return True
    attr = name.rpartition(".")[2]
    return (attr.endswith("_") and not attr.endswith("__")) or \
        (attr.startswith("__i") and attr.endswith("__") and attr not in ("__index__", "__int__",
                                                                          "__invert__"))


def written(name: str, args: Any, kwargs: dict | None) -> list:
    """The tensors op `name` writes when called with `args`/`kwargs` (resolved values): what
    a worker checks before it lets a principal run the op on data it may only read. Covers
    in-place methods and operators (`add_`, `__iadd__`, `_foreach_mul_`), setters, `out=` and
    `inplace=` (by keyword or position, any true value: `F.relu(x, 1)` runs in place), the
    running statistics `F.batch_norm` updates in training, and the weight
    `F.embedding(max_norm=)` renormalises."""
    out: list = []
    if type(args) is not tuple and type(args) is not list:
        args = ()
    if kwargs:
        target = kwargs.get("out")
        if target is not None:
            flatten_tensors(target, out)
        if "inplace" in kwargs and _truthy(kwargs["inplace"]):
            flatten_tensors(args[0] if args else kwargs.get("input"), out)
    positional = _POSITIONAL.get(name)
    if positional is not None:
        inplace, target_at = positional
        if inplace is not None and len(args) > inplace and _truthy(args[inplace]):
            flatten_tensors(args[0], out)
        if target_at is not None and len(args) > target_at:
            flatten_tensors(args[target_at], out)
    if name == "F.embedding":
        max_norm = _argument(args, kwargs, "max_norm", 3)
        if max_norm is not None:
            flatten_tensors(_argument(args, kwargs, "weight", 1), out)
        return out
    if not writes(name):
        return out
    positions = _WRITES.get(name, (0,))
    if name == "F.batch_norm":
        training = _argument(args, kwargs, "training", 5)
        if not training:
            return out
        for key, pos in (("running_mean", 1), ("running_var", 2)):
            flatten_tensors(_argument(args, kwargs, key, pos), out)
        return out
    for pos in positions:
        if pos < len(args):
            flatten_tensors(args[pos], out)
    return out


def _argument(args: Any, kwargs: dict | None, key: str, pos: int) -> Any:
    if kwargs and key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else None


def _truthy(value: Any) -> bool:
    """Whether the op would take `value` as true (a value bool() refuses counts as true)."""
    try:
        return bool(value)
    except Exception:
        return True


def flatten_tensors(value: Any, out: list) -> list:
    """Tensor leaves of a value (nested in tuples and lists) in a fixed order: the order a
    result's ids are assigned in (fedmq.execution), result specs are listed in
    (fedmq.shapes), and the tensors an op writes are found in (`written`)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for item in value:
            flatten_tensors(item, out)
    return out



#: name -> (position of `inplace`, position of `out`) for ops taking them positionally
_POSITIONAL: dict[str, tuple[int | None, int | None]] = {}


def name_of(func: Any) -> str | None:
    """The wire name of a function that `__torch_function__` received, or None."""
    try:
        return _BY_FUNC.get(func)
    except TypeError:  # unhashable
        return None


_BY_NAME, _BY_FUNC = _build()
