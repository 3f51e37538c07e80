"""Torch functions on SMPC values: `torch.add(x, y)`, `F.linear(x, w)`, `t - x`, ... where x is a
FixedPrecisionTensor or an AdditiveSharingTensor call x's method of the same meaning.
A plain tensor or number on the left (`t * x`, `t - x`, `t @ x`, `t < x`, `torch.add(t, x)`)
calls x's reflected method (`x.mul(t)`, `x.rsub(t)`, `x.rmatmul(t)`, `x.gt(t)`), and a plain
input of F.linear/F.conv2d with a fixed-precision weight is encoded like the weight.

Both classes derive from `SmpcTensor`, so a model whose parameters were made fixed-precision
(and shared) runs F.linear & co. through `__torch_function__` on them. The table maps each
supported torch function to a method name; a function not in it raises NotImplementedError.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedmq.smpc.layers import LAYERS

#: torch function -> the method m such that func(x, y, ...) == x.m(y, ...) when x is SMPC
_METHODS = {
    torch.add: "add", torch.Tensor.add: "add", torch.Tensor.__add__: "add",
    torch.Tensor.__radd__: "add", torch.sub: "sub", torch.Tensor.sub: "sub",
    torch.Tensor.__sub__: "sub", torch.Tensor.__rsub__: "rsub", torch.rsub: "rsub",
    torch.mul: "mul", torch.Tensor.mul: "mul", torch.Tensor.__mul__: "mul",
    torch.Tensor.__rmul__: "mul", torch.matmul: "matmul", torch.mm: "matmul",
    torch.Tensor.matmul: "matmul", torch.Tensor.mm: "matmul", torch.Tensor.__matmul__: "matmul",
    torch.Tensor.__rmatmul__: "rmatmul",
    torch.neg: "neg", torch.relu: "relu", F.relu: "relu", torch.abs: "abs",
    torch.sum: "sum", torch.mean: "mean", torch.max: "max", torch.min: "min",
    torch.argmax: "argmax", torch.argmin: "argmin", torch.t: "t", torch.reshape: "reshape",
    torch.flatten: "flatten", torch.transpose: "transpose", torch.unsqueeze: "unsqueeze",
    torch.squeeze: "squeeze", torch.gt: "gt", torch.lt: "lt", torch.ge: "ge", torch.le: "le",
    torch.eq: "eq", torch.ne: "ne", torch.Tensor.gt: "gt", torch.Tensor.lt: "lt",
    torch.Tensor.ge: "ge", torch.Tensor.le: "le", torch.Tensor.eq: "eq", torch.Tensor.ne: "ne",
    torch.Tensor.__gt__: "gt", torch.Tensor.__lt__: "lt", torch.Tensor.__ge__: "ge",
    torch.Tensor.__le__: "le", torch.Tensor.__eq__: "eq", torch.Tensor.__ne__: "ne",
    F.linear: "linear", F.conv2d: "conv2d", torch.conv2d: "conv2d",
    torch.div: "div", torch.Tensor.div: "div", torch.true_divide: "div",
    torch.Tensor.__truediv__: "div", torch.Tensor.__rtruediv__: "rdiv",
    torch.exp: "exp", torch.log: "log", torch.reciprocal: "reciprocal",
    torch.sigmoid: "sigmoid", torch.tanh: "tanh", F.softmax: "softmax",
    F.log_softmax: "log_softmax", torch.softmax: "softmax", torch.log_softmax: "log_softmax",
    F.max_pool2d: "max_pool2d", F.avg_pool2d: "avg_pool2d", torch.max_pool2d: "max_pool2d",
    F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss",
}
#: with a plain value first and an SMPC value y second, func(t, y) == y.m(t) for m here
_PLAIN_FIRST = {"add": "add", "mul": "mul", "sub": "rsub", "rsub": "sub", "div": "rdiv",
                "rdiv": "div",
                "matmul": "rmatmul", "rmatmul": "matmul", "gt": "lt", "lt": "gt",
                "ge": "le", "le": "ge", "eq": "eq", "ne": "ne"}
#: functions of (input, weight, ...): a plain input is encoded like the SMPC weight
_LAYERS = ("linear", "conv2d")


class SmpcTensor:
    """Base of FixedPrecisionTensor and AdditiveSharingTensor, tensor-like classes that are
    not tensors: size/dim/numel/len from `self.shape`, and torch functions called on them
    dispatched to their methods (`torch_function_for`)."""

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    @property
    def requires_grad(self) -> bool:
        """False: gradients are recorded by an AutogradTensor around the value
        (`share(..., requires_grad=True)`), never by the value itself."""
        return False

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
    layer = LAYERS.get(func)  # F.dropout, F.batch_norm in eval mode (layers.py)
    if layer is not None:
        return layer(*args, **kwargs)
    name = _METHODS.get(func)
    if name is None:
        raise NotImplementedError(f"{getattr(func, '__name__', func)} is not supported on "
                                  f"{cls.__name__} (fedmq.smpc.dispatch): supported are "
                                  f"{sorted(set(_METHODS.values()))}")
    if args and not isinstance(args[0], SmpcTensor):
        return _plain_first(name, args, kwargs)
    if name == "relu":  # F.relu(x, inplace=False): a new value either way
        kwargs.pop("inplace", None)
        args = args[:1]
    return getattr(args[0], name)(*args[1:], **kwargs)


def _plain_first(name: str, args: tuple, kwargs: dict) -> Any:
    """func(t, x, ...) with a plain tensor or number t first and an SMPC value x second."""
    if len(args) >= 2 and isinstance(args[1], SmpcTensor):
        other, x = args[0], args[1]
        if name in _PLAIN_FIRST and len(args) == 2 and not kwargs:
            return getattr(x, _PLAIN_FIRST[name])(other)
        if name in _LAYERS:
            encode_like = getattr(x, "encode_like", None)
            if encode_like is not None:  # a fixed-precision weight: encode the input alike
                return getattr(encode_like(other), name)(x, *args[2:], **kwargs)
            raise TypeError(f"F.{name} of a plain input with a shared integer weight: use "
                            f"fixed-precision values (weight.fix_precision().share(...))")
    raise TypeError(f"{name}({', '.join(type(a).__name__ for a in args)}): no SMPC value "
                    f"where one is needed; {name} takes a FixedPrecisionTensor or "
                    f"AdditiveSharingTensor first (or second, for {sorted(_PLAIN_FIRST)} and "
                    f"{list(_LAYERS)})")
