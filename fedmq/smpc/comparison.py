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

Cost: 4 rounds (the opening of x + r, with the first OR layer's masked input; two more OR
layers, fan-in 4; the last OR layer with the B2A opening), one provider round trip for all the
randomness (none if dealt ahead of time), 64-bit words only (no per-bit tensors). relu and abs
fuse their product into the B2A (`bit_product`, 4 rounds); max/argmax is a tournament of groups
of 4 with one-hot selection (`_tournament`, 4 rounds per level, 20 over 1 000 values).
Security: semi-honest, provider not colluding; every opened value is uniformly masked.
"""
from __future__ import annotations

from collections import namedtuple

import torch

from fedmq.errors import RemoteError
from fedmq.smpc.local_steps import STEPS, combine, run_steps
from fedmq.smpc.provider import OR4_SUBSETS, primitive_store, selection_layout
from fedmq.smpc.shares import SharedTensor, _stats, open_shares, remote, stack

MASK63 = (1 << 63) - 1
SIGN_BIT = -(1 << 63)  # 0x8000000000000000 as int64
_OR4_SHIFTS = (1, 4, 16)  # ltz's suffix-OR, fan-in 4: 4 * 4 * 4 = 64 bits in 3 layers
_OR4_LAST = len(OR4_SUBSETS) - 1  # the subset {0, 1, 2, 3}
_FOLD_SHIFTS = (32, 16, 8, 4, 2, 1)

MaxResult = namedtuple("MaxResult", ["values", "indices"])


def comparison_primitives(shape) -> list:
    """What one `ltz` on a tensor of `shape` takes from the provider (preprocessing: deal these
    ahead with `primitive_store(provider).provide`)."""
    params = {"shape": list(shape)}
    return ([("edabit", params)] + [("or4", {**params, "shift": s}) for s in _OR4_SHIFTS]
            + [("bit", params)])


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


def _step_mask(x: torch.Tensor, r: torch.Tensor, r_xor: torch.Tensor, alpha: torch.Tensor):
    """Step 2: this party's shares of c = x + r and of w = (r mod 2^63) ^ alpha (to be
    opened; w does not depend on x, so the first OR layer's masked input
    e ^ alpha = (c mod 2^63) ^ w needs no round of its own)."""
    return (), (x + r, _first_or_mask(r_xor, alpha))


def _first_or_mask(r_xor: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return (r_xor & MASK63) ^ alpha


def _or4(z: torch.Tensor, alpha: torch.Tensor, products: torch.Tensor, shift: int,
         first: bool) -> torch.Tensor:
    """This party's share of f | f >> s | f >> 2s | f >> 3s from the opened z = f ^ alpha.

    OR of four words = NOT (AND of their NOTs). The k-th word y_k = ~(f >> ks) is masked by
    alpha >> ks (shifts are linear over XOR shares), so y_k = z_k ^ m_k with z_k = ~(z >> ks)
    public and m_k = alpha >> ks shared. Over GF(2), AND_k (z_k ^ m_k) = XOR over the subsets S
    of {0..3} of (AND_{k not in S} z_k) & m_S, with m_S = AND_{k in S} m_k dealt by the provider
    (`products`, one word per subset of two or more; OR4_SUBSETS order), m_k from alpha's own
    share, and m_{} = all ones (party 0 alone adds that term, and the final NOT)."""
    pub = [~(z >> (k * shift)) for k in range(4)]
    own = [alpha >> (k * shift) for k in range(4)]
    # AND of the public words outside each subset: pub_and[T] for T the complement's mask
    pub_and: list = [None] * 16
    for t in range(1, 16):
        low = (t & -t).bit_length() - 1
        rest = pub_and[t & (t - 1)]
        pub_and[t] = pub[low] if rest is None else rest & pub[low]
    out = products[_OR4_LAST]  # S = {0,1,2,3}: no public factor
    for index, subset in enumerate(OR4_SUBSETS[:-1]):
        out = out ^ (pub_and[15 ^ subset] & products[index])
    for k in range(4):
        out = out ^ (pub_and[15 ^ (1 << k)] & own[k])
    if first:
        out = ~(out ^ pub_and[15])
    return out


def _step_or(z, alpha, products, shift: int, first: bool, nxt_alpha):
    """Finish an OR layer and open the next one's masked input."""
    f = _or4(z, alpha, products, shift, first)
    return (), (f ^ nxt_alpha,)


