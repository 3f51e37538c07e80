"""Optimizers on remote parameters take torch's multi-tensor ("foreach") path.

torch.optim picks, per step, between a loop over parameters (one `add_`, `mul_`, ... per
tensor) and its foreach implementation (one `torch._foreach_add_` over all of them). On CPU
it picks the loop, which on a sent model means one Command per parameter per op. For
parameters that all live on workers we pick foreach instead, so `opt.step()` costs a handful
of Commands whatever the model's size. On CPU both paths run the same per-tensor kernels, so
the weights stay bit-identical to plain PyTorch (tests/test_pointer_ops.py checks each against
plain PyTorch). An explicit `foreach=False` is respected.

An optimizer's state (momentum buffers, Adam's averages, Adagrad's sums) lives where its
parameter lives: before every step a global pre-step hook (`colocate_state`) brings home the
state of parameters that came home (`model.get()`), sends the state of parameters that were
sent (`model.send(w)`, also state made at construction, as Adagrad's), and moves it worker to
worker after `model.move(w)`; `optimizer.state_dict()` first brings home the state of
parameters that came home (state_dict pre-hook, registered at the first step), lists in the
state (LBFGS's history) included. So an optimizer built before `send` keeps stepping the model
wherever it is, with the same numbers as plain PyTorch (tests/test_deferred_get_writes.py).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from fedmq import messages as m
from fedmq.pointers import dispatch
from fedmq.pointers.dispatch import is_remote

#: torch.optim modules whose foreach path gives bit-identical results to their loop on CPU.
#: (NAdam's and RAdam's do not, so they keep the loop. Adagrad creates its state when
#: constructed; colocate_state sends it with the model.)
OPTIMIZER_MODULES = ("adadelta", "adam", "adamax", "adamw", "rmsprop", "rprop", "sgd")

_installed = False


def _remote_aware(default: Callable[..., tuple[bool, bool]]) -> Callable[..., tuple[bool, bool]]:
    def choose(params: list, differentiable: bool, use_fused: bool = False) -> tuple[bool, bool]:
        tensors = [p for p in params if p is not None]
        if tensors and not differentiable and all(is_remote(p) for p in tensors):
            return False, True
        return default(params, differentiable, use_fused)

    choose.__wrapped__ = default  # type: ignore[attr-defined]
    choose.__module__ = __name__
    return choose


def install() -> None:
    """Wrap torch's choice in every optimizer module (idempotent)."""
    global _installed
    if _installed:
        return
    for short in OPTIMIZER_MODULES:
        try:
            module: Any = importlib.import_module(f"torch.optim.{short}")
        except ImportError:
            continue
        default = getattr(module, "_default_to_fused_or_foreach", None)
        if default is None or getattr(default, "__module__", "") == __name__:
            continue
        module._default_to_fused_or_foreach = _remote_aware(default)
    _keep_nesterov_on_the_loop()
    importlib.import_module("torch.optim.optimizer").register_optimizer_step_pre_hook(
        colocate_state)
    _installed = True


def _same_place(a: Any, b: Any) -> bool:
    return a is b or (a is not None and b is not None and a.id == b.id and
                      getattr(a, "engine", None) is getattr(b, "engine", None))


def _shape(t: torch.Tensor) -> tuple:
    meta = t.__dict__.get("_fedmq_meta")  # remote tensors: without a dispatch
    return meta[0] if meta is not None else tuple(t.shape)


def remote_state_items(state: dict, location: Any) -> list:
    """(container, key, pointer) for every remote tensor in one parameter's optimizer state
    that lives on `location` (any worker if None): values, and items of list values
    (LBFGS's `old_dirs`, `old_stps`, `ro`, `al`)."""
    items = []
    for key, value in state.items():
        if isinstance(value, list):
            for index, item in enumerate(value):
                if is_remote(item) and (location is None or
                                        _same_place(dispatch.location_of(item), location)):
                    items.append((value, index, item))
        elif is_remote(value) and (location is None or
                                   _same_place(dispatch.location_of(value), location)):
            items.append((state, key, value))
    return items


def colocate_state(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Put each parameter's optimizer state where the parameter is, before
    `optimizer.step()` and `optimizer.state_dict()`. A parameter at home gets all its state
    home (tensors of any shape, and tensors in lists: LBFGS); a remote parameter gets its
    per-element state (tensors of its shape) sent or moved to its worker; scalar state
    (Adam's `step`) stays local, as torch keeps it on the CPU. A parameter whose model's
    `get()` is pending comes home now (the step needs it). One GetRequest per worker brings
    state home. So `torch.save(opt.state_dict())` after `model.get()` saves local tensors,
    and a local step after `get()` (LBFGS's history included) finds its state here; state of
    parameters still on a worker stays there (state_dict() then holds pointers)."""
    if not dispatch.Sent.anything:
        return None
    if not optimizer.__dict__.get("_fedmq_state_dict_hook"):
        optimizer.register_state_dict_pre_hook(_colocate_before_state_dict)
        optimizer.__dict__["_fedmq_state_dict_hook"] = True
    state = optimizer.state
    if not state:
        return None
    fetch: dict[int, tuple[Any, list]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = state.get(p)
            if not st:
                continue
            if is_remote(p) and p.__dict__.get("_fedmq_pending") is not None:
                p._fedmq_pending.carry_out(p)
            where = dispatch.location_of(p) if is_remote(p) else None
            if where is None:
                for container, key, pointer in remote_state_items(st, None):
                    at = dispatch.location_of(pointer)
                    fetch.setdefault(id(at), (at, []))[1].append((container, key, pointer))
                continue
            shape = _shape(p)
            for key, value in st.items():
                if not isinstance(value, torch.Tensor) or _shape(value) != shape \
                        or (not shape and key == "step"):
                    continue
                at = dispatch.location_of(value) if is_remote(value) else None
                if _same_place(at, where):
                    continue
                if at is None:
                    st[key] = value.send(where)
                else:
                    st[key] = value.move(where)
    for at, items in fetch.values():
        values = at.call(m.GetRequest([dispatch.remote_id(v) for _, _, v in items],
                                      delete=True))
        for (container, key, pointer), value in zip(items, values):
            pointer._disown()
            pointer._consumed = True
            container[key] = value
    return None


def _colocate_before_state_dict(optimizer: torch.optim.Optimizer) -> None:
    colocate_state(optimizer, (), {})


def _keep_nesterov_on_the_loop() -> None:
    """Foreach SGD with nesterov=True leaves the adjusted gradient in `p.grad` (the loop does
    not); nesterov keeps the loop so `p.grad` after a step is what plain PyTorch shows."""
    sgd_module: Any = importlib.import_module("torch.optim.sgd")
    sgd = sgd_module.sgd
    if getattr(sgd, "__module__", "") == __name__:
        return

    def sgd_with_loop_for_nesterov(*args: Any, **kwargs: Any) -> Any:
        params = args[0] if args else kwargs.get("params", ())
        if (kwargs.get("nesterov") and kwargs.get("foreach") is None and params
                and all(is_remote(p) for p in params)):
            kwargs["foreach"] = False
        return sgd(*args, **kwargs)

    sgd_with_loop_for_nesterov.__wrapped__ = sgd  # type: ignore[attr-defined]
    sgd_with_loop_for_nesterov.__module__ = __name__
    sgd_module.sgd = sgd_with_loop_for_nesterov
