"""The SMPC extension: what `TorchHook(torch)` adds (declared in `EXTENSION`):

* tensor methods `fix_precision`/`fix_prec` and `share`;
* nn.Module methods `fix_precision`/`fix_prec`, `float_precision`/`float_prec`, `share`,
  `get_shared` and `get` (parameters become FixedPrecisionTensors, so `model(x)` runs F.linear
  & co. through `__torch_function__` on fixed-point or shared values; with
  `requires_grad=True` AutogradTensors that `model.parameters()` returns, autograd.py);
* the optimizer method `fix_precision`/`fix_prec` (optim.py);
* the `DealRequest` handler every worker answers when it is asked to be the crypto provider,
  the `LocalStep` handler share holders run protocol rounds with, and the `FixPrecision` and
  `ShareRequest` handlers a worker encodes and splits a value it holds with (remote.py:
  `ptr.fix_precision().share(...)`).
(Torch functions called on FixedPrecisionTensors or shared tensors: dispatch.py.)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from fedmq.extensions import Extension
from fedmq import module as _module_ops
from fedmq.smpc import keywords as _keywords
from fedmq.smpc.additive import AdditiveSharingTensor, _check_parties, share_tensor
from fedmq.smpc.autograd import AutogradTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor, _check_params
from fedmq.smpc.optim import optimizer_fix_precision, replaced_message
from fedmq.smpc import beaver as _beaver, comparison as _comparison  # noqa: F401 (their steps)
from fedmq.smpc.local_steps import handle_local_step, local_step_values
from fedmq.smpc.messages import (Deal, DealRequest, FixPrecision, LocalStep,
                                 ShareRequest)
from fedmq.smpc.provider import handle_deal_request
from fedmq.smpc.remote import (fix_precision_remote, handle_fix_precision, handle_share_request,
                               is_remote_value, share_remote)


# -- tensors --------------------------------------------------------------------------------------

def tensor_fix_precision(self: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                         **pysyft: Any) -> Any:
    """Encode as fixed point: trunc(x * base**precision_fractional) in int64.

    A local tensor gives a FixedPrecisionTensor. A pointer (or a sent parameter) is encoded by
    the worker holding it, and gives a FixedPrecisionPointer (fedmq.smpc.remote): `.get()` is a
    FixedPrecisionTensor, `.float_precision()` decodes on the worker, `.share(...)` splits it
    there. PySyft's other keywords (dtype="long", field=2**64, kappa=1, no_wrap=False,
    storage="auto", field_type="int100") are accepted at those values only; other values and
    unknown keywords (typos) raise TypeError naming what is accepted (fedmq/smpc/keywords.py).
    Raises ValueError for a bad base/precision, NaN/inf or a value that does not fit (for a
    remote value: at its next use)."""
    if is_remote_value(self):
        return fix_precision_remote(self, base, precision_fractional, **pysyft)
    return FixedPrecisionTensor.from_tensor(self, base, precision_fractional, **pysyft)


def tensor_share(self: torch.Tensor, *workers: Any, crypto_provider: Any = None,
                 requires_grad: bool = False, **pysyft: Any) -> Any:
    """Secret-share an integer tensor among 2-5 workers (floats: fix_precision() first; bools:
    share t.long()).

    A local tensor gives an AdditiveSharingTensor. A pointer (or a sent parameter) is split by
    the worker holding it, which sends each party its share itself; it gives a SharedPointer
    whose `.get()` is the AdditiveSharingTensor (fedmq.smpc.remote; the client never sees a
    share). PySyft's protocol="snn", field=2**64, dtype="long", no_wrap=False are accepted,
    other values and keywords raise TypeError; requires_grad=True raises ValueError (integer
    values have no gradient)."""
    if is_remote_value(self):
        return share_remote(self, *workers, crypto_provider=crypto_provider,
                            requires_grad=requires_grad, **pysyft)
    return share_tensor(self, *workers, crypto_provider=crypto_provider,
                        requires_grad=requires_grad, **pysyft)


# -- modules -------------------------------------------------------------------------------------

_STEP_HOOK: list = []  # the global optimizer step pre-hook's handle, once installed


def _mark_replaced(value: Any) -> None:
    """Mark a parameter that fix_precision()/share()/float_precision() replaced (an
    nn.Parameter or AutogradTensor no longer in the model), and install the optimizer check
    (`_refuse_replaced`) the first time: an optimizer built before the change still holds it,
    and its step() would update it, not the model (found by review: training did nothing)."""
    try:
        value._fedmq_replaced = True
    except (AttributeError, TypeError):  # a value that takes no attribute: nothing to mark
        return
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_pre_hook(_refuse_replaced))


def _refuse_replaced(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
    """Global torch optimizer step pre-hook: ValueError (before anything is updated) if the
    optimizer holds a parameter a model's fix_precision()/share()/float_precision() replaced.
    Installed only once a model was converted, so plain PyTorch training never runs it;
    its cost is one attribute look-up per parameter per step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if getattr(p, "_fedmq_replaced", False):
                raise ValueError(replaced_message(type(optimizer).__name__))