def _step_finish(z, alpha, products, shift: int, first: bool, r_xor, not_c, c_sign, b_xor):
    """Finish the last OR layer, then step 5 and the masking of B2A: <MSB(x)> ^ <b> (opened)."""
    f = _or4(z, alpha, products, shift, first)
    w = ((f ^ _rshift(f, 1)) & not_c) ^ (r_xor & SIGN_BIT)
    if c_sign is not None:
        w = w ^ c_sign
    for s in _FOLD_SHIFTS:
        w = w ^ _rshift(w, s)
    return (), ((w & 1) ^ b_xor,)


def _step_finish_bit(z, alpha, products, shift: int, first: bool, r_xor, c, b_xor):
    """`_step_finish` from the opened c itself (not ~c and c's sign bit: one word per element
    less to party 0), opening u = MSB(x) ^ b as one byte per element (uint8), not an int64
    word (7 bytes less each way). The steps that read u take either dtype."""
    c_sign = c & SIGN_BIT if first else None
    (), (u,) = _step_finish(z, alpha, products, shift, first, r_xor, (~c) & MASK63, c_sign,
                            b_xor)
    return (), ((u & 1).to(torch.uint8),)


def _step_b2a(b_arith, u, first: bool):
    """Step 6: this party's share of u + [b] - 2u[b]."""
    u = u.long()
    out = b_arith * (1 - 2 * u)
    return ((out + u) if first else out,), ()


def _step_bitmul_mask(x: torch.Tensor, r: torch.Tensor, r_xor: torch.Tensor,
                      alpha: torch.Tensor, a: torch.Tensor):
    """`_step_mask`, and this party's share of eps = x - a for the bit product."""
    return (), (x + r, _first_or_mask(r_xor, alpha), x - a)


def _step_bitmul_finish(x, b_arith, ab, u, eps, first: bool, mode: int):
    """[x * beta] for the bit beta = MSB(x) (mode 0), 1 - MSB(x) (mode 1), or
    [x * (1 - 2 MSB(x))] (mode 2), from the opened u = MSB(x) ^ b and eps = x - a:
    beta = u' + (1 - 2u') b with u' = u (or 1 - u), and x b = eps [b] + [a b]."""
    if mode not in (0, 1, 2):
        raise ValueError(f"bit product mode is 0, 1 or 2, got {mode!r}")
    u = u.long()
    up = 1 - u if mode == 1 else u
    xb = eps * b_arith + ab
    out = up * x + (1 - 2 * up) * xb
    if mode == 2:
        out = x - 2 * out
    return (out,), ()


STEPS.update({"ltz_mask": _step_mask, "ltz_or": _step_or, "ltz_finish": _step_finish,
              "ltz_finish_bit": _step_finish_bit, "b2a": _step_b2a,
              "bitmul_mask": _step_bitmul_mask, "bitmul_finish": _step_bitmul_finish})


