"""The crypto provider: a trusted dealer of correlated randomness (Beaver triples, truncation
pairs, edaBits, binary triples, random bits), and the coordinator's store of dealt primitives.

Trust model (semi-honest, as PySyft 0.2's "crypto provider" and CrypTen's TTP mode): the
provider is a separate worker that does not collude with any share holder. It never sees the
parties' inputs; the parties never see the provider's secrets, only their own shares; the
coordinator sees neither (it chooses ids and receives openings of uniformly masked values).

    CryptoProvider        abc.ABC: what a dealer must generate (one method per primitive)
    TrustedDealer         the CSPRNG implementation a provider worker runs
    handle_deal_request   the worker handler: generate, then ObjectMessage each party its shares
    PrimitiveStore        coordinator side: deal on demand or ahead of time (preprocessing)
    DealTimeout           the provider did not confirm a deal in time (no share is left behind)

A deal that fails leaves no share behind (nobody would own it): the provider checks the whole
request (and the principal's room on it) before generating anything; if sending to a party
fails, or the coordinator cancels it meanwhile, it deletes what it sent to every party and
reports the error naming that party. The coordinator sends each DealRequest with a msg_id; when
no answer comes in time it Cancels it, deletes every id it chose on every party, probes the
parties, and raises DealTimeout naming the provider or the party that stalled (the approach of
remote.py's ShareTimeout, sharing its helpers `give_up`, `post_delete`, `silent_workers`).

Randomness comes from the operating system's CSPRNG (`os.urandom`, ring.py), never from torch's
Mersenne Twister (PySyft drew shares from `torch.random_`, issue #2708 / notes C3).
"""
from __future__ import annotations

import abc
import collections
import hashlib
import math
import os
import time
from typing import Any

import torch

from fedmq import limits, messages as m, shapes
from fedmq.client import call_all
from fedmq.errors import (QuotaExceededError, RemoteError, RemoteExecutionError, ReplyTimeout,
                          TransportError, remote_error_from)
from fedmq.ids import new_id
from fedmq.smpc.messages import Deal, DealRequest, LocalStep
from fedmq.smpc.ring import (PRG, PRODUCTS, additive_split, conv_args_of, random_bits,
                             ring_op, uniform, xor_split)
from fedmq.smpc.shares import make_pointer

#: largest number of elements one dealt tensor may have (a request is not a way to exhaust memory)
MAX_ELEMENTS = 1 << 26
#: how many shares each kind stores per party, and their names (in `Deal.ids` order)
KINDS = {
    "mul": ("a", "b", "c"), "matmul": ("a", "b", "c"), "conv2d": ("a", "b", "c"),
    "trunc": ("r", "r_div"), "edabit": ("r_arith", "r_xor"), "and": ("a", "b", "c"),
    "bit": ("b_xor", "b_arith"),
    "or4": ("alpha", "alpha_products"), "select": ("r_xor", "a", "R", "Ra"),
    "bitmul": ("b_xor", "b_arith", "a", "ab"),
    "fixmask": ("b",), "matmul_fixed": ("a", "c"),
}


