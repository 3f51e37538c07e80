"""Shamir secret sharing (Shamir, "How to share a secret", CACM 1979) over the prime field
GF(p), p = 2**521 - 1 (a Mersenne prime: any 32-byte secret fits, with room to spare).

    split(secret, xs, t)      shares {x: f(x)} of a random degree t-1 polynomial f, f(0) = secret
    reconstruct(shares)       f(0) by Lagrange interpolation at 0 from {x: y}
    to_bytes / from_bytes     a share's y as SHARE_BYTES big-endian bytes (the wire form)

Any t shares give the secret; t-1 shares are uniformly distributed whatever the secret, so
interpolating t-1 of them gives an unrelated value. Python ints throughout (no floats).
"""
from __future__ import annotations

import functools
import secrets

#: the field's prime, 2**521 - 1
PRIME = (1 << 521) - 1
#: bytes of one share value on the wire
SHARE_BYTES = 66


def split(secret: int, xs: list[int], t: int) -> dict[int, int]:
    """{x: f(x)} for each x in `xs` (distinct ints in [1, PRIME)), f a uniformly random
    polynomial of degree t-1 with f(0) = `secret` (an int in [0, PRIME)). ValueError for a
    secret out of range, repeated or out-of-range x, or t not in [1, len(xs)]."""
    if not (type(secret) is int and 0 <= secret < PRIME):
        raise ValueError("a Shamir secret is an int in [0, 2**521 - 1)")
    if len(set(xs)) != len(xs) or not all(type(x) is int and 0 < x < PRIME for x in xs):
        raise ValueError(f"share points must be distinct ints in [1, p), got {xs!r}")
    if not (type(t) is int and 1 <= t <= len(xs)):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {t!r}")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        out[x] = y
    return out


def reconstruct(shares: dict[int, int]) -> int:
    """f(0) from the points {x: y} (Lagrange interpolation at 0 in GF(p)): the secret when
    they are at least t shares of one sharing, an unrelated field element otherwise.
    ValueError for no shares, x out of [1, p) or y out of [0, p)."""
    if not shares:
        raise ValueError("no shares to reconstruct from")
    if not all(type(x) is int and 0 < x < PRIME and type(y) is int and 0 <= y < PRIME
               for x, y in shares.items()):
        raise ValueError("shares are {x: y} with x in [1, p) and y in [0, p)")
    lambdas = _lagrange_at_zero(tuple(sorted(shares)))
    return sum(shares[x] * lam for x, lam in lambdas) % PRIME


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple) -> tuple:
    """((x_i, lambda_i), ...): the Lagrange coefficients at 0 of the points `xs` in GF(p),
    lambda_i = prod_{j != i} x_j / (x_j - x_i), with one field inversion for all of them
    (Montgomery's trick). Cached: holder sets repeat."""
    nums, dens = [], []
    step = PRIME if len(xs) > 32 else None  # a few small points: reduced once at the end
    for i in xs:
        num, den = 1, 1
        for j in xs:
            if j != i:
                num, den = num * j, den * (j - i)
                if step is not None:
                    num, den = num % step, den % step
        nums.append(num % PRIME)
        dens.append(den % PRIME)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)  # of the product of all denominators
    out = [0] * len(xs)
    for k in range(len(xs) - 1, -1, -1):  # inverse of dens[k], then drop it from `inverse`
        out[k] = (xs[k], nums[k] * inverse * prefix[k] % PRIME)
        inverse = inverse * dens[k] % PRIME
    return tuple(out)


def to_bytes(y: int) -> bytes:
    """A share value as SHARE_BYTES big-endian bytes."""
    return y.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """A share value from its wire form; ValueError unless SHARE_BYTES bytes below p."""
    if type(data) is not bytes or len(data) != SHARE_BYTES:
        raise ValueError(f"a Shamir share is {SHARE_BYTES} bytes")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ValueError("a Shamir share must be below 2**521 - 1")
    return y