def _ltz_rounds(parties: list, c: torch.Tensor, w: torch.Tensor, r_xor: list, ors: list,
                b_xor: list, shape) -> torch.Tensor:
    """Steps 3-6's openings once c = x + r and w = (r mod 2^63) ^ alpha_1 are public: the
    first OR layer's input z = e ^ alpha_1 = (c mod 2^63) ^ w is known at once, so three
    rounds (one LocalStep per party each): OR layers 1 and 2 finished with the next one's
    input opened, then layer 3 finished with u = MSB(x) ^ b opened. Returns u."""
    n = len(parties)
    z = (c & MASK63) ^ w
    for layer in range(len(_OR4_SHIFTS) - 1):
        alpha, products = ors[layer]
        _, opened = run_steps("ltz_or", [(parties[i], (z, alpha[i], products[i],
                                                       _OR4_SHIFTS[layer], i == 0,
                                                       ors[layer + 1][0][i]))
                                         for i in range(n)], 0, shape, True)
        z = combine(opened, 0, "xor")
    alpha, products = ors[-1]
    key = frozenset(p.id for p in parties)
    if key not in _INT64_FINISH:
        try:
            _, opened = run_steps("ltz_finish_bit",
                                  [(parties[i], (z, alpha[i], products[i], _OR4_SHIFTS[-1],
                                                 i == 0, r_xor[i], c, b_xor[i]))
                                   for i in range(n)], 0, shape, True)
        except RemoteError as exc:
            if "unknown SMPC step 'ltz_finish_bit'" not in str(exc):
                raise
            # a worker of an older fedmq (no ltz_finish_bit): the step keeps nothing and
            # opens a function of its arguments only, so asking again with the int64 step
            # opens the same value; these parties get that step from now on
            _INT64_FINISH.add(key)
    if key in _INT64_FINISH:
        not_c, c_sign = (~c) & MASK63, c & SIGN_BIT
        _, opened = run_steps("ltz_finish", [(parties[i], (z, alpha[i], products[i],
                                                           _OR4_SHIFTS[-1], i == 0, r_xor[i],
                                                           not_c, c_sign if i == 0 else None,
                                                           b_xor[i])) for i in range(n)],
                              0, shape, True)
    _stats.rounds += len(_OR4_SHIFTS)
    return combine(opened, 0, "xor")


#: party sets (worker ids) with a worker of an older fedmq, which has no "ltz_finish_bit"
_INT64_FINISH: set = set()


def ltz(x: SharedTensor) -> SharedTensor:
    """[x < 0] as additive shares of 0/1, x read as a signed 64-bit value.

    1. Get an edaBit ([r] additive, <r> XOR), three or4 masks and a double-shared random bit
       <b>/[b] from the provider (one request, or none if dealt ahead).
    2. Open c = x + r (uniform), and w = (r mod 2^63) ^ alpha_1 (independent of x). Then
       x = c - r, and
       MSB(x) = c_63 ^ r_63 ^ borrow, where borrow = [c mod 2^63 < r mod 2^63].
    3. <e> = (c ^ <r>) & (2^63 - 1): the bits where c and r differ (party 0 XORs c).
    4. Suffix-OR <f_j> = OR_{k>=j} e_k in 3 layers f = f | f>>s | f>>2s | f>>3s (s = 1, 4,
       16): each layer one opening of f ^ alpha (the first one's is (c mod 2^63) ^ w, known
       after step 2) and a 4-input AND with the dealt subset
       products of alpha's shifts (`_or4`; a fan-in-4 Beaver AND, as the multi-input AND
       gates of Damgård et al. TCC 2006 §5 built from correlated randomness).
    5. <d> = <f> ^ (<f> >> 1) marks the highest differing bit (at most one bit set). There
       r_j = 1 - c_j, so borrow = OR_j (d_j & ~c_j) = parity(<d> & ~c): local, because c is
       public. XOR in r_63 (each share's own bit 63) and c_63 (party 0), fold the parity into
       bit 0 by shifts and XORs, keep bit 0: <MSB(x)>, each share 0/1.
    6. B2A: open u = MSB(x) ^ b (one round, uniform bit), then
       [MSB(x)] = u + [b] - 2u[b] (party 0 adds u).
    Each round is one LocalStep message per party that finishes the previous round and
    returns the next masked values: 4 rounds (c and w; two OR layers; u), the B2A posted.
    What is seen: the coordinator and the parties see c = x + r, w, f ^ alpha (twice) and
    u = MSB(x) ^ b, each uniform (w and the first layer's e ^ alpha = (c mod 2^63) ^ w tell
    nothing more than c does); the provider sees nothing of x.
    """
    provider = x._provider("comparison")
    parties = x.locations
    shape = tuple(x.shape)
    prims = primitive_store(provider).take_many(provider, parties, comparison_primitives(shape))
    (r_arith, r_xor), ors, (b_xor, b_arith) = prims[0], prims[1:4], prims[4]
    n = len(parties)

    _, opened = run_steps("ltz_mask", [(parties[i], (x.shares[i], r_arith[i], r_xor[i],
                                                     ors[0][0][i])) for i in range(n)],
                          0, shape, True)
    _stats.rounds += 1
    u = _ltz_rounds(parties, combine(opened, 0, "add"), combine(opened, 1, "xor"), r_xor, ors,
                    b_xor, shape)
    kept, _ = run_steps("b2a", [(parties[i], (b_arith[i], u, i == 0)) for i in range(n)], 1,
                        shape, False)
    return x._new([k[0] for k in kept])


