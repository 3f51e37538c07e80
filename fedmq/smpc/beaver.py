"""Products of shared tensors with Beaver triples (Beaver, "Efficient Multiparty Protocols
Using Circuit Randomization", CRYPTO 1991; the SPDZ form of Damgård et al., CRYPTO 2012),
optionally followed by the truncation that rescales fixed-point products (truncation.py):
SecureML's local one between two parties, ABY3's (fused into the finish) with more.

Works for any bilinear op (elementwise `mul`, `matmul`, `conv2d`) and any number of parties.
The triple comes from the crypto provider, which sends each party its shares directly; the
coordinator only ever sees eps and delta, which are masked by the uniform a and b (and, with a
truncation, z - r, masked by the uniform r).

Ring products (`ring_op`) are torch's own int64 kernels, which wrap around mod 2^64 (ring.py).

Online cost per product: two LocalStep messages per party (mask; finish), i.e. two rounds with a
truncation (open eps/delta; open z - r) and one without (the finish is pipelined). Two parties
rescale locally (truncation.truncate_local, SecureML): one round, the finish and the rescaling
pipelined, no truncation pair dealt.

Beaver cache (`PrimitiveStore.cache_operand`, opt-in; SecretFlow SPU's "beaver cache"): for a
right operand y of matmul that does not change (a model's weights at inference), its mask b
and the opened delta = y - b are kept after the first product; every later product deals only
(a, c = a @ b) for the provider's handle-derived b (`TrustedDealer._cached_mask`) and opens only
eps = x - a: the weights' mask is neither dealt nor opened again, and each party keeps the
opened delta (784x500 weights: 3 MB less dealt and 18 MB less sent per batch).
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.smpc.local_steps import STEPS, combine, run_steps
from fedmq.smpc.provider import primitive_store, share_shapes
from fedmq.smpc.ring import PRODUCTS, conv_args_of, ring_op
from fedmq.smpc.shares import SharedTensor, _stats, remote
from fedmq.smpc.truncation import (finish_truncation, local_truncation, truncate_local,
                                   truncation_params)


# -- each party's local steps (LocalStep messages, local_steps.py) -------------------------------

def _step_mask(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, b: torch.Tensor):
    """Step 2: this party's shares of eps = x - a and delta = y - b (to be opened)."""
    return (), (x - a, y - b)


def _step_finish(op: str, a, b, c, eps, delta, first: bool, r, conv_args):
    """Step 4: z_i = c_i + eps op (b_i + [i = 0] delta) + a_i op delta (two products, not
    three: party 0 folds eps op delta into its first). With a truncation mask r_i, the party
    opens z_i - r_i instead of keeping z_i (step 2 of truncation.py, fused)."""
    if op not in PRODUCTS:
        raise ValueError(f"no Beaver product for op {op!r}")
    if first:
        b = b + delta
    if op == "mul":
        z = torch.addcmul(c, eps, b)
        z.addcmul_(a, delta)
    else:
        z = ring_op(op, eps, b, conv_args)
        z += ring_op(op, a, delta, conv_args)
        z += c
    if r is None:
        return (z,), ()
    z -= r
    return (), (z,)


# -- the coordinator ------------------------------------------------------------------------------

def triple_params(op: str, x_shape, y_shape, **kwargs: Any) -> dict:
    params = {"a": list(x_shape), "b": list(y_shape)}
    for key, value in kwargs.items():
        params[key] = list(value) if isinstance(value, tuple) else value
    return params


def beaver_op(op: str, x: SharedTensor, y: SharedTensor, divisor: int = 1,
              **kwargs: Any) -> SharedTensor:
    """[z] = [x] op [y] for a bilinear `op` ("mul", "matmul" or "conv2d"), divided by the
    public `divisor` when it is not 1 (two parties: local truncation; more: ABY3's, fused).

    1. Get a triple [a], [b], [c] = [a op b] with a, b shaped like x, y (and a truncation pair
       [r], [r / d] if dividing): from the primitive store if dealt ahead of time, else dealt
       now, in one round trip to the provider.
    2. Each party masks locally: [eps] = [x] - [a], [delta] = [y] - [b].
    3. Open eps and delta together (one round: one LocalStep per party).
    4. Each party computes [z] = [c] + eps op [b] + [a] op delta, and party 0 also adds
       eps op delta; this is x op y because op is bilinear:
       (eps + a) op (delta + b) = eps op delta + eps op b + a op delta + a op b.
    5. If dividing: the parties open z - r in the same message (one more round) and keep
       [r / d] (party 0 adds the public part): truncation.py. Two parties truncate their
       shares of z locally instead (`truncate_local`: no round, no pair dealt).
    """
    if op not in PRODUCTS:
        raise ValueError(f"no Beaver product for op {op!r} (known: {PRODUCTS})")
    x._same_parties(y)
    provider = x._provider(f"{op} of two shared tensors")
    store = primitive_store(provider)
    entry = store.cached_mask(y) if op == "matmul" and len(tuple(x.shape)) == 2 else None
    if entry is not None:
        return _cached_matmul(x, y, entry, divisor, provider)
    params = triple_params(op, x.shape, y.shape, **kwargs)
    wanted = [(op, params)]
    local = divisor != 1 and local_truncation(x)
    if divisor != 1 and not local:
        out_shape = share_shapes(op, params)[2]
        wanted.append(("trunc", truncation_params(out_shape, divisor)))
    prims = primitive_store(provider).take_many(provider, x.locations, wanted)
    a, b, c = prims[0]
    if local:
        return truncate_local(beaver_finish(op, x, y, a, b, c, **kwargs), divisor)
    return beaver_finish(op, x, y, a, b, c, trunc_pair=prims[1] if divisor != 1 else None,
                         divisor=divisor, **kwargs)