def _fixed_values(module: nn.Module):
    """(module, name, value) for every parameter that fix_precision() encoded: a
    FixedPrecisionTensor kept as a plain attribute, or an AutogradTensor kept in
    `_parameters` (so `model.parameters()` returns it, for an optimizer)."""
    for mod in module.modules():
        for name in mod.__dict__.get("_fedmq_fixed", []):
            value = mod._parameters.get(name)
            if value is None:
                value = mod.__dict__[name]
            yield mod, name, value


def _set_fixed(mod: nn.Module, name: str, value: Any) -> None:
    if isinstance(value, AutogradTensor):
        mod.__dict__.pop(name, None)
        mod._parameters[name] = value  # what parameters() yields (nn.Module never checks)
    else:
        mod._parameters.pop(name, None)
        object.__setattr__(mod, name, value)


def _refuse_sent(module: nn.Module, what: str) -> None:
    """ValueError if the model was sent to a worker (its parameters are there; found by
    review: fix_precision() then use failed with an unrelated TypeError). A model whose
    get() is pending is fetched first (it is local)."""
    if _module_ops._pending(module) is not None:
        _module_ops.fetch(module)
        return
    location = _module_ops.location_of(module)
    if location is not None:
        raise ValueError(
            f"this model was sent to {getattr(location, 'id', location)!r}: its parameters "
            f"are there, and {what} encodes a local model (a fixed-precision or shared model "
            f"is not sent either). Bring it back first with model.get(), then "
            f"model.fix_precision().share(...)")


def module_send(self: nn.Module, *locations: Any, **pysyft: Any) -> nn.Module:
    """`model.send(worker)` (fedmq.module.send) for a plain model; a fixed-precision or
    secret-shared model is refused with a ValueError (found by review: a SerdeError about
    resolve_conj): its shares stay with their parties."""
    _refuse_fixed(self, "sent")
    return _module_ops.send(self, *locations, **pysyft)


def module_move(self: nn.Module, destination: Any) -> nn.Module:
    """`model.move(worker)` (fedmq.module.move); fixed-precision models as module_send."""
    _refuse_fixed(self, "moved")
    return _module_ops.move(self, destination)


def _refuse_fixed(module: nn.Module, what: str) -> None:
    values = [value for _, _, value in _fixed_values(module)]
    if any(value.is_shared for value in values):
        raise ValueError(
            f"a secret-shared model cannot be {what}: its shares stay with the parties that "
            f"hold them (each worker has only its own share). Use it where it is "
            f"(model(x.fix_precision().share(...))), or reconstruct it here with model.get()"
            f".float_precision() and send the plain model")
    if values:
        raise ValueError(f"a fixed-precision model cannot be {what}: call "
                         f"model.float_precision() first, and send the plain model")


def module_fix_precision(self: nn.Module, base: int = 10, precision_fractional: int = 3,
                         requires_grad: bool = False, **pysyft: Any) -> nn.Module:
    """Encode every parameter as fixed point (in place; returns the module).

    Without `requires_grad` the parameters become FixedPrecisionTensor attributes (inference,
    seed §11); with `requires_grad=True` they become AutogradTensor parameters that
    `model.parameters()` returns, for local fixed-precision training. Raises ValueError for a
    model that is already fixed-precision or a bad base/precision; PySyft's other keywords as
    tensor.fix_precision (TypeError, checked before any parameter is encoded)."""
    _keywords.check("Module.fix_precision", pysyft, _keywords.FIX_PRECISION,
                    honoured=("base", "precision_fractional", "requires_grad"))
    _check_params(base, precision_fractional)
    if type(requires_grad) is not bool:
        raise TypeError(f"requires_grad must be True or False, got {requires_grad!r}")
    if any(mod.__dict__.get("_fedmq_fixed") for mod in self.modules()):
        raise ValueError("this model is already in fixed precision")
    _refuse_sent(self, "fix_precision()")
    for mod in self.modules():
        fixed = mod.__dict__.setdefault("_fedmq_fixed", [])
        for name, param in list(mod._parameters.items()):
            if param is None:
                continue
            value = FixedPrecisionTensor.from_tensor(param.data, base, precision_fractional)
            del mod._parameters[name]
            _mark_replaced(param)
            _set_fixed(mod, name, AutogradTensor(value, requires_grad=param.requires_grad)
                       if requires_grad else value)
            fixed.append(name)
    return self


