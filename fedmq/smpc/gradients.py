"""The gradient functions of fedmq.smpc.autograd (PySyft 0.2's gradients.py): one `GradFunc`
node per differentiable op, holding the op's inputs and what its backward needs, and the
fixed-precision helpers they share with the forward ops (built on FixedPrecisionTensor's and
AdditiveSharingTensor's public methods only).

A node's `gradient(grad)` takes the gradient of the op's output (a FixedPrecisionTensor, local
or shared) and returns one gradient per input (None where none is needed). What each costs is
listed in fedmq/smpc/autograd.py's docstring.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedmq.smpc.additive import AdditiveSharingTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor


def needs_grad(value: Any) -> bool:
    """Whether `value` is an AutogradTensor (autograd.py) that requires a gradient."""
    return getattr(type(value), "_fedmq_autograd", False) and value.requires_grad


# -- fixed-precision helpers (public methods of FixedPrecisionTensor only) ----------------------

def like(value: FixedPrecisionTensor, child: Any) -> FixedPrecisionTensor:
    """A FixedPrecisionTensor of `child` with `value`'s encoding."""
    return FixedPrecisionTensor(child, value.base, value.precision_fractional, value.float_dtype)


def public_value(value: FixedPrecisionTensor, tensor: torch.Tensor) -> FixedPrecisionTensor:
    """A public float tensor in `value`'s encoding (a local FixedPrecisionTensor)."""
    return FixedPrecisionTensor.from_tensor(tensor.to(value.float_dtype), value.base,
                                            value.precision_fractional)


def int_mul(a: Any, b: Any) -> Any:
    """Product of two integer children (local int64 tensors or shared), no rescaling."""
    if isinstance(a, AdditiveSharingTensor):
        return a.mul(b)
    if isinstance(b, AdditiveSharingTensor):
        return b.mul(a)
    return a * b


def positive_mask(child: Any) -> Any:
    """[x > 0] as 0/1 integers: shared (one comparison) if x is shared, else local (relu's
    mask: its gradient at exactly 0 is 0, as torch's)."""
    if isinstance(child, AdditiveSharingTensor):
        return child.gt(0)
    return (child > 0).to(torch.int64)


# -- exact division by a public int in the backward ---------------------------------------------
#
# The gradient of a mean over n values (or of `y / n`, n a public int) is grad / n. Encoded at
# the base-10 default of 3 digits, 1/n alone is 0.015 for n = 64 (4% low), 0.001 for n = 640
# and 0 past n = 2000: training by a mean loss would stop. So the backward carries the division
# as a pending public int k beside the gradient (the gradient's true value is grad / k): ops
# linear in the gradient (add, sum, reshape, relu's and max pooling's masks) pass it on, a
# division by an int multiplies it, and the next product divides by it inside its own
# truncation (FixedPrecisionTensor._product_div: one truncation by scale * k), which is exact
# to the last digit as the forward's `div(int)`. Anything else, and every leaf, applies it
# first (`settle`: the truncation protocol's division by a public int).

def settle(grad: FixedPrecisionTensor, k: int) -> FixedPrecisionTensor:
    """grad / k for the public positive int k (exact: one truncation; none for k = 1)."""
    return grad if k == 1 else grad.div(k)


def product_div(a: Any, op: str, b: Any, k: int, **kwargs: Any) -> FixedPrecisionTensor:
    """a op b / k (op "mul", "matmul" or "conv2d") for fixed-precision values or public
    tensors / numbers (at least one fixed-precision), the 1/k fused into the product's
    truncation (k = 1: the plain op)."""
    if k == 1 and op != "conv2d":
        return getattr(a, op)(b) if isinstance(a, FixedPrecisionTensor) else \
            getattr(b, "r" + op if op == "matmul" else op)(a)
    ref = a if isinstance(a, FixedPrecisionTensor) else b
    a = a if isinstance(a, FixedPrecisionTensor) else public_value(ref, torch.as_tensor(a))
    b = b if isinstance(b, FixedPrecisionTensor) else public_value(ref, torch.as_tensor(b))
    return a._product_div(op, b, k, **kwargs)


