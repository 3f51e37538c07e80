"""The SMPC extension: what `TorchHook(torch)` adds (declared in `EXTENSION`):

* tensor methods `fix_precision`/`fix_prec` and `share`;
* nn.Module methods `fix_precision`/`fix_prec`, `float_precision`/`float_prec`, `share`
  (parameters become FixedPrecisionTensors, so `model(x)` runs F.linear & co. through
  `__torch_function__` on fixed-point or shared values);
* the `DealRequest` handler every worker answers when it is asked to be the crypto provider,
  and the `LocalStep` handler share holders run protocol rounds with.
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
from fedmq.smpc.messages import Deal, DealRequest, LocalStep
from fedmq.smpc.provider import handle_deal_request


# -- tensors --------------------------------------------------------------------------------------

def tensor_fix_precision(self: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                         **_pysyft_options: Any) -> FixedPrecisionTensor:
    """Encode as fixed point: trunc(x * base**precision_fractional) in int64."""
    if getattr(type(self), "_fedmq_kind", None) is not None:
        raise NotImplementedError("fix_precision() of a remote tensor is not supported yet: "
                                  ".get() it first")
    return FixedPrecisionTensor.from_tensor(self, base, precision_fractional)


def tensor_share(self: torch.Tensor, *workers: Any, crypto_provider: Any = None,
                 **options: Any) -> AdditiveSharingTensor:
    """Secret-share an integer tensor among 2-5 workers (floats: fix_precision() first)."""
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
    handlers={DealRequest: handle_deal_request, LocalStep: handle_local_step},
    records=(Deal, DealRequest, LocalStep),
    tensor_methods={"fix_precision": tensor_fix_precision, "fix_prec": tensor_fix_precision,
                    "share": tensor_share},
    module_methods={"fix_precision": module_fix_precision, "fix_prec": module_fix_precision,
                    "float_precision": module_float_precision,
                    "float_prec": module_float_precision, "share": module_share,
                    "get_shared": module_get_shared},
)
