"""Autograd over fixed-precision (shared) tensors: PySyft 0.2's AutogradTensor.

`x.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)` (and
`model.fix_precision().share(..., requires_grad=True)`) give an `AutogradTensor`: a
`torch.Tensor` wrapper subclass with no storage whose `child` is a FixedPrecisionTensor (local or
secret-shared). Every operation on it runs on the child through the child's public methods and,
when an input requires a gradient (and `torch.is_grad_enabled()`), records a `GradFunc` node.
`loss.backward()` walks the graph from a scalar loss in reverse topological order and leaves
the gradients in `.grad` of the leaves that require one (a model's parameters, and data shared
with `requires_grad=True`): fixed-precision tensors, shared wherever they depend on a shared
value (one that depends on public values only, such as that of `x + y` for the public initial
gradient of `backward()`, stays public).

As PySyft's AutogradTensor (syft/frameworks/torch/tensors/interpreters/autograd.py and
gradients.py), the backward functions are written for the protocol, not derived from it: the
Beaver product is never differentiated; d(a*b)/db = a is one more Beaver product. What each
op's backward costs (shared operands):

    add, sub, neg, sum, mean*, view/reshape/flatten/view_as, t/transpose, refresh   local
    mul, matmul, linear      one Beaver product per input that needs a gradient
    conv2d                   one Beaver conv2d per input that needs a gradient
    avg_pool2d               one truncation (the window sums are local)
    max_pool2d               one batched equality test with the forward's argmax, one product
    pow (public int n)       one product (n - 1 more for n > 2 in the forward)
    relu                     one Beaver product with the forward's comparison mask [x >= 0]
    div (public number)      one truncation (* mean: also one)

Differentiable ops: add, sub, rsub, neg, mul, matmul/mm (2-D), F.linear, div and `/` by a
public number, pow and `**` by a public int >= 1, square, sum, mean, view, reshape, view_as,
flatten, t, transpose, F.relu/relu, F.conv2d (groups 1, dilation 1), F.avg_pool2d,
F.max_pool2d (non-overlapping windows), refresh. Not differentiable (their results never
require a gradient): comparisons (eq ne gt lt ge le), argmax, argmin. Anything else raises
NotImplementedError naming the op (softmax-based losses such as cross-entropy need exp and log
approximations, which the fixed-precision layer below does not offer here).

Operands: AutogradTensors, FixedPrecisionTensors and public numbers or float tensors (both
constants of the graph). A torch function with a fixed-precision or float tensor first
(`F.linear(x_fp, w)`, `torch.add(t, x)`) is handled here; a FixedPrecisionTensor *operator*
with an AutogradTensor on the right (`x_fp * w`) raises TypeError: put the AutogradTensor first
or give x requires_grad=True. `torch.no_grad()` records nothing; backward frees the graph
unless `retain_graph=True`, as torch.

Security (semi-honest, as the protocols below): the graph and the gradient functions live on
the coordinator, which never holds a share; gradients of shared values are computed by the same
protocols as the forward. `refresh()` adds a fresh additive sharing of zero that the
coordinator deals (PySyft's refresh): each party's new share is uniform and independent of its
old one, so a party cannot link the two; the coordinator, which knows the zero sharing, holds
no share of the value.

Precision: gradients are fixed point with the values' base and precision_fractional, and every
product is rescaled by the truncation protocol (at most one unit in the last place off), so
gradients match plaintext to about 10**-precision_fractional per product in the chain. A
division by a public int d truncates as well: 1/64 at precision 3 is 0.015, as in PySyft.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from fedmq.smpc.additive import AdditiveSharingTensor, share_tensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor, use_autograd_class


# -- fixed-precision helpers (public methods of FixedPrecisionTensor only) ----------------------

def _like(value: FixedPrecisionTensor, child: Any) -> FixedPrecisionTensor:
    return FixedPrecisionTensor(child, value.base, value.precision_fractional, value.float_dtype)


def _public(value: FixedPrecisionTensor, tensor: torch.Tensor) -> FixedPrecisionTensor:
    """A public float tensor in `value`'s encoding (a local FixedPrecisionTensor)."""
    return FixedPrecisionTensor.from_tensor(tensor.to(value.float_dtype), value.base,
                                            value.precision_fractional)


def _int_mul(a: Any, b: Any) -> Any:
    """Product of two integer children (local int64 tensors or shared), no rescaling."""
    if isinstance(a, AdditiveSharingTensor):
        return a.mul(b)
    if isinstance(b, AdditiveSharingTensor):
        return b.mul(a)
    return a * b


def _nonneg_mask(child: Any) -> Any:
    """[x >= 0] as 0/1 integers: shared (one comparison) if x is shared, else local."""
    if isinstance(child, AdditiveSharingTensor):
        return child.ge(0)
    return (child >= 0).to(torch.int64)


