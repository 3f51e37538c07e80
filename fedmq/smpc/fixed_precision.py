"""Fixed-point encoding (PySyft 0.2's FixedPrecisionTensor) in the ring Z/2^64Z.

`t.fix_precision(base=10, precision_fractional=3)` (alias `fix_prec`) stores
round(t * base**precision_fractional) as int64 (to nearest, as CrypTen and SPU: PySyft's
`(x * base**pf).long()` truncated, encoding float32 0.01 as 0.009); `.float_precision()` (alias
`float_prec`) decodes. Arithmetic uses
int64's native wraparound (the ring 2**64); products are rescaled by truncating toward zero
with `torch.div(..., rounding_mode="trunc")` (torch 1.4's `/` on ints truncated; modern `/`
returns floats, so it is never used here). A value that cannot be embedded (|x| * scale at least
2**63, NaN or infinite) raises ValueError when encoding.

The child is a local int64 tensor or, after `.share(...)`, an AdditiveSharingTensor: every
operation here works on either (shared products rescale with the truncation protocol of
truncation.py, whose result may be one unit in the last place lower than PySyft's).
Range of values: every result must satisfy |x| * scale < 2**63 (|x| < 9.2e15 at the default
precision): local add, sub and sum past it raise OverflowError; shared ones wrap around
silently (the shares cannot tell). Comparisons (and relu, max, argmax) take the sign of x - y
in the ring, so they need |x - y| < 2**63 / scale (max/argmax along a dim of size k:
|x_a - x_b| * m < 2**63 / scale, m the smallest odd number >= k): local values past it raise
OverflowError, shared ones give the inverted answer (see `max`).
Range of products: operands of a product must satisfy |x * y| * scale**2 < 2**63 (|x*y| < 9.2e12 at the
default precision) before rescaling; for matmul/conv2d the bound holds for every output entry
(a sum of products). On local values a product past it raises OverflowError (the int64 result
would be wrong); on shared values it cannot be seen and the result is wrong, so keep inputs in
range. Shared products are rescaled by probabilistic truncation (truncation.py: SecureML's local
one between two parties, ABY3's with more), which fails (a result far off) with probability
|x * y| * scale**2 / 2**64 per element: at the default precision that is below 1e-6 for
|x * y| < 1.8e7 (below 1e-9 for |x * y| < 1.8e4), and about 1/2 at the ring's edge
(|x * y| ~ 9e12), so the practical range of shared products is |x * y| < 1.8e7 (tested). More headroom: fewer fractional digits
(`fix_precision(precision_fractional=2)`: 100x more range for products) or a power-of-two
base, whose scale can be chosen bit by bit (`fix_precision(base=2, precision_fractional=8)`,
scale 256: ~15x the range of base 10's 1000). Shared products need scale**2 below
`truncation.exact_bound(scale)` (about 2**62: base 10 up to 9 fractional digits, base 2 up to
31 bits), else they raise ValueError (`PRODUCT_LIMIT`); at a scale**2 above 2**32 (base 10: 5
digits and more) their rescaling uses the exact truncation (`truncate_exact`: at 9 digits the
probabilistic one failed for 1.5 * 2 one time in six), so |x * y| < 2**62 / scale**2 there.

Public numbers and tensors (`x * c`, `x / c`, c a float, a float tensor, an integer tensor
divisor; not Python ints, which stay exact and cost nothing but one truncation for `/`) are
applied as x_int * m / 10**s with m = round(c * 10**s) of at most 7 significant digits (s per
call from the largest |c|, the same for a whole tensor c: `_public_factor`), not encoded at the
tensor's precision (1/3000 at 3 digits is 0): the result is within one unit in the last place
plus a relative 5e-7 of |x| * max|c| (for max|c| < 1e-10, where 10**s stops at 10**16, plus
|x_int| / 2e16 units in the last place). Local values: exact integer arithmetic, truncated toward
zero (OverflowError only if the result leaves the encodable range). Shared values: the product
is local on the shares and the division by 10**s is one exact truncation (`truncate_exact`),
for |x| * scale * max(10**7, |c|) < 2**62 (|x| < 4.6e8 at the default precision); between two
parties, a factor with |m| <= 32 (lr = 0.02 is 2 / 100) is rescaled by the local truncation
instead (no round; it fails with probability |x_int * m| / 2**64, below 1e-6 in that range).

Non-linear functions (exp, reciprocal, log, sigmoid, tanh, softmax, log_softmax) are
approximations (approximations.py: methods, papers, ranges and accuracy in its docstrings).
F.cross_entropy and F.nll_loss of fixed-precision scores give the loss's value (no graph) through
fedmq.smpc.autograd's, registered by `use_autograd_class`; so does an operator with an
AutogradTensor operand (`x_fp * w`: x joins w's graph as a constant; see the module's end).
Pooling (max_pool2d, avg_pool2d) stacks the windows and takes their max (comparison.py's
tournament) or sum; argmax and max(dim) pick the first maximum on ties, as torch.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fedmq.smpc import approximations, keywords
from fedmq.smpc.additive import FIELD, AdditiveSharingTensor, _count, share_tensor
from fedmq.smpc.comparison import MaxResult
from fedmq.smpc.dispatch import SmpcTensor
from fedmq.smpc.truncation import EXACT_MAX_DIVISOR, exact_bound, exact_truncation

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
    """round(value * scale) (to nearest, ties to even: torch.round) as int64 (tensors) or int
    (Python numbers), or ValueError. Rounding, not truncation: float32 0.01 is 0.0099999998,
    which truncation would encode as 0.009 (a 10% error; PySyft's `.long()` truncated)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError("complex tensors cannot be fixed-precision encoded")
        if value.is_floating_point():
            value = value.detach()
            if not bool(torch.isfinite(value).all()):
                raise ValueError("NaN or infinite values cannot be fixed-precision encoded")
            up = torch.round(value.double() * scale)
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
        up = round(value * scale)
        if abs(up) >= _LIMIT:
            raise _embed_error(value, scale)
        return up
    raise TypeError(f"cannot fixed-precision encode {type(value).__name__}")


# -- operations on a child that is a local int64 tensor or an AdditiveSharingTensor -------------

def _shared(v: Any) -> bool:
    return isinstance(v, AdditiveSharingTensor)


def _range_error(op: str, reached: float, scale: int) -> OverflowError:
    bound = "" if scale == 1 else f" (|result| < 2**63 / {scale} = {float(_LIMIT) / scale:.3g})"
    return OverflowError(
        f"fixed-precision {op} out of range: the encoded result reaches {reached:.3g}, past "
        f"2**63 (the int64 ring), so it would wrap around. Results must stay in the encodable "
        f"range{bound}; for more headroom lower precision_fractional "
        f"(fix_precision(precision_fractional=2)) or rescale the data")


def _check_local_sum(op: str, exact, scale: int) -> None:
    """OverflowError if the float64 value `exact` of a local sum left int64's range (the int64
    result wrapped; float64's rounding only matters within 2**-52 of the edge)."""
    if isinstance(exact, torch.Tensor):
        if not exact.numel():
            return
        exact = float(exact.abs().max())
    if abs(exact) >= float(_LIMIT):
        raise _range_error(op, abs(exact), scale)


def _double(v):
    return v.double() if isinstance(v, torch.Tensor) else float(v)


def _add(a, b, scale: int = 1):
    if _shared(a):
        return a.add(b)
    if _shared(b):
        return b.add(a)
    _check_local_sum("add", _double(a) + _double(b), scale)
    return a + b


def _sub(a, b, scale: int = 1):
    if _shared(a):
        return a.sub(b)
    if _shared(b):
        return b.rsub(a)
    _check_local_sum("sub", _double(a) - _double(b), scale)
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


def _check_local_product(op: str, a, b, scale: int, **kwargs) -> None:
    """OverflowError if the int64 result of a op b (local values) left the ring's range."""
    if _shared(a) or _shared(b):
        return
    da = a.double() if isinstance(a, torch.Tensor) else float(a)
    db = b.double() if isinstance(b, torch.Tensor) else float(b)
    if op == "mul":
        exact = da * db
    elif op == "matmul":
        exact = torch.matmul(da, db)
    else:
        exact = F.conv2d(da, db, **kwargs)
    if isinstance(exact, torch.Tensor):
        if not exact.numel():
            return
        exact = float(exact.abs().max())
    if abs(exact) >= float(_LIMIT):
        bound = "" if scale == 1 else \
            f" Two fixed-point operands must satisfy |x * y| < 2**63 / {scale}**2 = " \
            f"{float(_LIMIT) / scale ** 2:.3g} (matmul/conv2d: every output entry)."
        raise OverflowError(
            f"fixed-precision {op} out of range: the encoded product reaches {abs(exact):.3g}, "
            f"past 2**63 (the int64 ring), so the result would wrap around.{bound} For more "
            f"headroom lower precision_fractional (fix_precision(precision_fractional=2)) or "
            f"use a power-of-two base with fewer bits (fix_precision(base=2, "
            f"precision_fractional=8))")


def _product(op: str, a, b, divisor: int, **kwargs):
    """a op b divided by `divisor`; fused into one protocol when both are shared.
    Local operands: OverflowError if the product leaves the int64 range."""
    if _shared(a) and _shared(b):
        return a.product(op, b, divisor, **kwargs)
    _check_local_product(op, a, b, divisor, **kwargs)
    if op == "mul":
        out = _mul(a, b)
    elif op == "matmul":
        out = _matmul(a, b)
    elif _shared(b):
        out = b.rconv2d(a, **kwargs)
    elif _shared(a):
        out = a.conv2d(b, **kwargs)
    else:
        out = F.conv2d(a, b, **kwargs)
    return _trunc(out, divisor)


def _pair(v) -> tuple:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)


