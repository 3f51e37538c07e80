"""Comparison of shared values and what is built on it (`< > <= >= ==`, relu, abs, max, argmax,
min), with correlated randomness from the crypto provider.

The core is `ltz`, [x < 0] = MSB(x), by dealer-assisted bit decomposition of a masked value:

* Masking with an edaBit (Escudero, Ghosh, Keller, Rachuri, Scholl, "Improved Primitives for
  MPC over Mixed Arithmetic-Binary Circuits", CRYPTO 2020): a random r shared both additively
  (for the arithmetic world) and bitwise-XOR (for the binary world), dealt by the provider.
* The comparison circuit of a public value with a bitwise-shared one, a suffix-OR followed by
  the "first differing bit" trick (Damgård, Fitzi, Kiltz, Nielsen, Toft, "Unconditionally
  Secure Constant-Rounds Multi-Party Computation for Equality, Comparison, Bits and
  Exponentiation", TCC 2006, §6 BIT-LT), on binary shares packed 63 bits to an int64 word with
  log-depth OR (AND gates by binary Beaver triples), as CrypTen packs its binary shares.
* B2A of the result bit with a random bit shared both ways (CrypTen's `B2A_single_bit`).

Cost: 8 rounds (1 opening of x + r, 6 AND layers, 1 B2A opening), one provider round trip for
all the randomness (none if dealt ahead of time), 64-bit words only (no per-bit tensors).
Security: semi-honest, provider not colluding; every opened value is uniformly masked.
"""
from __future__ import annotations

from collections import namedtuple

import torch

from fedmq.smpc.local_steps import STEPS, combine, run_steps
from fedmq.smpc.provider import primitive_store
from fedmq.smpc.shares import SharedTensor, _stats, cat, open_shares, remote, stack

MASK63 = (1 << 63) - 1
SIGN_BIT = -(1 << 63)  # 0x8000000000000000 as int64
_OR_SHIFTS = (1, 2, 4, 8, 16, 32)
_FOLD_SHIFTS = (32, 16, 8, 4, 2, 1)

MaxResult = namedtuple("MaxResult", ["values", "indices"])


def comparison_primitives(shape) -> list:
    """What one `ltz` on a tensor of `shape` takes from the provider (preprocessing: deal these
    ahead with `primitive_store(provider).provide`)."""
    params = {"shape": list(shape)}
    return [("edabit", params)] + [("and", params)] * len(_OR_SHIFTS) + [("bit", params)]


def _xor(a, b):
    return remote(a.location, "Tensor.__xor__", a, b)


def _and_public(a, mask):
    return remote(a.location, "Tensor.__and__", a, mask)


def binary_and(f: list, g: list, triple: list) -> list:
    """[f & g] from XOR shares f, g (lists of per-party pointers) and a binary triple, as
    Commands (the reference form of the AND layer `ltz` runs fused into its LocalSteps).

    1. [u] = [f] ^ [a], [v] = [g] ^ [b] locally; 2. open u and v (one round);
    3. [f & g] = [c] ^ (u & [b]) ^ (v & [a]), and party 0 also XORs u & v.
    """
    a, b, c = triple
    u_sh = [_xor(fi, ai) for fi, ai in zip(f, a)]
    v_sh = [_xor(gi, bi) for gi, bi in zip(g, b)]
    u, v = open_shares([u_sh, v_sh], combine="xor")
    out = []
    for i, (ai, bi, ci) in enumerate(zip(a, b, c)):
        z = _xor(ci, _and_public(bi, u))
        z = _xor(z, _and_public(ai, v))
        if i == 0:
            z = _xor(z, u & v)
        out.append(z)
    return out


# -- each party's local computation, one message per party per round ----------------------------
# These run on the share holders (LocalStep messages, local_steps.py allowlists them by name).

def _rshift(t: torch.Tensor, s: int) -> torch.Tensor:
    return t >> s  # arithmetic shift: linear over XOR shares (each output bit is a fixed input bit)


def _step_mask(x: torch.Tensor, r: torch.Tensor):
    """Step 2: this party's share of c = x + r (to be opened)."""
    return (), (x + r,)


def _step_start(r_xor: torch.Tensor, c, a: torch.Tensor, b: torch.Tensor, s: int):
    """Step 3, then the masking of the first AND layer: e = (c ^ r) & (2^63-1), g = e >> s."""
    e = (r_xor ^ c if c is not None else r_xor) & MASK63
    g = _rshift(e, s)
    return (e, g), (e ^ a, g ^ b)


