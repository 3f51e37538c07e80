"""Torch functions on SMPC values: `torch.add(x, y)`, `F.linear(x, w)`, `t - x`, ... where x is a
FixedPrecisionTensor or an AdditiveSharingTensor call x's method of the same meaning.

Both classes derive from `SmpcTensor`, so a model whose parameters were made fixed-precision
(and shared) runs F.linear & co. through `__torch_function__` on them. The table maps each
supported torch function to a method name; a function not in it raises NotImplementedError.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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


class SmpcTensor:
    """Base of FixedPrecisionTensor and AdditiveSharingTensor, tensor-like classes that are
    not tensors: size/dim/numel/len from `self.shape`, and torch functions called on them
    dispatched to their methods (`torch_function_for`)."""

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return self.shape.numel()

    def __len__(self) -> int:
        return self.shape[0]

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return torch_function_for(cls, func, args, kwargs or {})


def torch_function_for(cls: type, func: Any, args: tuple, kwargs: dict) -> Any:
    if any(getattr(type(a), "_fedmq_autograd", False) for a in args):
        return NotImplemented  # an AutogradTensor operand: its __torch_function__ (autograd.py)
    name = _METHODS.get(func)
    if name is None:
        raise NotImplementedError(f"{getattr(func, '__name__', func)} is not supported on "
                                  f"{cls.__name__} (fedmq.smpc.dispatch)")
    if func in _REFLECTED and args and not isinstance(args[0], SmpcTensor):
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
    if not isinstance(args[0], SmpcTensor):
        raise NotImplementedError(f"{name} with a plain tensor first is not supported: put the "
                                  f"fixed-precision or shared tensor first")
    if name == "relu":  # F.relu(x, inplace=False): a new value either way
        kwargs.pop("inplace", None)
        args = args[:1]
    return getattr(args[0], name)(*args[1:], **kwargs)
