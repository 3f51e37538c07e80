"""Fixed-point encoding (PySyft 0.2's FixedPrecisionTensor) in the ring Z/2^64Z.

`t.fix_precision(base=10, precision_fractional=3)` (alias `fix_prec`) stores
trunc(t * base**precision_fractional) as int64 (truncation toward zero, as PySyft's
`(x * base**pf).long()`); `.float_precision()` (alias `float_prec`) decodes. Arithmetic uses
int64's native wraparound (the ring 2**64); products are rescaled by truncating toward zero
with `torch.div(..., rounding_mode="trunc")` (torch 1.4's `/` on ints truncated; modern `/`
returns floats, so it is never used here). A value that cannot be embedded (|x| * scale at least
2**63, NaN or infinite) raises ValueError when encoding.

The child is a local int64 tensor or, after `.share(...)`, an AdditiveSharingTensor: every
operation here works on either (shared products rescale with the truncation protocol of
truncation.py, whose result may be one unit in the last place lower than PySyft's).
Range: operands of a product must satisfy |x * y| * scale**2 < 2**63 (|x*y| < 9.2e12 at the
default precision) before rescaling.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedmq.smpc.additive import AdditiveSharingTensor, _count, share_tensor
from fedmq.smpc.comparison import MaxResult
from fedmq.smpc.dispatch import SmpcTensor
from fedmq.smpc.ring import FIELD

_LIMIT = 1 << 63

#: what `share(..., requires_grad=True)` wraps its result in: set by fedmq.smpc.autograd (a
#: layer above, which builds on this module) with `use_autograd_class`
_autograd_class: list = []


def use_autograd_class(cls: type) -> None:
    _autograd_class[:] = [cls]


def _check_params(base: Any, precision_fractional: Any) -> int:
    if type(base) is not int or base < 2:
        raise ValueError(f"base must be an int >= 2, got {base!r}")
    if type(precision_fractional) is not int or precision_fractional < 0:
        raise ValueError(f"precision_fractional must be an int >= 0, got {precision_fractional!r}")
    scale = base ** precision_fractional
    if scale >= 1 << 62:
        raise ValueError(f"base**precision_fractional = {scale} leaves no room in 64 bits")
    return scale


def _embed_error(biggest: Any, scale: int) -> ValueError:
    return ValueError(f"{biggest} cannot be correctly embedded in fixed precision: "
                      f"|x| * {scale} must be below 2**63 (the int64 ring); lower "
                      f"precision_fractional or rescale the data")


def encode(value: Any, scale: int) -> Any:
    """trunc(value * scale) as int64 (tensors) or int (Python numbers), or ValueError."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError("complex tensors cannot be fixed-precision encoded")
        if value.is_floating_point():
            value = value.detach()
            if not bool(torch.isfinite(value).all()):
                raise ValueError("NaN or infinite values cannot be fixed-precision encoded")
            up = torch.trunc(value.double() * scale)
            if up.numel() and float(up.abs().max()) >= float(_LIMIT):
                raise _embed_error(float(value.abs().max()), scale)
            return up.to(torch.int64)
        v = value.detach().to(torch.int64)
        if v.numel():
            biggest = max(int(v.max()), -int(v.min()))
            if biggest * scale >= _LIMIT:
                raise _embed_error(biggest, scale)
        return v * scale
    if isinstance(value, bool) or isinstance(value, int):
        if abs(int(value)) * scale >= _LIMIT:
            raise _embed_error(value, scale)
        return int(value) * scale
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("NaN or infinite values cannot be fixed-precision encoded")
        up = int(value * scale)
        if abs(up) >= _LIMIT:
            raise _embed_error(value, scale)
        return up
    raise TypeError(f"cannot fixed-precision encode {type(value).__name__}")


# -- operations on a child that is a local int64 tensor or an AdditiveSharingTensor -------------

def _shared(v: Any) -> bool:
    return isinstance(v, AdditiveSharingTensor)