def _expand(grad: FixedPrecisionTensor, shape: torch.Size) -> FixedPrecisionTensor:
    """Broadcast `grad` to `shape` (local on shares: adds a public zero tensor of `shape`)."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    return grad.add(torch.zeros(shape, dtype=grad.float_dtype))


def _sum_to(grad: FixedPrecisionTensor, shape: torch.Size) -> FixedPrecisionTensor:
    """Undo broadcasting: sum `grad` down to `shape` (what torch's autograd does)."""
    shape = tuple(shape)
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for d, size in enumerate(shape):
        if size == 1 and grad.shape[d] != 1:
            grad = grad.sum(d, keepdim=True)
    return grad


def _shape_of(value: Any) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _pair(value: Any, what: str) -> tuple[int, int]:
    if type(value) is int:
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(type(v) is int
                                                                     for v in value):
        return tuple(value)
    raise ValueError(f"conv2d with gradients takes an int or a pair of ints as {what}, got "
                     f"{value!r}")


def _flip(value: FixedPrecisionTensor, dims: tuple) -> FixedPrecisionTensor:
    child = value.child
    if isinstance(child, AdditiveSharingTensor):
        return _like(value, child.map("torch.flip", list(dims)))
    return _like(value, torch.flip(child, list(dims)))


def _cat(values: list, dim: int) -> FixedPrecisionTensor:
    children = [v.child for v in values]
    if isinstance(children[0], AdditiveSharingTensor):
        return _like(values[0], AdditiveSharingTensor.cat(children, dim))
    return _like(values[0], torch.cat(children, dim))


def _dilate(grad: FixedPrecisionTensor, stride: tuple, extra: tuple) -> FixedPrecisionTensor:
    """Insert stride - 1 zero rows (columns) between the rows (columns) of the last two dims,
    then `extra` zero rows (columns) at the end: what conv_transpose2d does to its input,
    here with local ops on each share (zeros are the value times the public int 0)."""
    for dim, s, e in ((2, stride[0], extra[0]), (3, stride[1], extra[1])):
        if s > 1:
            n = grad.shape[dim]
            column = grad.unsqueeze(dim + 1)
            grad = _cat([column] + [column.mul(0)] * (s - 1), dim + 1)
            shape = list(grad.shape)
            shape[dim:dim + 2] = [n * s]
            index = [slice(None)] * len(shape)
            index[dim] = slice(0, (n - 1) * s + 1)
            grad = grad.reshape(*shape)[tuple(index)]
        grad = _pad_end(grad, dim, e)
    return grad


def _pad_end(value: FixedPrecisionTensor, dim: int, count: int) -> FixedPrecisionTensor:
    """`count` zero slices appended along `dim` (local on shares)."""
    if count <= 0:
        return value
    index = [slice(None)] * value.dim()
    index[dim] = slice(0, 1)
    zero = value[tuple(index)].mul(0)
    return _cat([value] + [zero] * count, dim)


def _window_sum(value: FixedPrecisionTensor, kernel: tuple, **kwargs: Any
                ) -> FixedPrecisionTensor:
    """Sum over every kernel window, channel by channel: conv2d with a public kernel of
    integer ones (local on each share, no rescaling)."""
    channels = value.shape[1]
    ones = torch.ones(channels, 1, *kernel, dtype=torch.int64)
    child = value.child
    if isinstance(child, AdditiveSharingTensor):
        return _like(value, child.conv2d(ones, None, groups=channels, **kwargs))
    return _like(value, F.conv2d(child, ones, None, groups=channels, **kwargs))


def _conv(x: FixedPrecisionTensor, w: FixedPrecisionTensor, **kwargs: Any
          ) -> FixedPrecisionTensor:
    """conv2d of two fixed-precision values (a public input with a shared kernel is shared
    first, among the kernel's parties: the protocol takes shared inputs)."""
    if w.is_shared and not x.is_shared:
        x = x.share(*w.child.locations, crypto_provider=w.child.crypto_provider)
    return x.conv2d(w, None, **kwargs)


# -- graph nodes ----------------------------------------------------------------------------------

class GradFunc:
    """A node of the graph: `inputs` (AutogradTensors or public values, in the op's argument
    order) and `gradient(grad)`, the gradients of the op's output with respect to each input
    (None where none is needed), as fixed-precision tensors."""

    #: set by backward(retain_graph=False): the node's saved values are dropped
    released = False

    def __init__(self, *inputs: Any) -> None:
        self.inputs = inputs

    def gradient(self, grad: FixedPrecisionTensor) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} has no gradient")

    def release(self) -> None:
        """Drop what was saved for backward (torch frees its graph the same way)."""
        for name in list(vars(self)):
            if name != "inputs":
                setattr(self, name, None)
        self.released = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _child(value: Any) -> Any:
    return value.child if isinstance(value, AutogradTensor) else value


class AddBackward(GradFunc):
    def gradient(self, grad):
        a, b = self.inputs
        return _sum_to(grad, _shape_of(a)), _sum_to(grad, _shape_of(b))


class SubBackward(GradFunc):
    def gradient(self, grad):
        a, b = self.inputs
        return _sum_to(grad, _shape_of(a)), _sum_to(grad.neg(), _shape_of(b))


class NegBackward(GradFunc):
    def gradient(self, grad):
        return (grad.neg(),)