def expand_to(grad: FixedPrecisionTensor, shape: torch.Size) -> FixedPrecisionTensor:
    """Broadcast `grad` to `shape` (local on shares: adds a public zero tensor of `shape`)."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    return grad.add(torch.zeros(shape, dtype=grad.float_dtype))


def sum_to(grad: FixedPrecisionTensor, shape: torch.Size) -> FixedPrecisionTensor:
    """Undo broadcasting: sum `grad` down to `shape` (what torch's autograd does)."""
    shape = tuple(shape)
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for d, size in enumerate(shape):
        if size == 1 and grad.shape[d] != 1:
            grad = grad.sum(d, keepdim=True)
    return grad


def shape_of(value: Any) -> tuple:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def pair(value: Any, what: str) -> tuple[int, int]:
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
        return like(value, child.map("torch.flip", list(dims)))
    return like(value, torch.flip(child, list(dims)))


def _cat(values: list, dim: int) -> FixedPrecisionTensor:
    children = [v.child for v in values]
    if isinstance(children[0], AdditiveSharingTensor):
        return like(values[0], AdditiveSharingTensor.cat(children, dim))
    return like(values[0], torch.cat(children, dim))


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


def window_sum(value: FixedPrecisionTensor, kernel: tuple, **kwargs: Any
                ) -> FixedPrecisionTensor:
    """Sum over every kernel window, channel by channel: conv2d with a public kernel of
    integer ones (local on each share, no rescaling)."""
    channels = value.shape[1]
    ones = torch.ones(channels, 1, *kernel, dtype=torch.int64)
    child = value.child
    if isinstance(child, AdditiveSharingTensor):
        return like(value, child.conv2d(ones, None, groups=channels, **kwargs))
    return like(value, F.conv2d(child, ones, None, groups=channels, **kwargs))


def _conv(x: FixedPrecisionTensor, w: FixedPrecisionTensor, k: int = 1, stride=1,
          padding=0, dilation=1) -> FixedPrecisionTensor:
    """conv2d of two fixed-precision values divided by the public int k (fused into the
    product's truncation; a public input with a shared kernel is shared first, among the
    kernel's parties: the protocol takes shared inputs)."""
    if w.is_shared and not x.is_shared:
        x = x.share(*w.child.locations, crypto_provider=w.child.crypto_provider)
    return product_div(x, "conv2d", w, k, stride=stride, padding=padding, dilation=dilation,
                       groups=1)


# -- graph nodes ----------------------------------------------------------------------------------

class GradFunc:
    """A node of the graph: `inputs` (AutogradTensors or public values, in the op's argument
    order) and `gradient(grad)`, the gradients of the op's output with respect to each input
    (None where none is needed), as fixed-precision tensors."""

    #: set by backward(retain_graph=False): the node's saved values are dropped
    released = False

    def __init__(self, *inputs: Any) -> None:
        self.inputs = inputs

    #: the node's gradient is linear in grad with integer coefficients (a sum, a reshape,
    #: a 0/1 mask): a pending division (see `settle`) passes through it unchanged
    keeps_divisor = False

    def gradient(self, grad: FixedPrecisionTensor) -> tuple:
        raise NotImplementedError(f"{type(self).__name__} has no gradient")

    def gradient_div(self, grad: FixedPrecisionTensor, k: int) -> tuple:
        """The gradients of the inputs for the output's gradient grad / k (k a public
        positive int), and the public int they are still to be divided by. Nodes that fuse
        the division into a product override it."""
        if k == 1 or self.keeps_divisor:
            return self.gradient(grad), k
        return self.gradient(settle(grad, k)), 1

    def release(self) -> None:
        """Drop what was saved for backward (torch frees its graph the same way)."""
        for name in list(vars(self)):
            if name != "inputs":
                setattr(self, name, None)
        self.released = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class AddBackward(GradFunc):
    keeps_divisor = True

    def gradient(self, grad):
        a, b = self.inputs
        return sum_to(grad, shape_of(a)), sum_to(grad, shape_of(b))


class SubBackward(GradFunc):
    keeps_divisor = True

    def gradient(self, grad):
        a, b = self.inputs
        return sum_to(grad, shape_of(a)), sum_to(grad.neg(), shape_of(b))


class NegBackward(GradFunc):
    keeps_divisor = True

    def gradient(self, grad):
        return (grad.neg(),)


class MulBackward(GradFunc):
    """d(a*b)/da = b, d(a*b)/db = a: Beaver products of the gradient with the other operand
    (the seed's MulBackward)."""

    def __init__(self, a, b, a_child, b_child) -> None:
        super().__init__(a, b)
        self.a_child, self.b_child = a_child, b_child

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        a, b = self.inputs
        ga = sum_to(_times(grad, self.b_child, k), shape_of(a)) if needs_grad(a) else None
        gb = sum_to(_times(grad, self.a_child, k), shape_of(b)) if needs_grad(b) else None
        return (ga, gb), 1


def _times(grad: FixedPrecisionTensor, other: Any, k: int) -> FixedPrecisionTensor:
    """grad * other / k: a fixed-point `other` through `product_div` (one fused truncation),
    a public number or tensor through `times_public` (7 significant digits, not encoded at
    grad's precision, where 0.0004 would be 0; a Python int with k = 1: exact, no round)."""
    if isinstance(other, FixedPrecisionTensor):
        return product_div(grad, "mul", other, k)
    if k == 1:
        return grad.mul(other)
    return grad.times_public(other, k)


class MatmulBackward(GradFunc):
    """(a @ b): da = grad @ b^T, db = a^T @ grad (2-D operands)."""

    def __init__(self, a, b, a_child, b_child) -> None:
        super().__init__(a, b)
        self.a_child, self.b_child = a_child, b_child

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        a, b = self.inputs
        ga = product_div(grad, "matmul", self.b_child.t(), k) if needs_grad(a) else None
        gb = product_div(self.a_child.t(), "matmul", grad, k) if needs_grad(b) else None
        return (ga, gb), 1


class LinearBackward(GradFunc):
    """F.linear(x, W, b) = x @ W^T + b: dx = grad @ W, dW = grad^T @ x, db = grad summed over
    the batch (x: (*, in) flattened to 2-D)."""

    def __init__(self, x, weight, bias, x_child, w_child) -> None:
        super().__init__(x, weight, bias)
        self.x_child, self.w_child = x_child, w_child

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        x, weight, bias = self.inputs
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = product_div(g2, "matmul", self.w_child, k).reshape(*shape_of(x)) \
            if needs_grad(x) else None
        gw = product_div(g2.t(), "matmul", self.x_child.reshape(-1, self.x_child.shape[-1]),
                         k) if needs_grad(weight) else None
        gb = settle(g2.sum(0), k) if needs_grad(bias) else None
        return (gx, gw, gb), 1


class DivBackward(GradFunc):
    """d(a / n)/da = 1 / n for a public non-zero number n."""

    def __init__(self, a, divisor) -> None:
        super().__init__(a)
        self.divisor = divisor

    def gradient(self, grad):
        (g,), k = self.gradient_div(grad, 1)
        return (settle(g, k),)

    def gradient_div(self, grad, k):
        """A public int n (or a float with an integer value, as `loss / 64.0`): the pending
        division grows to k * |n| (exact, see `settle`); another float: grad * (1 / n) / k in
        one truncation (`times_public`, 7 significant digits of 1 / n)."""
        n = self.divisor
        if isinstance(n, float) and n.is_integer() and 0 < abs(n) < 2 ** 53:
            n = int(n)
        if type(n) is int and n != 0:
            return ((grad if n > 0 else grad.neg()),), k * abs(n)
        return (grad.times_public(1.0 / n, k),), 1


class PowBackward(GradFunc):
    """d(a**n)/da = n * a**(n-1) (n a public int >= 1)."""

    def __init__(self, a, exponent, a_child) -> None:
        super().__init__(a)
        self.exponent, self.a_child = exponent, a_child

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        n = self.exponent
        if n == 1:
            return (grad,), k
        base = self.a_child if n == 2 else self.a_child.pow(n - 1)
        return (product_div(grad, "mul", base.mul(n), k),), 1


class SumBackward(GradFunc):
    keeps_divisor = True

    def __init__(self, a, dim, keepdim) -> None:
        super().__init__(a)
        self.dim, self.keepdim = dim, keepdim

    def gradient(self, grad):
        shape = shape_of(self.inputs[0])
        if self.dim is not None and not self.keepdim:
            dims = self.dim if isinstance(self.dim, (tuple, list)) else (self.dim,)
            for d in sorted(d % len(shape) for d in dims):
                grad = grad.unsqueeze(d)
        return (expand_to(grad, shape),)


class ReshapeBackward(GradFunc):
    keeps_divisor = True

    def gradient(self, grad):
        return (grad.reshape(*shape_of(self.inputs[0])),)


def basic_index(index: Any, shape: tuple) -> list:
    """An index of ints and step-1 slices (x[0], x[1:3], x[:, 2]) as one (start, length) per
    indexed dimension (length None for an int: the dimension is removed). Raises
    NotImplementedError for other indices, IndexError for an int out of range."""
    items = index if isinstance(index, tuple) else (index,)
    simple = all(type(i) is int or (isinstance(i, slice) and i.step in (None, 1))
                 for i in items)
    if not simple or len(items) > len(shape):
        raise NotImplementedError(
            f"indexing with gradients takes ints and slices of step 1, one per leading "
            f"dimension (x[0], x[1:3], x[:, 2]), got {index!r}: index a value that needs no "
            f"gradient, or reshape first")
    out = []
    for d, i in enumerate(items):
        n = shape[d]
        if type(i) is int:
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for dimension {d} with size {n}")
            out.append((i % n, None))
        else:
            start, stop, _ = i.indices(n)
            out.append((start, max(stop - start, 0)))
    return out


def _zeros_along(value: FixedPrecisionTensor, dim: int, count: int) -> FixedPrecisionTensor:
    """Zeros shaped as `value` but `count` long along `dim`, encoded and shared as `value`
    (a zero slice of it, broadcast: local on shares)."""
    index = [slice(None)] * value.dim()
    index[dim] = slice(0, 1)
    shape = list(value.shape)
    shape[dim] = count
    return expand_to(value[tuple(index)].mul(0), torch.Size(shape))


class IndexBackward(GradFunc):
    """x[index] for ints and step-1 slices: the gradient is grad placed at the indexed
    positions among zeros (local on shares: zero slices concatenated around it)."""

    keeps_divisor = True

    def __init__(self, a, spans) -> None:
        super().__init__(a)
        self.spans = spans

    def gradient(self, grad):
        shape = shape_of(self.inputs[0])
        for d, (_, length) in enumerate(self.spans):
            if length is None:
                grad = grad.unsqueeze(d)
        for d, (start, length) in enumerate(self.spans):
            after = shape[d] - start - (1 if length is None else length)
            if grad.shape[d] == 0:
                raise NotImplementedError("the gradient of an empty slice is not computed")
            parts = ([_zeros_along(grad, d, start)] if start else []) + [grad] + \
                ([_zeros_along(grad, d, after)] if after else [])
            grad = _cat(parts, d) if len(parts) > 1 else grad
        return (grad,)


class TransposeBackward(GradFunc):
    keeps_divisor = True

    def __init__(self, a, d0, d1) -> None:
        super().__init__(a)
        self.d0, self.d1 = d0, d1

    def gradient(self, grad):
        return (grad.transpose(self.d0, self.d1),)


class ReluBackward(GradFunc):
    """relu(x) = x * [x > 0]; its gradient is grad * [x > 0] (0 at x = 0, as torch), with
    the forward's mask."""

    keeps_divisor = True

    def __init__(self, a, mask) -> None:
        super().__init__(a)
        self.mask = mask

    def gradient(self, grad):
        return (like(grad, int_mul(grad.child, self.mask)),)


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
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        x, weight, bias = self.inputs
        (s_h, s_w), (p_h, p_w) = self.stride, self.padding
        _, _, k_h, k_w = self.w_child.shape
        _, _, h, w = self.x_child.shape
        gx = gw = gb = None
        if needs_grad(x):
            extra = ((h + 2 * p_h - k_h) % s_h, (w + 2 * p_w - k_w) % s_w)
            kernel = _flip(self.w_child.transpose(0, 1), (2, 3))
            gx = _conv(_dilate(grad, self.stride, extra), kernel, k,
                       padding=(k_h - 1 - p_h, k_w - 1 - p_w))
        if needs_grad(weight):
            full = _conv(self.x_child.transpose(0, 1), grad.transpose(0, 1), k,
                         padding=self.padding, dilation=self.stride)
            gw = full[:, :, :k_h, :k_w].transpose(0, 1)
        if needs_grad(bias):
            gb = settle(grad.sum(0).sum(1).sum(1), k)
        return (gx, gw, gb), 1


class AvgPool2dBackward(GradFunc):
    """Each input gets grad / divisor from every window it is in: a transposed window sum
    (the dilated gradient summed over kernel windows), local on shares, and one truncation."""

    def __init__(self, x, kernel, stride, padding, divisor) -> None:
        super().__init__(x)
        self.kernel, self.stride, self.padding, self.divisor = kernel, stride, padding, divisor

    def gradient(self, grad):
        return (settle(*self.gradient_div(grad, 1)[0], self.divisor),)

    def gradient_div(self, grad, k):
        """The window sums are exact; the 1/divisor joins the pending division."""
        (k_h, k_w), (s_h, s_w), (p_h, p_w) = self.kernel, self.stride, self.padding
        _, _, h, w = shape_of(self.inputs[0])
        extra = ((h + 2 * p_h - k_h) % s_h, (w + 2 * p_w - k_w) % s_w)
        spread = window_sum(_dilate(grad, self.stride, extra), self.kernel,
                             padding=(k_h - 1 - p_h, k_w - 1 - p_w))
        return (spread,), k * self.divisor


class MaxPool2dBackward(GradFunc):
    """The gradient goes to the position of each window's maximum: a one-hot mask
    [index == j] (one batched equality test on the forward's shared argmax) times grad."""

    keeps_divisor = True

    def __init__(self, x, kernel, indices) -> None:
        super().__init__(x)
        self.kernel, self.indices = kernel, indices

    def gradient(self, grad):
        k_h, k_w = self.kernel
        n, c, h, w = shape_of(self.inputs[0])
        idx = self.indices.child.unsqueeze(-1)  # index * scale, fixed point
        positions = torch.arange(k_h * k_w, dtype=torch.int64) * self.indices.scale
        if isinstance(idx, AdditiveSharingTensor):
            mask = idx.eq(positions)
        else:
            mask = (idx == positions).to(torch.int64)
        g = expand_to(grad.unsqueeze(-1), tuple(mask.shape))
        out_h, out_w = grad.shape[2], grad.shape[3]
        spread = like(grad, int_mul(g.child, mask))
        spread = spread.reshape(n, c, out_h, out_w, k_h, k_w).permute(0, 1, 2, 4, 3, 5)
        spread = spread.reshape(n, c, out_h * k_h, out_w * k_w)
        spread = _pad_end(_pad_end(spread, 2, h - out_h * k_h), 3, w - out_w * k_w)
        return (spread,)


class IdentityBackward(GradFunc):
    """refresh(): the same value with new shares."""

    keeps_divisor = True

    def gradient(self, grad):
        return (grad,)


# -- non-linear functions: gradients from the forward's output (the approximation itself is
#    never differentiated: d f(x) = f'(x) dx with f' written in terms of f(x)) ----------------

class ExpBackward(GradFunc):
    """d e**x = e**x dx: one product with the forward's output."""

    def __init__(self, a, out) -> None:
        super().__init__(a)
        self.out = out

    def gradient(self, grad):
        return (grad.mul(self.out),)


class SigmoidBackward(GradFunc):
    """d sigmoid(x) = s (1 - s) dx, s the forward's output: two products."""

    def __init__(self, a, out) -> None:
        super().__init__(a)
        self.out = out

    def gradient(self, grad):
        return (grad.mul(self.out.mul(self.out.rsub(1))),)


class TanhBackward(GradFunc):
    """d tanh(x) = (1 - t**2) dx, t the forward's output: two products."""

    def __init__(self, a, out) -> None:
        super().__init__(a)
        self.out = out

    def gradient(self, grad):
        return (grad.mul(self.out.mul(self.out).rsub(1)),)


class ReciprocalBackward(GradFunc):
    """d (1/x) = -(1/x)**2 dx, 1/x the forward's output: two products."""

    def __init__(self, a, out) -> None:
        super().__init__(a)
        self.out = out

    def gradient(self, grad):
        return (grad.mul(self.out.mul(self.out)).neg(),)


class SoftmaxBackward(GradFunc):
    """y = softmax(x, dim): dx = y * (grad - sum(grad * y, dim)), two products."""

    def __init__(self, a, out, dim) -> None:
        super().__init__(a)
        self.out, self.dim = out, dim

    def gradient(self, grad):
        inner = grad.mul(self.out).sum(self.dim, keepdim=True)
        return (self.out.mul(grad.sub(expand_to(inner, tuple(grad.shape)))),)


class LogSoftmaxBackward(GradFunc):
    """y = log_softmax(x, dim): dx = grad - softmax(x) * sum(grad, dim), softmax(x) = e**y
    (exp of the forward's output, all <= 0: no max, no reciprocal) and one product."""

    def __init__(self, a, out, dim) -> None:
        super().__init__(a)
        self.out, self.dim = out, dim

    def gradient(self, grad):
        total = expand_to(grad.sum(self.dim, keepdim=True), tuple(grad.shape))
        return (grad.sub(self.out.exp().mul(total)),)


def _per_sample(grad: FixedPrecisionTensor, shape: tuple) -> FixedPrecisionTensor:
    """The loss's gradient (a scalar, or (N,) for reduction='none') broadcast to (N, C)."""
    if grad.dim() == 1:
        grad = grad.unsqueeze(1)
    return expand_to(grad, shape)


class NllLossBackward(GradFunc):
    """loss = -sum(onehot * logp) / n (n = N for 'mean', 1 for 'sum' and 'none'):
    d logp = -onehot * grad / n: local for a public one-hot, one product for a shared one
    (the division by n fused into its truncation)."""

    def __init__(self, logp, onehot, count) -> None:
        super().__init__(logp)
        self.onehot, self.count = onehot, count

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        g = _per_sample(grad, shape_of(self.inputs[0]))
        return (_scaled_product(self.onehot, g, self.count * k).neg(),), 1


class CrossEntropyBackward(GradFunc):
    """loss = nll_loss(log_softmax(x, 1), onehot): dx = (softmax(x) - onehot) * grad / n
    (n = N for 'mean', else 1), softmax(x) = e**logp from the forward's log_softmax: one exp
    and one product (the division by n fused into its truncation)."""

    def __init__(self, x, logp, onehot, count) -> None:
        super().__init__(x)
        self.logp, self.onehot, self.count = logp, onehot, count

    def gradient(self, grad):
        return self.gradient_div(grad, 1)[0]

    def gradient_div(self, grad, k):
        g = _per_sample(grad, shape_of(self.inputs[0]))
        diff = self.logp.exp().sub(self.onehot)
        return (_scaled_product(diff, g, self.count * k),), 1


def _scaled_product(a: Any, g: FixedPrecisionTensor, count: int) -> FixedPrecisionTensor:
    """a * g / count, a a FixedPrecisionTensor or a public int64 0/1 tensor (exact: g times
    0/1 integers, then one division)."""
    if isinstance(a, torch.Tensor):
        out = g.mul(a)
        return out if count == 1 else out.div(count)
    return a._mul_div(g, count) if count > 1 else a.mul(g)