def _add(a, b):
    if _shared(a):
        return a.add(b)
    if _shared(b):
        return b.add(a)
    return a + b


def _sub(a, b):
    if _shared(a):
        return a.sub(b)
    if _shared(b):
        return b.rsub(a)
    return a - b


def _mul(a, b):
    if _shared(a):
        return a.mul(b)
    if _shared(b):
        return b.mul(a)
    return a * b


def _matmul(a, b):
    if _shared(a):
        return a.matmul(b)
    if _shared(b):
        return b.rmatmul(a)
    return torch.matmul(a, b)


def _product(op: str, a, b, divisor: int, **kwargs):
    """a op b divided by `divisor`; fused into one protocol when both are shared."""
    if _shared(a) and _shared(b):
        return a.product(op, b, divisor, **kwargs)
    if op == "mul":
        out = _mul(a, b)
    elif op == "matmul":
        out = _matmul(a, b)
    elif _shared(b):
        raise NotImplementedError("conv2d of a public input with a shared weight")
    elif _shared(a):
        out = a.conv2d(b, **kwargs)
    else:
        out = F.conv2d(a, b, **kwargs)
    return _trunc(out, divisor)


def _trunc(v, divisor: int):
    if divisor == 1:
        return v
    if _shared(v):
        return v.div(divisor)
    return torch.div(v, divisor, rounding_mode="trunc")


_FLIP = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le", "eq": "eq", "ne": "ne"}


def _compare(op: str, a, b):
    if _shared(a):
        return getattr(a, op)(b)
    if _shared(b):
        return getattr(b, _FLIP[op])(a)
    return getattr(torch, op)(a, b).to(torch.int64)