class MulBackward(GradFunc):
    """d(a*b)/da = b, d(a*b)/db = a: Beaver products of the gradient with the other operand
    (the seed's MulBackward)."""

    def __init__(self, a, b, a_child, b_child) -> None:
        super().__init__(a, b)
        self.a_child, self.b_child = a_child, b_child

    def gradient(self, grad):
        a, b = self.inputs
        ga = _sum_to(grad.mul(self.b_child), _shape_of(a)) if _needs(a) else None
        gb = _sum_to(grad.mul(self.a_child), _shape_of(b)) if _needs(b) else None
        return ga, gb


class MatmulBackward(GradFunc):
    """(a @ b): da = grad @ b^T, db = a^T @ grad (2-D operands)."""

    def __init__(self, a, b, a_child, b_child) -> None:
        super().__init__(a, b)
        self.a_child, self.b_child = a_child, b_child

    def gradient(self, grad):
        a, b = self.inputs
        ga = grad.matmul(self.b_child.t()) if _needs(a) else None
        gb = self.a_child.t().matmul(grad) if _needs(b) else None
        return ga, gb


class LinearBackward(GradFunc):
    """F.linear(x, W, b) = x @ W^T + b: dx = grad @ W, dW = grad^T @ x, db = grad summed over
    the batch (x: (*, in) flattened to 2-D)."""

    def __init__(self, x, weight, bias, x_child, w_child) -> None:
        super().__init__(x, weight, bias)
        self.x_child, self.w_child = x_child, w_child

    def gradient(self, grad):
        x, weight, bias = self.inputs
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = g2.matmul(self.w_child).reshape(*_shape_of(x)) if _needs(x) else None
        gw = g2.t().matmul(self.x_child.reshape(-1, self.x_child.shape[-1])) \
            if _needs(weight) else None
        gb = g2.sum(0) if _needs(bias) else None
        return gx, gw, gb


class DivBackward(GradFunc):
    def __init__(self, a, divisor) -> None:
        super().__init__(a)
        self.divisor = divisor

    def gradient(self, grad):
        return (grad.div(self.divisor),)


class PowBackward(GradFunc):
    """d(a**n)/da = n * a**(n-1) (n a public int >= 1)."""

    def __init__(self, a, exponent, a_child) -> None:
        super().__init__(a)
        self.exponent, self.a_child = exponent, a_child

    def gradient(self, grad):
        n = self.exponent
        if n == 1:
            return (grad,)
        base = self.a_child if n == 2 else self.a_child.pow(n - 1)
        return (grad.mul(base.mul(n)),)


class SumBackward(GradFunc):
    def __init__(self, a, dim, keepdim) -> None:
        super().__init__(a)
        self.dim, self.keepdim = dim, keepdim

    def gradient(self, grad):
        shape = _shape_of(self.inputs[0])
        if self.dim is not None and not self.keepdim:
            dims = self.dim if isinstance(self.dim, (tuple, list)) else (self.dim,)
            for d in sorted(d % len(shape) for d in dims):
                grad = grad.unsqueeze(d)
        return (_expand(grad, shape),)


class ReshapeBackward(GradFunc):
    def gradient(self, grad):
        return (grad.reshape(*_shape_of(self.inputs[0])),)


class TransposeBackward(GradFunc):
    def __init__(self, a, d0, d1) -> None:
        super().__init__(a)
        self.d0, self.d1 = d0, d1

    def gradient(self, grad):
        return (grad.transpose(self.d0, self.d1),)


class ReluBackward(GradFunc):
    """relu(x) = x * [x >= 0]; its gradient is grad * [x >= 0], with the forward's mask."""

    def __init__(self, a, mask) -> None:
        super().__init__(a)
        self.mask = mask

    def gradient(self, grad):
        return (_like(grad, _int_mul(grad.child, self.mask)),)


class Conv2dBackward(GradFunc):
    """conv2d(x, W, b) (groups 1, dilation 1), each gradient one conv2d protocol:
    dx = conv2d(dilate(grad, stride), W^T flipped, padding k - 1 - p) (conv_transpose2d),
    dW = conv2d(x^T, grad^T, padding p, dilation stride) cropped to the kernel, transposed
    (the batch is the contracted dimension), db = grad summed over batch and positions."""

    def __init__(self, x, weight, bias, x_child, w_child, stride, padding) -> None:
        super().__init__(x, weight, bias)
        self.x_child, self.w_child = x_child, w_child
        self.stride, self.padding = stride, padding

    def gradient(self, grad):
        x, weight, bias = self.inputs
        (s_h, s_w), (p_h, p_w) = self.stride, self.padding
        _, _, k_h, k_w = self.w_child.shape
        _, _, h, w = self.x_child.shape
        gx = gw = gb = None
        if _needs(x):
            extra = ((h + 2 * p_h - k_h) % s_h, (w + 2 * p_w - k_w) % s_w)
            kernel = _flip(self.w_child.transpose(0, 1), (2, 3))
            gx = _conv(_dilate(grad, self.stride, extra), kernel,
                       padding=(k_h - 1 - p_h, k_w - 1 - p_w))
        if _needs(weight):
            full = _conv(self.x_child.transpose(0, 1), grad.transpose(0, 1),
                         padding=self.padding, dilation=self.stride)
            gw = full[:, :, :k_h, :k_w].transpose(0, 1)
        if _needs(bias):
            gb = grad.sum(0).sum(1).sum(1)
        return gx, gw, gb


