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
gradients.py; here autograd.py and gradients.py), the backward functions are written for the
protocol, not derived from it: the Beaver product is never differentiated; d(a*b)/db = a is one
more Beaver product. What each op's backward costs (shared operands):

    add, sub, neg, sum, view/reshape/flatten/view_as, t/transpose, refresh,
    indexing (x[0], x[1:3], x[:, 2])                                               local
    mul, matmul, linear      one Beaver product per input that needs a gradient
    conv2d                   one Beaver conv2d per input that needs a gradient
    avg_pool2d               none of its own (window sums, local; the 1/k as div below)
    max_pool2d               one batched equality test with the forward's argmax, one product
    pow (public int n)       one product (n - 1 more for n > 2 in the forward)
    relu                     one Beaver product with the forward's comparison mask [x > 0]
                             (gradient 0 at x = 0, as torch)
    div (public int n), mean none of its own: the 1/n is fused into the next product's
                             truncation (exact; see Precision); a public float: one truncation
    exp                      one product with the forward's output
    sigmoid, tanh            two products (s (1 - s), 1 - t**2 from the output)
    reciprocal               two products (-(1/x)**2 from the output)
    softmax                  two products: y * (grad - sum(grad * y))
    log_softmax              one exp of the output (softmax = e**y) and one product
    nll_loss                 public class indices: local (one truncation for "mean");
                             a shared one-hot target: one product (the 1/N fused into it)
    cross_entropy            one exp of the forward's log_softmax and one product:
                             (softmax - onehot) * grad / N, the 1/N fused into the product