class FixedPrecisionTensor(SmpcTensor):
    """A fixed-point tensor: `child` holds trunc(x * base**precision_fractional) in int64."""

    field = FIELD

    def __init__(self, child: Any, base: int = 10, precision_fractional: int = 3,
                 float_dtype: torch.dtype | None = None) -> None:
        self.scale = _check_params(base, precision_fractional)
        self.base = base
        self.precision_fractional = precision_fractional
        self.child = child
        self.float_dtype = float_dtype or torch.get_default_dtype()

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, base: int = 10, precision_fractional: int = 3
                    ) -> "FixedPrecisionTensor":
        scale = _check_params(base, precision_fractional)
        dtype = tensor.dtype if tensor.is_floating_point() else None
        return cls(encode(tensor, scale), base, precision_fractional, dtype)

    def _new(self, child: Any) -> "FixedPrecisionTensor":
        return FixedPrecisionTensor(child, self.base, self.precision_fractional, self.float_dtype)

    # -- structure ---------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.child.shape

    @property
    def is_shared(self) -> bool:
        return _shared(self.child)

    # -- encoding ------------------------------------------------------------------------------------
    def float_precision(self) -> torch.Tensor:
        """Decode: child / base**precision_fractional as a float tensor."""
        if self.is_shared:
            raise ValueError("this fixed-precision tensor is secret-shared: call .get() first, "
                             "then .float_precision()")
        return (self.child.double() / self.scale).to(self.float_dtype)

    float_prec = float_precision

    def fix_precision(self, *args: Any, **kwargs: Any) -> "FixedPrecisionTensor":
        raise ValueError("this tensor is already in fixed precision")

    fix_prec = fix_precision

    # -- sharing ---------------------------------------------------------------------------------------
    def share(self, *workers: Any, crypto_provider: Any = None, requires_grad: bool = False,
              **options: Any) -> Any:
        """Secret-share the encoded values: `x.fix_precision().share(bob, alice, ...)`.
        `requires_grad=True` wraps the result in the class set by `use_autograd_class`
        (fedmq.smpc.autograd's AutogradTensor, PySyft's), which records the gradient graph."""
        if self.is_shared:
            raise ValueError("this tensor is already shared")
        if requires_grad not in (True, False):
            raise TypeError(f"requires_grad must be True or False, got {requires_grad!r}")
        if requires_grad and not _autograd_class:
            raise RuntimeError("share(..., requires_grad=True) needs fedmq.smpc.autograd, "
                               "which fedmq.TorchHook(torch) loads")
        shared = self._new(share_tensor(self.child, *workers, crypto_provider=crypto_provider,
                                        **options))
        return _autograd_class[0](shared, requires_grad=True) if requires_grad else shared

    def get(self) -> "FixedPrecisionTensor":
        """Reconstruct a shared child (deleting the shares); decode with .float_precision()."""
        return self._new(self.child.get() if self.is_shared else self.child)

    def virtual_get(self) -> "FixedPrecisionTensor":
        return self._new(self.child.virtual_get() if self.is_shared else self.child)

    def copy(self) -> "FixedPrecisionTensor":
        return self._new(self.child.copy() if self.is_shared else self.child.clone())

    # -- arithmetic ------------------------------------------------------------------------------------
    def _other(self, other: Any) -> Any:
        """The other operand as a child with the same scale."""
        if isinstance(other, FixedPrecisionTensor):
            if (other.base, other.precision_fractional) != (self.base, self.precision_fractional):
                raise ValueError("both fixed-precision tensors need the same base and "
                                 "precision_fractional")
            return other.child
        return encode(other, self.scale)

    def add(self, other: Any) -> "FixedPrecisionTensor":
        return self._new(_add(self.child, self._other(other)))

    def sub(self, other: Any) -> "FixedPrecisionTensor":
        return self._new(_sub(self.child, self._other(other)))

    def rsub(self, other: Any) -> "FixedPrecisionTensor":
        return self._new(_sub(self._other(other), self.child))

    def neg(self) -> "FixedPrecisionTensor":
        return self._new(-self.child)

    @staticmethod
    def _is_integer(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return not value.is_floating_point() and not value.is_complex()
        return type(value) in (int, bool)

    def mul(self, other: Any) -> "FixedPrecisionTensor":
        """x * y rescaled (truncation); times a public integer, no rescaling is needed."""
        if self._is_integer(other) and not isinstance(other, FixedPrecisionTensor):
            return self._new(_mul(self.child, encode(other, 1)))
        return self._new(_product("mul", self.child, self._other(other), self.scale))

    def matmul(self, other: Any) -> "FixedPrecisionTensor":
        if self._is_integer(other) and not isinstance(other, FixedPrecisionTensor):
            return self._new(_matmul(self.child, encode(other, 1)))
        return self._new(_product("matmul", self.child, self._other(other), self.scale))

    def rmatmul(self, other: Any) -> "FixedPrecisionTensor":
        return self._new(_trunc(_matmul(self._other(other), self.child), self.scale))

    mm = matmul

    def div(self, other: Any) -> "FixedPrecisionTensor":
        """Division by a public integer (truncation toward zero; shared: truncation.py)."""
        if type(other) is int and other != 0:
            if other < 0:
                return self._new(_trunc(-self.child, -other))
            return self._new(_trunc(self.child, other))
        if isinstance(other, float) and other != 0.0:
            return self.mul(1.0 / other)
        raise ValueError("fixed-precision tensors can be divided by a non-zero public number "
                         "only (division by a secret value is not supported)")

    def pow(self, exponent: int) -> "FixedPrecisionTensor":
        if type(exponent) is not int or exponent < 1:
            raise ValueError("only positive integer powers are supported")
        out = self
        for _ in range(exponent - 1):
            out = out.mul(self)
        return out

    def square(self) -> "FixedPrecisionTensor":
        return self.mul(self)

    def linear(self, weight: Any, bias: Any = None) -> "FixedPrecisionTensor":
        out = self.matmul(weight.t())
        return out if bias is None else out.add(bias)

    def conv2d(self, weight: Any, bias: Any = None, stride=1, padding=0, dilation=1,
               groups=1) -> "FixedPrecisionTensor":
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        out = self._new(_product("conv2d", self.child, self._other(weight), self.scale,
                                 **kwargs))
        if bias is not None:
            b = bias if isinstance(bias, FixedPrecisionTensor) else \
                FixedPrecisionTensor.from_tensor(bias, self.base, self.precision_fractional)
            out = out.add(b.reshape(1, -1, 1, 1))
        return out

    # -- comparisons (results are fixed-point 0/1, as PySyft) ---------------------------------------
    def _cmp(self, op: str, other: Any) -> "FixedPrecisionTensor":
        return self._new(_mul(_compare(op, self.child, self._other(other)), self.scale))

    def gt(self, other): return self._cmp("gt", other)
    def lt(self, other): return self._cmp("lt", other)
    def ge(self, other): return self._cmp("ge", other)
    def le(self, other): return self._cmp("le", other)
    def eq(self, other): return self._cmp("eq", other)
    def ne(self, other): return self._cmp("ne", other)

    def relu(self) -> "FixedPrecisionTensor":
        return self._new(self.child.relu() if self.is_shared else self.child.clamp(min=0))

    def abs(self) -> "FixedPrecisionTensor":
        return self._new(self.child.abs())

    def sum(self, dim=None, keepdim: bool = False) -> "FixedPrecisionTensor":
        if dim is None:
            return self._new(self.child.sum())
        return self._new(self.child.sum(dim, keepdim=keepdim))

    def mean(self, dim=None, keepdim: bool = False) -> "FixedPrecisionTensor":
        count = self.numel() if dim is None else _count(self.shape, dim)
        return self.sum(dim, keepdim).div(count)

    def max(self, dim: int | None = None, keepdim: bool = False):
        return self._extreme("max", dim, keepdim)

    def min(self, dim: int | None = None, keepdim: bool = False):
        return self._extreme("min", dim, keepdim)

    def _extreme(self, which: str, dim, keepdim: bool):
        if dim is None:
            if self.is_shared:
                return self._new(getattr(self.child, which)())
            return self._new(getattr(self.child, which)().reshape(1))
        values, indices = getattr(self.child, which)(dim, keepdim=keepdim)
        return MaxResult(self._new(values), self._new(_mul(indices, self.scale)))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "FixedPrecisionTensor":
        """Indices of the maxima, fixed-point encoded (decode with float_precision())."""
        return self._new(_mul(self.child.argmax(dim, keepdim=keepdim), self.scale))

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "FixedPrecisionTensor":
        return self._new(_mul(self.child.argmin(dim, keepdim=keepdim), self.scale))

    # shape manipulation
    def t(self): return self._new(self.child.t())
    def reshape(self, *shape): return self._new(self.child.reshape(*shape))
    def view(self, *shape): return self._new(self.child.view(*shape))
    def flatten(self, start_dim=0, end_dim=-1): return self._new(self.child.flatten(start_dim, end_dim))
    def transpose(self, d0, d1): return self._new(self.child.transpose(d0, d1))
    def permute(self, *dims): return self._new(self.child.permute(*dims))
    def unsqueeze(self, d): return self._new(self.child.unsqueeze(d))
    def squeeze(self, *d): return self._new(self.child.squeeze(*d))
    def __getitem__(self, index): return self._new(self.child[index])

    # -- operators ---------------------------------------------------------------------------------------
    __add__ = __radd__ = add
    __sub__ = sub
    __rsub__ = rsub
    __mul__ = __rmul__ = mul
    __matmul__ = matmul
    __rmatmul__ = rmatmul
    __truediv__ = div
    __neg__ = neg
    __abs__ = abs
    __pow__ = pow
    __gt__ = gt
    __lt__ = lt
    __ge__ = ge
    __le__ = le
    __eq__ = eq  # type: ignore[assignment]
    __ne__ = ne  # type: ignore[assignment]
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        if self.is_shared:
            raise ValueError("the truth value of a shared tensor is secret: .get() it first")
        return bool(self.child)

    def __repr__(self) -> str:
        inner = repr(self.child)
        return f"(Wrapper)>FixedPrecisionTensor>{inner.replace('(Wrapper)>', '')}"
