"""Optimizers on remote parameters take torch's multi-tensor ("foreach") path.

torch.optim picks, per step, between a loop over parameters (one `add_`, `mul_`, ... per
tensor) and its foreach implementation (one `torch._foreach_add_` over all of them). On CPU
it picks the loop, which on a sent model means one Command per parameter per op. For
parameters that all live on workers we pick foreach instead, so `opt.step()` costs a handful
of Commands whatever the model's size. On CPU both paths run the same per-tensor kernels, so
the weights stay bit-identical to plain PyTorch (tests/test_pointer_ops.py checks each against
plain PyTorch). An explicit `foreach=False` is respected.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from fedmq.pointers.dispatch import is_remote

#: torch.optim modules whose foreach path gives bit-identical results to their loop on CPU.
#: (NAdam's and RAdam's do not, so they keep the loop; Adagrad and ASGD create their state
#: when constructed, so build them after `send`.)
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
    _installed = True


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