class CryptoProvider(abc.ABC):
    """What a dealer generates. Each method returns, per party, the list of that party's shares
    (in the order of `KINDS[kind]`)."""

    @abc.abstractmethod
    def triple(self, op: str, shape_a, shape_b, n: int, **op_kwargs: Any) -> list[list[torch.Tensor]]:
        """Beaver triple (Beaver, CRYPTO'91): a, b uniform, c = op(a, b) (op bilinear)."""

    @abc.abstractmethod
    def truncation_pair(self, shape, divisor: int, n: int) -> list[list[torch.Tensor]]:
        """(r, floor(r / divisor)) for probabilistic truncation (ABY3, Mohassel & Rindal 2018)."""

    @abc.abstractmethod
    def edabit(self, shape, n: int) -> list[list[torch.Tensor]]:
        """r shared additively and bitwise-XOR (edaBits, Escudero et al., CRYPTO 2020)."""

    @abc.abstractmethod
    def binary_triple(self, shape, n: int) -> list[list[torch.Tensor]]:
        """a, b uniform words, c = a & b, all XOR-shared (Beaver triples over GF(2)^64)."""

    @abc.abstractmethod
    def random_bit(self, shape, n: int) -> list[list[torch.Tensor]]:
        """A random bit b shared XOR-wise (each share 0/1) and additively (B2A, CrypTen)."""

    def or4_mask(self, shape, shift: int, n: int) -> list[list[torch.Tensor]]:
        """A uniform word alpha, XOR-shared, with the AND of every subset (of 2 or more) of its
        shifts alpha >> (k * shift), k = 0..3, XOR-shared: one opening ANDs four shifted words
        (a 4-input Beaver triple over GF(2)^64, see `TrustedDealer.or4_mask`). Not abstract:
        a provider written for fewer primitives refuses these with a clear error."""
        raise ValueError(f"{type(self).__name__} does not deal 'or4' masks")

    def selection(self, shape, group: int, width: int, n: int) -> list[list[torch.Tensor]]:
        """What selecting the winner of groups of `group` compared values takes (max_,
        comparison.py): random bits r (one per pair), XOR-shared; a uniform mask a of the
        values; and, additively shared, R = the products of every subset of each element's
        bits and R * a."""
        raise ValueError(f"{type(self).__name__} does not deal 'select' primitives")

    def bit_product(self, shape, n: int) -> list[list[torch.Tensor]]:
        """A random bit b shared XOR-wise and additively, a uniform a and a * b, additively
        shared: a bit-injection triple (the product of a secret bit and a value in one
        opening, as CrypTen's B2A followed by a Beaver product, fused)."""
        raise ValueError(f"{type(self).__name__} does not deal 'bitmul' primitives")

    def fixed_mask(self, shape, handle: int, n: int) -> list[list[torch.Tensor]]:
        """The mask b of a cached operand (a Beaver cache, `PrimitiveStore.cache_operand`):
        the same uniform b every time for the same handle and shape."""
        raise ValueError(f"{type(self).__name__} does not deal cached masks")

    def fixed_triple(self, shape_a, shape_b, handle: int, n: int) -> list[list[torch.Tensor]]:
        """A matmul triple (a, c = a @ b) for the cached mask b of `handle` (`fixed_mask`)."""
        raise ValueError(f"{type(self).__name__} does not deal cached-mask triples")

    def deal(self, deal: Deal) -> list[list[torch.Tensor]]:
        """Dispatch one `Deal` to the method generating it, after checking its parameters."""
        n = len(deal.parties)
        p = deal.params or {}
        if deal.kind in ("mul", "matmul", "conv2d"):
            _check_shape(p.get("a")), _check_shape(p.get("b"))
            kwargs = {k: p[k] for k in ("stride", "padding", "dilation", "groups") if k in p}
            return self.triple(deal.kind, p["a"], p["b"], n, **kwargs)
        if deal.kind == "trunc":
            divisor = p.get("divisor")
            if type(divisor) is not int or not 1 <= divisor < 1 << 62:
                raise ValueError(f"truncation divisor must be an int in [1, 2**62), got {divisor!r}")
            return self.truncation_pair(_check_shape(p.get("shape")), divisor, n)
        if deal.kind == "edabit":
            return self.edabit(_check_shape(p.get("shape")), n)
        if deal.kind == "and":
            return self.binary_triple(_check_shape(p.get("shape")), n)
        if deal.kind == "bit":
            return self.random_bit(_check_shape(p.get("shape")), n)
        if deal.kind == "or4":
            shift = p.get("shift")
            if type(shift) is not int or not 1 <= shift <= 21:
                raise ValueError(f"an or4 shift must be an int in [1, 21], got {shift!r}")
            shape = _check_shape(p.get("shape"))
            _check_shape(list(shape) + [len(OR4_SUBSETS)])
            return self.or4_mask(shape, shift, n)
        if deal.kind == "select":
            group, width = p.get("group"), p.get("width")
            if type(group) is not int or group not in (2, 3, 4):
                raise ValueError(f"a selection group has 2, 3 or 4 elements, got {group!r}")
            if type(width) is not int or width not in (1, 2):
                raise ValueError(f"a selection width is 1 (values) or 2 (values and indices), "
                                 f"got {width!r}")
            shape = _check_shape(p.get("shape"))
            _check_shape([width * 2] + list(shape) + [group, 1 << (group - 1)])
            return self.selection(shape, group, width, n)
        if deal.kind == "bitmul":
            return self.bit_product(_check_shape(p.get("shape")), n)
        if deal.kind in ("fixmask", "matmul_fixed"):
            handle = p.get("handle")
            if type(handle) is not int or not 0 <= handle < 1 << 64:
                raise ValueError(f"a cached mask's handle is an int in [0, 2**64), got "
                                 f"{handle!r}")
            if deal.kind == "fixmask":
                return self.fixed_mask(_check_shape(p.get("shape")), handle, n)
            a, b = _check_shape(p.get("a")), _check_shape(p.get("b"))
            if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
                raise ValueError(f"a cached-mask triple is for a 2-d matmul, got {a} @ {b}")
            return self.fixed_triple(a, b, handle, n)
        raise ValueError(f"unknown primitive kind {deal.kind!r} (known: {sorted(KINDS)})")


def _check_shape(shape) -> tuple:
    if not isinstance(shape, (list, tuple)) or not all(type(s) is int and s >= 0 for s in shape):
        raise ValueError(f"a shape is a list of non-negative ints, got {shape!r}")
    n = 1
    for s in shape:
        n *= s
    if n > MAX_ELEMENTS:
        raise ValueError(f"a dealt tensor may have at most {MAX_ELEMENTS} elements, got {n}")
    return tuple(shape)


