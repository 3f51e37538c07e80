"""Dropout and batch normalisation on fixed-precision (shared) values, in evaluation mode.

`F.dropout` (nn.Dropout; also dropout1d/2d/3d) with training=False or p=0 is the identity, as
in torch; in training mode with p > 0 it is refused: the random mask would have to be
secret-shared among the parties, which fedmq does not do.

`F.batch_norm` (nn.BatchNorm1d/2d/3d) in evaluation mode with public running statistics
(`model.fix_precision()` encodes parameters only: the `running_mean`/`running_var` buffers stay
public float tensors) is y = (x - running_mean) * s + bias per channel (dimension 1), with
s = weight / sqrt(running_var + eps): the square root is of public values; weight and bias may
be fixed-precision, shared or AutogradTensors (then the gradients reach x, weight and bias
through the product and the sum; centring x first keeps weight's gradient free of the
cancellation x * s - running_mean * s would have). Cost: the (C,) weight times public floats
(one truncation), a public subtraction (local) and one elementwise product with x (a Beaver
product when both are shared). Training mode (batch statistics: the square root of
a shared variance) and BatchNorm without running statistics are refused; the message says to
use eval mode or fold the BatchNorm into the previous layer before sharing (recipe in
`FOLD_RECIPE`).

Both work on FixedPrecisionTensors (dispatch.py) and AutogradTensors (autograd.py) alike: they
use the operands' `mul`, `add`, `sub` and `reshape` methods only.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

FOLD_RECIPE = (
    "to fold a BatchNorm2d `bn` that follows a Conv2d `conv` into it before sharing (eval "
    "mode): s = bn.weight / torch.sqrt(bn.running_var + bn.eps); "
    "conv.weight.data *= s.view(-1, 1, 1, 1); "
    "conv.bias = nn.Parameter(((conv.bias if conv.bias is not None else 0) - "
    "bn.running_mean) * s + bn.bias); and replace bn by nn.Identity()")


def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    """F.dropout (and dropout1d/2d/3d) on a fixed-precision value: the identity when
    training=False or p == 0 (same value, same shape). ValueError for p outside [0, 1];
    NotImplementedError in training mode with p > 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return input
    raise NotImplementedError(
        f"dropout in training mode (p={p}) on fixed-precision or shared values: the random "
        f"mask would have to be secret-shared among the parties, which fedmq does not do. "
        f"Call model.eval() (dropout is then the identity), or use p=0, or remove the "
        f"Dropout layers from the model before sharing it")


def batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
               bias: Any = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Any:
    """F.batch_norm in evaluation mode with public running statistics (module docstring):
    input (N, C, *) -> (N, C, *). NotImplementedError in training mode or without running
    statistics; TypeError for secret running statistics or integer shared values."""
    if training or running_mean is None or running_var is None:
        raise NotImplementedError(
            "batch normalisation in training mode on fixed-precision or shared values needs "
            "the batch's mean and the square root of its (secret) variance, which fedmq does "
            "not compute. Use the model in eval mode (model.eval(), or bn.eval() to train "
            "with frozen running statistics), or remove the BatchNorm; " + FOLD_RECIPE)
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if not _plain(stat):
            raise TypeError(f"batch_norm takes public running statistics, got a "
                            f"{type(stat).__name__} {name}: keep the BatchNorm buffers "
                            f"public, or " + FOLD_RECIPE)
    for value in (input, weight, bias):
        if value is not None and _rank(value) == 1 and getattr(value, "encode_like",
                                                                  None) is None:
            raise TypeError("batch_norm takes fixed-precision values (x.fix_precision()"
                            ".share(...)), not integer shares")
    inv_std = 1.0 / torch.sqrt(running_var.double() + eps)
    inv_std = inv_std.to(running_var.dtype)
    scale = inv_std if weight is None else _mul(weight, inv_std)
    shape = (1, -1) + (1,) * (len(input.shape) - 2)
    mean = running_mean.to(running_var.dtype).reshape(shape)
    centred = input - mean if _rank(input) == 0 else input.sub(mean)  # public: local
    out = _mul(centred, _reshape(scale, shape))
    return out if bias is None else _add(out, _reshape(bias, shape))


def _plain(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not getattr(type(value), "_fedmq_autograd",
                                                           False)


def _rank(value: Any) -> int:
    """2 for an AutogradTensor, 1 for another SMPC value, 0 for a plain tensor or number:
    the operand whose method a commutative op calls."""
    if getattr(type(value), "_fedmq_autograd", False):
        return 2
    return 0 if _plain(value) or isinstance(value, (int, float)) else 1


def _mul(a: Any, b: Any) -> Any:
    if _rank(a) < _rank(b):
        a, b = b, a
    return a * b if _rank(a) == 0 else a.mul(b)


def _add(a: Any, b: Any) -> Any:
    if _rank(a) < _rank(b):
        a, b = b, a
    return a + b if _rank(a) == 0 else a.add(b)


def _reshape(a: Any, shape: tuple) -> Any:
    return a.reshape(*shape)


#: torch function -> its implementation on fixed-precision (shared) values
LAYERS = {F.dropout: dropout, F.dropout1d: dropout, F.dropout2d: dropout, F.dropout3d: dropout,
          F.batch_norm: batch_norm}