class AvgPool2dBackward(GradFunc):
    """Each input gets grad / divisor from every window it is in: a transposed window sum
    (the dilated gradient summed over kernel windows), local on shares, and one truncation."""

    def __init__(self, x, kernel, stride, padding, divisor) -> None:
        super().__init__(x)
        self.kernel, self.stride, self.padding, self.divisor = kernel, stride, padding, divisor

    def gradient(self, grad):
        (k_h, k_w), (s_h, s_w), (p_h, p_w) = self.kernel, self.stride, self.padding
        _, _, h, w = _shape_of(self.inputs[0])
        extra = ((h + 2 * p_h - k_h) % s_h, (w + 2 * p_w - k_w) % s_w)
        spread = _window_sum(_dilate(grad, self.stride, extra), self.kernel,
                             padding=(k_h - 1 - p_h, k_w - 1 - p_w))
        return (spread.div(self.divisor),)


class MaxPool2dBackward(GradFunc):
    """The gradient goes to the position of each window's maximum: a one-hot mask
    [index == j] (one batched equality test on the forward's shared argmax) times grad."""

    def __init__(self, x, kernel, indices) -> None:
        super().__init__(x)
        self.kernel, self.indices = kernel, indices

    def gradient(self, grad):
        k_h, k_w = self.kernel
        n, c, h, w = _shape_of(self.inputs[0])
        idx = self.indices.child.unsqueeze(-1)  # index * scale, fixed point
        positions = torch.arange(k_h * k_w, dtype=torch.int64) * self.indices.scale
        if isinstance(idx, AdditiveSharingTensor):
            mask = idx.eq(positions)
        else:
            mask = (idx == positions).to(torch.int64)
        g = _expand(grad.unsqueeze(-1), tuple(mask.shape))
        out_h, out_w = grad.shape[2], grad.shape[3]
        spread = _like(grad, _int_mul(g.child, mask))
        spread = spread.reshape(n, c, out_h, out_w, k_h, k_w).permute(0, 1, 2, 4, 3, 5)
        spread = spread.reshape(n, c, out_h * k_h, out_w * k_w)
        spread = _pad_end(_pad_end(spread, 2, h - out_h * k_h), 3, w - out_w * k_w)
        return (spread,)


class IdentityBackward(GradFunc):
    """refresh(): the same value with new shares."""

    def gradient(self, grad):
        return (grad,)