def beaver_finish(op: str, x: SharedTensor, y: SharedTensor, a: list,
                  b: list, c: list, trunc_pair: list | None = None, divisor: int = 1,
                  **kwargs: Any) -> SharedTensor:
    """Steps 2-5 of `beaver_op` with the primitives already dealt (lists of per-party
    pointers; `trunc_pair` = [r shares, r/d shares] when dividing by `divisor`)."""
    parties = x.locations
    _, opened = run_steps("beaver_mask", [(loc, (xs, ai, ys, bi)) for loc, xs, ai, ys, bi
                                          in zip(parties, x.shares, a, y.shares, b)],
                          0, (), True)
    eps, delta = combine(opened, 0, "add"), combine(opened, 1, "add")
    _stats.rounds += 1
    conv_args = conv_args_of(kwargs) if op == "conv2d" else None
    out_shape = tuple(c[0].shape_local)
    r = trunc_pair[0] if trunc_pair is not None else [None] * len(parties)
    args = [(loc, (op, ai, bi, ci, eps, delta, i == 0, ri, conv_args))
            for i, (loc, ai, bi, ci, ri) in enumerate(zip(parties, a, b, c, r))]
    if trunc_pair is None:
        kept, _ = run_steps("beaver_finish", args, 1, out_shape, False)
        return x._new([k[0] for k in kept])
    _, opened = run_steps("beaver_finish", args, 0, out_shape, True)
    _stats.rounds += 1
    return finish_truncation(x, divisor, combine(opened, 0, "add"), trunc_pair[1])


def _step_mask_x(x: torch.Tensor, a: torch.Tensor):
    """Step 2 with a cached mask of y: only eps = x - a is opened."""
    return (), (x - a,)


def _cached_matmul(x: SharedTensor, y: SharedTensor, entry: dict, divisor: int,
                   provider) -> SharedTensor:
    """x @ y with y's Beaver mask b cached (`PrimitiveStore.cache_operand`): a triple
    (a, c = a @ b) for the cached b, dealt in one request (with b's shares and a truncation
    pair, if needed); delta = y - b opened at the first product only (with eps, in the same
    round) and kept by every party (later finishes name it); then steps 4-5 of `beaver_op`
    as usual. The provider derives b from the cache's handle each time
    (`TrustedDealer._cached_mask`); it sees neither x nor y."""
    store = primitive_store(provider)
    parties = x.locations
    shape_a, shape_b = list(x.shape), list(y.shape)
    first = entry["b"] is None
    wanted = [("fixmask", {"shape": shape_b, "handle": entry["handle"]})] if first else []
    wanted.append(("matmul_fixed", {"a": shape_a, "b": shape_b, "handle": entry["handle"]}))
    out_shape = (shape_a[0], shape_b[1])
    local = divisor != 1 and local_truncation(x)
    if divisor != 1 and not local:
        wanted.append(("trunc", truncation_params(out_shape, divisor)))
    prims = store.take_many(provider, parties, wanted)
    a, c = prims[1] if first else prims[0]
    if first:
        entry["b"] = prims[0][0]
        _, opened = run_steps("beaver_mask", [(loc, (xs, ai, ys, bi)) for loc, xs, ai, ys, bi
                                              in zip(parties, x.shares, a, y.shares,
                                                     entry["b"])], 0, (), True)
        # each party keeps the opened delta (one copy sent, with this product's finish): later
        # products name it instead of carrying it (784x500 weights: 3 MB per party per batch)
        delta = combine(opened, 1, "add")
        entry["delta"] = [remote(loc, "torch.clone", delta) for loc in parties]
    else:
        _, opened = run_steps("beaver_mask_x", [(loc, (xs, ai)) for loc, xs, ai
                                                in zip(parties, x.shares, a)], 0, (), True)
    eps = combine(opened, 0, "add")
    _stats.rounds += 1
    b, delta = entry["b"], entry["delta"]
    trunc_pair = prims[-1] if divisor != 1 and not local else None
    r = trunc_pair[0] if trunc_pair is not None else [None] * len(parties)
    args = [(loc, ("matmul", ai, bi, ci, eps, di, i == 0, ri, None))
            for i, (loc, ai, bi, ci, di, ri) in enumerate(zip(parties, a, b, c, delta, r))]
    if trunc_pair is None:
        kept, _ = run_steps("beaver_finish", args, 1, out_shape, False)
        out = x._new([k[0] for k in kept])
        return truncate_local(out, divisor) if local else out
    _, opened = run_steps("beaver_finish", args, 0, out_shape, True)
    _stats.rounds += 1
    return finish_truncation(x, divisor, combine(opened, 0, "add"), trunc_pair[1])


STEPS["beaver_mask"] = _step_mask
STEPS["beaver_mask_x"] = _step_mask_x
STEPS["beaver_finish"] = _step_finish
