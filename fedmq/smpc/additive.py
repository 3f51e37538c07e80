"""Additive secret sharing over the ring Z/2^64Z (int64 with native wraparound).

`x.share(bob, alice, crypto_provider=cp)` splits an integer tensor x into n uniformly random
shares s_1..s_n with s_1 + ... + s_n = x (mod 2^64) and sends s_i to party i; the result, an
`AdditiveSharingTensor`, holds one fedmq pointer per party. Linear operations (add, sub, neg,
multiplication by a public value, sum, reshapes, slicing) are Commands each party runs on its own
share; products and comparisons are protocols (beaver.py, truncation.py, comparison.py) that
open only uniformly masked values to the coordinator and take their correlated randomness from
the crypto provider (provider.py), which sends it to the parties directly.

Floats are refused: call `.fix_precision()` first (PySyft silently shared garbage, #2176).
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.client import WorkerClient
from fedmq.pointers.tensor import PointerTensor
from fedmq.smpc import comparison, keywords, shares as _shares
from fedmq.smpc.beaver import beaver_finish, beaver_op, triple_params
from fedmq.smpc.dispatch import SmpcTensor
from fedmq.smpc.provider import primitive_store, share_shapes
from fedmq.smpc.ring import FIELD as _RING_SIZE, INT64_MAX, INT64_MIN, additive_split
from fedmq.smpc.shares import open_shares, remote
from fedmq.smpc.truncation import (EXACT_MAX_DIVISOR, exact_mode, exact_wanted, truncate,
                                   truncate_exact_finish)


class RingSize(int):
    """The ring's size 2**64 as `x.child.field` gives it: an int equal to 2**64 (so Python
    arithmetic on it is exact), for which `int64_tensor % field` is the ring element the
    tensor already is. int64 tensors hold Z/2^64Z in two's complement, so the seed's manual
    reconstruction `(s0 + s1 + s2) % x.child.field` returns the (wrapped) int64 sum unchanged
    (torch cannot compute a remainder by 2**64, which does not fit an int64). Other torch
    operations with it raise ValueError."""

    _MODS = (torch.remainder, torch.Tensor.remainder, torch.Tensor.__mod__, torch.fmod,
             torch.Tensor.fmod)

    def __new__(cls) -> "RingSize":
        return super().__new__(cls, _RING_SIZE)

    def __repr__(self) -> str:
        return "18446744073709551616"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in cls._MODS and len(args) == 2 and not kwargs and \
                isinstance(args[0], torch.Tensor) and isinstance(args[1], RingSize):
            if args[0].dtype not in (torch.int64, torch.int32, torch.int16, torch.int8,
                                     torch.uint8, torch.bool):
                raise ValueError(f"tensor % field takes an integer tensor (ring elements), got "
                                f"{args[0].dtype}")
            return args[0].to(torch.int64).clone()
        # ValueError, not TypeError: torch turns a TypeError from `t + field` into
        # NotImplemented and Python's own message would not say what is allowed
        raise ValueError(f"{getattr(func, '__name__', func)} with the ring size 2**64: only "
                        f"`int64_tensor % field` is defined (the tensor, already a ring "
                        f"element); use int(field) for Python integer arithmetic")


#: the ring's size, 2**64 (`x.child.field`)
FIELD = RingSize()


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor) or isinstance(value, SmpcTensor):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_parties(workers: tuple, crypto_provider: Any) -> list:
    """The parties as a list (given one by one or as one list/tuple): 2 to 5 distinct workers
    (VirtualWorker, AMQPClientWorker: objects, not their ids); the crypto provider, if any,
    a worker that is none of them and not the local worker. Raises TypeError for something
    that is not a worker, ValueError for a wrong count or a repeated worker."""
    if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
        workers = tuple(workers[0])
    for i, w in enumerate(workers):
        if not isinstance(w, WorkerClient):
            hint = (f" (pass the worker object, not its id: e.g. the VirtualWorker or "
                    f"AMQPClientWorker named {w!r})" if isinstance(w, str) else "")
            raise TypeError(f"share() takes the workers that hold the shares, got "
                            f"{_describe(w)} as party {i + 1} of {len(workers)}{hint}")
    if not 2 <= len(workers) <= 5:
        raise ValueError(f"share() takes 2 to 5 workers, got {len(workers)}")
    ids = [w.id for w in workers]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"share() needs distinct workers, got {', '.join(map(repr, ids))} "
                         f"({', '.join(map(repr, repeated))} more than once)")
    if crypto_provider is not None:
        if not isinstance(crypto_provider, WorkerClient):
            hint = (f" (pass the worker object, not its id {crypto_provider!r})"
                    if isinstance(crypto_provider, str) else "")
            raise TypeError(f"share(): crypto_provider is a worker that is none of the "
                            f"parties (or None), got {_describe(crypto_provider)}{hint}")
        if crypto_provider.id in ids:
            raise ValueError(f"the crypto provider {crypto_provider.id!r} must not be one of the "
                             f"share holders: it would see both its share and the triples")
        local = getattr(getattr(crypto_provider, "network", None), "local_worker", None)
        if crypto_provider is local:
            raise ValueError("the crypto provider must not be the local worker (the "
                             "coordinator would see the triples): use a separate worker")
    return list(workers)


def share_tensor(tensor: torch.Tensor, *workers: Any, crypto_provider: Any = None,
                 requires_grad: bool = False, **pysyft: Any) -> "AdditiveSharingTensor":
    """`tensor.share(*workers, crypto_provider=None)`: additive shares of an integer tensor
    (any integer dtype, as int64 ring elements: `.get()` gives int64), one per worker (2-5
    distinct workers; the crypto provider, a worker that is none of them, deals the products'
    and comparisons' randomness).

    PySyft's keywords (fedmq/smpc/keywords.py): `protocol="snn"`, `field=2**64`,
    `dtype="long"`, `no_wrap=False` are accepted (they describe what fedmq does), other values
    and other keywords raise TypeError. `requires_grad=True` raises ValueError here: integer
    tensors have no gradients (use `x.fix_precision().share(..., requires_grad=True)`).
    Raises ValueError for floats (fix_precision() first) and bools (share `t.long()`), and for
    bad parties (`_check_parties`)."""
    keywords.check("share", pysyft, keywords.SHARE, honoured=("crypto_provider",
                                                              "requires_grad"))
    if type(requires_grad) is not bool:
        raise TypeError(f"share(): requires_grad must be True or False, got {requires_grad!r}")
    if requires_grad:
        raise ValueError("requires_grad=True needs a fixed-precision tensor (integer tensors "
                         "have no gradients): x.fix_precision().share(*workers, "
                         "crypto_provider=..., requires_grad=True)")
    if isinstance(tensor, PointerTensor):
        raise TypeError("share_tensor() splits a local tensor; a pointer is split by the "
                        "worker holding it: call ptr.share(...) (fedmq.smpc.remote)")
    check_shareable_dtype(tensor.dtype)
    parties = _check_parties(workers, crypto_provider)
    shares = additive_split(tensor.detach().to(torch.int64), len(parties))
    pointers = [s.send(w) for s, w in zip(shares, parties)]
    return AdditiveSharingTensor(pointers, crypto_provider)


def check_shareable_dtype(dtype: torch.dtype, remote: bool = False) -> None:
    """Raise ValueError unless `dtype` is an integer dtype other than bool (what is secret-
    shared: ring elements of Z/2^64Z)."""
    get = ".get().get()" if remote else ".get()"
    if dtype.is_floating_point or dtype.is_complex:
        where = " where it is" if remote else ""
        raise ValueError(f"cannot secret-share a {dtype} tensor: shares live in the "
                         f"integers mod 2**64. Encode it{where} first with "
                         f"{'ptr' if remote else 'tensor'}.fix_precision().share(...) and "
                         f"decode the result with {get}.float_precision()")
    if dtype == torch.bool:
        raise ValueError(f"cannot secret-share a torch.bool tensor: shares are int64 ring "
                         f"elements, and the value would come back as int64. Share "
                         f"t.long() and turn the result back with {get}.bool()")


def _is_public_int(value: Any) -> bool:
    return type(value) is int or type(value) is bool


def _is_mask(index: Any) -> bool:
    """A boolean tensor or list of bools used as an index."""
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    return isinstance(index, list) and bool(index) and all(type(i) is bool for i in index)


class AdditiveSharingTensor(SmpcTensor):
    """A tensor secret-shared among 2-5 workers: `shares[i]` is a pointer to party i's share.

    PySyft chained wrapper -> AdditiveSharingTensor; here the object is both, so `x.child` is
    `x` itself and `x.child.field` is the ring size 2**64, as in the seed.
    """

    field = FIELD

    def __init__(self, shares: list[PointerTensor], crypto_provider: Any = None) -> None:
        if len(shares) < 2:
            raise ValueError("a shared tensor needs at least two shares")
        self.shares = list(shares)
        self.crypto_provider = crypto_provider
        self.shape = shares[0].shape_local
        self.dtype = torch.int64

    # -- structure -----------------------------------------------------------------------------
    @property
    def child(self) -> "AdditiveSharingTensor":
        return self

    @property
    def locations(self) -> list:
        return [s.location for s in self.shares]

    @property
    def n_parties(self) -> int:
        return len(self.shares)

    def _new(self, shares: list) -> "AdditiveSharingTensor":
        return AdditiveSharingTensor(shares, self.crypto_provider)

    def _same_parties(self, other: "AdditiveSharingTensor") -> None:
        if [l.id for l in self.locations] != [l.id for l in other.locations]:
            raise ValueError("both shared tensors must be shared among the same workers, in "
                             "the same order")

    def _provider(self, what: str) -> Any:
        if self.crypto_provider is None:
            raise ValueError(f"{what} on shared tensors needs a crypto provider: share with "
                             f".share(*workers, crypto_provider=some_other_worker)")
        return self.crypto_provider

    def map(self, op: str, *args: Any, **kwargs: Any) -> "AdditiveSharingTensor":
        """Run a linear op on every share (args are public)."""
        return self._new([remote(s.location, op, s, *args, **kwargs) for s in self.shares])

    # -- opening -----------------------------------------------------------------------------------
    def get(self) -> torch.Tensor:
        """Reconstruct the value (sum of the shares mod 2^64) and delete the shares."""
        return open_shares([self.shares])[0]

    def virtual_get(self) -> torch.Tensor:
        """Reconstruct without deleting the shares."""
        return open_shares([self.shares], delete=False)[0]

    reconstruct = virtual_get

    def copy(self) -> "AdditiveSharingTensor":
        return self.map("torch.clone")

    # -- linear operations ---------------------------------------------------------------------
    def _public(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if isinstance(value, PointerTensor):
                raise ValueError("cannot combine a shared tensor with a pointer: share it too")
            if value.is_floating_point():
                raise ValueError("cannot combine a shared integer tensor with a float tensor: "
                                 "use fix_precision() on both")
            return value.to(torch.int64)
        if _is_public_int(value):
            if not INT64_MIN <= int(value) <= INT64_MAX:
                raise ValueError(f"public value {value} does not fit in int64")
            return int(value)
        if isinstance(value, float):
            raise ValueError("cannot combine a shared integer tensor with a float: use "
                             "fix_precision()")
        raise TypeError(f"unsupported operand {type(value).__name__}")

    def add(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._same_parties(other)
            return self._new([remote(a.location, "torch.add", a, b)
                              for a, b in zip(self.shares, other.shares)])
        pub = self._public(other)
        first = remote(self.shares[0].location, "torch.add", self.shares[0], pub)
        # the other parties copy their share (a result never aliases an input's share: `.get()`
        # of one must not consume the other), broadcasting like party 0's if needed
        rest = [remote(s.location, "torch.clone", s)
                if not isinstance(pub, torch.Tensor) or pub.shape == self.shape
                else remote(s.location, "torch.add", s, torch.zeros_like(pub))
                for s in self.shares[1:]]
        return self._new([first, *rest])

    def neg(self) -> "AdditiveSharingTensor":
        return self.map("torch.neg")

    def sub(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._same_parties(other)
            return self._new([remote(a.location, "torch.sub", a, b)
                              for a, b in zip(self.shares, other.shares)])
        pub = self._public(other)
        return self.add(-pub)

    def rsub(self, other: Any) -> "AdditiveSharingTensor":
        return self.neg().add(other)

    def product(self, op: str, other: Any, divisor: int = 1, **kwargs: Any
                ) -> "AdditiveSharingTensor":
        """`self op other` ("mul", "matmul", "conv2d") divided by the public positive int
        `divisor`: one fused Beaver product + truncation when `other` is shared too (what
        fixed-point products use), else a local product and `div`."""
        if isinstance(other, AdditiveSharingTensor):
            if divisor != 1 and exact_mode() and divisor <= EXACT_MAX_DIVISOR:
                return _exact_product(op, self, other, divisor, **kwargs)
            return beaver_op(op, self, other, divisor, **kwargs)
        if op == "conv2d":
            out = self.map("F.conv2d", self._public(other), None, **kwargs)
        else:
            out = self.map("torch." + op, self._public(other))
        return out if divisor == 1 else out.div(divisor)

    def mul(self, other: Any) -> "AdditiveSharingTensor":
        return self.product("mul", other)

    def matmul(self, other: Any) -> "AdditiveSharingTensor":
        return self.product("matmul", other)

    def rmatmul(self, other: Any) -> "AdditiveSharingTensor":
        pub = self._public(other)
        return self._new([remote(s.location, "torch.matmul", pub, s) for s in self.shares])

    mm = matmul

    def rconv2d(self, input: Any, stride=1, padding=0, dilation=1, groups=1
                ) -> "AdditiveSharingTensor":
        """F.conv2d(input, self): a public input with this shared weight (linear in the
        weight: each party convolves the input with its share)."""
        pub = self._public(input)
        return self._new([remote(s.location, "F.conv2d", pub, s, None, stride, padding,
                                 dilation, groups) for s in self.shares])

    def pad(self, pad: tuple, value: int = 0) -> "AdditiveSharingTensor":
        """F.pad with a public int `value`: party 0 pads with it, the others with 0."""
        return self._new([remote(s.location, "F.pad", s, list(pad), "constant",
                                 int(value) if i == 0 else 0)
                          for i, s in enumerate(self.shares)])

    def expand(self, *shape) -> "AdditiveSharingTensor":
        return self.map("Tensor.expand", tuple(_flat_shape(shape)))

    def conv2d(self, weight: Any, bias: Any = None, stride=1, padding=0, dilation=1,
               groups=1) -> "AdditiveSharingTensor":
        if self.dim() == 3:  # unbatched (C, H, W), as torch: a batch of one, (C_out, H', W')
            out = self.reshape(1, *self.shape).conv2d(weight, bias, stride, padding, dilation,
                                                      groups)
            return out.reshape(*out.shape[1:])
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        out = self.product("conv2d", weight, **kwargs)
        if bias is not None:
            out = out + (bias.reshape(1, -1, 1, 1) if isinstance(bias, AdditiveSharingTensor)
                         else self._public(bias).reshape(1, -1, 1, 1))
        return out

    def div(self, divisor: int) -> "AdditiveSharingTensor":
        """Division by a public positive int (probabilistic truncation, truncation.py)."""
        if not _is_public_int(divisor) or divisor <= 0:
            raise ValueError("a shared tensor can only be divided by a positive public int")
        if divisor >= 2 ** 62:  # the truncation's divisors (found by review: the provider's
            # internal message came back for x / 10**30)
            raise ValueError(f"a shared tensor's divisor must be below 2**62, got {divisor}: "
                             f"every value in the ring (|x| < 2**63) divided by it is 0 or -1")
        return truncate(self, int(divisor))

    def rdiv(self, other: Any) -> "AdditiveSharingTensor":
        """`other / x` for a shared integer x: refused (integer sharing has no reciprocal)."""
        raise ValueError("a value divided by a shared integer tensor: encode both with "
                         "fix_precision() (fixed-point division, |divisor| in [0.0078, 16384]); a "
                         "shared integer tensor divides by a positive public int only")

    def sum(self, dim=None, keepdim: bool = False) -> "AdditiveSharingTensor":
        if dim is None:
            return self.map("torch.sum")
        return self.map("torch.sum", dim, keepdim=keepdim)

    def mean(self, dim=None, keepdim: bool = False) -> "AdditiveSharingTensor":
        """Refused, as torch refuses the mean of an integer tensor (its fraction would be
        lost, as x / d's is): fix_precision() before sharing, or sum() // count."""
        raise TypeError("mean() of integer shares: their mean is not an integer (torch refuses "
                        "it on integer tensors too). Encode first, x.fix_precision().share(...)"
                        ".mean(), or floor it yourself: x.sum() // x.numel() (exact to 1 unit)")

    # shape manipulation: local on every share
    def reshape(self, *shape) -> "AdditiveSharingTensor":
        return self.map("torch.reshape", tuple(_flat_shape(shape)))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "AdditiveSharingTensor":
        return self.map("torch.flatten", start_dim, end_dim)

    def t(self) -> "AdditiveSharingTensor":
        return self.map("torch.t")

    def transpose(self, d0: int, d1: int) -> "AdditiveSharingTensor":
        return self.map("torch.transpose", d0, d1)

    def permute(self, *dims) -> "AdditiveSharingTensor":
        return self.map("torch.permute", tuple(_flat_shape(dims)))

    def unsqueeze(self, dim: int) -> "AdditiveSharingTensor":
        return self.map("torch.unsqueeze", dim)

    def squeeze(self, *dim) -> "AdditiveSharingTensor":
        return self.map("torch.squeeze", *dim)

    def __getitem__(self, index: Any) -> "AdditiveSharingTensor":
        """x[index]; TypeError for a boolean mask (found by review: a meta-tensor error)."""
        if any(_is_mask(i) for i in (index if isinstance(index, tuple) else (index,))):
            raise TypeError("a shared tensor cannot be indexed with a boolean mask (the "
                            "shape of the result would depend on the mask's values): index "
                            "with the mask's positions, x[mask.nonzero(as_tuple=True)] (same "
                            "result, as torch)")
        return self.map("Tensor.__getitem__", index)

    cat = staticmethod(_shares.cat)      # each party joins its own shares (shares.py)
    stack = staticmethod(_shares.stack)

    # -- comparisons and friends (comparison.py) ---------------------------------------------------
    def lt(self, other: Any) -> "AdditiveSharingTensor":
        return comparison.ltz(self.sub(other))

    def gt(self, other: Any) -> "AdditiveSharingTensor":
        return comparison.ltz(self.rsub(other) if not isinstance(other, AdditiveSharingTensor)
                              else other.sub(self))

    def ge(self, other: Any) -> "AdditiveSharingTensor":
        return self.lt(other).rsub(1)

    def le(self, other: Any) -> "AdditiveSharingTensor":
        return self.gt(other).rsub(1)

    def eq(self, other: Any) -> "AdditiveSharingTensor":
        return comparison.eq(self, other)

    def ne(self, other: Any) -> "AdditiveSharingTensor":
        return self.eq(other).rsub(1)

    def relu(self) -> "AdditiveSharingTensor":
        return comparison.relu(self)

    def abs(self) -> "AdditiveSharingTensor":
        return comparison.abs_(self)

    def sign(self) -> "AdditiveSharingTensor":
        return comparison.ltz(self).mul(-2).add(1)

    def max(self, dim: int | None = None, keepdim: bool = False):
        """Without `dim`: the maximum, shape (1,) as PySyft 0.2 (the seed's §9.3 prints
        `tensor([4])` for an integer shared tensor; FixedPrecisionTensor.max() reshapes to
        torch's ()). With `dim`: (values, indices) as
        torch, the index of the *first* maximum on ties (torch's documented choice): the
        tournament runs on m*x - i (i the index, m the smallest odd number >= the dim's size),
        whose maximum is unique, and x = (m*x - i + i) * m**-1 in Z/2^64Z (m is odd, hence
        invertible), so the values cost nothing more. Range: every two entries must satisfy
        |x_a - x_b| * m + k < 2**63 (without `dim`: |x_a - x_b| < 2**63), as the tournament
        takes the sign of their difference in the ring; past it the result is wrong.
        (PySyft 0.2's argmax made a one-hot of *every* tied maximum by pairwise comparisons and
        summed index * one-hot, so ties gave the sum of the tied indices, not an index.)"""
        if dim is None:
            return comparison.max_(self, None, keepdim)
        nd = self.dim()
        if not -nd <= dim < nd:
            raise IndexError(f"Dimension out of range (expected to be in range of "
                             f"[{-nd}, {nd - 1}], but got {dim})")
        dim %= nd
        k = self.shape[dim]
        m = k if k % 2 else k + 1
        index = torch.arange(k).reshape([k if d == dim else 1 for d in range(nd)])
        out = comparison.max_(self.mul(m).sub(index.expand(tuple(self.shape))), dim, keepdim)
        values = out.values.add(out.indices).mul(pow(m, -1, _RING_SIZE) - _RING_SIZE
                                                 if pow(m, -1, _RING_SIZE) > INT64_MAX
                                                 else pow(m, -1, _RING_SIZE))
        return comparison.MaxResult(values, out.indices)

    def min(self, dim: int | None = None, keepdim: bool = False):
        """Minimum (first index on ties with `dim`, as torch)."""
        out = self.neg().max(dim, keepdim)
        if dim is None:
            return out.neg()
        return type(out)(out.values.neg(), out.indices)

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> "AdditiveSharingTensor":
        """Index of the first maximum (torch's choice on ties); over all entries (flattened)
        without `dim`."""
        if dim is None:
            return self.flatten().max(0, False).indices
        return self.max(dim, keepdim).indices

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> "AdditiveSharingTensor":
        return self.neg().argmax(dim, keepdim)

    # -- operators ---------------------------------------------------------------------------------
    __add__ = __radd__ = add
    __sub__ = sub
    __rsub__ = rsub
    __mul__ = __rmul__ = mul
    __matmul__ = matmul
    __rmatmul__ = rmatmul
    __neg__ = neg
    __lt__ = lt
    __gt__ = gt
    __le__ = le
    __ge__ = ge
    __eq__ = eq  # type: ignore[assignment]
    __ne__ = ne  # type: ignore[assignment]
    __hash__ = object.__hash__
    __abs__ = abs

    def __floordiv__(self, other: int) -> "AdditiveSharingTensor":
        """x // d for a public positive int d: floor(x / d) or one more, exact when d divides x
        (probabilistic truncation: SecureML's local one between two parties, as CrypTen and
        SPU; ABY3's with more; each result is exact to 1 unit, not bit-exact)."""
        return self.div(other)

    def __truediv__(self, other: Any) -> "AdditiveSharingTensor":
        """Refused: integer shares cannot hold x / d's fraction (torch would return floats)."""
        raise TypeError("x / d on integer shares: their true quotient is not an integer. "
                        "Encode first, x.fix_precision().share(...) / d (fixed point, exact to "
                        "its last digit), or floor-divide integer shares, x // d (exact to 1 "
                        "unit)")

    def __bool__(self) -> bool:
        raise ValueError("the truth value of a shared tensor is secret: .get() it first")

    def __repr__(self) -> str:
        lines = ["(Wrapper)>[AdditiveSharingTensor]"]
        for s in self.shares:
            lines.append("\t-> " + s.describe_pointer().replace("(Wrapper)>", ""))
        provider = getattr(self.crypto_provider, "id", None)
        lines.append(f"\t*crypto provider: {provider}*")
        return "\n".join(lines)


def _exact_product(op: str, x: AdditiveSharingTensor, y: AdditiveSharingTensor, divisor: int,
                   **kwargs: Any) -> AdditiveSharingTensor:
    """x op y / divisor in exact mode (truncation.exact_truncation, what the approximations
    run under): the Beaver product, then `truncate_exact` (never wraps for a product below
    ~2**62), the triple, pairs and bit dealt in one request; two rounds, as the fused ABY3
    product. The Beaver cache is not used here (elementwise products of the approximations)."""
    x._same_parties(y)
    provider = x._provider(f"{op} of two shared tensors")
    params = triple_params(op, x.shape, y.shape, **kwargs)
    wanted = [(op, params)] + exact_wanted(share_shapes(op, params)[2], divisor)
    (a, b, c), *dealt = primitive_store(provider).take_many(provider, x.locations, wanted)
    return truncate_exact_finish(beaver_finish(op, x, y, a, b, c, **kwargs), divisor, *dealt)


def _flat_shape(shape: tuple) -> list:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        return list(shape[0])
    return list(shape)


def _count(shape: torch.Size, dim) -> int:
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    n = 1
    for d in dims:
        n *= shape[d]
    return n
