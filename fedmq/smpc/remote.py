"""Encrypting a value where it lives: `ptr.fix_precision()` and `ptr.share(...)` on a pointer,
as PySyft 0.2 did (seed §10.2: `params[i].copy().fix_precision().share(bob, alice,
crypto_provider=james).get()`).

    fix_precision_remote   the worker holding the value encodes it (FixPrecision, record 94,
                           posted); returns a FixedPrecisionPointer, nothing comes back
    share_remote           the holder splits the value (CSPRNG, ring.additive_split) and sends
                           each party its share itself (ShareRequest, record 93); returns a
                           SharedPointer. The client never sees a share.
    FixedPrecisionPointer  a pointer to a fixed-precision value: `.get()` -> FixedPrecisionTensor,
                           `.float_precision()` decodes remotely (-> a float PointerTensor),
                           `.share(...)` as above
    SharedPointer          a pointer to a shared value: `.get()` -> the value, still shared (a
                           FixedPrecisionTensor of an AdditiveSharingTensor, or the latter)
    handle_fix_precision, handle_share_request   the holder's handlers

Where the shares are: the client chooses one id per party; the holder stores its own share (if
it is a party) and sends every other party its share under that id in one `ObjectMessage`,
worker to worker, before it answers (so the shares exist when the client uses them). The
pointer to the shared value therefore needs nothing more from anyone: `.get()` hands over the
client's pointers to the shares (no message), exactly the object
`t.fix_precision().share(a, b, crypto_provider=c)` builds from a local tensor.

A request the client gives up on (no answer within its timeout: the holder, or a party the
holder is sending a share to, stalls) leaves no share behind, in any order of events: the
ShareRequest goes with a msg_id, the client Cancels it (not started: refused when it comes;
running: the holder stops before sending, or once the parties answered, and deletes its own
share and, by a message after each party's share, theirs), then deletes every share under the
ids it chose, and raises ShareTimeout naming the party that does not answer (or the holder).

Trust boundary (fedmq.policy): the holder reads the value as the sending principal (a stranger
cannot name another principal's object: "not found"), and shares of private data go only where
the private value itself could go (`ForwardObjects`' gate): every party but the holder must be
one of the holder's peer workers (`--grant worker:<party>`), checked for all parties before any
share is stored or sent; the shares carry the private mark (raw if the value is the owner's
data), so a party that releases more than the holder refuses them and reconstructing them is a
release the parties' policies decide, as a `.get()` of the value would be.

Parties: 2 to 5 distinct workers, none of them the client's own worker ("me": the client would
hold a share); the holder may be one of them (§10.2 shares bob's parameters among bob and
alice). The crypto provider must not be a party (as for local values, and unlike PySyft 0.2,
which did not check: a provider holding a share sees the triples' secrets and its share, hence
every opened product's inputs). Only integer (and bool) values are shared; floats are refused
before anything is sent: `fix_precision()` them first.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from fedmq import limits, messages as m
from fedmq.client import call_all
from fedmq.errors import AccessDeniedError, PointerError, ReplyTimeout, TransportError
from fedmq.execution import execute
from fedmq.ids import new_id
from fedmq.pointers import dispatch, keywords as _pointer_keywords
from fedmq.pointers.tensor import PointerTensor
from fedmq.smpc import keywords
from fedmq.smpc.additive import (AdditiveSharingTensor, _check_parties,
                                  check_shareable_dtype)
from fedmq.smpc.autograd import AutogradTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor, _check_params, encode
from fedmq.smpc.messages import FixPrecision, ShareRequest
from fedmq.smpc.provider import give_up, post_delete
from fedmq.smpc.ring import additive_split
from fedmq.smpc.shares import make_pointer

#: the most parties a value is shared among (as for local values)
MAX_PARTIES = 5


# -- the worker side ----------------------------------------------------------------------------

def _encoder(base: Any, precision_fractional: Any):
    scale = _check_params(base, precision_fractional)

    def fix_precision(value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or getattr(type(value), "_fedmq_kind", None):
            raise ValueError(f"fix_precision encodes a tensor stored here, not "
                             f"{type(value).__name__}")
        return encode(value, scale)
    return fix_precision


def handle_fix_precision(session: Any, msg: FixPrecision) -> None:
    """On the holder: round(x * base**precision_fractional) as int64 (fixed_precision.encode),
    stored under the caller's `result_id`. The encoding is the value itself, re-encoded: it is
    marked as the value is (raw if it is the owner's data, as a dtype conversion would be).
    Raises ValueError for bad parameters, NaN/inf, a value that does not fit; the failure is
    also recorded under `result_id`."""
    if type(msg.id) is not int or type(msg.result_id) is not int:
        raise ValueError("FixPrecision names a stored object and a result id (ints)")
    try:
        fn = _encoder(msg.base, msg.precision_fractional)
    except ValueError as exc:
        fn = functools.partial(_raise, exc)  # recorded under the result id like any failure
    execute(fn, [m.Ref(msg.id)], None, [msg.result_id], session.store, session.id,
            what="fix_precision")
    return None


def _raise(exc: Exception, *args: Any) -> None:
    raise exc


def _check_share_request(msg: ShareRequest) -> None:
    parties, ids = msg.parties, msg.ids
    if type(msg.id) is not int:
        raise ValueError(f"ShareRequest.id names a stored object (an int), got {msg.id!r}")
    if type(parties) is not list or not all(type(p) is str and p for p in parties):
        raise ValueError("ShareRequest.parties is a list of worker ids")
    if not 2 <= len(parties) <= MAX_PARTIES or len(set(parties)) != len(parties):
        raise ValueError(f"a value is shared among 2 to {MAX_PARTIES} distinct workers, got "
                         f"{parties!r}")
    if type(ids) is not list or len(ids) != len(parties) or \
            not all(type(i) is int for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("ShareRequest.ids holds one distinct int id per party")


def _split(parties: list, holder: str):
    def split(value: Any) -> tuple:
        if not isinstance(value, torch.Tensor) or getattr(type(value), "_fedmq_kind", None):
            raise ValueError(f"only a tensor stored here can be shared, not "
                             f"{type(value).__name__}")
        if value.is_floating_point() or value.is_complex():
            raise ValueError(f"cannot secret-share a {value.dtype} tensor: shares live in the "
                             f"integers mod 2**64; encode it first with .fix_precision()")
        if value.dtype == torch.bool:
            raise ValueError("cannot secret-share a torch.bool tensor (shares are int64 ring "
                             "elements): share t.long()")
        shares = additive_split(value.detach().to(torch.int64), len(parties))
        own = [s for p, s in zip(parties, shares) if p == holder]
        return own, shares
    return split


def handle_share_request(session: Any, msg: ShareRequest) -> None:
    """On the holder: split object `msg.id` into additive shares, keep its own, send the
    others to their parties (see the module docstring for the policy gate). Raises
    ValueError for a malformed request or a float value, ObjectNotFoundError for an object the
    principal cannot see, AccessDeniedError for private values and a party that is not a peer."""
    _check_share_request(msg)
    if session.network is None:
        raise ValueError(f"worker {session.id!r} cannot reach other workers, so it cannot send "
                         f"shares")
    holder = session.id
    own_ids = [i for p, i in zip(msg.parties, msg.ids) if p == holder]
    # read and split as the principal (the view taints the message if the value is private);
    # the holder's own share is stored under the caller's id, marked like the value
    try:
        shares = execute(_split(msg.parties, holder), [m.Ref(msg.id)], None, own_ids,
                         session.store, holder, split=True, what="share")
    except Exception:
        for i in own_ids:  # no failure is left under an id no pointer will own
            session.store.delete(i)
        raise
    acting = session.acting
    outgoing = [(p, i, s) for p, i, s in zip(msg.parties, msg.ids, shares) if p != holder]
    if acting is not None and acting.tainted:
        refused = [p for p, _, _ in outgoing if not acting.may_forward_private(p)]
        if refused:
            for i in own_ids:
                session.store.delete(i)
            raise AccessDeniedError(
                f"object {msg.id} holds private values; worker {holder!r} sends them, even as "
                f"secret shares, only to its peer workers, and {', '.join(map(repr, refused))} "
                f"{'is' if len(refused) == 1 else 'are'} not (the data owner grants it with "
                f"--grant worker:{refused[0]})", worker=holder)
    try:
        limits.check("ShareRequest")  # the client gave up (Cancel): send nothing
        call_all([(session.network.client(p), m.ObjectMessage([m.StoredObject(i, s)]))
                  for p, i, s in outgoing], sender=holder)
        limits.check("ShareRequest")  # it gave up while a party was slow: take them back
    except Exception:
        # no party keeps a share of a value that was not shared whole
        for i in own_ids:
            session.store.delete(i)
        for p, i, _ in outgoing:
            try:  # no reply asked: a party that died must not fail the next call to it
                post_delete(session.network.client(p), [i], sender=holder)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise
    return None


# -- the client side ------------------------------------------------------------------------------

def _remote_target(t: torch.Tensor) -> tuple[Any, Any, Any]:
    """(location, wire reference, owner) of a pointer or a sent parameter/buffer."""
    if type(t)._fedmq_kind == "pointer":
        t._check_usable()
        return t.location, m.Ref(t.id_at_location, t.attr), t.owner
    return dispatch.location_of(t), m.Ref(dispatch.remote_id(t)), dispatch.owner_of(t)


def _meta(t: torch.Tensor) -> tuple[tuple, torch.dtype]:
    with torch._C.DisableTorchFunctionSubclass():
        return tuple(t.shape), t.dtype


def is_remote_value(t: Any) -> bool:
    """Whether `t` is a pointer or a sent parameter/buffer whose data is on a worker now. A
    parameter whose `model.get()` was deferred is fetched first (someone looks at it now), and
    is then local: False."""
    kind = getattr(type(t), "_fedmq_kind", None)
    if kind in ("parameter", "buffer") and t._fedmq_pending is not None:
        t._fedmq_pending.carry_out()  # `model.get()` was deferred: the value is here now
        return False
    return kind in ("pointer", "parameter", "buffer")


def fix_precision_remote(t: torch.Tensor, base: int = 10, precision_fractional: int = 3,
                         **pysyft: Any) -> "FixedPrecisionPointer":
    """`ptr.fix_precision(base, precision_fractional)` for a tensor on a worker: that worker
    encodes it (one posted FixPrecision; errors such as NaN or overflow surface at the next
    use). PySyft's other keywords as for a local tensor (fedmq/smpc/keywords.py: accepted at
    the values describing fedmq's encoding, TypeError otherwise). Raises ValueError for a bad
    base/precision (checked here first)."""
    keywords.check("fix_precision", pysyft, keywords.FIX_PRECISION,
                   honoured=("base", "precision_fractional"))
    _check_params(base, precision_fractional)
    location, ref, owner = _remote_target(t)
    shape, dtype = _meta(t)
    if dtype.is_complex:
        raise ValueError("complex tensors cannot be fixed-precision encoded")
    rid = new_id()
    if ref.attr is not None:
        raise ValueError("a gradient cannot be encoded where it is: .copy() it first")
    location.post(FixPrecision(ref.id, rid, base, precision_fractional))
    pointer = PointerTensor(location, rid, shape, torch.int64, False, owner=owner)
    return FixedPrecisionPointer(pointer, base, precision_fractional,
                                 dtype if dtype.is_floating_point else None)


def _check_options(requires_grad: Any, options: dict) -> None:
    keywords.check("share", options, keywords.SHARE,
                   honoured=("crypto_provider", "requires_grad"))
    if type(requires_grad) is not bool:
        raise TypeError(f"share(): requires_grad must be True or False, got {requires_grad!r}")


def share_remote(t: torch.Tensor, *workers: Any, crypto_provider: Any = None,
                 requires_grad: bool = False, **options: Any) -> "SharedPointer":
    """`ptr.share(*workers, crypto_provider=...)` for an integer tensor on a worker: the holder
    splits it and sends the shares (see the module docstring). Returns a SharedPointer whose
    `.get()` is an AdditiveSharingTensor. Raises ValueError for floats, bools, requires_grad=True
    (integers have no gradient), fewer than 2 or more than 5 parties, repeated parties, the
    client's own worker as a party, a provider that is a party; TypeError for what is not a
    worker and for PySyft keywords at values fedmq cannot honour (fedmq/smpc/keywords.py);
    ShareTimeout when a party or the holder did not answer in time (no share is left behind);
    the holder's errors (not found, access denied) as the worker raised them."""
    _check_options(requires_grad, options)
    if requires_grad:
        raise ValueError("requires_grad=True needs a fixed-precision value (integer tensors "
                         "have no gradients): ptr.fix_precision().share(*workers, "
                         "crypto_provider=..., requires_grad=True)")
    shape, dtype = _meta(t)
    check_shareable_dtype(dtype, remote=True)
    return SharedPointer(_share(t, shape, workers, crypto_provider), holder=_remote_target(t)[0])


def _share(t: torch.Tensor, shape: tuple, workers: tuple, crypto_provider: Any
           ) -> AdditiveSharingTensor:
    parties = _check_parties(workers, crypto_provider)
    location, ref, _ = _remote_target(t)
    for party in parties:
        local = getattr(getattr(party, "network", None), "local_worker", None)
        if party is local or getattr(party, "id", None) == getattr(local, "id", None):
            raise ValueError(f"the client's own worker {party.id!r} cannot hold a share of a "
                             f"value on a worker (it would see it): share among other workers")
    if ref.attr is not None:
        raise ValueError("a gradient cannot be shared where it is: .copy() it first")
    ids = [new_id() for _ in parties]
    msg_id = new_id()
    try:
        location.call(ShareRequest(ref.id, [p.id for p in parties], ids), msg_id=msg_id,
                      expires=True)  # a holder restarted after the give-up must not run it
    except TransportError as exc:  # no answer: the holder may still be at it
        raise _give_up(location, parties, ids, msg_id, exc) from exc
    return AdditiveSharingTensor([make_pointer(p, i, shape) for p, i in zip(parties, ids)],
                                 crypto_provider)


class ShareTimeout(ReplyTimeout):
    """`ptr.share(...)` got no answer in time: the holder, or a party the holder was sending
    a share to, did not answer. The message says which; no share is left behind (the client
    cancelled the request and deleted every share under the ids it chose)."""


def _give_up(holder: Any, parties: list, ids: list, msg_id: int,
             exc: Exception) -> ShareTimeout:
    """Leave no share behind after an unanswered ShareRequest, in any failure order, and say
    who did not answer (provider.give_up, shared with the crypto provider's deals): Cancel
    the request on the holder, delete every party's share (the holder's too) after it, and
    probe the parties but the holder."""
    running, holder_state, silent, wait = give_up(
        holder, [(p, [i]) for p, i in zip(parties, ids)], msg_id)
    others = [p for p in parties if p.id != holder.id]
    if silent:
        who = (f"party {', '.join(map(repr, silent))} did not take "
               f"{'its share' if len(silent) == 1 else 'their shares'} (no answer within "
               f"{wait} s)")
    elif running is None:
        who = f"the holder {holder.id!r} itself does not answer"
    elif running:
        who = (f"the parties {', '.join(repr(p.id) for p in others)} answer now: one of them "
               f"was slow to take its share")
    else:
        who = f"the holder {holder.id!r} was busy and had not got to it, or finished just then"
    return ShareTimeout(
        f"share(): worker {holder.id!r} holds the value and sends each party its share, and "
        f"did not confirm within the call's timeout ({exc}); {who}. Told {holder.id!r} to "
        f"stop ({holder_state}) and every party to drop the share it may get: no share is "
        f"left behind")


class FixedPrecisionPointer:
    """A pointer to a fixed-precision value on a worker (PySyft 0.2's pointer to a
    FixedPrecisionTensor): `pointer` is a PointerTensor to the int64 encoding
    trunc(x * base**precision_fractional), shape `shape`.

    get()              -> a local FixedPrecisionTensor (same base, precision, float dtype),
                          as the worker's policy releases the value
    float_precision()  -> a PointerTensor to the decoded float tensor, computed on the worker
                          (alias float_prec)
    share(*workers, crypto_provider=None) -> SharedPointer (the worker splits the encoding)
    copy()             -> a FixedPrecisionPointer to a copy on the worker
    + - * @ neg sum    fixed-point arithmetic run on the worker, with another such pointer
                       (same worker, same base and precision) or a Python number: products
                       are rescaled there (truncation toward zero, as for local values)
    Other operands (plain tensors, pointers to plain values) are refused (TypeError): share it,
    or get() it, first.
    """

    def __init__(self, pointer: PointerTensor, base: int, precision_fractional: int,
                 float_dtype: torch.dtype | None = None) -> None:
        self.scale = _check_params(base, precision_fractional)
        self.pointer = pointer
        self.base = base
        self.precision_fractional = precision_fractional
        self.float_dtype = float_dtype or torch.get_default_dtype()

    # -- pointer attributes ------------------------------------------------------------------------
    @property
    def location(self) -> Any:
        return self.pointer.location

    @property
    def id_at_location(self) -> int:
        return self.pointer.id_at_location

    @property
    def owner(self) -> Any:
        return self.pointer.owner

    @property
    def id(self) -> int:
        return self.pointer.id

    @property
    def shape(self) -> torch.Size:
        return self.pointer.shape_local

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def _wrap(self, pointer: PointerTensor) -> "FixedPrecisionPointer":
        return FixedPrecisionPointer(pointer, self.base, self.precision_fractional,
                                     self.float_dtype)

    # -- the API -----------------------------------------------------------------------------------
    def get(self, **pysyft: Any) -> FixedPrecisionTensor:
        """Fetch the encoding (deleting it remotely): a local FixedPrecisionTensor. PySyft's
        pointer keywords (user, reason, deregister_ptr, inplace) as PointerTensor.get."""
        _pointer_keywords.check("FixedPrecisionPointer.get", pysyft, _pointer_keywords.GET)
        return FixedPrecisionTensor(self.pointer.get(), self.base, self.precision_fractional,
                                    self.float_dtype)

    def float_precision(self) -> PointerTensor:
        """Decode on the worker: a pointer to encoding / base**precision_fractional in the
        float dtype the value had (nothing comes back)."""
        return (self.pointer.double() / self.scale).to(self.float_dtype)

    float_prec = float_precision

    def fix_precision(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("this value is already in fixed precision")

    fix_prec = fix_precision

    def share(self, *workers: Any, crypto_provider: Any = None, requires_grad: bool = False,
              **options: Any) -> "SharedPointer":
        """Secret-share the encoding where it lives (see share_remote): `.get()` on the
        result is a FixedPrecisionTensor whose child is an AdditiveSharingTensor; with
        `requires_grad=True` an AutogradTensor around it (a leaf that records gradients, as
        for a local value). PySyft's keywords as share_remote."""
        _check_options(requires_grad, options)
        shared = _share(self.pointer, tuple(self.shape), workers, crypto_provider)
        value = FixedPrecisionTensor(shared, self.base, self.precision_fractional,
                                     self.float_dtype)
        if requires_grad:
            value = AutogradTensor(value, requires_grad=True)
        return SharedPointer(value, holder=self.location)

    def copy(self) -> "FixedPrecisionPointer":
        return self._wrap(self.pointer.copy())

    # -- fixed-point arithmetic on the worker (FixedPrecisionTensor's, on the pointer) ------------
    def _fixed(self) -> FixedPrecisionTensor:
        return FixedPrecisionTensor(self.pointer, self.base, self.precision_fractional,
                                    self.float_dtype)

    def _operand(self, other: Any) -> Any:
        if isinstance(other, FixedPrecisionPointer):
            if (other.base, other.precision_fractional) != (self.base,
                                                            self.precision_fractional):
                raise ValueError("both fixed-precision values need the same base and "
                                 "precision_fractional")
            return other._fixed()
        if type(other) in (int, float, bool):
            return other
        raise TypeError(f"a pointer to a fixed-precision value combines with another one (on "
                        f"the same worker) or a Python number, not {type(other).__name__}: "
                        f"share it, or get() it, first")

    def _apply(self, op: str, other: Any = None) -> "FixedPrecisionPointer":
        fixed = self._fixed()
        out = getattr(fixed, op)() if other is None else getattr(fixed, op)(self._operand(other))
        return self._wrap(out.child)

    def add(self, other: Any) -> "FixedPrecisionPointer":
        return self._apply("add", other)

    def sub(self, other: Any) -> "FixedPrecisionPointer":
        return self._apply("sub", other)

    def rsub(self, other: Any) -> "FixedPrecisionPointer":
        return self._apply("rsub", other)

    def mul(self, other: Any) -> "FixedPrecisionPointer":
        """x * y, rescaled on the worker (truncation toward zero, as local values)."""
        return self._apply("mul", other)

    def matmul(self, other: Any) -> "FixedPrecisionPointer":
        return self._apply("matmul", other)

    def neg(self) -> "FixedPrecisionPointer":
        return self._apply("neg")

    def sum(self) -> "FixedPrecisionPointer":
        return self._apply("sum")

    __add__ = __radd__ = add
    __sub__ = sub
    __rsub__ = rsub
    __mul__ = __rmul__ = mul
    __matmul__ = matmul
    __neg__ = neg

    def __repr__(self) -> str:
        return (f"{self.pointer.describe_pointer()}>FixedPrecisionTensor(base={self.base}, "
                f"precision_fractional={self.precision_fractional})")


def _additive(value: Any) -> AdditiveSharingTensor:
    """The AdditiveSharingTensor inside an AutogradTensor / FixedPrecisionTensor (or itself)."""
    while not isinstance(value, AdditiveSharingTensor):
        value = value.child
    return value


class SharedPointer:
    """A pointer to a value secret-shared where it lived (PySyft 0.2's pointer to an
    AdditiveSharingTensor): `holder` is the worker that split it; the shares are on the
    parties already, under ids this client chose.

    get() -> the value, still shared (no message: the client's pointers to the shares are
             handed over; this pointer is then spent, PointerError on a second get)
    Dropping it without get() deletes the shares (its pointers own them).
    """

    def __init__(self, value: Any, holder: Any) -> None:
        self._value = value
        self.holder = holder
        self.id = new_id()

    @property
    def location(self) -> Any:
        return self.holder

    @property
    def shared(self) -> AdditiveSharingTensor:
        return _additive(self._check())

    @property
    def shape(self) -> torch.Size:
        return self._check().shape

    def _check(self) -> Any:
        if self._value is None:
            raise PointerError("this pointer to a shared value was already fetched with .get()")
        return self._value

    def get(self, **pysyft: Any) -> Any:
        """The value, still shared (see the class); PySyft's pointer keywords (user, reason,
        deregister_ptr, inplace) as PointerTensor.get: at their defaults only, else
        TypeError."""
        _pointer_keywords.check("SharedPointer.get", pysyft, _pointer_keywords.GET)
        value = self._check()
        self._value = None
        for v in (value, getattr(value, "child", None)):  # its float_precision() says .get()
            if isinstance(v, FixedPrecisionTensor):
                v._fedmq_via_shared_pointer = True
        return value

    def __repr__(self) -> str:
        if self._value is None:
            return "(Wrapper)>[SharedPointer | spent]"
        ast = _additive(self._value)
        owner = getattr(getattr(ast.shares[0], "owner", None), "id", None)
        parties = ", ".join(s.location.id for s in ast.shares)
        provider = getattr(ast.crypto_provider, "id", None)
        return (f"(Wrapper)>[SharedPointer | {owner}:{self.id} -> {self.holder.id}: shared "
                f"among {parties}]\n\t*crypto provider: {provider}*")

    def _no_arithmetic(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("arithmetic on a pointer to a shared value: .get() it first (the value "
                        "stays shared; no share comes to this client), e.g. "
                        "`ptr.get() * 0.5` or `ptr.get() + other.get()`")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _no_arithmetic
    __matmul__ = __rmatmul__ = __truediv__ = __rtruediv__ = __floordiv__ = _no_arithmetic
    __neg__ = __gt__ = __lt__ = __ge__ = __le__ = _no_arithmetic