def bit_product(x: SharedTensor, mode: int) -> SharedTensor:
    """[x * MSB(x)] (mode 0), [x * (1 - MSB(x))] = relu(x) (mode 1) or [x * (1 - 2 MSB(x))]
    = |x| (mode 2): `ltz` with the product fused into its B2A, so it costs no Beaver round.

    The provider deals, with the comparison's randomness, a bit-injection triple: a random bit
    b (XOR- and additively shared), a uniform a and a * b. The first opening carries eps = x - a
    next to c = x + r; the last one opens u = MSB(x) ^ b as `ltz` does. Then MSB(x) = u + b - 2ub
    and x b = eps b + a b, all local (`_step_bitmul_finish`). 4 rounds (relu was 9: ltz and a
    Beaver product); the result is exact, equal to x * ltz(x)'s.
    What is seen: c, w, eps, f ^ alpha, u, each uniform (a, r, alpha, b uniform); the provider
    sees nothing of x.
    """
    provider = x._provider("comparison")
    parties = x.locations
    shape = tuple(x.shape)
    wanted = comparison_primitives(shape)[:-1] + [("bitmul", {"shape": list(shape)})]
    prims = primitive_store(provider).take_many(provider, parties, wanted)
    (r_arith, r_xor), ors, (b_xor, b_arith, a, ab) = prims[0], prims[1:4], prims[4]
    n = len(parties)
    _, opened = run_steps("bitmul_mask", [(parties[i], (x.shares[i], r_arith[i], r_xor[i],
                                                        ors[0][0][i], a[i]))
                                          for i in range(n)], 0, shape, True)
    _stats.rounds += 1
    c, eps = combine(opened, 0, "add"), combine(opened, 2, "add")
    u = _ltz_rounds(parties, c, combine(opened, 1, "xor"), r_xor, ors, b_xor, shape)
    kept, _ = run_steps("bitmul_finish", [(parties[i], (x.shares[i], b_arith[i], ab[i], u, eps,
                                                        i == 0, mode)) for i in range(n)],
                        1, shape, False)
    return x._new([k[0] for k in kept])


def eq(x: SharedTensor, y) -> SharedTensor:
    """[x == y] = 1 - [x - y < 0] - [y - x < 0], both comparisons in one batch."""
    d = x.sub(y)
    both = ltz(stack([d, d.neg()]))
    return both[0].add(both[1]).rsub(1)


def relu(x: SharedTensor) -> SharedTensor:
    """relu(x) = x * [x >= 0]: one comparison with the product fused in (`bit_product`, 4
    rounds)."""
    return bit_product(x, 1)


def abs_(x: SharedTensor) -> SharedTensor:
    """|x| = x * (1 - 2[x < 0]) (`bit_product`, 4 rounds)."""
    return bit_product(x, 2)


def _trivial_share(x: SharedTensor, value: torch.Tensor) -> SharedTensor:
    """A public value as a (trivially) shared one: party 0 holds it, the others zeros."""
    zeros = torch.zeros_like(value)
    return x._new([(value if i == 0 else zeros).send(loc) for i, loc in enumerate(x.locations)])