def _stack(parts: list, dim: int):
    if _shared(parts[0]):
        return AdditiveSharingTensor.stack(parts, dim=dim)
    return torch.stack(parts, dim=dim)


def _pool_windows(child, kernel_size, stride, padding, dilation, fill: int):
    """The pooling windows of an N x C x H x W (or C x H x W) child as a new last dim of size
    kh*kw: out[..., i, j, k] is the k-th entry of window (i, j)."""
    if child.dim() not in (3, 4):
        raise ValueError(f"pooling takes a C x H x W or N x C x H x W tensor, got shape "
                         f"{tuple(child.shape)}")
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None or stride == [] or stride == () else stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"pooling needs positive kernel_size, stride and dilation and a "
                         f"non-negative padding, got kernel_size={kernel_size}, "
                         f"stride={stride}, padding={padding}, dilation={dilation}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding should be at most half of kernel size, got "
                         f"padding={padding} and kernel_size={kernel_size} (as torch)")
    if ph or pw:
        child = child.pad((pw, pw, ph, ph), fill) if _shared(child) else \
            F.pad(child, (pw, pw, ph, ph), value=fill)
    H, W = child.shape[-2], child.shape[-1]
    oh, ow = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"pooling window {kh}x{kw} (dilation {dh}x{dw}) larger than the "
                         f"(padded) input {H}x{W}")
    parts = [child[..., i * dh: i * dh + sh * (oh - 1) + 1: sh,
                   j * dw: j * dw + sw * (ow - 1) + 1: sw]
             for i in range(kh) for j in range(kw)]
    return _stack(parts, -1), kh * kw


