"""The op registry: wire name <-> callable, built once from the lists in `allowlist.py`.

`lookup(name)` is what a worker runs (and the only way a name from the wire becomes a
callable); `name_of(func)` is how a client names the function `__torch_function__` received.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fedmq.errors import OpNotAllowedError
from fedmq.ops import allowlist


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    fn: Callable[..., Any]


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
        by_name[name] = Op(name, fn)
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
    return by_name, by_func


_BY_NAME, _BY_FUNC = _build()


def lookup(name: str) -> Op:
    """The op a message names, or OpNotAllowedError."""
    op = _BY_NAME.get(name) if isinstance(name, str) else None
    if op is None:
        raise OpNotAllowedError(f"op {name!r} is not on fedmq's allowlist")
    return op


def name_of(func: Any) -> str | None:
    """The wire name of a function that `__torch_function__` received, or None."""
    try:
        return _BY_FUNC.get(func)
    except TypeError:  # unhashable
        return None

