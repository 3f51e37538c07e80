"""Division of a shared value by a public positive integer: ABY3's probabilistic truncation
with a preprocessed truncation pair (Mohassel & Rindal, "ABY3: A Mixed Protocol Framework for
Machine Learning", CCS 2018, §5.1.1, Π_trunc2; CrypTen's TTP mode uses the same pair).

It rescales fixed-point products (divisor base**precision_fractional) and computes `mean` and
public division, for any number of parties (PySyft divided each share locally, which is only
right for two parties and not always then: #2706, notes C1). Two parties use SecureML's local
truncation instead (`truncate_local`: no round, nothing dealt; CrypTen and SPU's SEMI2K do the
same for two parties), with the same guarantee and failure probability; exact mode below is
unchanged.

Guarantee. With x the shared value and d the divisor, the result is ceil(x/d) or ceil(x/d) - 1:
exact when d divides x, otherwise x/d rounded up or down at random, without bias (E = x/d),
so always less than one unit in the last place from x/d (PySyft's local truncation rounds toward
zero). This fails only if the opened x - r wrapped around the int64 range, which happens with
probability about |x| / 2**64 per element (2**-24 for |x| < 2**40). Privacy is perfect: the
opened value x - r is uniform because r is.

Exact mode (`exact_truncation()`, what approximations.py runs under). A fixed-point product
at 6 digits is rescaled from |x| = |value| * 10**12, so the wrap above is not rare there
(x / y = 1.6e6 failed 9% of the time per element, found by review). Inside `with
exact_truncation():` every truncation (and every shared product's rescaling, additive.py) uses
`truncate_exact`, which never wraps for |x| <= exact_bound(d) (>= 2**62 - 3d; deterministic:
no failure probability at all), gives the same result as ABY3's (floor(x/d) or one more,
unbiased) in the same one round, and costs a second pair and a random bit from the dealer; its
privacy is statistical (opened value within 0.34 d / 2**63 of uniform: 2**-44 for d = 10**6).
Outside exact mode nothing changes (products in the hot path keep their truncation: local
between two parties, the fused ABY3 one with more).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from fedmq.smpc.provider import primitive_store
from fedmq.smpc.ring import INT64_MAX, INT64_MIN
from fedmq.smpc.shares import SharedTensor, open_shares, remote

_EXACT = contextvars.ContextVar("fedmq_smpc_exact_truncation", default=False)

#: the largest divisor `truncate_exact` takes (its range is |x| <= 2**62 - 8d); in exact mode a
#: larger one falls back to the ABY3 truncation above (no approximation divides by that much)
EXACT_MAX_DIVISOR = 1 << 56


@contextlib.contextmanager
def exact_truncation() -> Iterator[None]:
    """Within the block (this thread / task), shared truncations use `truncate_exact`."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def exact_mode() -> bool:
    """True inside `exact_truncation()`."""
    return _EXACT.get()


def truncation_params(shape, divisor: int) -> dict:
    return {"shape": list(shape), "divisor": int(divisor)}


def truncate(x: SharedTensor, divisor: int) -> SharedTensor:
    """[x / divisor] (rounded down, see the module docstring).

    1. Get a truncation pair ([r], [r'] with r' = floor(r / d)) dealt by the crypto provider.
    2. Each party computes [y] = [x] - [r] locally.
    3. Open y (one round). y is uniform: r is uniform in the ring.
    4. [z] = floor((y + d - 1) / d) + [r']: party 0 adds the public part to its share of r'.
       floor(a/d) + floor(r/d) is floor((a + r)/d) minus a carry [(a mod d) + (r mod d) >= d];
       with a = y + d - 1 and a + r = x + d - 1 that is ceil(x/d) or ceil(x/d) - 1, and the
       carry's probability over the uniform r makes the expectation exactly x/d.
    """
    if divisor == 1:
        return x.copy()
    if exact_mode() and divisor <= EXACT_MAX_DIVISOR:
        return truncate_exact(x, divisor)
    if local_truncation(x):
        return truncate_local(x, divisor)
    provider = x._provider("division (and fixed-point rescaling)")
    r, r_div = primitive_store(provider).take(provider, x.locations, "trunc",
                                              truncation_params(x.shape, divisor))
    return truncate_finish(x, divisor, r, r_div)


