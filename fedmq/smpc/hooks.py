"""The SMPC extension: what `TorchHook(torch)` adds (declared in `EXTENSION`):

* tensor methods `fix_precision`/`fix_prec` and `share`;
* nn.Module methods `fix_precision`/`fix_prec`, `float_precision`/`float_prec`, `share`
  (parameters become FixedPrecisionTensors, so `model(x)` runs F.linear & co. through
  `__torch_function__` on fixed-point or shared values);
* the `DealRequest` handler every worker answers when it is asked to be the crypto provider,
  and the `LocalStep` handler share holders run protocol rounds with;
* `torch_function_for`: torch functions called on FixedPrecisionTensors or shared tensors.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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


# -- torch functions on fixed-precision and shared values -----------------------------------------

_METHODS = {
    torch.add: "add", torch.Tensor.add: "add", torch.Tensor.__add__: "add",
    torch.Tensor.__radd__: "add", torch.sub: "sub", torch.Tensor.sub: "sub",
    torch.Tensor.__sub__: "sub", torch.Tensor.__rsub__: "rsub",
    torch.mul: "mul", torch.Tensor.mul: "mul", torch.Tensor.__mul__: "mul",
    torch.Tensor.__rmul__: "mul", torch.matmul: "matmul", torch.mm: "matmul",
    torch.Tensor.matmul: "matmul", torch.Tensor.mm: "matmul", torch.Tensor.__matmul__: "matmul",
    torch.Tensor.__rmatmul__: "rmatmul",
    torch.neg: "neg", torch.relu: "relu", F.relu: "relu", torch.abs: "abs",
    torch.sum: "sum", torch.mean: "mean", torch.max: "max", torch.min: "min",
    torch.argmax: "argmax", torch.argmin: "argmin", torch.t: "t", torch.reshape: "reshape",
    torch.flatten: "flatten", torch.transpose: "transpose", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", torch.gt: "gt", torch.lt: "lt", torch.ge: "ge", torch.le: "le",
    torch.eq: "eq", torch.ne: "ne", torch.Tensor.__gt__: "lt", torch.Tensor.__lt__: "gt",
    torch.Tensor.__ge__: "le", torch.Tensor.__le__: "ge", F.linear: "linear",
    F.conv2d: "conv2d", torch.conv2d: "conv2d",
}
#: torch methods whose first argument is a plain tensor, so `self` is the second one
_REFLECTED = {torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__sub__,
              torch.Tensor.__rsub__, torch.Tensor.__mul__, torch.Tensor.__rmul__,
              torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.Tensor.__gt__,
              torch.Tensor.__lt__, torch.Tensor.__ge__, torch.Tensor.__le__}
_SWAP = {"sub": "rsub", "rsub": "sub", "matmul": "rmatmul", "rmatmul": "matmul"}


def torch_function_for(cls: type, func: Any, args: tuple, kwargs: dict) -> Any:
    name = _METHODS.get(func)
    if name is None:
        raise NotImplementedError(f"{getattr(func, '__name__', func)} is not supported on "
                                  f"{cls.__name__} (fedmq.smpc.hooks)")
    ours = (FixedPrecisionTensor, AdditiveSharingTensor)
    if func in _REFLECTED and args and not isinstance(args[0], ours):
        # a plain tensor on the left: torch.Tensor.__sub__(t, x) means t - x
        other, self = args[0], args[1]
        if func in (torch.Tensor.__gt__, torch.Tensor.__lt__, torch.Tensor.__ge__,
                    torch.Tensor.__le__):
            return getattr(self, name)(other)  # t > x  ==  x < t (names already flipped)
        if func in (torch.Tensor.__rsub__, torch.Tensor.__rmatmul__):
            return getattr(self, name)(other)
        return getattr(self, _SWAP.get(name, name))(other)
    if func in (torch.Tensor.__gt__, torch.Tensor.__lt__, torch.Tensor.__ge__,
                torch.Tensor.__le__):
        name = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le"}[name]
    if not isinstance(args[0], ours):
        raise NotImplementedError(f"{name} with a plain tensor first is not supported: put the "
                                  f"fixed-precision or shared tensor first")
    if name == "relu":  # F.relu(x, inplace=False): a new value either way
        kwargs.pop("inplace", None)
        args = args[:1]
    return getattr(args[0], name)(*args[1:], **kwargs)


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