def _constant_operand(value: Any, like: FixedPrecisionTensor) -> "AutogradTensor":
    """A FixedPrecisionTensor or a public float tensor as an AutogradTensor that needs no
    gradient (encoded like `like`). Raises TypeError for anything else."""
    if isinstance(value, FixedPrecisionTensor):
        return AutogradTensor(value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return AutogradTensor(_public(like, value))
    raise TypeError(f"cannot combine an AutogradTensor with a {type(value).__name__} first "
                    f"operand: use a fixed-precision or a float tensor")


def _needs(value: Any) -> bool:
    return isinstance(value, AutogradTensor) and value.requires_grad


# -- metadata answered without dispatch ----------------------------------------------------------

def _plain(func: Callable, args: tuple, kwargs: dict) -> Any:
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


_LOCAL: dict[Any, Callable] = {}
for _attr in ("shape", "dtype", "device", "ndim", "is_leaf", "layout", "is_sparse", "is_cuda",
              "is_meta", "is_quantized", "is_nested", "is_mkldnn", "is_cpu", "names",
              "itemsize", "_version"):
    if hasattr(torch.Tensor, _attr):
        _LOCAL[getattr(torch.Tensor, _attr).__get__] = _plain
for _fn in (torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.nelement,
            torch.Tensor.ndimension, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
            torch.Tensor.element_size, torch.Tensor.__len__, torch.Tensor.is_contiguous,
            torch.Tensor.stride, torch.Tensor.get_device, torch.is_floating_point,
            torch.is_complex, torch.numel, torch.Tensor.__hash__):
    _LOCAL[_fn] = _plain


# -- the tensor ---------------------------------------------------------------------------------

class AutogradTensor(torch.Tensor):
    """PySyft's AutogradTensor: wrapper > AutogradTensor > FixedPrecisionTensor [> shares].

    `AutogradTensor(child, requires_grad=False)`: `child` a FixedPrecisionTensor (local or
    shared). Shape and dtype (the child's float dtype) are real, storage there is none; `.grad`
    is None or an AutogradTensor over a fixed-precision tensor shared like the value;
    `.grad_fn` the GradFunc that made it (None for a leaf). Raises TypeError for another child.
    """

    _fedmq_autograd = True

    @staticmethod
    def __new__(cls, child: Any, requires_grad: bool = False,
                grad_fn: GradFunc | None = None) -> "AutogradTensor":
        if not isinstance(child, FixedPrecisionTensor):
            raise TypeError(f"an AutogradTensor wraps a FixedPrecisionTensor (call "
                            f".fix_precision() first), got {type(child).__name__}")
        if requires_grad not in (True, False):
            raise TypeError(f"requires_grad must be True or False, got {requires_grad!r}")
        self = torch.Tensor._make_wrapper_subclass(cls, tuple(child.shape),
                                                   dtype=child.float_dtype, device="cpu")
        self.child = child
        self._fedmq_requires_grad = bool(requires_grad)
        self._fedmq_grad_fn = grad_fn
        self._fedmq_grad = None
        return self

    # -- autograd state ------------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._fedmq_requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> "AutogradTensor":
        if requires_grad not in (True, False):
            raise TypeError(f"requires_grad must be True or False, got {requires_grad!r}")
        if not requires_grad and self._fedmq_grad_fn is not None:
            raise RuntimeError("you can only change requires_grad flags of leaf variables: "
                               "use .detach()")
        self._fedmq_requires_grad = requires_grad
        return self

    @property
    def grad_fn(self) -> GradFunc | None:
        return self._fedmq_grad_fn

    @property
    def grad(self) -> "AutogradTensor | None":
        return self._fedmq_grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not None and not isinstance(value, AutogradTensor):
            raise TypeError(f"the gradient of an AutogradTensor is an AutogradTensor or None, "
                            f"got {type(value).__name__}")
        self._fedmq_grad = value

    @property
    def data(self) -> "AutogradTensor":
        return self.detach()

    def detach(self) -> "AutogradTensor":
        """The same value, outside the graph (requires_grad False)."""
        return AutogradTensor(self.child)

    @property
    def is_shared(self) -> bool:
        return self.child.is_shared

    # -- torch functions ---------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        local = _LOCAL.get(func)
        if local is not None:
            return local(func, args, kwargs)
        if func is torch.Tensor.__repr__ or func is torch.Tensor.__format__:
            return args[0].__repr__()
        name = _FUNCTIONS.get(func)
        if func is torch.isfinite:  # how FixedPrecisionTensor's encoding sees an operand
            raise TypeError("a FixedPrecisionTensor operator cannot take an AutogradTensor "
                            "operand: put the AutogradTensor first (w * x), or share x with "
                            "requires_grad=True too")
        if name is None:
            raise NotImplementedError(
                f"{getattr(func, '__name__', func)} is not supported on AutogradTensor "
                f"(fedmq.smpc.autograd supports {', '.join(sorted(set(_FUNCTIONS.values())))}); "
                f"an optimizer's step on shared parameters needs optimizer.fix_precision()")
        first = next((a for a in args if isinstance(a, AutogradTensor)), None)
        if first is not None and first is not args[0]:
            # F.linear(x, w) with x a FixedPrecisionTensor, torch.add(t, x) with t a float
            # tensor: the first operand becomes a constant of the graph
            args = (_constant_operand(args[0], first.child), *args[1:])
        if name == "relu":
            return args[0].relu()
        return getattr(args[0], name)(*args[1:], **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(f"internal error: aten op {func} reached an AutogradTensor "
                                  f"(it has no storage; its values are in .child)")

    # -- recording ---------------------------------------------------------------------------
    @staticmethod
    def _result(child: FixedPrecisionTensor, node: Callable[[], GradFunc], *inputs: Any
                ) -> "AutogradTensor":
        if torch.is_grad_enabled() and any(_needs(i) for i in inputs):
            return AutogradTensor(child, requires_grad=True, grad_fn=node())
        return AutogradTensor(child)

    # -- differentiable ops ------------------------------------------------------------------
    def add(self, other: Any) -> "AutogradTensor":
        out = self.child.add(_child(other))
        return self._result(out, lambda: AddBackward(self, other), self, other)

    def sub(self, other: Any) -> "AutogradTensor":
        out = self.child.sub(_child(other))
        return self._result(out, lambda: SubBackward(self, other), self, other)

    def rsub(self, other: Any) -> "AutogradTensor":
        out = self.child.rsub(_child(other))
        return self._result(out, lambda: SubBackward(other, self), self, other)

    def neg(self) -> "AutogradTensor":
        return self._result(self.child.neg(), lambda: NegBackward(self), self)

    def mul(self, other: Any) -> "AutogradTensor":
        a, b = self.child, _child(other)
        return self._result(a.mul(b), lambda: MulBackward(self, other, a, b), self, other)

    def matmul(self, other: Any) -> "AutogradTensor":
        a, b = self.child, _child(other)
        if _needs(self) or _needs(other):
            if a.dim() != 2 or len(_shape_of(b)) != 2:
                raise NotImplementedError("matmul with gradients takes 2-D operands: reshape "
                                          "them, or use F.linear")
        return self._result(a.matmul(b), lambda: MatmulBackward(self, other, a, b),
                            self, other)

    mm = matmul

    def rmatmul(self, other: Any) -> "AutogradTensor":
        if isinstance(other, AutogradTensor):
            return other.matmul(self)
        return AutogradTensor(_public(self.child, other)).matmul(self)

    def linear(self, weight: Any, bias: Any = None) -> "AutogradTensor":
        x, w = self.child, _child(weight)
        out = x.linear(w, _child(bias))
        return self._result(out, lambda: LinearBackward(self, weight, bias, x, w),
                            self, weight, bias)

    def conv2d(self, weight: Any, bias: Any = None, stride=1, padding=0, dilation=1,
               groups: int = 1) -> "AutogradTensor":
        """F.conv2d on fixed-precision values (the Beaver conv2d protocol when both are
        shared). With gradients: groups 1, dilation 1, int paddings below the kernel size."""
        x, w = self.child, _child(weight)
        out = x.conv2d(w, _child(bias), stride=stride, padding=padding, dilation=dilation,
                       groups=groups)
        if not (torch.is_grad_enabled() and any(_needs(i) for i in (self, weight, bias))):
            return AutogradTensor(out)
        if groups != 1 or _pair(dilation, "dilation") != (1, 1):
            raise NotImplementedError("conv2d with gradients takes groups=1 and dilation=1")
        stride_, padding_ = _pair(stride, "stride"), _pair(padding, "padding")
        k_h, k_w = w.shape[2], w.shape[3]
        if padding_[0] >= k_h or padding_[1] >= k_w:
            raise NotImplementedError("conv2d with gradients takes a padding below the "
                                      "kernel size")
        return self._result(out, lambda: Conv2dBackward(self, weight, bias, x, w, stride_,
                                                        padding_), self, weight, bias)

    def avg_pool2d(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                   count_include_pad: bool = True, divisor_override: int | None = None
                   ) -> "AutogradTensor":
        """F.avg_pool2d: window sums (a conv2d with a public kernel of ones, local on
        shares) divided by the window size (one truncation). ceil_mode=True and
        count_include_pad=False with padding are refused."""
        kernel = _pair(kernel_size, "kernel_size")
        stride_ = kernel if stride is None or stride == [] else _pair(stride, "stride")
        padding_ = _pair(padding, "padding")
        if ceil_mode or (not count_include_pad and padding_ != (0, 0)):
            raise NotImplementedError("avg_pool2d on fixed-precision values takes "
                                      "ceil_mode=False and counts the padding")
        if padding_[0] * 2 > kernel[0] or padding_[1] * 2 > kernel[1]:
            raise ValueError("pad should be at most half of effective kernel size")
        divisor = divisor_override if divisor_override is not None else kernel[0] * kernel[1]
        if type(divisor) is not int or divisor <= 0:
            raise ValueError(f"divisor_override must be a positive int, got {divisor!r}")
        out = _window_sum(self.child, kernel, stride=stride_, padding=padding_).div(divisor)
        return self._result(out, lambda: AvgPool2dBackward(self, kernel, stride_, padding_,
                                                           divisor), self)

    def max_pool2d(self, kernel_size, stride=None, padding=0, dilation=1,
                   ceil_mode: bool = False, return_indices: bool = False) -> "AutogradTensor":
        """F.max_pool2d over non-overlapping windows (stride = kernel size, the default; no
        padding, dilation 1, floor mode): the windows side by side, then the comparison
        protocol's max with argmax, kept for backward. return_indices=True is refused (the
        indices are secret)."""
        kernel = _pair(kernel_size, "kernel_size")
        stride_ = kernel if stride is None or stride == [] else _pair(stride, "stride")
        if stride_ != kernel or _pair(padding, "padding") != (0, 0) or \
                _pair(dilation, "dilation") != (1, 1) or ceil_mode:
            raise NotImplementedError("max_pool2d on fixed-precision values takes "
                                      "non-overlapping windows: stride = kernel_size, "
                                      "padding 0, dilation 1, ceil_mode=False")
        if return_indices:
            raise NotImplementedError("max_pool2d(return_indices=True): the indices of shared "
                                      "maxima are secret; use argmax on the values")
        n, c, h, w = self.child.shape
        k_h, k_w = kernel
        out_h, out_w = h // k_h, w // k_w
        x = self.child[:, :, :out_h * k_h, :out_w * k_w]
        windows = x.reshape(n, c, out_h, k_h, out_w, k_w).permute(0, 1, 2, 4, 3, 5)
        values, indices = windows.reshape(n, c, out_h, out_w, k_h * k_w).max(dim=-1)
        return self._result(values, lambda: MaxPool2dBackward(self, kernel, indices), self)

    def max_pool2d_with_indices(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("max_pool2d(return_indices=True): the indices of shared "
                                  "maxima are secret; use argmax on the values")

    def div(self, divisor: Any) -> "AutogradTensor":
        """Division by a public non-zero number (int: truncation; float: times 1/d)."""
        if isinstance(divisor, (AutogradTensor, FixedPrecisionTensor, torch.Tensor)):
            raise ValueError("an AutogradTensor can be divided by a public number only")
        return self._result(self.child.div(divisor), lambda: DivBackward(self, divisor), self)

    def pow(self, exponent: int) -> "AutogradTensor":
        if type(exponent) is not int or exponent < 1:
            raise ValueError(f"an AutogradTensor can be raised to a public int >= 1 only, got "
                             f"{exponent!r}")
        a = self.child
        out = a.mul(a) if exponent == 2 else a.pow(exponent)
        return self._result(out, lambda: PowBackward(self, exponent, a), self)

    def square(self) -> "AutogradTensor":
        return self.pow(2)

    def sum(self, dim=None, keepdim: bool = False) -> "AutogradTensor":
        out = self.child.sum(dim, keepdim)
        return self._result(out, lambda: SumBackward(self, dim, keepdim), self)

    def mean(self, dim=None, keepdim: bool = False) -> "AutogradTensor":
        count = self.numel() if dim is None else _count(self.child.shape, dim)
        return self.sum(dim, keepdim).div(count)

    def reshape(self, *shape) -> "AutogradTensor":
        return self._result(self.child.reshape(*shape), lambda: ReshapeBackward(self), self)

    def view(self, *shape) -> "AutogradTensor":
        return self._result(self.child.view(*shape), lambda: ReshapeBackward(self), self)

    def view_as(self, other: Any) -> "AutogradTensor":
        return self.reshape(*other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "AutogradTensor":
        return self._result(self.child.flatten(start_dim, end_dim),
                            lambda: ReshapeBackward(self), self)

    def transpose(self, d0: int, d1: int) -> "AutogradTensor":
        return self._result(self.child.transpose(d0, d1),
                            lambda: TransposeBackward(self, d0, d1), self)

    def t(self) -> "AutogradTensor":
        """Transpose a 2-D value (0-D and 1-D values are returned as they are, as torch.t)."""
        if self.dim() > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dimensions, got {self.dim()}")
        return self.transpose(0, 1) if self.dim() == 2 else self

    def relu(self, inplace: bool = False) -> "AutogradTensor":
        """x * [x >= 0]: one comparison and one Beaver product; the mask is kept for
        backward (gradient: grad * [x >= 0])."""
        mask = _nonneg_mask(self.child.child)
        out = _like(self.child, _int_mul(self.child.child, mask))
        return self._result(out, lambda: ReluBackward(self, mask), self)

    def refresh(self) -> "AutogradTensor":
        """The same value with fresh shares: every party adds its share of a new random
        sharing of zero (PySyft's `refresh`); local values are returned as a copy."""
        child = self.child.child
        if isinstance(child, AdditiveSharingTensor):
            zero = share_tensor(torch.zeros(tuple(child.shape), dtype=torch.int64),
                                *child.locations, crypto_provider=child.crypto_provider)
            out = _like(self.child, child.add(zero))
        else:
            out = _like(self.child, child.clone())
        return self._result(out, lambda: IdentityBackward(self), self)

    # -- not differentiable ----------------------------------------------------------------------
    def _constant(self, name: str, *args: Any, **kwargs: Any) -> "AutogradTensor":
        return AutogradTensor(getattr(self.child, name)(*(_child(a) for a in args), **kwargs))

    def eq(self, other): return self._constant("eq", other)
    def ne(self, other): return self._constant("ne", other)
    def gt(self, other): return self._constant("gt", other)
    def lt(self, other): return self._constant("lt", other)
    def ge(self, other): return self._constant("ge", other)
    def le(self, other): return self._constant("le", other)

    def argmax(self, dim=None, keepdim: bool = False) -> "AutogradTensor":
        return self._constant("argmax", dim, keepdim=keepdim)

    def argmin(self, dim=None, keepdim: bool = False) -> "AutogradTensor":
        return self._constant("argmin", dim, keepdim=keepdim)

    # -- backward ------------------------------------------------------------------------------
    def backward(self, gradient: Any = None, retain_graph: Any = None,
                 create_graph: bool = False, inputs: Any = None) -> None:
        """Back-propagate from this value (a single element unless `gradient` is given:
        a float tensor or a fixed-precision one of this shape) into `.grad` of every leaf
        that requires a gradient, adding to what is there (zero_grad() clears it).
        As torch, the graph is freed unless `retain_graph=True` (a second backward through
        it raises RuntimeError). `create_graph`/`inputs` are refused (no higher-order
        gradients here)."""
        if create_graph or inputs is not None:
            raise NotImplementedError("backward(create_graph=True / inputs=...) is not "
                                      "available on AutogradTensors")
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have "
                               "a grad_fn")
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            gradient = _public(self.child, torch.ones(tuple(self.shape)))
        elif isinstance(gradient, AutogradTensor):
            gradient = gradient.child
        elif isinstance(gradient, torch.Tensor):
            gradient = _public(self.child, gradient)
        order = _topological(self)
        grads: dict[int, FixedPrecisionTensor] = {id(self): gradient}
        for node in order:
            grad = grads.pop(id(node), None)
            if grad is None:
                continue
            if node.grad_fn is None:
                node.grad = AutogradTensor(grad) if node.grad is None else \
                    AutogradTensor(node.grad.child.add(grad))
                continue
            if node.grad_fn.released:
                raise RuntimeError("Trying to backward through the graph a second time: "
                                   "specify retain_graph=True the first time")
            for inp, g in zip(node.grad_fn.inputs, node.grad_fn.gradient(grad)):
                if g is None or not _needs(inp):
                    continue
                prev = grads.get(id(inp))
                grads[id(inp)] = g if prev is None else prev.add(g)
            if not retain_graph:
                node.grad_fn.release()

    # -- encoding and sharing ----------------------------------------------------------------
    def get(self) -> "AutogradTensor":
        """Reconstruct a shared child (deleting the shares); decode with float_precision()."""
        return AutogradTensor(self.child.get(), requires_grad=self.requires_grad
                              if self.grad_fn is None else False)

    def virtual_get(self) -> "AutogradTensor":
        return AutogradTensor(self.child.virtual_get())

    def copy(self) -> "AutogradTensor":
        return AutogradTensor(self.child.copy(), requires_grad=self.requires_grad
                              if self.grad_fn is None else False)

    def float_precision(self) -> torch.Tensor:
        """Decode (the value must be local: .get() it first) into a plain float tensor."""
        return self.child.float_precision()

    float_prec = float_precision

    def fix_precision(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("this tensor is already in fixed precision")

    fix_prec = fix_precision

    def share(self, *workers: Any, crypto_provider: Any = None, requires_grad: Any = None,
              **options: Any) -> "AutogradTensor":
        """Share a local fixed-precision value: a new leaf (requires_grad: this one's, unless
        given)."""
        keep = self.requires_grad if requires_grad is None else requires_grad
        shared = self.child.share(*workers, crypto_provider=crypto_provider, **options)
        return AutogradTensor(shared, requires_grad=keep)

    def item(self) -> Any:
        raise ValueError("an AutogradTensor holds fixed-precision values: "
                         ".get().float_precision().item()")

    def __repr__(self, *args: Any, **kwargs: Any) -> str:
        inner = repr(self.child).replace("(Wrapper)>", "", 1)
        return f"(Wrapper)>AutogradTensor>{inner}"

    def __format__(self, spec: str) -> str:
        return self.__repr__()

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        return bool(self.child)

    # -- operators ---------------------------------------------------------------------------
    __add__ = __radd__ = add
    __sub__ = sub
    __rsub__ = rsub
    __mul__ = __rmul__ = mul
    __matmul__ = matmul
    __rmatmul__ = rmatmul
    __truediv__ = div
    __pow__ = pow
    __neg__ = neg
    __gt__ = gt
    __lt__ = lt
    __ge__ = ge
    __le__ = le
    __eq__ = eq  # type: ignore[assignment]
    __ne__ = ne  # type: ignore[assignment]

    def __iadd__(self, other: Any) -> "AutogradTensor":
        return self.add(other)  # a new value, as `correct += ...` in the seed's test loop


def _count(shape: torch.Size, dim) -> int:
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    n = 1
    for d in dims:
        n *= shape[d]
    return n


def _topological(root: AutogradTensor) -> list:
    """Nodes reachable from `root` through grad_fn inputs, each after all nodes that use it
    (iterative depth-first search, so deep graphs do not hit the recursion limit)."""
    order: list = []
    seen: set[int] = set()
    stack: list = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if node.grad_fn is not None:
            for inp in node.grad_fn.inputs:
                if _needs(inp) and id(inp) not in seen:
                    stack.append((inp, False))
    order.reverse()
    return order


#: torch functions on AutogradTensors -> the method of the same meaning
_FUNCTIONS = {
    torch.add: "add", torch.Tensor.add: "add", torch.sub: "sub", torch.Tensor.sub: "sub",
    torch.mul: "mul", torch.Tensor.mul: "mul", torch.matmul: "matmul", torch.mm: "matmul",
    torch.Tensor.matmul: "matmul", torch.Tensor.mm: "matmul", torch.div: "div",
    torch.Tensor.div: "div", torch.true_divide: "div", torch.pow: "pow", torch.Tensor.pow: "pow",
    torch.square: "square", torch.neg: "neg", torch.sum: "sum", torch.mean: "mean",
    torch.reshape: "reshape", torch.flatten: "flatten", torch.t: "t",
    torch.transpose: "transpose", torch.relu: "relu", F.relu: "relu", F.linear: "linear",
    F.conv2d: "conv2d", torch.conv2d: "conv2d", F.avg_pool2d: "avg_pool2d",
    F.max_pool2d: "max_pool2d", F.max_pool2d_with_indices: "max_pool2d_with_indices",
    torch.eq: "eq", torch.ne: "ne", torch.gt: "gt", torch.lt: "lt", torch.ge: "ge",
    torch.le: "le", torch.argmax: "argmax", torch.argmin: "argmin",
    torch.Tensor.__radd__: "add", torch.Tensor.__rsub__: "rsub", torch.Tensor.__rmul__: "mul",
}

use_autograd_class(AutogradTensor)