class TrustedDealer(CryptoProvider):
    """Generates every primitive from the OS-seeded CSPRNG (ring.py), in the clear, on the
    provider worker. With `prgs` set (one `ring.PRG` per party, what `handle_deal_request`
    does), a uniform value is the sum (or XOR) of one draw from each party's PRG, and a value
    correlated with others is drawn from every party's PRG but the last one's, whose share is
    the correction (the value minus the others'): each party derives its shares from its
    PRG's seed, and only the corrections travel as tensors."""

    prgs: list | None = None

    def _add(self, value: torch.Tensor, n: int) -> list[torch.Tensor]:
        return additive_split(value, n, self.prgs)

    def _xor(self, value: torch.Tensor, n: int, bits_only: bool = False) -> list[torch.Tensor]:
        return xor_split(value, n, bits_only, self.prgs)

    def _uniform_add(self, shape, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A uniform value and its additive shares: with PRGs, every party's share is drawn
        from its own PRG and the value is their sum (no correction to send)."""
        if not self.prgs:
            value = uniform(shape)
            return value, additive_split(value, n)
        shares = [prg.uniform(shape) for prg in self.prgs]
        value = shares[0].clone()
        for share in shares[1:]:
            value += share
        return value, shares

    def _uniform_xor(self, shape, n: int, bits_only: bool = False
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`_uniform_add` for XOR shares (of 0/1 bits if `bits_only`)."""
        if not self.prgs:
            value = random_bits(shape) if bits_only else uniform(shape)
            return value, xor_split(value, n, bits_only)
        shares = [prg.bits(shape) if bits_only else prg.uniform(shape) for prg in self.prgs]
        value = shares[0].clone()
        for share in shares[1:]:
            value ^= share
        return value, shares

    def triple(self, op, shape_a, shape_b, n, **op_kwargs):
        if op not in PRODUCTS:
            raise ValueError(f"no Beaver triple for op {op!r}")
        a, a_shares = self._uniform_add(shape_a, n)
        b, b_shares = self._uniform_add(shape_b, n)
        c = ring_op(op, a, b, conv_args_of(op_kwargs) if op == "conv2d" else None)
        return _per_party(a_shares, b_shares, self._add(c, n))

    def truncation_pair(self, shape, divisor, n):
        r, r_shares = self._uniform_add(shape, n)
        r_div = torch.div(r, divisor, rounding_mode="floor")
        return _per_party(r_shares, self._add(r_div, n))

    def edabit(self, shape, n):
        r, r_shares = self._uniform_add(shape, n)
        return _per_party(r_shares, self._xor(r, n))

    def binary_triple(self, shape, n):
        a, a_shares = self._uniform_xor(shape, n)
        b, b_shares = self._uniform_xor(shape, n)
        return _per_party(a_shares, b_shares, self._xor(a & b, n))

    def random_bit(self, shape, n):
        b, b_shares = self._uniform_xor(shape, n, True)
        return _per_party(b_shares, self._add(b, n))

    def or4_mask(self, shape, shift, n):
        alpha, alpha_shares = self._uniform_xor(shape, n)
        shifted = [alpha >> (k * shift) for k in range(4)]
        products = []
        for subset in OR4_SUBSETS:
            word = None
            for k in range(4):
                if subset >> k & 1:
                    word = shifted[k] if word is None else word & shifted[k]
            products.append(word)
        return _per_party(alpha_shares, self._xor(torch.stack(products), n))

    def selection(self, shape, group, width, n):
        pairs, members, _ = selection_layout(group)
        shape = tuple(shape)
        r, r_shares = self._uniform_xor(shape + (len(pairs),), n, True)
        a, a_shares = self._uniform_add((width,) + shape + (group,), n)
        subsets = 1 << (group - 1)
        R = torch.ones(shape + (group, subsets - 1), dtype=torch.int64)
        for i in range(group):
            for s in range(1, subsets):
                for t, pair in enumerate(members[i]):
                    if s >> t & 1:
                        R[..., i, s - 1] *= r[..., pair]
        Ra = R.unsqueeze(0) * a.unsqueeze(-1)
        return _per_party(r_shares, a_shares, self._add(R, n), self._add(Ra, n))

    def fixed_mask(self, shape, handle, n):
        TrustedDealer._handles.add(handle)
        return _per_party(self._add(self._cached_mask(shape, handle), n))

    def fixed_triple(self, shape_a, shape_b, handle, n):
        if handle not in TrustedDealer._handles:
            raise ValueError(f"unknown cached mask handle {handle}: this provider never dealt "
                             f"its mask (or was restarted since); drop the operand from the "
                             f"cache (PrimitiveStore.uncache_operand) and cache it again")
        a, a_shares = self._uniform_add(shape_a, n)
        c = a @ self._cached_mask(shape_b, handle)
        return _per_party(a_shares, self._add(c, n))

    #: the key cached masks derive from (one per provider process, never sent anywhere), and
    #: the handles whose masks this process dealt
    _mask_key: bytes | None = None
    _handles: set = set()

    @classmethod
    def _cached_mask(cls, shape, handle: int) -> torch.Tensor:
        """b = AES-CTR stream of SHA-256(key, handle, shape): the same for the same handle and
        shape in this process, uniform and unknown to anyone else (nothing kept per handle)."""
        if TrustedDealer._mask_key is None:
            TrustedDealer._mask_key = os.urandom(32)
        digest = hashlib.sha256(TrustedDealer._mask_key + repr((handle, tuple(shape))).encode())
        return PRG(digest.digest()).uniform(shape)

    def bit_product(self, shape, n):
        b, b_shares = self._uniform_xor(shape, n, True)
        a, a_shares = self._uniform_add(shape, n)
        return _per_party(b_shares, self._add(b, n), a_shares, self._add(a * b, n))


#: the subsets (bit masks over k = 0..3) of two or more of an or4 mask's shifts, in the order
#: of `alpha_products`
OR4_SUBSETS = tuple(s for s in range(16) if bin(s).count("1") >= 2)


def selection_layout(group: int) -> tuple[list, list, list]:
    """For a group of `group` values: the compared pairs (i, j), i < j, in order; for each
    element i the indices of the pairs it is in (its "members", in pair order); and for each
    such pair whether i is its first element (then i wins the pair when [x_i < x_j] is 0)."""
    pairs = [(i, j) for i in range(group) for j in range(i + 1, group)]
    members = [[p for p, pair in enumerate(pairs) if i in pair] for i in range(group)]
    first = [[int(pairs[p][0] == i) for p in members[i]] for i in range(group)]
    return pairs, members, first


def _per_party(*split_values: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    return [list(shares) for shares in zip(*split_values)]


def handle_deal_request(worker: Any, msg: DealRequest) -> None:
    """On the provider: generate every deal and send each party its shares directly.

    1. Check the request: the provider is not a party, ids match the kind, every share is at
       most MAX_ELEMENTS elements, and what the request makes here (every primitive in the
       clear and every party's shares) fits the principal's room on this worker
       (QuotaExceededError before anything is generated: one request cannot exhaust it; each
       party checks its own quota for its shares when they come).
    2. Generate each primitive in the clear (the worker's `crypto_provider`, a CryptoProvider;
       by default a TrustedDealer) and split it into shares.
    3. Send each party one message with all its shares, under the caller's ids. With the
       TrustedDealer, every party gets a LocalStep "prg_shares" with a fresh 32-byte seed and
       the shapes to draw (it derives its shares itself, ring.expand_shares): a uniform value
       (a triple's a and b, masks, random bits) is the sum (or XOR) of every party's draws, so
       it costs no traffic; a value correlated with others (c = a op b, r / d, subset
       products, ...) is drawn by every party but the last, which gets the correction (the
       value minus the others' shares) inline in the same message (SPDZ2k's and CrypTen's
       TTP "PRG seeds plus one correction"). A custom dealer's shares all travel as tensors
       (one ObjectMessage per party).
    4. All or nothing (`_send_or_take_back`): if a party refuses or does not answer, or the
       coordinator cancels the request before or while the parties take their shares, every
       party is told to delete every id of the request (a party that stalled or was restarted
       gets the delete after its shares, in its queue) and the error names the party.
    The reply (to the coordinator) carries nothing but success.

    Who sees what: the provider, every primitive in the clear and every share (it never sees a
    party's input or an opened value); a party, its own seed and shares; the coordinator,
    nothing but the ids it chose (the provider talks to the parties directly).
    """
    if worker.network is None:
        raise ValueError("this worker cannot reach other workers, so it cannot be a provider")
    _check_request(worker, msg)
    outgoing: dict[str, list] = collections.defaultdict(list)
    dealer: CryptoProvider = getattr(worker, "crypto_provider", None) or TrustedDealer()
    seeded = isinstance(dealer, TrustedDealer)
    prgs: dict[str, PRG] = {}
    seeded_ids: dict[str, list] = collections.defaultdict(list)
    layouts: dict[str, list] = collections.defaultdict(list)
    given: dict[str, list] = collections.defaultdict(list)
    for deal in msg.deals:
        if seeded:
            dealer.prgs = [prgs.setdefault(p, PRG()) for p in deal.parties]
        try:
            shares = dealer.deal(deal)
        finally:
            if seeded:
                dealer.prgs = None
        for party, ids, party_shares in zip(deal.parties, deal.ids, shares):
            if not seeded:
                outgoing[party].extend(m.StoredObject(i, s) for i, s in zip(ids, party_shares))
                continue
            seeded_ids[party].extend(ids)
            for share in party_shares:
                drawn = prgs[party].index.get(id(share))
                if drawn is None:  # a correction: sent as it is
                    given[party].append(share)
                    drawn = -len(given[party])
                layouts[party].append(drawn)
    calls = [(party, LocalStep(
        "prg_shares", [prg.seed, prg.draws, layouts[party], given[party]], seeded_ids[party]))
        for party, prg in prgs.items()]
    calls += [(party, m.ObjectMessage(objects)) for party, objects in outgoing.items()]
    _send_or_take_back(worker, calls, msg.deals)
    return None


def _check_request(worker: Any, msg: DealRequest) -> None:
    """Step 1 of `handle_deal_request`: ValueError for a malformed request or a share over
    MAX_ELEMENTS, QuotaExceededError when the request would make more bytes here than the
    principal's room (fedmq.limits.op_limit: its quota less what it stores, and the worker's
    --max-op-bytes). Nothing is generated before this passes."""
    if not isinstance(msg.deals, list):
        raise ValueError("a DealRequest holds a list of Deal records")
    room = limits.op_limit(worker.store, limits.current())
    elements = 0
    for deal in msg.deals:
        if not isinstance(deal, Deal):
            raise ValueError("a DealRequest holds Deal records only")
        if not isinstance(deal.parties, list):
            raise ValueError("a deal's parties are a list of worker ids")
        if worker.id in deal.parties:
            raise ValueError(f"the crypto provider {worker.id!r} cannot hold shares itself")
        if len(set(deal.parties)) != len(deal.parties) or len(deal.parties) < 2:
            raise ValueError("a deal needs at least two distinct parties")
        names = KINDS.get(deal.kind)
        if names is None:
            raise ValueError(f"unknown primitive kind {deal.kind!r}")
        if not isinstance(deal.ids, list) or len(deal.ids) != len(deal.parties) or any(
                not isinstance(ids, list) or len(ids) != len(names) for ids in deal.ids):
            raise ValueError(f"a {deal.kind!r} deal stores {len(names)} shares per party")
        if room is not None or deal.kind in _PRODUCT_OPS:  # (the dealer bounds the others)
            # the clear values and every party's shares
            elements += _deal_elements(deal) * (len(deal.parties) + 1)
    if room is not None and 8 * elements > room:
        raise QuotaExceededError(
            f"this DealRequest makes {8 * elements} bytes of primitives and shares on the crypto "
            f"provider {worker.id!r}, more than principal {worker.store.principal!r} may use "
            f"there ({room} bytes: its quota, --max-bytes, less what it stores, or the "
            f"worker's --max-op-bytes): deal fewer primitives at once", worker=worker.id,
            op="DealRequest")


def _deal_elements(deal: Deal) -> int:
    """The elements of one party's shares of `deal` (ValueError for a share over MAX_ELEMENTS);
    0 when its parameters do not say (the dealer then refuses them with its own error). Cheap:
    a Beaver triple's product shape is computed here, not by the shape engine."""
    params = deal.params if isinstance(deal.params, dict) else {}
    try:
        if deal.kind in ("mul", "matmul"):
            a, b = tuple(params["a"]), tuple(params["b"])
            sizes = [a, b, _broadcast(a, b) if deal.kind == "mul" else _matmul_shape(a, b)]
        elif deal.kind == "conv2d" and _conv2d_shape(params) is not None:
            sizes = [tuple(params["a"]), tuple(params["b"]), _conv2d_shape(params)]
        else:  # the shape engine (~0.1 ms): kinds off the hot path
            sizes = share_shapes(deal.kind, params)
    except Exception:  # noqa: BLE001 - malformed: the dealer says what is wrong
        return 0
    total = 0
    for size in sizes:
        n = math.prod(size)
        if n > MAX_ELEMENTS:
            raise ValueError(f"a dealt tensor may have at most {MAX_ELEMENTS} elements, got "
                             f"{n} (a {deal.kind!r} share of shape {tuple(size)})")
        total += n
    return total


def _broadcast(a: tuple, b: tuple) -> tuple:
    """torch.broadcast_shapes(a, b) for int shapes (ValueError if they do not broadcast)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def _matmul_shape(a: tuple, b: tuple) -> tuple:
    """The shape of torch.matmul(a, b) for int shapes (ValueError if they do not match)."""
    if not a or not b:
        raise ValueError("matmul of a 0-d tensor")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ValueError(f"matmul shapes {a} and {b} do not match")
    out = _broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _conv2d_shape(params: dict) -> tuple | None:
    """The shape of F.conv2d(a, b, ...) for a batched input and int (or pair) stride, padding
    and dilation (ValueError if they do not fit); None for anything else (the shape engine
    sizes it)."""
    a, b = params.get("a"), params.get("b")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != 4 or len(b) != 4:
        return None
    pairs = []
    for key, default in (("stride", 1), ("padding", 0), ("dilation", 1)):
        value = params.get(key, default)
        value = [value, value] if type(value) is int else value
        if not isinstance(value, (list, tuple)) or len(value) != 2 or \
                not all(type(v) is int for v in value):
            return None
        pairs.append(value)
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = pairs
    out_h = (a[2] + 2 * p_h - d_h * (b[2] - 1) - 1) // s_h + 1
    out_w = (a[3] + 2 * p_w - d_w * (b[3] - 1) - 1) // s_w + 1
    if out_h < 0 or out_w < 0:
        raise ValueError("the kernel is larger than the padded input")
    return (a[0], b[0], out_h, out_w)


def _send_or_take_back(worker: Any, calls: list, deals: list) -> None:
    """Step 4 of `handle_deal_request`: send every party its shares (`calls`: (party id,
    message) pairs) and wait for them all; on any failure (a party that cannot be reached,
    refuses or does not answer; the coordinator's Cancel before or while they took them)
    delete every id of the request on every party, then raise an error naming the
    party (a party's RemoteError keeps its code; anything else is a RemoteExecutionError)."""
    try:
        limits.check("DealRequest")  # the coordinator gave up: send nothing
        call_all([(worker.network.client(p), msg) for p, msg in calls], sender=worker.id)
        limits.check("DealRequest")  # it gave up while a party was slow: take them back
    except Exception as exc:
        for party, ids in _ids_by_party(deals).items():
            try:  # after the shares in every queue (a party that stalled or died gets it too)
                post_delete(worker.network.client(party), ids, sender=worker.id)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise _deal_failed(worker, exc) from exc


def _deal_failed(worker: Any, exc: Exception) -> RemoteError:
    """The error a failed send of shares is reported with: the provider's own (a Cancel, its
    time limit) as it is; a party's RemoteError with its code (QuotaExceededError stays one)
    and a message naming the party; anything else (no answer, gone) a RemoteExecutionError."""
    if isinstance(exc, RemoteError) and exc.worker == worker.id:  # cancelled, time limit
        return exc
    who = getattr(exc, "worker", None) or getattr(exc, "worker_id", None)
    what = exc.remote_message if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
    text = (f"the crypto provider {worker.id!r} could not deal to "
            f"{f'party {who!r}' if who else 'the parties'}: {what}; it deleted every share of "
            f"this request on every party")
    if isinstance(exc, RemoteError):
        return remote_error_from(exc.code, text, worker.id, exc.op)
    return RemoteExecutionError(text, worker=worker.id, op="DealRequest")


def _ids_by_party(deals: list) -> dict[str, list]:
    """party id -> every id the `deals` store on it."""
    out: dict[str, list] = collections.defaultdict(list)
    for deal in deals:
        for party, ids in zip(deal.parties, deal.ids):
            out[party].extend(ids)
    return out


class PrimitiveStore:
    """Coordinator side: dealt primitives, by (provider, parties, kind, params).

    `take` returns a dealt primitive (pointers to each party's shares), dealing it on demand if
    none is stored; `provide` deals many ahead of time in one request (preprocessing: the online
    phase then needs only openings). `deal_now` deals several different primitives in one round
    trip to the provider (what a protocol that needs several uses).
    """

    def __init__(self) -> None:
        self._pool: dict[tuple, collections.deque] = collections.defaultdict(collections.deque)
        #: the Beaver cache: id(operand) -> its handle, mask shares and opened delta
        self.cached: dict[int, dict] = {}
        #: while not None, every (kind, params) taken is appended (`record`)
        self.recorded: list | None = None
        #: round trips to providers and primitives dealt (for benchmarks)
        self.requests = 0
        self.dealt = 0

    @staticmethod
    def _key(provider: Any, parties: list, kind: str, params: dict) -> tuple:
        # identities too: a new worker object reusing an old id has none of the old shares
        return (provider.id, id(provider), tuple((p.id, id(p)) for p in parties), kind,
                tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                             for k, v in params.items())))

    def provide(self, provider: Any, parties: list, kind: str, params: dict,
                n_instances: int = 1) -> None:
        """Deal `n_instances` of a primitive now and keep them for later `take`s."""
        dealt = self.deal_now(provider, parties, [(kind, params)] * n_instances)
        self._pool[self._key(provider, parties, kind, params)].extend(dealt)

    def record(self) -> list:
        """Start recording what is taken: returns the list every later `take`/`take_many`
        appends its (kind, params) to, until `stop_recording`. Run one step of a computation
        (a training step, an inference batch) while recording, then `provide` each entry for
        the next steps: their online phase then has no provider round trip (preprocessing
        learned from the computation itself)."""
        self.recorded = []
        return self.recorded

    def stop_recording(self) -> list:
        recorded, self.recorded = self.recorded or [], None
        return recorded

    def take(self, provider: Any, parties: list, kind: str, params: dict) -> list:
        if self.recorded is not None:
            self.recorded.append((kind, params))
        pool = self._pool.get(self._key(provider, parties, kind, params))
        if pool:
            return pool.popleft()
        return self.deal_now(provider, parties, [(kind, params)])[0]

    def take_many(self, provider: Any, parties: list, wanted: list[tuple[str, dict]]) -> list:
        """Several primitives: stored ones first, the rest dealt in one request."""
        if self.recorded is not None:
            self.recorded.extend(wanted)
        out: list = [None] * len(wanted)
        missing = []
        for index, (kind, params) in enumerate(wanted):
            pool = self._pool.get(self._key(provider, parties, kind, params))
            if pool:
                out[index] = pool.popleft()
            else:
                missing.append(index)
        if missing:
            dealt = self.deal_now(provider, parties, [wanted[i] for i in missing])
            for index, value in zip(missing, dealt):
                out[index] = value
        return out

    def deal_now(self, provider: Any, parties: list, wanted: list[tuple[str, dict]]) -> list:
        """Deal `wanted` in one request; each result is a list (one per share name) of lists
        (one pointer per party). On any failure no share is left behind (`_given_up`): raises
        DealTimeout when the provider did not answer in time (naming who stalled), else the
        provider's error (naming the party it could not deal to)."""
        deals, metas = [], []
        for kind, params in wanted:
            names = KINDS[kind]
            ids = [[new_id() for _ in names] for _ in parties]
            deals.append(Deal(kind, [p.id for p in parties], ids, dict(params)))
            metas.append((kind, params, ids))
        msg_id = new_id()
        try:
            # expires: a provider restarted after the caller gave up (and deleted every id on
            # the parties) must not find the request in its durable queue and deal it
            provider.call(DealRequest(deals), msg_id=msg_id, expires=True)
        except Exception as exc:
            raise _given_up(provider, parties, deals, msg_id, exc) from exc
        self.requests += 1
        self.dealt += len(deals)
        out = []
        for kind, params, ids in metas:
            share_shape = share_shapes(kind, params)
            out.append([[make_pointer(party, ids[pi][si], share_shape[si]) for pi, party in
                         enumerate(parties)] for si in range(len(KINDS[kind]))])
        return out

    def cache_operand(self, tensor: Any) -> None:
        """Reuse one Beaver mask for the shared right operand `tensor` of every matmul from now
        on (a "Beaver cache", as SecretFlow SPU's for fixed operands): its masked opening
        delta = tensor - b is opened once, at its first product, and each later product deals
        and opens only the left operand's side (a, c = a @ b). For operands that do not change,
        such as a model's weights during inference: the cache holds `tensor` itself, and an
        operand whose shares changed under the same object must be dropped first
        (`uncache_operand`), or its products would be wrong (and delta would reveal the
        difference of the two values). Secure as the plain Beaver product otherwise: delta is
        opened once, b is uniform, and every product gets a fresh a. Each party keeps its share
        of b and the opened delta (two objects the size of `tensor`) until `uncache_operand`."""
        if not hasattr(tensor, "shares") or len(tuple(tensor.shape)) != 2:
            raise ValueError("cache_operand takes a 2-d shared tensor (an "
                             "AdditiveSharingTensor: a fixed-precision tensor's .child)")
        self.cached[id(tensor)] = {"tensor": tensor, "handle": new_id() & ((1 << 63) - 1),
                                   "b": None, "delta": None}

    def uncache_operand(self, tensor: Any) -> None:
        self.cached.pop(id(tensor), None)

    def cached_mask(self, tensor: Any) -> dict | None:
        """The Beaver cache entry of `tensor` (see `cache_operand`), or None."""
        entry = self.cached.get(id(tensor))
        return entry if entry is not None and entry["tensor"] is tensor else None

    def __len__(self) -> int:
        return sum(len(q) for q in self._pool.values())

    def clear(self) -> None:
        self._pool.clear()


#: the op whose result shape a Beaver triple's c has
_PRODUCT_OPS = {"mul": "torch.mul", "matmul": "torch.matmul", "conv2d": "F.conv2d"}


def share_shapes(kind: str, params: dict) -> list[tuple]:
    """The shape of each share a `kind` deal stores (in `KINDS[kind]` order); a triple's c
    has the shape of a op b (fedmq.shapes, on metadata only)."""
    if kind in _PRODUCT_OPS:
        a = shapes.TensorMeta(tuple(params["a"]), torch.int64)
        b = shapes.TensorMeta(tuple(params["b"]), torch.int64)
        kwargs = {k: params[k] for k in ("stride", "padding", "dilation", "groups")
                  if k in params} if kind == "conv2d" else {}
        c = shapes.op_spec(_PRODUCT_OPS[kind], (a, b), kwargs, aliases=False, strict=True)
        return [a.shape, b.shape, c.leaves[0].shape]
    if kind == "matmul_fixed":
        a, b = tuple(params["a"]), tuple(params["b"])
        return [a, (a[0], b[1])]
    shape = tuple(params["shape"])
    if kind == "or4":
        return [shape, (len(OR4_SUBSETS),) + shape]
    if kind == "select":
        g, w = params["group"], params["width"]
        pairs = g * (g - 1) // 2
        sub = (1 << (g - 1)) - 1
        return [shape + (pairs,), (w,) + shape + (g,), shape + (g, sub), (w,) + shape + (g, sub)]
    return [shape] * len(KINDS[kind])


def primitive_store(provider: Any) -> PrimitiveStore:
    """The store of primitives dealt by `provider`, kept in the context of the hook that holds
    the provider's client (PySyft's crypto_store, one per hook rather than one per process)."""
    return provider.context.state("smpc.primitives", PrimitiveStore)


# -- a request nobody answered: leave no share behind, say who stalled ----------------------------

#: seconds a coordinator waits, after a request went unanswered, for the answer to its Cancel
#: and for the parties' answers to a probe (each at most the call's own timeout)
GIVE_UP_SECONDS = 3.0


class DealTimeout(ReplyTimeout):
    """The crypto provider did not confirm a DealRequest in time: the provider, or a party it
    was sending shares to, did not answer. The message says which; no share is left behind
    (the coordinator cancelled the request and deleted every id it chose on every party)."""


def _given_up(provider: Any, parties: list, deals: list, msg_id: int,
              exc: Exception) -> Exception:
    """What `deal_now` raises after `provider.call` failed with `exc`, once every id of
    `deals` was deleted on every party (the provider deletes what it sent when it fails; this
    covers a provider that could not). A transport failure (no answer) goes through `give_up`
    (Cancel first, then the deletes) and becomes a DealTimeout naming who did not answer; any
    other error (the provider's or a party's refusal, which names it) is `exc` itself."""
    by_party = _ids_by_party(deals)
    targets = [(p, by_party.get(p.id, [])) for p in parties]
    if not isinstance(exc, TransportError):
        for party, ids in targets:
            post_delete(party, ids)
        return exc
    running, state, silent, wait = give_up(provider, targets, msg_id)
    if silent:
        who = (f"party {', '.join(map(repr, silent))} did not take "
               f"{'its shares' if len(silent) == 1 else 'their shares'} (no answer within "
               f"{wait} s)")
    elif running is None:
        who = f"the crypto provider {provider.id!r} itself does not answer"
    elif running:
        who = (f"the parties {', '.join(repr(p.id) for p in parties)} answer now: one of "
               f"them was slow to take its shares")
    else:
        who = (f"the crypto provider {provider.id!r} was busy and had not got to it, or "
               f"finished just then")
    return DealTimeout(
        f"deal: the crypto provider {provider.id!r} deals primitives to the parties and did "
        f"not confirm within the call's timeout ({exc}); {who}. Told {provider.id!r} to stop "
        f"({state}) and every party to drop the shares it may get: no share is left behind")


def give_up(requester: Any, targets: list[tuple[Any, list]], msg_id: int
            ) -> tuple[bool | None, str, list, float]:
    """Leave nothing behind after a request `msg_id` to `requester` (which sends the parties
    objects under ids the caller chose) went unanswered, in any failure order; shared by
    `deal_now` and remote.py's `share()`.

    1. `Cancel(msg_id)` to the requester, awaited: a request that has not started is refused
       when it comes; a running one stops at its next check (before it sends, or once the
       parties answered) and deletes what it stored and, by a message after it, what it sent.
    2. Then a DeleteObjects to every party in `targets` ((party client, ids) pairs) for its
       ids: objects stored by a request that finished meanwhile are all in place by then (the
       requester waits for every party), so the deletes come after them in every queue.
    3. A probe (ObjectsCount, answered at once by a worker service even while it runs
       something else) to every party but the requester names the ones that do not answer.
    Returns (True if it was running / False if not or just finished / None if the Cancel got
    no answer, a phrase saying so, the ids of the silent parties, the seconds waited)."""
    wait = GIVE_UP_SECONDS if requester.timeout is None else min(GIVE_UP_SECONDS,
                                                                  requester.timeout)
    try:
        running = requester.call(m.Cancel(msg_id), timeout=wait)
        state = ("it was still at it, waiting for the parties" if running else
                 "it had not started or had just finished")
    except Exception:  # noqa: BLE001 - a requester that does not answer is what we report
        running, state = None, (f"no answer to the Cancel within {wait} s either: it acts "
                                f"on it when it runs again")
    for party, ids in targets:
        post_delete(party, ids)
    others = [p for p, _ in targets if p.id != requester.id]
    return running, state, silent_workers(others, wait), wait


def post_delete(party: Any, ids: list, sender: str | None = None) -> None:
    """DeleteObjects(ids) to `party` (a client), posted now as a frame of its own with no reply
    asked: a stalled or dead party must not fail the next call to it (as an unanswered post
    would), and it comes after whatever was sent to it before. Errors are ignored: a party
    that cannot be reached stores nothing new. `sender`: the sending worker's id (default: the
    client's)."""
    if not ids:
        return
    try:
        party.engine.post_frame(party.id, party.engine.frame(
            m.DeleteObjects(list(ids)), sender=sender or party.sender, to=party.id),
            "DeleteObjects")
    except Exception:  # noqa: BLE001 - see the docstring
        pass


def silent_workers(workers: list, seconds: float) -> list:
    """Ids of the `workers` that do not answer an ObjectsCount within `seconds` (all asked at
    once)."""
    started, silent = [], []
    for w in workers:
        try:
            frame = w.engine.frame(m.ObjectsCount(), sender=w.sender, to=w.id)
            started.append((w, w.engine.start_frame(w.id, frame, "ObjectsCount")))
        except Exception:  # noqa: BLE001 - unreachable is silent
            silent.append(w.id)
    deadline = time.monotonic() + seconds
    for w, call in started:
        try:
            reply = call.reply(max(0.05, deadline - time.monotonic()))
            if reply.error is not None:
                silent.append(w.id)
        except Exception:  # noqa: BLE001 - no answer in time
            silent.append(w.id)
    return silent