#: what padded max pooling fills with (in the ring): below any value of the input (|x| must be
#: under 2**40 / scale, 1.1e9 at the default precision)
_POOL_FILL = -(1 << 40)


def _trunc(v, divisor: int):
    if divisor == 1:
        return v
    if _shared(v):
        return v.div(divisor)
    return torch.div(v, divisor, rounding_mode="trunc")


# -- products by public numbers and tensors (module docstring) ----------------------------------

#: significant digits of m in a public factor m / 10**s
_FACTOR_DIGITS = 7
#: shared products whose scale**2 is above this rescale with the exact truncation
_EXACT_PRODUCT_SCALE2 = 1 << 32


def _is_public_real(value: Any) -> bool:
    """A Python float or a plain real (non-integer) torch tensor: what `_public_factor` takes
    for a product (integers keep their exact path)."""
    if isinstance(value, float):
        return True
    return isinstance(value, torch.Tensor) and type(value) in (torch.Tensor, torch.nn.Parameter) \
        and value.is_floating_point()


def _public_factor(value: Any, k: int = 1, scale: int = 1) -> tuple[Any, int]:
    """(m, d) with m / d = value / k to 7 significant digits of max|value|: m = round(value *
    10**s) (int for a Python number, int64 tensor of value's shape for a tensor), d = 10**s * k
    (k a public positive int, e.g. a mean's count folded in). s is the smallest that gives m 7
    digits (trailing decimal zeros dropped: 0.5 is 5 / 10, 3.0 is 3 / 1), at most what keeps
    d <= truncation.EXACT_MAX_DIVISOR. ValueError for NaN or infinite values; OverflowError if
    |value| reaches 2**62 (x_int * value, the encoded result, leaves int64 for any x_int != 0)."""
    c = torch.as_tensor(value, dtype=torch.float64).detach()
    if not bool(torch.isfinite(c).all()):
        raise ValueError("a fixed-precision tensor cannot be multiplied or divided by NaN or "
                         "infinite values")
    number = not isinstance(value, torch.Tensor)
    cmax = float(c.abs().max()) if c.numel() else 0.0
    if cmax == 0.0:
        return (0 if number else torch.zeros(c.shape, dtype=torch.int64)), 1
    if cmax >= float(1 << 62):
        raise _range_error("product by a public number", cmax, scale)
    s_cap = 0
    while 10 ** (s_cap + 1) * k <= EXACT_MAX_DIVISOR:
        s_cap += 1
    s = min(max(_FACTOR_DIGITS - 1 - math.floor(math.log10(cmax)), 0), s_cap)
    while s > 0 and round(cmax * 10 ** s) >= 10 ** _FACTOR_DIGITS:
        s -= 1
    m = torch.round(c * 10 ** s).to(torch.int64)
    while s > 0 and not bool(torch.remainder(m, 10).any()):
        m, s = torch.div(m, 10, rounding_mode="trunc"), s - 1
    return (int(m) if number else m), 10 ** s * k


def _times_public(child: Any, m: Any, divisor: int, scale: int) -> Any:
    """child * m / divisor for a public int or int64 tensor m (broadcast) and a public positive
    int divisor. Shared child: a local product on the shares and one exact truncation
    (`truncate_exact`, range in the module docstring), or, between two parties with
    |m| <= LOCAL_FACTOR_MAX, SecureML's local truncation (no round, nothing dealt; failure
    probability |x_int * m| / 2**64, below 1e-6 in that range). Local child: `_local_times`."""
    if not _shared(child):
        return _local_times(child, m, divisor, scale)
    out = child.mul(m)
    if divisor == 1:
        return out
    if child.n_parties == 2 and _max_abs(m) <= LOCAL_FACTOR_MAX:
        return out.div(divisor)
    with exact_truncation():
        return out.div(divisor)


#: the largest |m| of a public factor m / 10**s that two parties rescale locally (learning
#: rates such as 0.01, 0.02, 0.05, 0.1 and 1 / n have m <= 5): |x_int * m| < 2**44 for |x| in
#: the documented range, so the local truncation fails with probability below 2**-20
LOCAL_FACTOR_MAX = 32


def _max_abs(m: Any) -> int:
    if isinstance(m, torch.Tensor):
        return int(m.abs().max()) if m.numel() else 0
    return abs(int(m))