def _step_or(f, g, a, b, c, u, v, first: bool, nxt_a, nxt_b, nxt_s):
    """Finish an AND layer (f | g = f ^ g ^ (f & g)) and mask the next one, if any."""
    fg = c ^ (b & u) ^ (a & v)
    if first:
        fg = fg ^ (u & v)
    f = f ^ g ^ fg
    if nxt_a is None:
        return (f,), ()
    g = _rshift(f, nxt_s)
    return (f, g), (f ^ nxt_a, g ^ nxt_b)


def _step_finish(f, r_xor, not_c, c_sign, b_xor):
    """Step 5 and the masking of B2A: <MSB(x)> ^ <b> (to be opened)."""
    w = ((f ^ _rshift(f, 1)) & not_c) ^ (r_xor & SIGN_BIT)
    if c_sign is not None:
        w = w ^ c_sign
    for s in _FOLD_SHIFTS:
        w = w ^ _rshift(w, s)
    return (), ((w & 1) ^ b_xor,)


def _step_b2a(b_arith, u, first: bool):
    """Step 6: this party's share of u + [b] - 2u[b]."""
    out = b_arith * (1 - 2 * u)
    return ((out + u) if first else out,), ()


STEPS.update({"ltz_mask": _step_mask, "ltz_start": _step_start, "ltz_or": _step_or,
              "ltz_finish": _step_finish, "b2a": _step_b2a})


def ltz(x: SharedTensor) -> SharedTensor:
    """[x < 0] as additive shares of 0/1, x read as a signed 64-bit value.

    1. Get an edaBit ([r] additive, <r> XOR), 6 binary triples and a double-shared random bit
       <b>/[b] from the provider (one request, or none if dealt ahead).
    2. Open c = x + r (uniform). Then x = c - r, and
       MSB(x) = c_63 ^ r_63 ^ borrow, where borrow = [c mod 2^63 < r mod 2^63].
    3. <e> = (c ^ <r>) & (2^63 - 1): the bits where c and r differ (party 0 XORs c).
    4. Suffix-OR <f_j> = OR_{k>=j} e_k in 6 layers f |= f >> s (s = 1..32); OR via one AND
       (f | g = f ^ g ^ (f & g)), each AND one round with a binary triple (`binary_and`).
    5. <d> = <f> ^ (<f> >> 1) marks the highest differing bit (at most one bit set). There
       r_j = 1 - c_j, so borrow = OR_j (d_j & ~c_j) = parity(<d> & ~c): local, because c is
       public. XOR in r_63 (each share's own bit 63) and c_63 (party 0), fold the parity into
       bit 0 by shifts and XORs, keep bit 0: <MSB(x)>, each share 0/1.
    6. B2A: open u = MSB(x) ^ b (one round, uniform bit), then
       [MSB(x)] = u + [b] - 2u[b] (party 0 adds u).
    Each round is one LocalStep message per party that finishes the previous round and
    returns the next masked values (8 messages per party in all).
    """
    provider = x._provider("comparison")
    parties = x.locations
    shape = tuple(x.shape)
    prims = primitive_store(provider).take_many(provider, parties, comparison_primitives(shape))
    (r_arith, r_xor), ands, (b_xor, b_arith) = prims[0], prims[1:7], prims[7]
    n = len(parties)

    _, opened = run_steps("ltz_mask", [(loc, (xs, ri)) for loc, xs, ri in
                                       zip(parties, x.shares, r_arith)], 0, shape, True)
    c = combine(opened, 0, "add")

    a1, b1, _ = ands[0]
    kept, opened = run_steps("ltz_start", [(parties[i], (r_xor[i], c if i == 0 else None,
                                                        a1[i], b1[i], _OR_SHIFTS[0]))
                                           for i in range(n)], 2, shape, True)
    f = [k[0] for k in kept]
    g = [k[1] for k in kept]
    u, v = combine(opened, 0, "xor"), combine(opened, 1, "xor")
    for layer in range(len(_OR_SHIFTS)):
        a, b, cc = ands[layer]
        last = layer == len(_OR_SHIFTS) - 1
        nxt = (None, None, None) if last else (ands[layer + 1][0], ands[layer + 1][1],
                                                 _OR_SHIFTS[layer + 1])
        args = [(parties[i], (f[i], g[i], a[i], b[i], cc[i], u, v, i == 0,
                              None if last else nxt[0][i], None if last else nxt[1][i], nxt[2]))
                for i in range(n)]
        kept, opened = run_steps("ltz_or", args, 1 if last else 2, shape, not last)
        f = [k[0] for k in kept]
        if not last:
            g = [k[1] for k in kept]
            u, v = combine(opened, 0, "xor"), combine(opened, 1, "xor")
    _stats.rounds += len(_OR_SHIFTS) + 2

    not_c = (~c) & MASK63
    c_sign = c & SIGN_BIT
    _, opened = run_steps("ltz_finish", [(parties[i], (f[i], r_xor[i], not_c,
                                                       c_sign if i == 0 else None, b_xor[i]))
                                         for i in range(n)], 0, shape, True)
    u = combine(opened, 0, "xor")
    kept, _ = run_steps("b2a", [(parties[i], (b_arith[i], u, i == 0)) for i in range(n)], 1,
                        shape, False)
    return x._new([k[0] for k in kept])


