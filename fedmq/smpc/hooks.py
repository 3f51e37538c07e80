"""The SMPC extension: what `TorchHook(torch)` adds (declared in `EXTENSION`):

* tensor methods `fix_precision`/`fix_prec` and `share`;
* nn.Module methods `fix_precision`/`fix_prec`, `float_precision`/`float_prec`, `share`
  (parameters become FixedPrecisionTensors, so `model(x)` runs F.linear & co. through
  `__torch_function__` on fixed-point or shared values);
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

from fedmq.extensions import Extension
from fedmq.smpc.additive import AdditiveSharingTensor, share_tensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor
from fedmq.smpc import beaver as _beaver, comparison as _comparison  # noqa: F401 (their steps)
from fedmq.smpc.local_steps import handle_local_step
from fedmq.smpc.messages import (Deal, DealRequest, FixPrecision, LocalStep,
                                 ShareRequest)
from fedmq.smpc.provider import handle_deal_request
from fedmq.smpc.remote import (fix_precision_remote, handle_fix_precision, handle_share_request,
                               is_remote_value, share_remote)


# -- tensors --------------------------------------------------------------------------------------

def tensor_fix_precision(self: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                         **_pysyft_options: Any) -> Any:
    """Encode as fixed point: trunc(x * base**precision_fractional) in int64.

    A local tensor gives a FixedPrecisionTensor. A pointer (or a sent parameter) is encoded by
    the worker holding it, and gives a FixedPrecisionPointer (fedmq.smpc.remote): `.get()` is a
    FixedPrecisionTensor, `.float_precision()` decodes on the worker, `.share(...)` splits it
    there. Raises ValueError for a bad base/precision, NaN/inf or a value that does not fit
    (for a remote value: at its next use)."""
    if is_remote_value(self):
        if _pysyft_options:
            raise TypeError(f"fix_precision() of a value on a worker takes base= and "
                            f"precision_fractional= only, got "
                            f"{', '.join(sorted(_pysyft_options))}=")
        return fix_precision_remote(self, base, precision_fractional)
    return FixedPrecisionTensor.from_tensor(self, base, precision_fractional)


def tensor_share(self: torch.Tensor, *workers: Any, crypto_provider: Any = None,
                 **options: Any) -> Any:
    """Secret-share an integer tensor among 2-5 workers (floats: fix_precision() first).

    A local tensor gives an AdditiveSharingTensor. A pointer (or a sent parameter) is split by
    the worker holding it, which sends each party its share itself; it gives a SharedPointer
    whose `.get()` is the AdditiveSharingTensor (fedmq.smpc.remote; the client never sees a
    share)."""
    if is_remote_value(self):
        return share_remote(self, *workers, crypto_provider=crypto_provider, **options)
    return share_tensor(self, *workers, crypto_provider=crypto_provider, **options)


# -- modules -------------------------------------------------------------------------------------

def module_fix_precision(self: nn.Module, base: int = 10, precision_fractional: int = 3,
                         **_options: Any) -> nn.Module:
    """Replace every parameter by a FixedPrecisionTensor (in place; returns the module)."""
    for mod in self.modules():
        fixed = mod.__dict__.setdefault("_fedmq_fixed", [])
        for name, param in list(mod._parameters.items()):
            if param is None:
                continue
            value = FixedPrecisionTensor.from_tensor(param.data, base, precision_fractional)
            del mod._parameters[name]
            object.__setattr__(mod, name, value)
            fixed.append(name)
    return self


def module_float_precision(self: nn.Module) -> nn.Module:
    """Decode fixed-precision parameters back into nn.Parameters (they must be local)."""
    for mod in self.modules():
        for name in mod.__dict__.get("_fedmq_fixed", []):
            value = mod.__dict__.pop(name)
            mod.register_parameter(name, nn.Parameter(value.float_precision()))
        mod.__dict__["_fedmq_fixed"] = []
    return self


def module_share(self: nn.Module, *workers: Any, crypto_provider: Any = None,
                 **options: Any) -> nn.Module:
    """Secret-share every (fixed-precision) parameter among `workers`."""
    for mod in self.modules():
        if any(p is not None for p in mod._parameters.values()):
            raise ValueError("share() needs a fixed-precision model: call "
                             "model.fix_precision().share(...)")
    for mod in self.modules():
        for name in mod.__dict__.get("_fedmq_fixed", []):
            value = mod.__dict__[name]
            mod.__dict__[name] = value.share(*workers, crypto_provider=crypto_provider, **options)
    return self


def module_get_shared(self: nn.Module) -> nn.Module:
    """Reconstruct shared fixed-precision parameters (deleting the shares)."""
    for mod in self.modules():
        for name in mod.__dict__.get("_fedmq_fixed", []):
            mod.__dict__[name] = mod.__dict__[name].get()
    return self


# -- the extension's table -----------------------------------------------------------------------

EXTENSION = Extension(
    "smpc",
    handlers={DealRequest: handle_deal_request, LocalStep: handle_local_step,
              ShareRequest: handle_share_request, FixPrecision: handle_fix_precision},
    records=(Deal, DealRequest, LocalStep, ShareRequest, FixPrecision),
    tensor_methods={"fix_precision": tensor_fix_precision, "fix_prec": tensor_fix_precision,
                    "share": tensor_share},
    module_methods={"fix_precision": module_fix_precision, "fix_prec": module_fix_precision,
                    "float_precision": module_float_precision,
                    "float_prec": module_float_precision, "share": module_share,
                    "get_shared": module_get_shared},
)