def _local_times(x: torch.Tensor, m: Any, divisor: int, scale: int) -> torch.Tensor:
    """trunc(x * m / divisor) exactly (x, m int64, m an int or a tensor broadcasting with x):
    int64 where |x * m| < 2**62, Python integers for the entries past it (values beyond
    4.6e8 at the default precision). OverflowError if a result leaves int64."""
    exact = x.double() * (m.double() if isinstance(m, torch.Tensor) else float(m))
    out = torch.div(x * m, divisor, rounding_mode="trunc") if divisor != 1 else x * m
    if not exact.numel():
        return out
    big = exact.abs() >= float(1 << 62)
    if not bool(big.any()):
        return out
    reached = float(exact.abs().max()) / divisor
    if reached >= float(_LIMIT) * (1 + 1e-9):
        raise _range_error("product by a public number", reached, scale)
    xs, ms = torch.broadcast_tensors(x, torch.as_tensor(m, dtype=torch.int64))
    values = []
    for a, b in zip(xs[big].tolist(), ms[big].tolist()):
        q = abs(a * b) // divisor
        q = q if a * b >= 0 else -q
        if abs(q) >= _LIMIT:
            raise _range_error("product by a public number", float(abs(q)), scale)
        values.append(q)
    out = out.clone()
    out[big] = torch.tensor(values, dtype=torch.int64)
    return out


_FLIP = {"lt": "gt", "gt": "lt", "le": "ge", "ge": "le", "eq": "eq", "ne": "ne"}


def _compare(op: str, a, b, scale: int = 1):
    if _shared(a):
        return getattr(a, op)(b)
    if _shared(b):
        return getattr(b, _FLIP[op])(a)
    _check_comparable(op, _double(a) - _double(b), scale, 1)
    return getattr(torch, op)(a, b).to(torch.int64)


def _check_comparable(op: str, spread, scale: int, m: int) -> None:
    """OverflowError if a local comparison's operands differ by |x - y| * scale * m >= 2**63:
    the shared protocol (comparison.py) takes the sign of the ring element m (x - y), which
    wraps there, so shared operands would give the inverted answer; local ones are checked
    so that the two agree."""
    if isinstance(spread, torch.Tensor):
        if not spread.numel():
            return
        spread = float(spread.abs().max())
    if abs(spread) * m >= float(_LIMIT):
        what = "|x - y|" if m == 1 else f"max - min along the dim, times {m},"
        raise OverflowError(
            f"fixed-precision {op} out of range: {what} reaches {abs(spread) * m / scale:.3g}, "
            f"past 2**63 / {scale} = {float(_LIMIT) / scale:.3g}: shared comparisons take the "
            f"sign of x - y in the ring 2**64, which wraps there (the answer would be "
            f"inverted). Keep compared values within that distance, or lower "
            f"precision_fractional")


