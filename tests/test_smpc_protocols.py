"""Products, truncation and comparisons on shared values (priorities 3-5), 2-5 parties,
against plaintext on random inputs (hypothesis) and on 200 seeds for three parties."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fedmq.smpc.comparison import comparison_primitives
from fedmq.smpc.provider import primitive_store
from smpc_helpers import assert_rescaled, make_parties

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
values = st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=6)
fvalues = st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=4, max_size=4)


@pytest.fixture
def parties(hook):
    return make_parties(hook)


@SETTINGS
@given(a=values, b=values, n=st.integers(2, 5))
def test_integer_products_and_comparisons(parties, a, b, n):
    workers, cp = parties
    k = min(len(a), len(b))
    ta, tb = torch.tensor(a[:k]), torch.tensor(b[:k])
    sa = ta.share(*workers[:n], crypto_provider=cp)
    sb = tb.share(*workers[:n], crypto_provider=cp)
    assert torch.equal((sa * sb).get(), ta * tb)
    assert torch.equal((sa > sb).get(), (ta > tb).long())
    assert torch.equal((sa <= sb).get(), (ta <= tb).long())
    assert torch.equal((sa == sb).get(), (ta == tb).long())
    assert torch.equal(sa.relu().get(), ta.clamp(min=0))
    assert torch.equal(sa.abs().get(), ta.abs())


@SETTINGS
@given(a=fvalues, b=fvalues, n=st.integers(2, 5))
def test_fixed_point_products_are_rescaled_correctly(parties, a, b, n):
    workers, cp = parties
    ta, tb = torch.tensor(a), torch.tensor(b)
    fa, fb = ta.fix_prec(), tb.fix_prec()
    sa = ta.fix_prec().share(*workers[:n], crypto_provider=cp)
    sb = tb.fix_prec().share(*workers[:n], crypto_provider=cp)
    assert_rescaled((sa * sb).get().child, fa.child * fb.child, 1000)
    ma, mb = fa.child.reshape(2, 2), fb.child.reshape(2, 2)
    assert_rescaled((sa.reshape(2, 2) @ sb.reshape(2, 2)).get().child, ma @ mb, 1000)
    assert torch.equal((sa < sb).get().child, (fa.child < fb.child).long() * 1000)
    assert_rescaled((sa / 7).get().child, fa.child, 7)


def test_three_party_products_on_200_seeds(parties):
    workers, cp = parties
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        a = (torch.rand(6, generator=g) - 0.5) * 2000
        b = (torch.rand(6, generator=g) - 0.5) * 2000
        fa, fb = a.fix_prec(), b.fix_prec()
        sa = a.fix_prec().share(*workers[:3], crypto_provider=cp)
        sb = b.fix_prec().share(*workers[:3], crypto_provider=cp)
        product = (sa * sb).get()
        assert_rescaled(product.child, fa.child * fb.child, 1000)
        assert torch.allclose(product.float_prec().double(), a.double() * b.double(),
                              atol=1.5, rtol=2e-3)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_matmul_mean_and_max_against_plaintext(parties, n):
    workers, cp = parties
    torch.manual_seed(n)
    a, b = torch.randn(5, 4), torch.randn(4, 3)
    sa = a.fix_prec().share(*workers[:n], crypto_provider=cp)
    sb = b.fix_prec().share(*workers[:n], crypto_provider=cp)
    assert torch.allclose((sa @ sb).get().float_prec(), a @ b, atol=0.02)
    assert torch.allclose(torch.matmul(sa, sb).get().float_prec(), a @ b, atol=0.02)
    assert torch.allclose(sa.sum(1).get().float_prec(), a.sum(1), atol=0.01)
    assert torch.allclose(sa.mean().get().float_prec(), a.mean(), atol=0.01)
    assert torch.allclose(sa.mean(0).get().float_prec(), a.mean(0), atol=0.01)
    enc = a.fix_prec().child
    assert sa.max().get().child.tolist() == int(enc.max())  # shape () as torch
    assert sa.min().get().child.tolist() == int(enc.min())
    for dim in (0, 1):
        for keepdim in (False, True):
            values, indices = sa.max(dim=dim, keepdim=keepdim)
            ref = enc.max(dim=dim, keepdim=keepdim)
            assert torch.equal(values.get().child, ref.values)
            assert torch.equal(indices.get().float_prec().long(), ref.indices)
    assert torch.equal(sa.argmax(dim=1).get().float_prec().long(), enc.argmax(dim=1))
    values, indices = sa.min(dim=1)
    assert torch.equal(values.get().child, enc.min(dim=1).values)


@pytest.mark.parametrize("n", [2, 3])
def test_argmax_argmin_min_abs_with_dim_and_keepdim(parties, n):
    workers, cp = parties
    torch.manual_seed(10 + n)
    a = torch.randn(4, 6)
    enc = a.fix_prec().child
    sa = a.fix_prec().share(*workers[:n], crypto_provider=cp)
    for dim in (0, 1, -1):
        for keepdim in (False, True):
            got = sa.argmax(dim=dim, keepdim=keepdim).get().float_prec().long()
            assert torch.equal(got, enc.argmax(dim=dim, keepdim=keepdim))
            got = sa.argmin(dim=dim, keepdim=keepdim).get().float_prec().long()
            assert torch.equal(got, enc.argmin(dim=dim, keepdim=keepdim))
            values, indices = sa.min(dim=dim, keepdim=keepdim)
            ref = enc.min(dim=dim, keepdim=keepdim)
            assert torch.equal(values.get().child, ref.values)
            assert torch.equal(indices.get().float_prec().long(), ref.indices)
    assert sa.child.argmax().get().tolist() == int(enc.argmax())
    assert torch.equal(sa.abs().get().child, enc.abs())
    assert torch.equal((sa != sa).get().child, torch.zeros(4, 6, dtype=torch.long))
    assert torch.equal((sa >= 0).get().child, (enc >= 0).long() * 1000)


def test_conv2d_with_beaver_triples(parties):
    import torch.nn.functional as F
    workers, cp = parties
    torch.manual_seed(0)
    x, w = torch.randint(-50, 50, (1, 2, 5, 5)), torch.randint(-5, 5, (3, 2, 3, 3))
    sx = x.share(*workers[:3], crypto_provider=cp)
    sw = w.share(*workers[:3], crypto_provider=cp)
    assert torch.equal(F.conv2d(sx, sw, padding=1).get(), F.conv2d(x, w, padding=1))


def test_shared_model_inference(parties):
    from torch import nn
    workers, cp = parties
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(6, 4)
    expected = model(x)
    model.fix_precision().share(workers[0], workers[1], crypto_provider=cp)
    out = model(x.fix_precision().share(workers[0], workers[1], crypto_provider=cp))
    assert torch.allclose(out.copy().get().float_precision(), expected, atol=0.02)
    pred = out.argmax(dim=1).get().float_prec().long()
    assert torch.equal(pred, expected.argmax(dim=1))


def test_preprocessing_moves_the_provider_out_of_the_online_phase(parties):
    workers, cp = parties
    pair = workers[:2]
    shape = [10]
    params = {"a": shape, "b": shape}
    primitive_store(cp).provide(cp, pair, "mul", params, n_instances=2)
    for kind, p in comparison_primitives(shape):
        primitive_store(cp).provide(cp, pair, kind, p, n_instances=1)
    assert len(primitive_store(cp)) == 2 + len(comparison_primitives(shape))
    x = torch.arange(10).share(*pair, crypto_provider=cp)
    y = torch.arange(10, 20).share(*pair, crypto_provider=cp)
    before = (primitive_store(cp).requests, cp.message_count)
    z = x * y
    z2 = z * x
    w = x > 4
    assert (primitive_store(cp).requests, cp.message_count) == before  # no provider round trip online
    assert torch.equal(z2.get(), torch.arange(10) ** 2 * torch.arange(10, 20))
    assert torch.equal(w.get(), (torch.arange(10) > 4).long())
    assert len(primitive_store(cp)) == 0
    x * y  # the store is empty for this shape: dealt on demand
    assert primitive_store(cp).requests == before[0] + 1


@pytest.mark.parametrize("n", [2, 4])
def test_fixed_point_products_fuse_truncation_and_use_preprocessed_pairs(parties, n):
    """x * y and x @ y on fixed point: one triple (and, past two parties, one truncation
    pair), all from the store when dealt ahead; result within the truncation guarantee.
    Four parties open twice per product (eps/delta, z - r: ABY3); two parties once, and
    rescale their shares locally (SecureML), taking no pair."""
    from fedmq.smpc.beaver import triple_params
    from fedmq.smpc.shares import _stats
    from fedmq.smpc.truncation import truncation_params
    workers, cp = parties
    group = workers[:n]
    torch.manual_seed(n)
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    c = torch.randn(3, 4)
    primitive_store(cp).provide(cp, group, "mul", triple_params("mul", (3, 4), (3, 4)))
    primitive_store(cp).provide(cp, group, "matmul", triple_params("matmul", (3, 4), (4, 2)))
    if n > 2:
        primitive_store(cp).provide(cp, group, "trunc", truncation_params((3, 4), 1000))
        primitive_store(cp).provide(cp, group, "trunc", truncation_params((3, 2), 1000))
    sa, sb, sc = (t.fix_prec().share(*group, crypto_provider=cp) for t in (a, b, c))
    before = (primitive_store(cp).requests, cp.message_count, _stats.rounds)
    product, mm = sa * sc, sa @ sb
    assert (primitive_store(cp).requests, cp.message_count) == before[:2] and len(primitive_store(cp)) == 0
    assert _stats.rounds == before[2] + (4 if n > 2 else 2)
    assert_rescaled(product.get().child, a.fix_prec().child * c.fix_prec().child, 1000)
    assert_rescaled(mm.get().child, a.fix_prec().child @ b.fix_prec().child, 1000)


def test_provider_refuses_bad_requests(parties):
    from fedmq.errors import RemoteError
    from fedmq.smpc.messages import Deal, DealRequest
    workers, cp = parties
    with pytest.raises(RemoteError, match="cannot hold shares"):
        cp.call(DealRequest([Deal("mul", ["bob", "crypto_provider"], [[1, 2, 3], [4, 5, 6]],
                                  {"a": [2], "b": [2]})]))
    with pytest.raises(RemoteError, match="unknown primitive"):
        cp.call(DealRequest([Deal("xor", ["bob", "alice"], [[1], [2]], {})]))
    with pytest.raises(RemoteError, match="at most"):
        cp.call(DealRequest([Deal("and", ["bob", "alice"], [[1, 2, 3], [4, 5, 6]],
                                  {"shape": [1 << 14, 1 << 14]})]))


@pytest.mark.parametrize("op", ["mul", "matmul", "conv2d"])
def test_ring_products_wrap_around_mod_2_64(op):
    """The int64 kernels Beaver products run on compute exactly mod 2^64 (checked against
    Python's unbounded integers on full-range values)."""
    from fedmq.smpc.ring import ring_op, uniform

    def ring(v: int) -> int:
        v %= 1 << 64
        return v - (1 << 64) if v >= 1 << 63 else v

    if op == "conv2d":
        x, w = uniform((1, 2, 4, 4)), uniform((3, 2, 3, 3))
        out = ring_op(op, x, w, [1, 1, 1, 1])
        xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
        for o in range(3):
            for i in range(4):
                for j in range(4):
                    patch = xp[0, :, i:i + 3, j:j + 3].flatten().tolist()
                    exact = sum(p * q for p, q in zip(patch, w[o].flatten().tolist()))
                    assert int(out[0, o, i, j]) == ring(exact)
        return
    for m, k, n in ((3, 1, 2), (7, 100, 5), (2, 513, 3)):
        x, y = uniform((m, k)), uniform((k, n) if op == "matmul" else (m, k))
        out = ring_op(op, x, y)
        xs, ys = x.tolist(), y.tolist()
        for i in range(m):
            for j in range(n if op == "matmul" else k):
                exact = (sum(xs[i][t] * ys[t][j] for t in range(k)) if op == "matmul"
                         else xs[i][j] * ys[i][j])
                assert int(out[i, j]) == ring(exact)


def test_binary_and_on_xor_shares(parties):
    """The AND gate `ltz` runs inside its LocalSteps, as a standalone primitive."""
    from fedmq.smpc.comparison import binary_and
    from fedmq.smpc.ring import uniform, xor_split
    workers, cp = parties
    trio = workers[:3]
    f, g = uniform((50,)), uniform((50,))
    f_sh = [s.send(w) for s, w in zip(xor_split(f, 3), trio)]
    g_sh = [s.send(w) for s, w in zip(xor_split(g, 3), trio)]
    (triple,) = primitive_store(cp).deal_now(cp, trio, [("and", {"shape": [50]})])
    out = binary_and(f_sh, g_sh, triple)
    value = out[0].get() ^ out[1].get() ^ out[2].get()
    assert torch.equal(value, f & g)


def test_shared_convolutional_model(parties):
    from torch import nn
    workers, cp = parties
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 1, 4, 4)
    expected = model(x)
    model.fix_precision().share(*workers[:3], crypto_provider=cp)
    out = model(x.fix_precision().share(*workers[:3], crypto_provider=cp))
    assert torch.allclose(out.get().float_precision(), expected, atol=0.05)
