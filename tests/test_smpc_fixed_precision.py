"""Fixed precision (priority 1): encoding, errors, local arithmetic, modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedmq
from fedmq.smpc import FixedPrecisionTensor


@pytest.fixture(autouse=True)
def _hook(hook):
    return hook


def test_encoding_rounds_to_nearest_in_int64():
    # round to nearest (PySyft truncated toward zero: float32 0.01 became 0.009); float32
    # 1.2345 is 1.23450005, -0.0009 is -0.00090000004
    x = torch.tensor([1.2345, -1.2345, 0.0004, -0.0009, 3.0])
    fp = x.fix_precision()
    assert fp.child.dtype == torch.int64
    assert fp.child.tolist() == [1235, -1235, 0, -1, 3000]
    assert fp.field == 2 ** 64
    assert torch.allclose(fp.float_precision(), torch.tensor([1.235, -1.235, 0, -0.001, 3.0]))
    assert x.fix_prec(base=2, precision_fractional=8).child.tolist()[0] == round(1.2345 * 256)
    assert torch.tensor([3, -4]).fix_prec().child.tolist() == [3000, -4000]
    assert fp.float_prec().dtype == torch.float32
    assert torch.tensor([1.5], dtype=torch.float64).fix_prec().float_prec().dtype == torch.float64


def test_values_that_cannot_be_embedded_raise():
    with pytest.raises(ValueError, match="cannot be correctly embedded"):
        torch.tensor([1e16]).fix_precision()
    with pytest.raises(ValueError, match="cannot be correctly embedded"):
        torch.tensor([2 ** 62]).fix_precision()
    with pytest.raises(ValueError, match="NaN or infinite"):
        torch.tensor([float("nan")]).fix_precision()
    with pytest.raises(ValueError, match="precision_fractional"):
        torch.tensor([1.0]).fix_precision(precision_fractional=-1)
    with pytest.raises(ValueError, match="cannot be correctly embedded"):
        torch.tensor([1.0]).fix_precision() + 1e17
    torch.tensor([9e15]).fix_precision()  # just below 2**63 / 1000


def test_arithmetic_matches_pysyft_truncation():
    a = torch.tensor([1.5, -2.25, 3.0, -0.5])
    b = torch.tensor([0.5, 4.0, -1.125, -0.333])
    fa, fb = a.fix_prec(), b.fix_prec()
    ea, eb = fa.child, fb.child
    assert torch.equal((fa + fb).child, ea + eb)
    assert torch.equal((fa - fb).child, ea - eb)
    assert torch.equal((fa * fb).child, torch.div(ea * eb, 1000, rounding_mode="trunc"))
    assert torch.equal((fa * 3).child, ea * 3)  # a public int needs no rescaling
    assert torch.equal((fa * 0.5).child, torch.div(ea * 500, 1000, rounding_mode="trunc"))
    assert torch.equal((fa / 2).child, torch.div(ea, 2, rounding_mode="trunc"))
    assert torch.equal((-fa).child, -ea)
    assert torch.equal((fa + 1).child, ea + 1000)
    for op in ("gt", "lt", "ge", "le", "eq"):
        assert torch.equal(getattr(fa, op)(fb).float_prec(), getattr(a, op)(b).float())
    assert torch.equal((fa > 0).float_prec(), (a > 0).float())
    assert torch.equal(fa.relu().child, ea.clamp(min=0))
    assert torch.equal(fa.abs().child, ea.abs())
    assert fa.sum().float_prec().item() == pytest.approx(a.sum().item(), abs=1e-3)
    assert fa.mean().float_prec().item() == pytest.approx(a.mean().item(), abs=1e-3)
    assert fa.max().float_prec().tolist() == 3.0  # shape () as torch


def test_matmul_and_torch_functions():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    fa, fb = a.fix_prec(), b.fix_prec()
    exact = torch.div(fa.child @ fb.child, 1000, rounding_mode="trunc")
    assert torch.equal(fa.mm(fb).child, exact)
    assert torch.equal((fa @ fb).child, exact)
    assert torch.equal(torch.matmul(fa, fb).child, exact)
    assert torch.allclose(torch.relu(fa).float_prec(), torch.relu(a), atol=1e-3)
    assert torch.allclose(fa.t().float_prec(), a.t(), atol=1e-3)
    values, indices = fa.max(dim=1)
    assert torch.allclose(values.float_prec(), a.max(dim=1).values, atol=1e-3)
    assert torch.equal(indices.float_prec().long(), a.max(dim=1).indices)


def test_module_fix_precision_runs_forward_and_decodes():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    expected = model(x)
    assert model.fix_precision() is model
    assert list(model.parameters()) == []
    assert isinstance(model[0].weight, FixedPrecisionTensor)
    out = model(x.fix_precision())
    assert torch.allclose(out.float_precision(), expected, atol=0.02)
    model.float_precision()
    assert len(list(model.parameters())) == 4
    assert torch.allclose(model(x), expected, atol=0.02)


def test_shared_fixed_precision_refuses_decoding_before_get(hook):
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    x = torch.tensor([1.5]).fix_prec().share(bob, alice)
    with pytest.raises(ValueError, match=r"\.get\(\) first"):
        x.float_precision()
    assert x.get().float_precision().tolist() == [1.5]


def _fp_cases(hook):
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    provider = fedmq.VirtualWorker(hook, id="crypto_provider")
    return {"local": lambda t: t.fix_precision(),
            "shared": lambda t: t.fix_precision().share(bob, alice, crypto_provider=provider)}


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_reflected_operators_with_a_plain_tensor_on_the_left(hook, kind):
    """t * x, t + x, t - x, t @ x and comparisons with t a plain tensor compute (#15)."""
    make = _fp_cases(hook)[kind]
    x = torch.tensor([[1.5, -2.25], [0.0, 4.0]])
    t = torch.tensor([[2.0, 0.5], [-1.0, 3.0]])

    def dec(v):
        return (v.get() if v.is_shared else v).float_precision()

    assert torch.allclose(dec(t * make(x)), t * x)
    assert torch.allclose(dec(t + make(x)), t + x)
    assert torch.allclose(dec(t - make(x)), t - x)
    assert torch.allclose(dec(t @ make(x)), t @ x, atol=2e-3)
    assert torch.allclose(dec(torch.mul(t, make(x))), t * x)
    assert torch.allclose(dec(2 * make(x)), 2 * x) and torch.allclose(dec(1 - make(x)), 1 - x)
    for op in ("lt", "gt", "le", "ge", "eq", "ne"):
        assert torch.equal(dec(getattr(t, op)(make(x))), getattr(t, op)(x).float()), op
    assert torch.equal(dec(t > make(x)), (t > x).float())
    assert torch.allclose(dec(F.linear(t, make(x))), F.linear(t, x), atol=2e-3)


def test_local_product_overflow_raises_with_the_range_and_the_way_out(hook):
    big = torch.tensor([4e6]).fix_precision()  # 4e9 in the ring; squared 1.6e19 > 2**63
    with pytest.raises(OverflowError, match=r"2\*\*63.*precision_fractional.*base=2"):
        big * big
    with pytest.raises(OverflowError, match="fixed-precision matmul out of range"):
        torch.full((1, 4), 2e6).fix_precision() @ torch.full((4, 1), 2e6).fix_precision()
    with pytest.raises(OverflowError, match="conv2d"):
        F.conv2d(torch.full((1, 1, 2, 2), 3e6).fix_precision(),
                 torch.full((1, 1, 2, 2), 3e6).fix_precision())
    with pytest.raises(OverflowError):
        torch.tensor([4e15]).fix_precision() * 4000
    # the documented way out: fewer fractional digits give the headroom
    ok = torch.tensor([4e6]).fix_precision(precision_fractional=2)
    assert (ok * ok).float_precision().item() == pytest.approx(1.6e13)
    # just inside the range: exact
    edge = torch.tensor([3e6]).fix_precision()
    assert (edge * edge).float_precision().item() == pytest.approx(9e12)


def test_view_as_reshape_as_flatten_and_in_place_operators(hook):
    x = torch.arange(6.0).fix_precision()
    other = torch.zeros(2, 3)
    assert x.view_as(other).shape == (2, 3) and x.reshape_as(other).shape == (2, 3)
    assert x.view_as(other).flatten().shape == (6,)
    total = 0
    total += x.sum()
    total += x.sum()
    assert total.float_precision().item() == 30.0


def test_shared_products_at_the_edges_of_the_documented_range(hook):
    """|x * y| < 1.8e7 for shared products at the default precision (the truncation's failure
    probability below 1e-6 per element): products there, zeros and signs as torch."""
    make = _fp_cases(hook)["shared"]
    x = torch.tensor([4.2e3, -4.2e3, 1.8e7, 0.0, -0.0, 1e-3, -1e-3, 2.5])
    y = torch.tensor([4.2e3, 4.2e3, -1.0, -5.0, 0.0, 1e3, 1e3, -4.0])
    want = x.fix_precision().float_precision().double() * y.fix_precision().float_precision()
    got = (make(x) * make(y)).get().float_precision().double()
    assert torch.allclose(got, want, rtol=0, atol=1.01e-3), (got, want)
    assert torch.equal(make(x).abs().get().float_precision(), x.abs())
    assert torch.equal((-make(x)).get().float_precision(), -x)
    assert make(torch.zeros(3)).sum().get().float_precision().item() == 0.0
    m = torch.tensor([[2.9e3, -2.9e3], [1e-3, 0.0]])
    got = (make(m) @ make(m)).get().float_precision().double()
    assert torch.allclose(got, m.double() @ m.double(), atol=2e-3)