Differentiable ops: add, sub, rsub, neg, mul, matmul/mm/@ (2-D @ 2-D; 1-D or N-D @ 1-D or 2-D
through reshapes, as torch.matmul; a batched second operand raises NotImplementedError),
F.linear, indexing by ints and step-1 slices (other indices need no gradient), div and `/` (by a
public number or tensor, or by a fixed-precision value: times its `reciprocal`), rdiv, pow and
`**` by a public int >= 1, square, sum, mean, view, reshape, view_as, flatten, t, transpose,
F.relu/relu, F.conv2d (groups 1, dilation 1), F.avg_pool2d, F.max_pool2d (non-overlapping
windows; both on (N, C, H, W) and unbatched (C, H, W)), F.mse_loss/nn.MSELoss, exp, sigmoid,
tanh, reciprocal, softmax, log_softmax (F., torch. and method forms), F.nll_loss/nn.NLLLoss,
F.cross_entropy/nn.CrossEntropyLoss, refresh, F.batch_norm/nn.BatchNorm* in eval mode with
public running statistics and F.dropout/nn.Dropout in eval mode (the identity; layers.py). The
non-linear functions are computed by approximations.py (CrypTen's approximations; ranges there)
and never differentiated through: each backward is the closed-form derivative written with
the forward's output. Not
differentiable (their results never require a gradient): comparisons (eq ne gt lt ge le),
argmax, argmin. Anything else raises NotImplementedError naming the op. Under `torch.no_grad()`
(or on values that require no gradient) every op above runs as on a FixedPrecisionTensor, the
non-linear ones included (an evaluation loop ending in F.log_softmax on a model shared with
requires_grad=True).

Classification losses (`nll_loss`, `cross_entropy`): scores (N, C); the target is public class
indices (int64, (N,)) or a one-hot / probability matrix (N, C), public or fixed-precision
(shared). Secret labels are shared one-hot (shared indices would cost C equality tests per
sample); the target gets no gradient; weight, ignore_index hits and label smoothing are
refused. At the seed's default precision (base 10, 3 digits) the loss is within a few 1e-3 of
torch's and every gradient entry within one unit in the last place (1e-3) for logits up to
+-30 (measured, N = 8 and 64, C = 10; log_softmax's documented range is [-20, 20]): with
N = 64 the largest entries, ~1/64, are ~6% off and entries below 1e-3 are lost, which SGD
tolerates (tests/test_smpc_cross_entropy.py trains a small MLP to plaintext's accuracy). Two
digits are too few for batches of 64 (an error of the gradient's size); four digits give
1e-4.

Operands: AutogradTensors, FixedPrecisionTensors (local or shared) and public numbers, float
or integer tensors (constants of the graph), in either order: a torch function or an
operator with a fixed-precision or plain operand first (`F.linear(x_fp, w)`,
`torch.add(t, w)`, `x_fp * w`, `t / w`, `x_fp < w`) makes that operand a constant of w's graph
(FixedPrecisionTensor's operators hand an AutogradTensor operand over to this class); the
result tracks gradients when either side requires one. `@` with a number raises TypeError (as
torch.matmul). `x += y`, `-=`, `*=`, `/=` rebind x to a new value. `torch.no_grad()` records
nothing; backward frees the graph unless `retain_graph=True`, as torch.

Security (semi-honest, as the protocols below): the graph and the gradient functions live on
the coordinator, which never holds a share; gradients of shared values are computed by the same
protocols as the forward. `refresh()` adds a fresh additive sharing of zero that the
coordinator deals (PySyft's refresh): each party's new share is uniform and independent of its
old one, so a party cannot link the two; the coordinator, which knows the zero sharing, holds
no share of the value.

Precision: gradients are fixed point with the values' base and precision_fractional, and every
product is rescaled by the truncation protocol (at most one unit in the last place off), so
gradients match plaintext to about 10**-precision_fractional per product in the chain.
A division by a public int n (mean, `loss / batch_size`, F.mse_loss's and the classification
losses' "mean", avg_pool2d's 1/k) is exact in the forward (the truncation protocol divides by
n) and in the backward, where 1/n itself is not representable (at 3 digits 1/64 is 0.015, 4%
low, and 1/n is 0 past n = 2000, which stopped training by a mean loss): the backward keeps the
division pending beside the gradient (value = g / k, k a public int) through the ops linear in
the gradient and fuses it into the next product's truncation (FixedPrecisionTensor.
_product_div: one truncation by scale * k), or applies it by the truncation protocol at a
leaf or before another op. The gradient of F.mse_loss (mean) over 3 000 values is then within
1e-3 of torch's (gradients.py, `settle`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from fedmq.smpc.additive import AdditiveSharingTensor, share_tensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor, use_autograd_class
from fedmq.smpc.layers import LAYERS
from fedmq.smpc.gradients import (
    AddBackward, AvgPool2dBackward, Conv2dBackward, CrossEntropyBackward, DivBackward,
    ExpBackward, GradFunc, IdentityBackward, IndexBackward, LinearBackward, LogSoftmaxBackward,
    MatmulBackward, MaxPool2dBackward, MulBackward, NegBackward, NllLossBackward, PowBackward,
    ReciprocalBackward, ReluBackward, ReshapeBackward, SigmoidBackward, SoftmaxBackward,
    SubBackward, SumBackward, TanhBackward, TransposeBackward, int_mul, like, needs_grad,
    basic_index, pair, positive_mask, public_value, settle, shape_of, window_sum)


def _child(value: Any) -> Any:
    return value.child if isinstance(value, AutogradTensor) else value


def _constant_operand(value: Any, like: FixedPrecisionTensor) -> "AutogradTensor":
    """A FixedPrecisionTensor or a public real tensor as an AutogradTensor that needs no
    gradient (encoded like `like`). Raises TypeError for anything else."""
    if isinstance(value, FixedPrecisionTensor):
        return AutogradTensor(value)
    if isinstance(value, torch.Tensor) and not value.is_complex() and value.dtype != torch.bool:
        return AutogradTensor(public_value(like, value))  # an integer tensor: its values
    raise TypeError(f"cannot combine an AutogradTensor with a {type(value).__name__} first "
                    f"operand: use a fixed-precision tensor or a real (float or integer) "
                    f"tensor")


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
        layer = LAYERS.get(func)  # F.dropout, F.batch_norm in eval mode (layers.py)
        if layer is not None:
            return layer(*args, **kwargs)
        name = _FUNCTIONS.get(func)
        if func is torch.isfinite:  # how FixedPrecisionTensor's encoding sees an operand
            raise TypeError("this FixedPrecisionTensor method cannot take an AutogradTensor "
                            "operand (its operators + - * @ / and comparisons can): put the "
                            "AutogradTensor first, or wrap x in AutogradTensor(x)")
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
        if torch.is_grad_enabled() and any(needs_grad(i) for i in inputs):
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
        _check_matmul_operand(other)
        a, b = self.child, _child(other)
        if (needs_grad(self) or needs_grad(other)) and (a.dim() != 2 or len(shape_of(b)) != 2):
            return self._matmul_as_2d(other)
        return self._result(a.matmul(b), lambda: MatmulBackward(self, other, a, b),
                            self, other)

    mm = matmul

    def _matmul_as_2d(self, other: Any) -> "AutogradTensor":
        """torch.matmul's 1-D and batched-first-operand cases with gradients, as one 2-D
        product between reshapes (which carry the gradients back): self (k,) or (*, n, k),
        other (k,) or (k, m). A batched (3-D or more) second operand raises
        NotImplementedError."""
        b_dim = len(shape_of(other))
        if b_dim > 2 or self.dim() == 0 or b_dim == 0:
            raise NotImplementedError(
                f"matmul with gradients takes a first operand of 1 or more dimensions and a "
                f"1-D or 2-D second operand (shapes {tuple(self.shape)} @ "
                f"{tuple(shape_of(other))}): 1-D @ 2-D, 2-D @ 1-D, N-D @ 2-D and 1-D @ 1-D "
                f"work; loop over the batch of a batched second operand")
        if self.shape[-1] != shape_of(other)[0]:
            raise RuntimeError(f"matmul: shapes {tuple(self.shape)} and "
                               f"{tuple(shape_of(other))} cannot be multiplied")
        rhs = other.reshape(-1, 1) if b_dim == 1 else other
        out = self.reshape(-1, self.shape[-1]).matmul(rhs)
        shape = tuple(self.shape[:-1]) + ((shape_of(other)[-1],) if b_dim == 2 else ())
        return out.reshape(*shape) if shape else out.reshape(1).sum()

    def rmatmul(self, other: Any) -> "AutogradTensor":
        _check_matmul_operand(other)
        if isinstance(other, AutogradTensor):
            return other.matmul(self)
        if isinstance(other, FixedPrecisionTensor):
            return AutogradTensor(other).matmul(self)
        return AutogradTensor(public_value(self.child, other)).matmul(self)

    def linear(self, weight: Any, bias: Any = None) -> "AutogradTensor":
        x, w = self.child, _child(weight)
        out = x.linear(w, _child(bias))
        return self._result(out, lambda: LinearBackward(self, weight, bias, x, w),
                            self, weight, bias)

    def conv2d(self, weight: Any, bias: Any = None, stride=1, padding=0, dilation=1,
               groups: int = 1) -> "AutogradTensor":
        """F.conv2d on fixed-precision values (the Beaver conv2d protocol when both are
        shared). With gradients: groups 1, dilation 1, int paddings below the kernel size.
        An unbatched (C, H, W) input gives (C_out, H', W'), as torch (found by review)."""
        if self.dim() == 3:  # a batch of one, through reshape (differentiable)
            out = self.reshape(1, *self.shape).conv2d(weight, bias, stride, padding, dilation,
                                                      groups)
            return out.reshape(*out.shape[1:])
        x, w = self.child, _child(weight)
        out = x.conv2d(w, _child(bias), stride=stride, padding=padding, dilation=dilation,
                       groups=groups)
        if not (torch.is_grad_enabled() and any(needs_grad(i) for i in (self, weight, bias))):
            return AutogradTensor(out)
        if groups != 1 or pair(dilation, "dilation") != (1, 1):
            raise NotImplementedError("conv2d with gradients takes groups=1 and dilation=1")
        stride_, padding_ = pair(stride, "stride"), pair(padding, "padding")
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
        if self.dim() == 3:  # unbatched (C, H, W), as torch: a batch of one
            out = self.reshape(1, *self.shape).avg_pool2d(
                kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
            return out.reshape(*out.shape[1:])
        kernel = pair(kernel_size, "kernel_size")
        stride_ = kernel if stride is None or stride == [] else pair(stride, "stride")
        padding_ = pair(padding, "padding")
        if ceil_mode or (not count_include_pad and padding_ != (0, 0)):
            raise NotImplementedError("avg_pool2d on fixed-precision values takes "
                                      "ceil_mode=False and counts the padding")
        if padding_[0] * 2 > kernel[0] or padding_[1] * 2 > kernel[1]:
            raise ValueError("pad should be at most half of effective kernel size")
        divisor = divisor_override if divisor_override is not None else kernel[0] * kernel[1]
        if type(divisor) is not int or divisor <= 0:
            raise ValueError(f"divisor_override must be a positive int, got {divisor!r}")
        out = window_sum(self.child, kernel, stride=stride_, padding=padding_).div(divisor)
        return self._result(out, lambda: AvgPool2dBackward(self, kernel, stride_, padding_,
                                                           divisor), self)

    def max_pool2d(self, kernel_size, stride=None, padding=0, dilation=1,
                   ceil_mode: bool = False, return_indices: bool = False) -> "AutogradTensor":
        """F.max_pool2d over non-overlapping windows (stride = kernel size, the default; no
        padding, dilation 1, floor mode): the windows side by side, then the comparison
        protocol's max with argmax, kept for backward. return_indices=True is refused (the
        indices are secret)."""
        if self.dim() == 3:  # unbatched (C, H, W), as torch: a batch of one
            out = self.reshape(1, *self.shape).max_pool2d(kernel_size, stride, padding,
                                                          dilation, ceil_mode, return_indices)
            return out.reshape(*out.shape[1:])
        kernel = pair(kernel_size, "kernel_size")
        stride_ = kernel if stride is None or stride == [] else pair(stride, "stride")
        if stride_ != kernel or pair(padding, "padding") != (0, 0) or \
                pair(dilation, "dilation") != (1, 1) or ceil_mode:
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
        """self / divisor.

        * a public non-zero number (int, or a float with an integer value: one truncation;
          another float: times 1/d to 7 significant digits, FixedPrecisionTensor.times_public)
          or real tensor (times 1/d, the same way; zeros raise ValueError): gradient
          grad / divisor, computed the same way (gradients.DivBackward, MulBackward);
        * an AutogradTensor or FixedPrecisionTensor (local or shared): self * (1/divisor) with
          `reciprocal` (approximations.reciprocal: |divisor| in [0.1, 1000]), so both
          operands get gradients (d(a/b) = da / b - a db / b**2) through MulBackward and
          ReciprocalBackward.
        An integer tensor divisor is used as its float values."""
        if isinstance(divisor, (AutogradTensor, FixedPrecisionTensor)):
            other = divisor if isinstance(divisor, AutogradTensor) else AutogradTensor(divisor)
            return self.mul(other.reciprocal())
        if isinstance(divisor, torch.Tensor):
            if divisor.is_complex() or divisor.dtype == torch.bool:
                raise ValueError(f"an AutogradTensor divides by numbers, real tensors and "
                                 f"fixed-precision values, got a {divisor.dtype} tensor")
            if not bool(divisor.ne(0).all()):
                raise ValueError("division of an AutogradTensor by zero")
            return self.mul(1.0 / divisor.double())
        if type(divisor) not in (int, float):
            raise ValueError(f"an AutogradTensor divides by numbers, real tensors and "
                             f"fixed-precision values, got {type(divisor).__name__}")
        return self._result(self.child.div(divisor), lambda: DivBackward(self, divisor), self)

    def rdiv(self, other: Any) -> "AutogradTensor":
        """other / self for a public number or tensor, or a FixedPrecisionTensor, `other`:
        other * (1/self) (`reciprocal`: |self| in [0.1, 1000])."""
        if isinstance(other, FixedPrecisionTensor):
            return AutogradTensor(other).mul(self.reciprocal())
        return self.reciprocal().mul(other)

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

    def __getitem__(self, index: Any) -> "AutogradTensor":
        """x[index]: with gradients for ints and step-1 slices (x[0], x[1:3], x[:, 2];
        gradient: grad among zeros, local); any index the child takes when no gradient is
        needed (NotImplementedError otherwise)."""
        if isinstance(index, AutogradTensor):
            raise TypeError("an AutogradTensor cannot index: use a public index")
        if not (torch.is_grad_enabled() and self.requires_grad):
            return AutogradTensor(self.child[index])
        spans = basic_index(index, tuple(self.shape))
        return self._result(self.child[index], lambda: IndexBackward(self, spans), self)

    def transpose(self, d0: int, d1: int) -> "AutogradTensor":
        return self._result(self.child.transpose(d0, d1),
                            lambda: TransposeBackward(self, d0, d1), self)

    def t(self) -> "AutogradTensor":
        """Transpose a 2-D value (0-D and 1-D values are returned as they are, as torch.t)."""
        if self.dim() > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dimensions, got {self.dim()}")
        return self.transpose(0, 1) if self.dim() == 2 else self

    def relu(self, inplace: bool = False) -> "AutogradTensor":
        """x * [x > 0]: one comparison and one Beaver product; the mask is kept for
        backward (gradient: grad * [x > 0], 0 at x = 0 as torch's)."""
        mask = positive_mask(self.child.child)
        out = like(self.child, int_mul(self.child.child, mask))
        return self._result(out, lambda: ReluBackward(self, mask), self)

    def mse_loss(self, target: Any, size_average: Any = None, reduce: Any = None,
                 reduction: str = "mean", weight: Any = None) -> "AutogradTensor":
        """F.mse_loss / nn.MSELoss: ((self - target) ** 2) averaged ("mean"), summed ("sum")
        or kept ("none"). The legacy size_average/reduce and `weight` are refused."""
        if size_average is not None or reduce is not None or weight is not None:
            raise ValueError("mse_loss on fixed-precision values takes reduction= only (not "
                             "size_average, reduce or weight)")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        other = target if isinstance(target, AutogradTensor) else \
            _constant_operand(target, self.child)
        squares = self.sub(other).pow(2)
        return squares if reduction == "none" else getattr(squares, reduction)()

    def refresh(self) -> "AutogradTensor":
        """The same value with fresh shares: every party adds its share of a new random
        sharing of zero (PySyft's `refresh`); local values are returned as a copy."""
        child = self.child.child
        if isinstance(child, AdditiveSharingTensor):
            zero = share_tensor(torch.zeros(tuple(child.shape), dtype=torch.int64),
                                *child.locations, crypto_provider=child.crypto_provider)
            out = like(self.child, child.add(zero))
        else:
            out = like(self.child, child.clone())
        return self._result(out, lambda: IdentityBackward(self), self)

    # -- non-linear functions (approximations.py) and their gradients from their outputs --------
    def exp(self) -> "AutogradTensor":
        """e**x (approximations.exp); gradient grad * e**x (one product)."""
        out = self.child.exp()
        return self._result(out, lambda: ExpBackward(self, out), self)

    def sigmoid(self) -> "AutogradTensor":
        """1 / (1 + e**-x) (approximations.sigmoid); gradient grad * s * (1 - s)."""
        out = self.child.sigmoid()
        return self._result(out, lambda: SigmoidBackward(self, out), self)

    def tanh(self) -> "AutogradTensor":
        """tanh (approximations.tanh); gradient grad * (1 - t**2)."""
        out = self.child.tanh()
        return self._result(out, lambda: TanhBackward(self, out), self)

    def reciprocal(self) -> "AutogradTensor":
        """1/x (approximations.reciprocal: |x| in [0.1, 1000]); gradient -grad / x**2 as
        -grad * (1/x)**2."""
        out = self.child.reciprocal()
        return self._result(out, lambda: ReciprocalBackward(self, out), self)

    def softmax(self, dim: Any = None, _stacklevel: int = 3, dtype: Any = None
                ) -> "AutogradTensor":
        """F.softmax (approximations.softmax: logits in [-20, 20]); gradient
        y * (grad - sum(grad * y, dim)) from the output y."""
        out = self.child.softmax(dim, dtype=dtype)
        return self._result(out, lambda: SoftmaxBackward(self, out, dim), self)

    def log_softmax(self, dim: Any = None, _stacklevel: int = 3, dtype: Any = None
                    ) -> "AutogradTensor":
        """F.log_softmax (approximations.log_softmax: logits in [-20, 20], at most 200 entries
        along dim); gradient grad - e**y * sum(grad, dim) from the output y."""
        out = self.child.log_softmax(dim, dtype=dtype)
        return self._result(out, lambda: LogSoftmaxBackward(self, out, dim), self)

    # -- classification losses -------------------------------------------------------------------
    def nll_loss(self, target: Any, weight: Any = None, size_average: Any = None,
                 ignore_index: int = -100, reduce: Any = None, reduction: str = "mean"
                 ) -> "AutogradTensor":
        """F.nll_loss / nn.NLLLoss of log-probabilities self (N, C): -logp[i, target_i]
        averaged over the batch ("mean"), summed ("sum") or per sample ("none", shape (N,)).
        `target` (see `one_hot_target`): public class indices (int64, (N,)), or a one-hot /
        probability matrix (N, C), public float or fixed-precision (shared), which torch's
        nll_loss does not take but a secret label needs. Gradient: -onehot * grad / N (local
        for public targets, one product for shared ones). weight, label smoothing and
        ignore_index hits are refused (ValueError); the target gets no gradient."""
        _check_loss_options("nll_loss", weight, size_average, reduce, reduction)
        onehot = one_hot_target(target, self, ignore_index)
        picked = self.child.mul(onehot)  # public int64 one-hot: local and exact
        count = self.shape[0] if reduction == "mean" else 1
        out = _reduce(picked.sum(1).neg(), reduction)
        return self._result(out, lambda: NllLossBackward(self, onehot, count), self)

    def cross_entropy(self, target: Any, weight: Any = None, size_average: Any = None,
                      ignore_index: int = -100, reduce: Any = None, reduction: str = "mean",
                      label_smoothing: float = 0.0) -> "AutogradTensor":
        """F.cross_entropy / nn.CrossEntropyLoss of logits self (N, C): nll_loss of
        log_softmax(self, 1) (approximations.log_softmax: logits in [-20, 20], C <= 200), with
        the targets of `nll_loss`. The backward is the closed form (softmax - onehot) * grad / N
        (softmax = e**log_softmax: one exp and one product; the approximation is never
        differentiated). reduction "mean", "sum" or "none"; weight and label_smoothing > 0
        are refused (ValueError)."""
        _check_loss_options("cross_entropy", weight, size_average, reduce, reduction)
        if label_smoothing != 0.0:
            raise ValueError(f"cross_entropy on fixed-precision values takes "
                             f"label_smoothing=0.0, got {label_smoothing!r}")
        if self.dim() != 2:
            raise ValueError(f"cross_entropy on fixed-precision values takes logits of shape "
                             f"(N, C), got {tuple(self.shape)}")
        onehot = one_hot_target(target, self, ignore_index)
        logp = self.child.log_softmax(1)
        count = self.shape[0] if reduction == "mean" else 1
        out = _reduce(logp.mul(onehot).sum(1).neg(), reduction)
        return self._result(out, lambda: CrossEntropyBackward(self, logp, onehot, count), self)

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
            gradient = public_value(self.child, torch.ones(tuple(self.shape)))
        elif isinstance(gradient, AutogradTensor):
            gradient = gradient.child
        elif isinstance(gradient, torch.Tensor):
            gradient = public_value(self.child, gradient)
        order = _topological(self)
        # each pending gradient is (g, k): its value is g / k, k a public int (gradients.py,
        # `settle`: the 1/n of a mean is applied exactly, inside the next product)
        grads: dict[int, tuple] = {id(self): (gradient, 1)}
        for node in order:
            entry = grads.pop(id(node), None)
            if entry is None:
                continue
            grad, k = entry
            if node.grad_fn is None:
                grad = settle(grad, k)
                node.grad = AutogradTensor(grad) if node.grad is None else \
                    AutogradTensor(node.grad.child.add(grad))
                continue
            if node.grad_fn.released:
                raise RuntimeError("Trying to backward through the graph a second time: "
                                   "specify retain_graph=True the first time")
            outs, k_out = node.grad_fn.gradient_div(grad, k)
            for inp, g in zip(node.grad_fn.inputs, outs):
                if g is None or not needs_grad(inp):
                    continue
                prev = grads.get(id(inp))
                grads[id(inp)] = (g, k_out) if prev is None else _accumulate(prev, (g, k_out))
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
    __rtruediv__ = rdiv
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

    def __isub__(self, other: Any) -> "AutogradTensor":
        return self.sub(other)  # x -= y, x *= y, x /= y rebind x to a new value (as +=)

    def __imul__(self, other: Any) -> "AutogradTensor":
        return self.mul(other)

    def __itruediv__(self, other: Any) -> "AutogradTensor":
        return self.div(other)


def _accumulate(a: tuple, b: tuple) -> tuple:
    """The sum of two pending gradients (g, k) (value g / k): exact when both wait for the
    same k, else each divided first."""
    (ga, ka), (gb, kb) = a, b
    if ka == kb:
        return ga.add(gb), ka
    return settle(ga, ka).add(settle(gb, kb)), 1


def _count(shape: torch.Size, dim) -> int:
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    n = 1
    for d in dims:
        n *= shape[d]
    return n


def _check_matmul_operand(other: Any) -> None:
    if not isinstance(other, torch.Tensor) and not isinstance(other, FixedPrecisionTensor):
        raise TypeError(f"matmul takes tensors of at least one dimension (as torch.matmul), "
                        f"got {type(other).__name__}: use * to scale by a number")


def _check_loss_options(name: str, weight: Any, size_average: Any, reduce: Any,
                        reduction: str) -> None:
    if weight is not None:
        raise ValueError(f"{name} on fixed-precision values takes weight=None (class weights "
                         f"are not applied)")
    if size_average is not None or reduce is not None:
        raise ValueError(f"{name} on fixed-precision values takes reduction= only (not the "
                         f"legacy size_average or reduce)")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _reduce(losses: FixedPrecisionTensor, reduction: str) -> FixedPrecisionTensor:
    """Per-sample losses (N,) -> their mean (one truncation), sum (local) or themselves."""
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum().div(losses.shape[0])


def one_hot_target(target: Any, scores: "AutogradTensor", ignore_index: int = -100) -> Any:
    """The target of a classification loss on scores (N, C), as what multiplies them:

    * public class indices (an integer torch tensor of shape (N,), values in [0, C)): a
      public int64 0/1 matrix (N, C) (products with it are local and exact);
    * a one-hot or class-probability matrix (N, C): a public float tensor, a
      FixedPrecisionTensor (local or shared, same base and precision as the scores) or an
      AutogradTensor over one (used as a constant: the target gets no gradient): a
      FixedPrecisionTensor.

    Secret labels must be one-hot encoded before sharing (shared class indices would need C
    equality tests per sample). Raises ValueError for other shapes, indices out of range or
    equal to ignore_index, and TypeError for other types."""
    n, c = tuple(scores.shape)[0], tuple(scores.shape)[-1]
    if scores.dim() != 2:
        raise ValueError(f"classification losses on fixed-precision values take scores of "
                         f"shape (N, C), got {tuple(scores.shape)}")
    value = _child(target)
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"class indices must be an integer tensor, got {value.dtype}")
        if tuple(value.shape) != (n,):
            raise ValueError(f"class indices must have shape ({n},) for scores of shape "
                             f"{tuple(scores.shape)}, got {tuple(value.shape)}")
        if bool((value == ignore_index).any()):
            raise ValueError(f"a target equals ignore_index={ignore_index}: ignored samples "
                             f"are not supported on fixed-precision values")
        if n and (int(value.min()) < 0 or int(value.max()) >= c):
            raise ValueError(f"class indices must be in [0, {c}), got values in "
                             f"[{int(value.min())}, {int(value.max())}]")
        return F.one_hot(value.to(torch.int64), c)
    if isinstance(value, torch.Tensor):
        value = public_value(scores.child, value)
    if not isinstance(value, FixedPrecisionTensor):
        raise TypeError(f"a classification target is an integer tensor of class indices or a "
                        f"one-hot (N, C) float, fixed-precision or AutogradTensor, got "
                        f"{type(target).__name__}")
    if tuple(value.shape) != (n, c):
        raise ValueError(f"a one-hot target must have the scores' shape {(n, c)}, got "
                         f"{tuple(value.shape)} (secret class indices: one-hot encode the "
                         f"labels before sharing them)")
    return value


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
                if needs_grad(inp) and id(inp) not in seen:
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
    F.conv2d: "conv2d", torch.conv2d: "conv2d", F.mse_loss: "mse_loss", F.avg_pool2d: "avg_pool2d",
    F.max_pool2d: "max_pool2d", F.max_pool2d_with_indices: "max_pool2d_with_indices",
    torch.eq: "eq", torch.ne: "ne", torch.gt: "gt", torch.lt: "lt", torch.ge: "ge",
    torch.le: "le", torch.argmax: "argmax", torch.argmin: "argmin",
    torch.Tensor.__radd__: "add", torch.Tensor.__rsub__: "rsub", torch.Tensor.__rmul__: "mul",
    torch.exp: "exp", torch.Tensor.exp: "exp", torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh", F.tanh: "tanh", torch.reciprocal: "reciprocal",
    torch.Tensor.reciprocal: "reciprocal", F.softmax: "softmax", torch.softmax: "softmax",
    torch.Tensor.softmax: "softmax", F.log_softmax: "log_softmax",
    torch.log_softmax: "log_softmax", torch.Tensor.log_softmax: "log_softmax",
    F.nll_loss: "nll_loss", F.cross_entropy: "cross_entropy",
    torch.Tensor.__rtruediv__: "rdiv", torch.Tensor.__rdiv__: "rdiv",
    torch.Tensor.__truediv__: "div", torch.Tensor.__matmul__: "matmul",
    torch.Tensor.__rmatmul__: "rmatmul",
}

use_autograd_class(AutogradTensor)