def local_truncation(x: SharedTensor) -> bool:
    """True when `x`'s rescaling is `truncate_local`'s: two parties, outside exact mode."""
    return x.n_parties == 2 and not exact_mode()


def truncate_local(x: SharedTensor, divisor: int) -> SharedTensor:
    """[x / divisor] for two parties with no round and nothing dealt: SecureML's local
    truncation (Mohassel & Zhang, "SecureML", S&P 2017, Theorem 1; what CrypTen and SPU's
    SEMI2K do for two parties). Party 0 keeps floor(x_0 / d), party 1 ceil(x_1 / d) =
    -floor(-x_1 / d).

    Guarantee: as ABY3's above. If x_0 + x_1 = x holds as integers (no wrap), x_0 = q d + r_0
    and x = k d + s: floor(x_0/d) + ceil((x - x_0)/d) = k + [r_0 < s], so floor(x/d) or one
    more, exact when d divides x, E = x/d when x_0 is uniform mod d. The sum wraps only when
    x_0 falls within |x| of the int64 boundary: probability |x| / 2**64 for the uniform shares
    every protocol here leaves (dealt Beaver and comparison outputs, `share()`), less for the
    smaller shares a truncation leaves. Three pipelined Commands (no reply awaited).
    ValueError for other than two parties."""
    if x.n_parties != 2:
        raise ValueError(f"the local truncation is for two parties, not {x.n_parties}")
    (s0, s1), d = x.shares, int(divisor)
    z0 = remote(s0.location, "torch.div", s0, d, rounding_mode="floor")
    loc = s1.location
    z1 = remote(loc, "torch.neg", remote(loc, "torch.div", remote(loc, "torch.neg", s1), d,
                                         rounding_mode="floor"))
    return x._new([z0, z1])


def truncate_finish(x: SharedTensor, divisor: int, r: list, r_div: list
                    ) -> SharedTensor:
    """Steps 2-4 with the pair already dealt (lists of per-party pointers)."""
    y_shares = [remote(s.location, "torch.sub", s, ri) for s, ri in zip(x.shares, r)]
    (y,) = open_shares([y_shares])
    return finish_truncation(x, divisor, y, r_div)


def finish_truncation(x: SharedTensor, divisor: int, y: torch.Tensor, r_div: list
                      ) -> SharedTensor:
    """Step 4 from the opened y = x - r: [z] = floor((y + d - 1) / d) + [r']."""
    # floor((y + d - 1) / d) without overflowing int64 when y is near its top
    public = torch.div(y, divisor, rounding_mode="floor") + \
        torch.div(torch.remainder(y, divisor) + (divisor - 1), divisor, rounding_mode="floor")
    first = remote(r_div[0].location, "torch.add", r_div[0], public)
    return x._new([first, *r_div[1:]])


# -- exact truncation: no wraparound for |x| <= exact_bound(d) ------------------------------------

def exact_wanted(shape, divisor: int) -> list:
    """What `truncate_exact` needs dealt ((kind, params) pairs, for `take_many`), all of
    `shape`: a truncation pair for 2d, one for d and a random bit (its arithmetic share)."""
    return [("trunc", truncation_params(shape, 2 * divisor)),
            ("trunc", truncation_params(shape, divisor)), ("bit", {"shape": list(shape)})]