def eq(x: SharedTensor, y) -> SharedTensor:
    """[x == y] = 1 - [x - y < 0] - [y - x < 0], both comparisons in one batch."""
    d = x.sub(y)
    both = ltz(stack([d, d.neg()]))
    return both[0].add(both[1]).rsub(1)


def relu(x: SharedTensor) -> SharedTensor:
    """relu(x) = x * [x >= 0]: one comparison and one Beaver product (9 rounds)."""
    return x.mul(ltz(x).rsub(1))


def abs_(x: SharedTensor) -> SharedTensor:
    """|x| = x * (1 - 2[x < 0])."""
    return x.mul(ltz(x).mul(-2).add(1))


def _trivial_share(x: SharedTensor, value: torch.Tensor) -> SharedTensor:
    """A public value as a (trivially) shared one: party 0 holds it, the others zeros."""
    zeros = torch.zeros_like(value)
    return x._new([(value if i == 0 else zeros).send(loc) for i, loc in enumerate(x.locations)])


def max_(x: SharedTensor, dim: int | None = None, keepdim: bool = False):
    """Maximum by a tournament: log2(k) layers, each one comparison of the two halves and one
    Beaver product (values and indices multiplied together): max(a, b) = b + [a > b](a - b).

    Without `dim`, the maximum of all elements as a shape-(1,) shared tensor (as PySyft);
    with `dim`, `(values, indices)` with torch's shapes, both shared.
    """
    if dim is None:
        return _tournament(x.flatten(), with_indices=False)[0]
    nd = x.dim()
    dim = dim % nd
    perm = [i for i in range(nd) if i != dim] + [dim]
    moved = x.permute(*perm) if perm != list(range(nd)) else x
    values, indices = _tournament(moved, with_indices=True)
    if keepdim:
        inverse = [perm.index(i) for i in range(nd)]
        if inverse != list(range(nd)):
            values, indices = values.permute(*inverse), indices.permute(*inverse)
    else:
        values, indices = values.squeeze(-1), indices.squeeze(-1)
    return MaxResult(values, indices)


def _tournament(x: SharedTensor, with_indices: bool):
    k = x.shape[-1]
    if k == 0:
        raise ValueError("max of an empty tensor")
    idx = None
    if with_indices:
        idx = _trivial_share(x, torch.arange(k).expand(tuple(x.shape)).contiguous())
    values = x
    while k > 1:
        half = k // 2
        a, b = values[..., :half], values[..., half:2 * half]
        a_gt_b = ltz(b.sub(a))
        if with_indices:
            ia, ib = idx[..., :half], idx[..., half:2 * half]
            diffs = stack([a.sub(b), ia.sub(ib)])
            prod = diffs.mul(a_gt_b.unsqueeze(0))
            new_v, new_i = b.add(prod[0]), ib.add(prod[1])
        else:
            new_v = b.add(a.sub(b).mul(a_gt_b))
        if k % 2:
            new_v = cat([new_v, values[..., 2 * half:]], dim=-1)
            if with_indices:
                new_i = cat([new_i, idx[..., 2 * half:]], dim=-1)
        values = new_v
        if with_indices:
            idx = new_i
        k = values.shape[-1]
    return values, idx