def module_float_precision(self: nn.Module) -> nn.Module:
    """Decode fixed-precision parameters back into nn.Parameters (they must be local: call
    model.get() first on a shared model; ValueError otherwise)."""
    for mod, name, value in list(_fixed_values(self)):
        if value.is_shared:
            raise ValueError(f"parameter {name!r} is secret-shared: call model.get() first, "
                             f"then model.float_precision()")
    for mod, name, value in list(_fixed_values(self)):
        requires_grad = value.requires_grad if isinstance(value, AutogradTensor) else True
        _mark_replaced(value)
        mod.__dict__.pop(name, None)
        mod._parameters.pop(name, None)
        mod.register_parameter(name, nn.Parameter(value.float_precision(),
                                                  requires_grad=requires_grad))
    for mod in self.modules():
        mod.__dict__["_fedmq_fixed"] = []
    return self


def module_share(self: nn.Module, *workers: Any, crypto_provider: Any = None,
                 requires_grad: bool = False, **options: Any) -> nn.Module:
    """Secret-share every (fixed-precision) parameter among `workers`. `requires_grad=True`
    makes them AutogradTensors that `model.parameters()` returns (encrypted training, seed
    §12-13); parameters already made with fix_precision(requires_grad=True) stay so.
    PySyft's protocol="snn", field=2**64, dtype="long", no_wrap=False are accepted; other
    values, other keywords (TypeError) and bad parties are refused before any parameter is
    shared."""
    _keywords.check("Module.share", options, _keywords.SHARE,
                    honoured=("crypto_provider", "requires_grad"))
    if type(requires_grad) is not bool:
        raise TypeError(f"requires_grad must be True or False, got {requires_grad!r}")
    _check_parties(workers, crypto_provider)
    _refuse_sent(self, "share()")
    for mod in self.modules():
        fixed = mod.__dict__.get("_fedmq_fixed", [])
        if any(p is not None and name not in fixed for name, p in mod._parameters.items()):
            raise ValueError("share() needs a fixed-precision model: call "
                             "model.fix_precision().share(...)")
    for mod, name, value in list(_fixed_values(self)):
        if isinstance(value, AutogradTensor):
            shared = value.share(*workers, crypto_provider=crypto_provider,
                                 requires_grad=value.requires_grad or requires_grad, **options)
        else:
            shared = value.share(*workers, crypto_provider=crypto_provider,
                                 requires_grad=requires_grad, **options)
        _mark_replaced(value)
        _set_fixed(mod, name, shared)
    return self


def module_get_shared(self: nn.Module) -> nn.Module:
    """Reconstruct shared fixed-precision parameters (deleting the shares); a model with no
    shared parameter is returned as it is."""
    for mod, name, value in list(_fixed_values(self)):
        if value.is_shared:
            _set_fixed(mod, name, value.get())
    return self


def module_get(self: nn.Module) -> nn.Module:
    """`model.get()`: a model with secret-shared parameters is reconstructed here (as PySyft
    0.2); any other model is fetched from where it was sent (fedmq.module.get)."""
    if any(value.is_shared for _, _, value in _fixed_values(self)):
        return module_get_shared(self)
    return _module_ops.get(self)


# -- the extension's table -----------------------------------------------------------------------

EXTENSION = Extension(
    "smpc",
    handlers={DealRequest: handle_deal_request, LocalStep: handle_local_step,
              ShareRequest: handle_share_request, FixPrecision: handle_fix_precision},
    light={LocalStep: local_step_values},
    records=(Deal, DealRequest, LocalStep, ShareRequest, FixPrecision),
    tensor_methods={"fix_precision": tensor_fix_precision, "fix_prec": tensor_fix_precision,
                    "share": tensor_share},
    module_methods={"fix_precision": module_fix_precision, "fix_prec": module_fix_precision,
                    "float_precision": module_float_precision,
                    "float_prec": module_float_precision, "share": module_share,
                    "get_shared": module_get_shared, "get": module_get,
                    "send": module_send, "move": module_move},
    optimizer_methods={"fix_precision": optimizer_fix_precision,
                       "fix_prec": optimizer_fix_precision},
)