def _exact_constants(d: int) -> tuple[int, int, int]:
    """(C, offset, bound) for divisor d (Python ints, see `truncate_exact`): M0 = d (u + C) + v
    is in [0, m0_max] for every dealt pair; x + offset >= 0 and x + offset + M0 < 2**64 for
    |x| <= bound."""
    u_min, u_max = (-(1 << 63)) // (2 * d), ((1 << 63) - 1) // (2 * d)
    C = -u_min
    offset = d * (((1 << 62) + d - 1) // d)
    m0_max = d * (u_max + C) + d - 1
    return C, offset, min(offset, (1 << 64) - 1 - m0_max - offset)


def exact_bound(divisor: int) -> int:
    """The |x| up to which `truncate_exact(x, divisor)` is exact (at least 2**62 - 3 divisor)."""
    return _exact_constants(divisor)[2]


def _wrap(v: int) -> int:
    """A Python int as the int64 it is congruent to mod 2**64."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def truncate_exact(x: SharedTensor, divisor: int) -> SharedTensor:
    """[x / divisor] as ABY3's (floor(x/d) or floor(x/d) + 1, E = x/d), for every
    |x| <= exact_bound(divisor) (>= 2**62 - 3d) with no failure probability: the ABY3
    truncation above wraps with probability |x| / 2**64 because its mask's top bit is
    unknown; this one's is known (a "sign-bit-safe" truncation with a dealt random bit).

    1. Dealt: pairs (r, u = floor(r / 2d)) and (r', u' = floor(r' / d)) and a random bit [b].
       M0 = d (u + C) + v with v = r' - d u' in [0, d) and C = -min(u): M0 is in
       [0, 2**63 + 2d) and within statistical distance 0.34 d / 2**63 of uniform mod 2**63
       (exactly computed on small rings: 0.1-0.33 d / 2**(k-1) for a ring of 2**k), so
       M = M0 + 2**63 b is as close to uniform mod 2**64, and its top bit is known as
       [b] xor M0's.
    2. Each party opens its share of y = x + offset + M0 + 2**63 b (one round), offset = the
       multiple of d just above 2**62: x' = x + offset >= 0 and c = x' + M0 < 2**64 as an
       integer for |x| <= exact_bound(d). Nothing wraps.
    3. y = c + 2**63 b mod 2**64, so c = y_low + 2**63 (y63 xor b) with y_low, y63 the low
       63 bits and top bit of y (public) and b secret: floor(c / d) = F + coef [b], linear in
       [b] with public F, coef (`_exact_public`).
    4. [z] = floor(c / d) - [u] - C - offset / d = floor((x + v) / d): floor(x/d) or one
       more, E[z] = x / d (v uniform in [0, d); Hermite's identity).
    Privacy: statistical, y within 0.34 d / 2**63 of uniform whatever x is (d = 10**6:
    3.7e-14, about 2**-44; the ABY3 truncation's is perfect). Cost: one round, as ABY3's; the
    dealer sends the last party 3 corrections per element instead of 1.
    """
    provider = x._provider("division (and fixed-point rescaling)")
    dealt = primitive_store(provider).take_many(provider, x.locations,
                                                exact_wanted(x.shape, divisor))
    return truncate_exact_finish(x, divisor, *dealt)


def truncate_exact_finish(x: SharedTensor, divisor: int, pair2: list, pair: list, bit: list
                          ) -> SharedTensor:
    """Steps 2-4 of `truncate_exact` with the primitives dealt (`exact_wanted`'s order:
    pair2 = [r, u] for 2d, pair = [r', u'] for d, bit = [xor shares, arithmetic shares])."""
    d = int(divisor)
    C, offset, _ = _exact_constants(d)
    u, (r1, u1), b = pair2[1], pair, bit[1]
    opened = []
    for i, (s, ui, ri, u1i, bi) in enumerate(zip(x.shares, u, r1, u1, b)):
        loc = s.location
        v = remote(loc, "torch.sub", ri, remote(loc, "torch.mul", u1i, d))
        mask = remote(loc, "torch.add", remote(loc, "torch.mul", ui, d), v)
        mask = remote(loc, "torch.add", mask, remote(loc, "torch.mul", bi, INT64_MIN))
        share = remote(loc, "torch.add", s, mask)
        if i == 0:
            share = remote(loc, "torch.add", share, _wrap(offset + d * C))
        opened.append(share)
    (y,) = open_shares([opened])
    base, coef = _exact_public(y, d)
    shares = []
    for i, (ui, bi) in enumerate(zip(u, b)):
        loc = ui.location
        share = remote(loc, "torch.sub", remote(loc, "torch.mul", bi, coef), ui)
        if i == 0:
            share = remote(loc, "torch.add", share, base - _wrap(C + offset // d))
        shares.append(share)
    return x._new(shares)


def _exact_public(y: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(F, coef) with floor(c / d) = F + coef * b (mod 2**64) for c = y_low + 2**63 (y63 xor b):
    F = floor((y_low + 2**63 y63) / d), coef = (1 - 2 y63) D, D = floor((y_low + 2**63) / d)
    - floor(y_low / d), all computed without overflowing int64 (y: the opened int64 tensor)."""
    y63 = (y < 0).to(torch.int64)
    low = y & INT64_MAX
    q, e = divmod(1 << 63, d)
    step = torch.div(torch.remainder(low, d) + e, d, rounding_mode="floor") + q
    return torch.div(low, d, rounding_mode="floor") + y63 * step, (1 - 2 * y63) * step
