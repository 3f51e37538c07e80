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

Randomness comes from the operating system's CSPRNG (`os.urandom`, ring.py), never from torch's
Mersenne Twister (PySyft drew shares from `torch.random_`, issue #2708 / notes C3).
"""
from __future__ import annotations

import abc
import collections
import hashlib
import os
from typing import Any

import torch

from fedmq import messages as m, shapes
from fedmq.client import call_all
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

    1. Check the request: the provider is not a party, ids match the kind.
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
    The reply (to the coordinator) carries nothing but success.

    Who sees what: the provider, every primitive in the clear and every share (it never sees a
    party's input or an opened value); a party, its own seed and shares; the coordinator,
    nothing but the ids it chose (the provider talks to the parties directly).
    """
    if worker.network is None:
        raise ValueError("this worker cannot reach other workers, so it cannot be a provider")
    outgoing: dict[str, list] = collections.defaultdict(list)
    dealer: CryptoProvider = getattr(worker, "crypto_provider", None) or TrustedDealer()
    seeded = isinstance(dealer, TrustedDealer)
    prgs: dict[str, PRG] = {}
    seeded_ids: dict[str, list] = collections.defaultdict(list)
    layouts: dict[str, list] = collections.defaultdict(list)
    given: dict[str, list] = collections.defaultdict(list)
    for deal in msg.deals:
        if not isinstance(deal, Deal):
            raise ValueError("a DealRequest holds Deal records only")
        if worker.id in deal.parties:
            raise ValueError(f"the crypto provider {worker.id!r} cannot hold shares itself")
        if len(set(deal.parties)) != len(deal.parties) or len(deal.parties) < 2:
            raise ValueError("a deal needs at least two distinct parties")
        names = KINDS.get(deal.kind)
        if names is None:
            raise ValueError(f"unknown primitive kind {deal.kind!r}")
        if len(deal.ids) != len(deal.parties) or any(
                len(ids) != len(names) for ids in deal.ids):
            raise ValueError(f"a {deal.kind!r} deal stores {len(names)} shares per party")
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
    calls = [(worker.network.client(party), LocalStep(
        "prg_shares", [prg.seed, prg.draws, layouts[party], given[party]], seeded_ids[party]))
        for party, prg in prgs.items()]
    calls += [(worker.network.client(party), m.ObjectMessage(objects))
              for party, objects in outgoing.items()]
    call_all(calls, sender=worker.id)
    return None


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
        (one pointer per party)."""
        deals, metas = [], []
        for kind, params in wanted:
            names = KINDS[kind]
            ids = [[new_id() for _ in names] for _ in parties]
            deals.append(Deal(kind, [p.id for p in parties], ids, dict(params)))
            metas.append((kind, params, ids))
        provider.call(DealRequest(deals))
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
        opened once, b is uniform, and every product gets a fresh a."""
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