def max_(x: SharedTensor, dim: int | None = None, keepdim: bool = False):
    """Maximum by a tournament of groups of 4 (`_tournament`): log4(k) levels of 4 rounds.

    Without `dim`, the maximum of all elements as a shape-(1,) shared tensor (as PySyft);
    with `dim`, `(values, indices)` with torch's shapes, both shared; on ties the first index,
    as torch.
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


def max_levels(k: int) -> list[tuple[int, int, int]]:
    """The tournament over k values: per level (values in, group size, groups). Groups of 4
    (2 or 3 when fewer remain); the values left over after the last full group go on as they
    are."""
    levels = []
    while k > 1:
        g = min(4, k)
        m = k // g
        levels.append((k, g, m))
        k = m + k - m * g
    return levels


def max_primitives(lead, k: int, with_indices: bool) -> list:
    """What `_tournament` over the last dimension (k values, leading shape `lead`) takes from
    the provider (preprocessing: deal these ahead with `primitive_store(provider).provide`)."""
    out = []
    lead = list(lead)
    for _, g, m in max_levels(k):
        pairs = {"shape": lead + [m, g * (g - 1) // 2]}
        out += [("edabit", pairs)] + [("or4", {**pairs, "shift": s}) for s in _OR4_SHIFTS]
        out.append(("select", {"shape": lead + [m], "group": g, "width": 2 if with_indices
                               else 1}))
    return out


def _step_max_mask(v, r, r_xor, alpha, a, start: int, first: bool, group: int):
    """A level's first round: the stacked (values[, indices]) share V, shaped (w, ..., k)
    (`start` 1 or 2: built here from the values' share, party 0's indices 0..k-1 and the
    others' zeros; 0: v is V); its first k // group * group values as groups; this party's
    shares of c = x_i - x_j + r for every pair i < j of each group and of eps = V - a."""
    if start == 0:
        V = v
    elif start in (1, 2):
        V = v.unsqueeze(0)
        if start == 2:
            idx = (torch.arange(v.shape[-1]).expand(v.shape) if first
                   else torch.zeros_like(v))
            V = torch.cat([V, idx.unsqueeze(0)])
    else:
        raise ValueError(f"max_mask start is 0, 1 or 2, got {start!r}")
    pairs, _, _ = selection_layout(group)
    m = V.shape[-1] // group
    X = V[..., :m * group].reshape(V.shape[:-1] + (m, group))
    i_idx = torch.tensor([p[0] for p in pairs])
    j_idx = torch.tensor([p[1] for p in pairs])
    d = X[0][..., i_idx] - X[0][..., j_idx]
    return (V,), (d + r, X - a, _first_or_mask(r_xor, alpha))


def _step_max_select(V, u, eps, a, R, Ra, first: bool, group: int, split: bool):
    """A level's last step (local): each group's winner, sum_i onehot_i * X_i, from the opened
    u = [x_i < x_j] ^ r per pair and eps = X - a.

    Element i wins when it beats every other member: its literals are NOT[x_i < x_j] for
    j > i and [x_j < x_i] for j < i (the first of equal values wins). A literal is
    u' + (1 - 2u') r with u' public (u, or 1 - u), so onehot_i = sum over the subsets S of i's
    pairs of (prod_{not S} u')(prod_S (1 - 2u')) R_S, with R_S = prod_S r dealt additively
    (R_{} = 1), and onehot_i X_i = sum_S coef_S (eps_i R_S + (R a)_S) (party 0 adds eps_i for
    S = {}). The values left over after the groups are appended unchanged."""
    _, members, firsts = selection_layout(group)
    members_t, firsts_t = torch.tensor(members), torch.tensor(firsts)
    up = u.long()[..., members_t] ^ firsts_t   # (..., m, g, g-1)
    sign = 1 - 2 * up
    coefs = []
    for subset in range(1 << (group - 1)):
        coef = None
        for t in range(group - 1):
            factor = sign[..., t] if subset >> t & 1 else up[..., t]
            coef = factor if coef is None else coef * factor
        coefs.append(coef)
    coef = torch.stack(coefs, -1)               # (..., m, g, 2^(g-1))
    term = eps.unsqueeze(-1) * R.unsqueeze(0) + Ra
    own = a + eps if first else a
    sel = ((coef[..., 1:] * term).sum(-1) + coef[..., 0] * own).sum(-1)   # (w, ..., m)
    out = torch.cat([sel, V[..., sel.shape[-1] * group:]], -1)
    if split:
        return tuple(out[i] for i in range(out.shape[0])), ()
    return (out,), ()


def _step_max_select_mask(select: list, mask: list):
    """One level's selection (`_step_max_select` on `select`: V, u, eps, a, R, Ra, first,
    group) and the next level's first round (`_step_max_mask` on its result and `mask`: r,
    r_xor, alpha, a, first, group) in one message."""
    (V,), _ = _step_max_select(*select, False)
    r, r_xor, alpha, a, first, group = mask
    return _step_max_mask(V, r, r_xor, alpha, a, 0, first, group)


STEPS.update({"max_mask": _step_max_mask, "max_select": _step_max_select,
              "max_select_mask": _step_max_select_mask})


def _tournament(x: SharedTensor, with_indices: bool):
    """Max (and argmax) over the last dimension by a tournament of groups of up to 4.

    Each level (`max_levels`), for every group, compares every pair at once (6 comparisons
    for 4 values) and selects the winner with a one-hot vector, in 4 rounds of one LocalStep
    per party: (1) open c = x_i - x_j + r (edaBit), eps = X - a and `ltz`'s w; (2-3) two OR
    layers of `ltz`; (4) the last OR layer and the opening of u = [x_i < x_j] ^ r' per pair;
    then each party computes its share of the winner locally (`_step_max_select`). Over
    1 000 values: 5 levels, 20 rounds (the pairwise tournament took 10 levels of 9). A
    level's selection and the next level's round (1) go in one message
    (`_step_max_select_mask`). The randomness of every level comes in one request to the
    provider (or none if dealt ahead, `max_primitives`).
    What is seen: by the coordinator and the parties, c, eps, w, the OR layers' f ^ alpha and
    u, each uniformly masked; by the provider, nothing of x.
    """
    k = x.shape[-1]
    if k == 0:
        raise ValueError("max of an empty tensor")
    lead = tuple(x.shape[:-1])
    if k == 1:
        values = x.copy()
        return values, (_trivial_share(x, torch.zeros(lead + (1,), dtype=torch.int64))
                        if with_indices else None)
    provider = x._provider("max")
    parties = x.locations
    n = len(parties)
    w = 2 if with_indices else 1
    prims = primitive_store(provider).take_many(provider, parties,
                                                max_primitives(lead, k, with_indices))
    V = list(x.shares)
    pending = None  # the previous level's selection: run in one message with this level's mask
    for level, (size, g, m) in enumerate(max_levels(k)):
        (r_arith, r_xor), ors = prims[5 * level], prims[5 * level + 1:5 * level + 4]
        sel_r, sel_a, sel_R, sel_Ra = prims[5 * level + 4]
        mask = [(r_arith[i], r_xor[i], ors[0][0][i], sel_a[i]) for i in range(n)]
        if pending is None:
            args = [(parties[i], (V[i], *mask[i], 2 if with_indices else 1, i == 0, g))
                    for i in range(n)]
            kept, opened = run_steps("max_mask", args, 1, (w,) + lead + (size,), True)
        else:
            args = [(parties[i], ((V[i], *pending[i]), (*mask[i], i == 0, g)))
                    for i in range(n)]
            kept, opened = run_steps("max_select_mask", args, 1, (w,) + lead + (size,), True)
        V = [kk[0] for kk in kept]
        _stats.rounds += 1
        c, eps = combine(opened, 0, "add"), combine(opened, 1, "add")
        u = _ltz_rounds(parties, c, combine(opened, 2, "xor"), r_xor, ors, sel_r,
                        lead + (m, g * (g - 1) // 2))
        pending = [(u, eps, sel_a[i], sel_R[i], sel_Ra[i], i == 0, g) for i in range(n)]
    kept, _ = run_steps("max_select", [(parties[i], (V[i], *pending[i], True))
                                       for i in range(n)], w, lead + (1,), False)
    V = kept
    values = x._new([kk[0] for kk in V])
    return values, (x._new([kk[1] for kk in V]) if with_indices else None)
