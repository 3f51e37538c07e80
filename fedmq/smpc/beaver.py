"""Products of shared tensors with Beaver triples (Beaver, "Efficient Multiparty Protocols
Using Circuit Randomization", CRYPTO 1991; the SPDZ form of Damgård et al., CRYPTO 2012).

Works for any bilinear op (elementwise `mul`, `matmul`, `conv2d`) and any number of parties.
The triple comes from the crypto provider, which sends each party its shares directly; the
coordinator only ever sees eps and delta, which are masked by the uniform a and b.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedmq.smpc.additive import AdditiveSharingTensor, open_shares, remote
from fedmq.smpc.provider import STORE


_LIMB = 22
_LIMB_MASK = (1 << _LIMB) - 1


def ring_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y in Z/2^64Z, fast: int64 matmul has no BLAS kernel, so 2-D products with inner
    size <= 512 split each operand into three 22-bit limbs (the top one signed) and use six
    float64 matmuls, each exact (|sum| < 512 * 2^44 = 2^53); limb products of weight >= 2^66
    vanish mod 2^64. Other shapes fall back to torch.matmul (same result, slower)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] > 512:
        return torch.matmul(x, y)
    xs = [(x & _LIMB_MASK).double(), ((x >> _LIMB) & _LIMB_MASK).double(),
          (x >> (2 * _LIMB)).double()]
    ys = [(y & _LIMB_MASK).double(), ((y >> _LIMB) & _LIMB_MASK).double(),
          (y >> (2 * _LIMB)).double()]

    def mm(i: int, j: int) -> torch.Tensor:
        return torch.mm(xs[i], ys[j]).to(torch.int64)

    return mm(0, 0) + (mm(0, 1) + mm(1, 0)) * (1 << _LIMB) + \
        (mm(0, 2) + mm(1, 1) + mm(2, 0)) * (1 << (2 * _LIMB))


def _public_op(op: str, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    if op == "mul":
        return x * y
    if op == "matmul":
        return ring_matmul(x, y)
    return F.conv2d(x, y, **kwargs)


def _step_matmul_finish(a, b, c, eps, delta, first: bool):
    """Step 4 of `beaver_op` for a 2-D matmul, on one party, with the fast ring matmul."""
    z = c + ring_matmul(eps, b) + ring_matmul(a, delta)
    if first:
        z = z + ring_matmul(eps, delta)
    return (z,), ()


_REMOTE = {"mul": "torch.mul", "matmul": "torch.matmul", "conv2d": "F.conv2d"}


def triple_params(op: str, x_shape, y_shape, **kwargs: Any) -> dict:
    params = {"a": list(x_shape), "b": list(y_shape)}
    for key, value in kwargs.items():
        params[key] = list(value) if isinstance(value, tuple) else value
    return params


def beaver_op(op: str, x: AdditiveSharingTensor, y: AdditiveSharingTensor,
              **kwargs: Any) -> AdditiveSharingTensor:
    """[z] = [x] op [y] for a bilinear `op` ("mul", "matmul" or "conv2d").

    1. Get a triple [a], [b], [c] = [a op b] with a, b shaped like x, y (from the primitive
       store if it was dealt ahead of time, else dealt now: one round trip to the provider).
    2. Each party masks locally: [eps] = [x] - [a], [delta] = [y] - [b].
    3. Open eps and delta together (one round: one GetRequest per party).
    4. Each party computes [z] = [c] + eps op [b] + [a] op delta, and party 0 also adds
       eps op delta; this is x op y because op is bilinear:
       (eps + a) op (delta + b) = eps op delta + eps op b + a op delta + a op b.
    """
    x._same_parties(y)
    provider = x._provider(f"{op} of two shared tensors")
    parties = x.locations
    params = triple_params(op, x.shape, y.shape, **kwargs)
    a, b, c = STORE.take(provider, parties, op, params)
    return beaver_finish(op, x, y, a, b, c, **kwargs)


def beaver_finish(op: str, x: AdditiveSharingTensor, y: AdditiveSharingTensor, a: list,
                  b: list, c: list, **kwargs: Any) -> AdditiveSharingTensor:
    """Steps 2-4 of `beaver_op` with a triple already dealt (lists of per-party pointers)."""
    eps_shares = [remote(xs.location, "torch.sub", xs, ai) for xs, ai in zip(x.shares, a)]
    delta_shares = [remote(ys.location, "torch.sub", ys, bi) for ys, bi in zip(y.shares, b)]
    eps, delta = open_shares([eps_shares, delta_shares])
    if op == "matmul" and eps.dim() == 2 and delta.dim() == 2:
        from fedmq.smpc.comparison import _run_steps
        shape = tuple(c[0].shape_local)
        kept, _ = _run_steps("beaver_matmul", [(ci.location, (ai, bi, ci, eps, delta, i == 0))
                                               for i, (ai, bi, ci) in enumerate(zip(a, b, c))],
                             1, shape, False)
        return x._new([k[0] for k in kept])
    name = _REMOTE[op]
    out = []
    for i, (ai, bi, ci) in enumerate(zip(a, b, c)):
        loc = ci.location
        if op == "mul":
            z = remote(loc, "torch.addcmul", ci, eps, bi)
            z = remote(loc, "torch.addcmul", z, ai, delta)
        else:
            z = remote(loc, "torch.add", ci, remote(loc, name, eps, bi, **kwargs))
            z = remote(loc, "torch.add", z, remote(loc, name, ai, delta, **kwargs))
        if i == 0:
            z = remote(loc, "torch.add", z, _public_op(op, eps, delta, **kwargs))
        out.append(z)
    return x._new(out)


def _register_steps() -> None:
    from fedmq.smpc.comparison import STEPS
    STEPS["beaver_matmul"] = _step_matmul_finish


_register_steps()