class FixedPrecisionTensor(SmpcTensor):
    """A fixed-point tensor: `child` holds round(x * base**precision_fractional) in int64.

    `field` is the ring's size 2**64 (additive.RingSize: an int, and `int64_tensor % field`
    is the tensor itself, already a ring element)."""

    field = FIELD

    def __init__(self, child: Any, base: int = 10, precision_fractional: int = 3,
                 float_dtype: torch.dtype | None = None) -> None:
        self.scale = _check_params(base, precision_fractional)
        self.base = base
        self.precision_fractional = precision_fractional
        self.child = child
        self.float_dtype = float_dtype or torch.get_default_dtype()

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                    **pysyft: Any) -> "FixedPrecisionTensor":
        """`tensor.fix_precision(base, precision_fractional)`. PySyft's other keywords
        (dtype="long", field=2**64, kappa=1, no_wrap=False, storage="auto", ...) are accepted
        at the values that describe fedmq's encoding, anything else raises TypeError
        (fedmq/smpc/keywords.py); ValueError for a bad base/precision, NaN/inf or a value
        that does not fit."""
        keywords.check("fix_precision", pysyft, keywords.FIX_PRECISION,
                       honoured=("base", "precision_fractional"))
        scale = _check_params(base, precision_fractional)
        dtype = tensor.dtype if tensor.is_floating_point() else None
        return cls(encode(tensor, scale), base, precision_fractional, dtype)

    def encode_like(self, value: Any) -> "FixedPrecisionTensor":
        """A plain tensor encoded with this tensor's base and precision (local)."""
        return FixedPrecisionTensor.from_tensor(value, self.base, self.precision_fractional)

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
            if getattr(self, "_fedmq_via_shared_pointer", False):  # remote.SharedPointer.get
                raise ValueError("this fixed-precision tensor is still secret-shared: the "
                                 ".get() of ptr.fix_precision().share(...) hands over the "
                                 "shared value, one more .get() reconstructs it: "
                                 "ptr.get().get().float_precision()")
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
        PySyft's protocol="snn", field=2**64, dtype="long", no_wrap=False are accepted, other
        values and keywords raise TypeError (additive.share_tensor). `requires_grad=True`
        wraps the result in the class set by `use_autograd_class` (fedmq.smpc.autograd's
        AutogradTensor, PySyft's), which records the gradient graph."""
        if self.is_shared:
            raise ValueError("this tensor is already shared")
        if type(requires_grad) is not bool:
            raise TypeError(f"share(): requires_grad must be True or False, got "
                            f"{requires_grad!r}")
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
        """x + y. Local values: OverflowError if |x + y| reaches 2**63 / scale (9.2e15 at
        the default precision); shared values wrap silently there (module docstring)."""
        return self._new(_add(self.child, self._other(other), self.scale))

    def sub(self, other: Any) -> "FixedPrecisionTensor":
        """x - y (range as `add`)."""
        return self._new(_sub(self.child, self._other(other), self.scale))

    def rsub(self, other: Any) -> "FixedPrecisionTensor":
        return self._new(_sub(self._other(other), self.child, self.scale))

    def neg(self) -> "FixedPrecisionTensor":
        return self._new(-self.child)

    @staticmethod
    def _is_integer(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return not value.is_floating_point() and not value.is_complex()
        return type(value) in (int, bool)

    def mul(self, other: Any) -> "FixedPrecisionTensor":
        """x * y rescaled (truncation); times a public integer, no rescaling is needed; times a
        public float or float tensor, x * m / 10**s (`times_public`: 7 significant digits).
        Local values: OverflowError past the range in the module docstring; shared products
        of two fixed-point values: ValueError past `PRODUCT_LIMIT`."""
        if isinstance(other, FixedPrecisionTensor):
            return self._fixed_product("mul", self.child, self._other(other))
        if self._is_integer(other):
            return self._new(_product("mul", self.child, encode(other, 1), 1))
        if _is_public_real(other):
            return self.times_public(other)
        return self._fixed_product("mul", self.child, self._other(other))

    def times_public(self, value: Any, k: int = 1) -> "FixedPrecisionTensor":
        """self * value / k for a public real number or tensor `value` (broadcast) and a
        public positive int k, to 7 significant digits of max|value| and one unit in the last
        place (module docstring: x * m / (10**s * k), `_public_factor`). Shared: a local
        product and one exact truncation (none when 10**s * k = 1). Errors: ValueError for
        NaN/inf, OverflowError for a local result out of range."""
        m, d = _public_factor(value, k, self.scale)
        return self._new(_times_public(self.child, m, d, self.scale))

    def _fixed_product(self, op: str, a: Any, b: Any, k: int = 1,
                       **kwargs: Any) -> "FixedPrecisionTensor":
        """a op b / (scale * k) for two children encoded at this scale (op "mul", "matmul",
        "conv2d"). Shared: ValueError past `PRODUCT_LIMIT`; exact truncation for a scale**2
        above 2**32 (module docstring)."""
        if not (_shared(a) or _shared(b)):
            return self._new(_product(op, a, b, self.scale * k, **kwargs))
        self._check_shared_product(op)
        if self.scale ** 2 <= _EXACT_PRODUCT_SCALE2:
            return self._new(_product(op, a, b, self.scale * k, **kwargs))
        with exact_truncation():
            return self._new(_product(op, a, b, self.scale * k, **kwargs))

    def _check_shared_product(self, op: str) -> None:
        """ValueError if a shared product at this precision cannot be rescaled: its encoded
        value |x * y| * scale**2 must stay below `truncation.exact_bound(scale)` (~2**62), so
        scale**2 past it leaves no room even for |x * y| = 1 (PRODUCT_LIMIT)."""
        if self.scale ** 2 <= exact_bound(self.scale):
            return
        most = _max_product_digits(self.base)
        raise ValueError(
            f"shared {op} at base={self.base}, precision_fractional={self.precision_fractional}"
            f" is out of the ring's range: a product of two fixed-point values is encoded at "
            f"scale**2 = {self.base}**{2 * self.precision_fractional} = "
            f"{float(self.scale ** 2):.3g}, past 2**62 ~ 4.6e18 (the signed ring 2**64 with "
            f"the truncation's margin), so even 1 * 1 would wrap around. Lower the precision: "
            f"fix_precision(base={self.base}, precision_fractional={most}) at most (the "
            f"default is 3), then share")

    def matmul(self, other: Any) -> "FixedPrecisionTensor":
        if self._is_integer(other) and not isinstance(other, FixedPrecisionTensor):
            return self._new(_product("matmul", self.child, encode(other, 1), 1))
        return self._fixed_product("matmul", self.child, self._other(other))

    def rmatmul(self, other: Any) -> "FixedPrecisionTensor":
        """other @ self (other a plain tensor or number on the left)."""
        if self._is_integer(other) and not isinstance(other, FixedPrecisionTensor):
            return self._new(_product("matmul", encode(other, 1), self.child, 1))
        return self._fixed_product("matmul", self._other(other), self.child)

    def _mul_div(self, other: "FixedPrecisionTensor", k: int) -> "FixedPrecisionTensor":
        """self * other / k, the division by the public positive int k fused into the
        product's rescaling (one truncation by scale * k: no extra round when shared)."""
        return self._fixed_product("mul", self.child, self._other(other), k)

    @staticmethod
    def stack(tensors: list, dim: int = 0) -> "FixedPrecisionTensor":
        """torch.stack of fixed-precision tensors of one base and precision (all local or
        all shared among the same parties)."""
        first = tensors[0]
        children = [first._other(t) if isinstance(t, FixedPrecisionTensor) else None
                    for t in tensors]
        if any(c is None for c in children) or len({_shared(c) for c in children}) != 1:
            raise ValueError("stack takes fixed-precision tensors that are all local or all "
                             "shared")
        return first._new(_stack(children, dim))

    def _rescaled(self, precision_fractional: int) -> "FixedPrecisionTensor":
        """The same values with `precision_fractional` digits: more digits multiply the child
        by a public power of the base (exact, local), fewer truncate (shared: one round)."""
        extra = precision_fractional - self.precision_fractional
        if extra == 0:
            return self
        child = _product("mul", self.child, self.base ** extra, 1) if extra > 0 else \
            _trunc(self.child, self.base ** -extra)  # local: OverflowError past int64
        return FixedPrecisionTensor(child, self.base, precision_fractional, self.float_dtype)

    mm = matmul

    def div(self, other: Any) -> "FixedPrecisionTensor":
        """self / other.

        * a public non-zero int (or a float with an integer value): truncation toward zero
          (shared: truncation.py, one round);
        * a public non-zero float or real tensor: `times_public` of its reciprocal (computed in
          float64), 7 significant digits (not the reciprocal encoded at this precision: 1/3000
          at 3 digits is 0);
        * a FixedPrecisionTensor (local or shared): times `other.reciprocal()`, Newton-Raphson
          at 6 digits (approximations.divide: |other| in [0.0078, 16384] and
          |self / other| < 4.6e6, within 1e-2 there, exact truncations on shares; a local
          divisor outside raises ValueError).
        Zero divisors (public) raise ValueError."""
        if type(other) is int:
            if other == 0:
                raise ValueError("division of a fixed-precision tensor by zero")
            if other < 0:
                return self._new(_trunc(-self.child, -other))
            return self._new(_trunc(self.child, other))
        if isinstance(other, float) and other.is_integer() and 0 < abs(other) < 2 ** 53:
            return self.div(int(other))
        if isinstance(other, FixedPrecisionTensor):
            self._other(other)  # same base and precision
            if self.is_shared or other.is_shared:
                self._check_shared_product("division")
            return approximations.divide(self, other)
        if isinstance(other, float) or (isinstance(other, torch.Tensor) and
                                        not other.is_complex()):
            if not bool(torch.as_tensor(other).ne(0).all()):
                raise ValueError("division of a fixed-precision tensor by zero")
            inverse = 1.0 / other if isinstance(other, float) else 1.0 / other.double()
            return self.times_public(inverse)
        raise ValueError(f"a fixed-precision tensor divides by a number, a tensor or another "
                         f"fixed-precision tensor, got {type(other).__name__}")

    def rdiv(self, other: Any) -> "FixedPrecisionTensor":
        """other / self for a plain number or tensor `other` (approximations.divide: |self| in
        [0.0078, 16384]; a local divisor outside raises ValueError)."""
        if self.is_shared or (isinstance(other, FixedPrecisionTensor) and other.is_shared):
            self._check_shared_product("division")
        numerator = other if isinstance(other, FixedPrecisionTensor) else \
            self._new(encode(torch.as_tensor(other, dtype=torch.float64), self.scale))
        return approximations.divide(numerator, self)

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
        if self.dim() == 3:  # unbatched (C, H, W), as torch: a batch of one, (C_out, H', W')
            out = self.reshape(1, *self.shape).conv2d(weight, bias, stride, padding, dilation,
                                                      groups)
            return out.reshape(*out.shape[1:])
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        out = self._fixed_product("conv2d", self.child, self._other(weight), **kwargs)
        if bias is not None:
            b = bias if isinstance(bias, FixedPrecisionTensor) else \
                FixedPrecisionTensor.from_tensor(bias, self.base, self.precision_fractional)
            out = out.add(b.reshape(1, -1, 1, 1))
        return out

    # -- comparisons (results are fixed-point 0/1, as PySyft) ---------------------------------------
    def _cmp(self, op: str, other: Any) -> "FixedPrecisionTensor":
        """x op y as fixed-point 0/1. Range: |x - y| < 2**63 / scale (9.2e15 at the default
        precision): shared comparisons take the sign of x - y in the ring, which wraps past
        it (inverted answer); local values past it raise OverflowError."""
        return self._new(_mul(_compare(op, self.child, self._other(other), self.scale),
                              self.scale))

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

    def sign(self) -> "FixedPrecisionTensor":
        """-1, 0 or 1 as torch.sign (fixed point; shared: two comparisons)."""
        return self.gt(0).sub(self.lt(0))

    # -- non-linear functions (approximations.py: method, paper and range of each) -----------------
    def exp(self) -> "FixedPrecisionTensor":
        return approximations.exp(self)

    def reciprocal(self, bound: float | None = None) -> "FixedPrecisionTensor":
        """1/x (approximations.reciprocal: |x| in [0.0078, 16384], or up to the public
        `bound` on |x| when given, at most 2**20)."""
        return approximations.reciprocal(self, bound=bound)

    def log(self) -> "FixedPrecisionTensor":
        return approximations.log(self)

    def sigmoid(self) -> "FixedPrecisionTensor":
        return approximations.sigmoid(self)

    def tanh(self) -> "FixedPrecisionTensor":
        return approximations.tanh(self)

    def softmax(self, dim: int, _stacklevel: int = 3, dtype=None) -> "FixedPrecisionTensor":
        """Softmax along `dim` (approximations.softmax; torch's `dtype` must be None)."""
        if dtype is not None:
            raise ValueError("softmax of a fixed-precision tensor takes dtype=None only")
        return approximations.softmax(self, _dim(dim, self))

    def log_softmax(self, dim: int, _stacklevel: int = 3, dtype=None) -> "FixedPrecisionTensor":
        """Log-softmax along `dim` (approximations.log_softmax; `dtype` must be None)."""
        if dtype is not None:
            raise ValueError("log_softmax of a fixed-precision tensor takes dtype=None only")
        return approximations.log_softmax(self, _dim(dim, self))

    # -- pooling (N x C x H x W or C x H x W, as torch) ---------------------------------------------
    def max_pool2d(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                   return_indices=False) -> "FixedPrecisionTensor":
        """F.max_pool2d: the max of each window (shared: comparison tournament over the
        kh*kw window entries, log2(kh*kw) layers). ceil_mode and return_indices must be
        False."""
        if ceil_mode or return_indices:
            raise ValueError("max_pool2d of a fixed-precision tensor takes ceil_mode=False and "
                             "return_indices=False")
        windows, _ = _pool_windows(self.child, kernel_size, stride, padding, dilation,
                                   _POOL_FILL)
        return self._new(windows.max(-1)[0])

    def avg_pool2d(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                   count_include_pad=True, divisor_override=None) -> "FixedPrecisionTensor":
        """F.avg_pool2d: each window's sum divided by kh*kw (or `divisor_override`), a public
        division (shared: one truncation round). ceil_mode must be False, and
        count_include_pad True when padding."""
        if ceil_mode:
            raise ValueError("avg_pool2d of a fixed-precision tensor takes ceil_mode=False")
        if not count_include_pad and _pair(padding) != (0, 0):
            raise ValueError("avg_pool2d of a fixed-precision tensor with padding takes "
                             "count_include_pad=True")
        windows, count = _pool_windows(self.child, kernel_size, stride, padding, 1, 0)
        divisor = count if divisor_override is None else divisor_override
        if type(divisor) is not int or divisor < 1:
            raise ValueError(f"divisor_override must be a positive int, got {divisor!r}")
        return self._new(_trunc(windows.sum(-1), divisor))

    def sum(self, dim=None, keepdim: bool = False) -> "FixedPrecisionTensor":
        """Sum (of all entries, or along `dim`). Local values: OverflowError if a sum reaches
        2**63 / scale (partial sums may wrap: the ring's sum is exact when the total is in
        range); shared values wrap silently there."""
        if not self.is_shared:
            exact = self.child.double().sum() if dim is None else \
                self.child.double().sum(dim)
            _check_local_sum("sum", exact, self.scale)
        if dim is None:
            return self._new(self.child.sum())
        return self._new(self.child.sum(dim, keepdim=keepdim))

    def mean(self, dim=None, keepdim: bool = False) -> "FixedPrecisionTensor":
        count = self.numel() if dim is None else _count(self.shape, dim)
        return self.sum(dim, keepdim).div(count)

    def max(self, dim: int | None = None, keepdim: bool = False):
        """Without `dim`: the maximum, shape () as torch. With `dim`: (values, indices) as
        torch (first index on ties). Range: shared max compares the ring elements
        m * x - i (m the smallest odd number >= the dim's size k, i the index; m = 1 without
        `dim`), so every two entries compared must satisfy |x_a - x_b| * m < 2**63 / scale
        (9.2e15 / m at the default precision); past it the answer is wrong when shared, and
        local values raise OverflowError. argmax/argmin without `dim` flatten (k = numel)."""
        return self._extreme("max", dim, keepdim)

    def min(self, dim: int | None = None, keepdim: bool = False):
        return self._extreme("min", dim, keepdim)

    def _check_extreme(self, op: str, dim) -> None:
        """Local values: OverflowError past the range of shared max/argmax (`max`)."""
        if self.is_shared or not self.numel():
            return
        c = self.child.double()
        if dim is None:
            spread, k = c.max() - c.min(), (self.numel() if op.startswith("arg") else 1)
        else:
            spread, k = c.amax(dim) - c.amin(dim), self.shape[dim]
        _check_comparable(op, spread, self.scale, k if k % 2 or k == 1 else k + 1)

    def _extreme(self, which: str, dim, keepdim: bool):
        self._check_extreme(which, dim)
        if dim is None:  # shape () as torch (a shared child's max has PySyft's shape (1,))
            return self._new(getattr(self.child, which)().reshape(()))
        values, indices = getattr(self.child, which)(dim, keepdim=keepdim)
        return MaxResult(self._new(values), self._new(_mul(indices, self.scale)))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "FixedPrecisionTensor":
        """Indices of the maxima, fixed-point encoded (decode with float_precision()); range
        as `max`."""
        self._check_extreme("argmax", dim)
        return self._new(_mul(self.child.argmax(dim, keepdim=keepdim), self.scale))

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "FixedPrecisionTensor":
        self._check_extreme("argmin", dim)
        return self._new(_mul(self.child.argmin(dim, keepdim=keepdim), self.scale))

    # shape manipulation
    def t(self): return self._new(self.child.t())
    def reshape(self, *shape): return self._new(self.child.reshape(*shape))
    def view(self, *shape): return self._new(self.child.view(*shape))
    def view_as(self, other): return self.view(*other.shape)
    def reshape_as(self, other): return self.reshape(*other.shape)
    def expand(self, *shape): return self._new(self.child.expand(*shape))
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
    __rtruediv__ = rdiv
    __iadd__ = add  # x += y rebinds x to a new tensor (children are never written in place)
    __isub__ = sub
    __imul__ = mul
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

    def _product_div(self, op: str, other: "FixedPrecisionTensor", k: int,
                     **kwargs: Any) -> "FixedPrecisionTensor":
        """self op other / k for op "mul", "matmul" or "conv2d" (conv2d keywords in kwargs),
        the division by the public positive int k fused into the product's rescaling (one
        truncation by scale * k, as `_mul_div`): autograd's backward uses it to apply the
        exact 1/n of a mean or a division by n to the next product (gradients.py)."""
        return self._fixed_product(op, self.child, self._other(other), k, **kwargs)


def _max_product_digits(base: int) -> int:
    """The most fractional digits in `base` at which shared products work (PRODUCT_LIMIT)."""
    digits = 0
    while base ** (2 * (digits + 1)) <= exact_bound(base ** (digits + 1)):
        digits += 1
    return digits


#: shared products (mul, matmul, conv2d, division by a fixed-point value) need
#: base**(2 * precision_fractional) <= truncation.exact_bound(base**precision_fractional)
#: (~2**62): base -> the largest precision_fractional (10: 9, 2: 30, 16: 7)
PRODUCT_LIMIT = {b: _max_product_digits(b) for b in (2, 10, 16)}


def _dim(dim: Any, x: FixedPrecisionTensor) -> int:
    if dim is None:
        raise ValueError("softmax/log_softmax of a fixed-precision tensor need dim= (torch's "
                         "implicit choice is deprecated)")
    if type(dim) is not int or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an int in [-{x.dim()}, {x.dim() - 1}], got {dim!r}")
    return dim


# -- an AutogradTensor operand (fedmq.smpc.autograd, a layer above) -----------------------------
# `x_fp * w` with w an AutogradTensor: the FixedPrecisionTensor becomes a constant of w's graph
# (the class registered by `use_autograd_class`, wrapping x without a gradient) and the same
# method runs there, so the result tracks w's gradient, as `w * x_fp` does.

def _lifting(name: str):
    method = getattr(FixedPrecisionTensor, name)

    def op(self: FixedPrecisionTensor, other: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(type(other), "_fedmq_autograd", False) and _autograd_class:
            return getattr(_autograd_class[0](self), name)(other, *args, **kwargs)
        return method(self, other, *args, **kwargs)

    op.__name__, op.__qualname__, op.__doc__ = name, method.__qualname__, method.__doc__
    return op


def _check_matmul_operand(method):
    def op(self: FixedPrecisionTensor, other: Any) -> Any:
        if not isinstance(other, (torch.Tensor, FixedPrecisionTensor)):
            raise TypeError(f"matmul takes tensors of at least one dimension (as torch.matmul), "
                            f"got {type(other).__name__}: use * to scale by a number")
        return method(self, other)

    op.__name__, op.__qualname__, op.__doc__ = method.__name__, method.__qualname__, \
        method.__doc__
    return op


FixedPrecisionTensor.matmul = FixedPrecisionTensor.mm = \
    _check_matmul_operand(FixedPrecisionTensor.matmul)
FixedPrecisionTensor.rmatmul = _check_matmul_operand(FixedPrecisionTensor.rmatmul)
for _name, _operators in {"add": ("__add__", "__radd__", "__iadd__"),
                          "sub": ("__sub__", "__isub__"), "rsub": ("__rsub__",),
                          "mul": ("__mul__", "__rmul__", "__imul__"),
                          "matmul": ("__matmul__", "mm"), "rmatmul": ("__rmatmul__",),
                          "div": ("__truediv__",), "rdiv": ("__rtruediv__",),
                          "gt": ("__gt__",), "lt": ("__lt__",), "ge": ("__ge__",),
                          "le": ("__le__",), "eq": ("__eq__",), "ne": ("__ne__",)}.items():
    _op = _lifting(_name)
    for _attr in (_name, *_operators):
        setattr(FixedPrecisionTensor, _attr, _op)
del _name, _operators, _op, _attr


def _classification_loss(name: str):
    def loss(self: FixedPrecisionTensor, target: Any, *args: Any, **kwargs: Any
             ) -> FixedPrecisionTensor:
        if not _autograd_class:
            raise RuntimeError(f"{name} needs fedmq.smpc.autograd, which fedmq.TorchHook(torch) "
                               f"loads")
        return getattr(_autograd_class[0](self), name)(target, *args, **kwargs).child

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = (f"F.{name} of scores (N, C) without gradients (an evaluation loop's loss): "
                    f"AutogradTensor.{name} (fedmq.smpc.autograd: targets, reductions, "
                    f"precision and errors) on a constant, its value returned.")
    return loss


FixedPrecisionTensor.cross_entropy = _classification_loss("cross_entropy")
FixedPrecisionTensor.nll_loss = _classification_loss("nll_loss")
