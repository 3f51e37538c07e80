"""Division of a shared value by a public positive integer: ABY3's probabilistic truncation
with a preprocessed truncation pair (Mohassel & Rindal, "ABY3: A Mixed Protocol Framework for
Machine Learning", CCS 2018, §5.1.1, Π_trunc2; CrypTen's TTP mode uses the same pair).

It rescales fixed-point products (divisor base**precision_fractional) and computes `mean` and
public division, for any number of parties (PySyft divided each share locally, which is only
right for two parties and not always then: #2706, notes C1).

Guarantee. With x the shared value and d the divisor, the result is ceil(x/d) or ceil(x/d) - 1:
exact when d divides x, otherwise x/d rounded up or down at random, without bias (E = x/d),
so always less than one unit in the last place from x/d (PySyft's local truncation rounds toward
zero). This fails only if the opened x - r wrapped around the int64 range, which happens with
probability about |x| / 2**64 per element (2**-24 for |x| < 2**40). Privacy is perfect: the
opened value x - r is uniform because r is.
"""
from __future__ import annotations

import torch

from fedmq.smpc.provider import primitive_store
from fedmq.smpc.shares import SharedTensor, open_shares, remote


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
    provider = x._provider("division (and fixed-point rescaling)")
    r, r_div = primitive_store(provider).take(provider, x.locations, "trunc",
                                              truncation_params(x.shape, divisor))
    return truncate_finish(x, divisor, r, r_div)


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
