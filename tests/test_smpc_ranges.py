"""The documented ranges of fixed-point SMPC (README "SMPC ranges", fedmq/smpc/approximations.py
and fixed_precision.py docstrings): inside, local and shared results equal torch's (within
1e-2 + 1e-2 |f(x)| for approximations); just outside, local values raise a clear error naming
the range (shared values cannot be checked; their range is documented).

Each case was found by review (R2: /work/R2/repro div_outside.py, softmax_wide.py,
approx_edges*.py, overflow_field.py, extremes_cmp.py, exp_overflow_advice.py,
small_shape_api.py; R1: s2_more.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smpc_helpers import make_parties

TOL = 1e-2


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got.double() - want.double()).abs()
    bound = TOL + TOL * want.double().abs()
    assert bool((err <= bound).all()), (got, want, err)


@pytest.fixture
def shared(hook):
    (bob, alice), provider = make_parties(hook, 2)
    return lambda t: t.fix_precision().share(bob, alice, crypto_provider=provider)


def _decoded(t: torch.Tensor) -> torch.Tensor:
    """What the default encoding keeps of t (the approximations see the encoded value)."""
    return t.fix_precision().float_precision().double()


# -- widened ranges: found by review (reciprocal(0.02) 52.6, x / 2000 = -2232, log(500) -20) ---

RECIPROCAL = torch.tensor([0.008, 0.01, 0.02, 0.05, 0.09, 1100.0, 1500.0, 2000.0, 4000.0,
                           16000.0, -0.02, -3000.0, -16000.0])
LOG = torch.tensor([0.001, 0.005, 0.01, 0.011, 0.015, 0.03, 199.0, 250.0, 300.0, 500.0, 1000.0,
                    5000.0, 12000.0, 24000.0])


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_found_by_review_reciprocal_and_log_beyond_the_old_ranges(shared, mode):
    for name, x in (("reciprocal", RECIPROCAL), ("log", LOG)):
        fx = shared(x) if mode == "shared" else x.fix_precision()
        got = getattr(fx, name)()
        got = (got.get() if mode == "shared" else got).float_precision()
        _close(got, getattr(torch, name)(_decoded(x)))


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_found_by_review_division_by_large_fixed_point_divisors(shared, mode):
    """x / y with y = 2000 gave -2232 (local and shared); now within range up to 16384."""
    x = torch.tensor([1.0, -7.5, 3000.0, 1.0, 16000.0])
    y = torch.tensor([2000.0, 1500.0, 4000.0, -16000.0, 0.01])
    enc = (lambda t: shared(t)) if mode == "shared" else (lambda t: t.fix_precision())
    got = enc(x) / enc(y)
    got = (got.get() if mode == "shared" else got).float_precision()
    _close(got, _decoded(x) / _decoded(y))


# -- shared approximations never wrap: found by review (16000 / 0.01 gave -1.67e7 once in ~5 full
# runs; measured: 9% of such quotients). At 6 digits the division's last product is rescaled
# from |x / y| * 10**12 (1.6e18 here), which the ABY3 truncation wrapped with probability
# |x / y| * 10**12 / 2**64; the approximations now truncate exactly (truncate_exact) -------

def test_found_by_review_shared_division_near_the_top_of_its_range_never_wraps(shared):
    """300 quotients between 1.1e6 and 4.45e6 (0.01 encodes as 0.009; the range is
    |x / y| < 4.6e6): before the fix each wrapped with probability 6-24% (P(no failure)
    < 1e-8; measured: 3 runs out of 3 failed); now none can."""
    torch.manual_seed(0)
    n = 300
    x = (torch.rand(n) * 30000 + 10000) * torch.sign(torch.randn(n))
    y = torch.full((n,), 0.01) * torch.sign(torch.randn(n))
    got = (shared(x) / shared(y)).get().float_precision()
    want = _decoded(x) / _decoded(y)
    assert float(want.abs().max()) <= 4.5e6
    _close(got, want)


def test_found_by_review_shared_approximations_at_the_top_of_their_ranges_never_wrap(shared):
    """reciprocal(+-16000) (the sign product: 1.6e16 before rescaling, wrapped with
    probability 8.7e-4) and exp(10) (its last squaring: 2.2e16, 1.2e-3), 3000 elements each:
    before the fix P(no failure) ~ 0.2% (3 runs out of 3 failed); now exact."""
    n = 3000
    big = torch.full((n,), 16000.0) * torch.tensor([1.0, -1.0]).repeat(n // 2)
    got = shared(big).reciprocal().get().float_precision()
    _close(got, 1 / _decoded(big))
    ten = torch.full((n,), 10.0)
    _close(shared(ten).exp().get().float_precision(), torch.exp(ten.double()))


@pytest.mark.parametrize("d", [2, 3, 1000, 10 ** 6, 6 * 10 ** 6, 2 ** 20, 10 ** 12])
def test_exact_truncation_is_exact_up_to_its_bound(hook, d):
    """truncate_exact(x, d) is floor(x / d) or one more (unbiased), as ABY3's, for every
    |x| <= exact_bound(d) (>= 2**62 - 3d), both ends included; the ABY3 truncation wraps on
    such values (1 in 8)."""
    from fedmq.smpc.truncation import exact_bound, exact_truncation, truncate
    (bob, alice), provider = make_parties(hook, 2)
    bound = exact_bound(d)
    assert bound >= (1 << 62) - 3 * d
    torch.manual_seed(d % 1000)
    x = torch.randint(-bound, bound, (4000,), dtype=torch.int64)
    x[:5] = torch.tensor([-bound, bound, 0, -1, bound - 1])
    with exact_truncation():
        z = truncate(x.share(bob, alice, crypto_provider=provider), d).get()
    above = [zi - xi // d for zi, xi in zip(z.tolist(), x.tolist())]  # exact ints
    assert set(above) <= {0, 1}, sorted(set(above))[:5]
    # E[z] = x / d; summed exactly (xi / d in float64 is off by up to 128 at |x| ~ 2**62,
    # which made this mean flaky for small d)
    errors = sum(zi * d - xi for zi, xi in zip(z.tolist(), x.tolist()))
    assert abs(errors / d / len(z)) < 0.05
    if d == 10 ** 6:
        plain = truncate(x.share(bob, alice, crypto_provider=provider), d).get()
        assert bool(((plain.double() - x.double() / d).abs() > 2).any())


@pytest.mark.parametrize("n", [1, 2, 10, 200, 1000, 2000])
@pytest.mark.parametrize("mode", ["local", "shared"])
def test_found_by_review_softmax_over_many_classes(shared, mode, n):
    """log_softmax over 1000 equal logits gave +48824 and softmax over 2000 gave -2232: the
    sum of exps (in [1, n]) left the reciprocal's and log's ranges. Now their initial
    guesses use bands chosen from the public n: any number of classes."""
    torch.manual_seed(n)
    x = torch.cat([torch.zeros(1, n), torch.randn(1, n) * 5], 0)
    fx = shared(x) if mode == "shared" else x.fix_precision()
    for fn in ("softmax", "log_softmax"):
        got = getattr(F, fn)(fx, dim=1)
        got = (got.get() if mode == "shared" else got).float_precision()
        _close(got, getattr(F, fn)(_decoded(x), dim=1))
    if n == 1000:  # the random row's softmax sums to 1 (the equal row's entries, 0.001 each,
        # are at the last digit and may truncate to 0 locally)
        got = F.softmax(fx, dim=1)
        got = (got.get() if mode == "shared" else got).float_precision()
        assert abs(float(got[1].sum()) - 1) < 0.05


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_found_by_review_sigmoid_tanh_exp_at_the_edges_of_their_ranges(shared, mode):
    for name, x in (("sigmoid", torch.tensor([-600.0, -500.0, 500.0, 600.0])),
                    ("tanh", torch.tensor([-300.0, -60.0, 100.0, 300.0])),
                    ("exp", torch.tensor([-600.0, -300.0, -40.0, 0.0, 9.9]))):
        fx = shared(x) if mode == "shared" else x.fix_precision()
        got = getattr(fx, name)()
        got = (got.get() if mode == "shared" else got).float_precision()
        _close(got, getattr(torch, name)(x.double()))


# -- local values outside a range: a clear ValueError naming the range and the way out -----------

OUTSIDE = [
    ("exp", [10.5], "[-600, 10]"), ("exp", [20.0], "[-600, 10]"), ("exp", [-601.0], "[-600, 10]"),
    ("reciprocal", [0.0], "[0.0078125, 16384]"), ("reciprocal", [0.005], "[0.0078125, 16384]"),
    ("reciprocal", [-20000.0], "[0.0078125, 16384]"), ("log", [0.0], "[0.001, 24000]"),
    ("log", [-1.0], "[0.001, 24000]"), ("log", [30000.0], "[0.001, 24000]"),
    ("sigmoid", [700.0], "[-600, 600]"), ("sigmoid", [-800.0], "[-600, 600]"),
    ("tanh", [301.0], "[-300, 300]"),
]


@pytest.mark.parametrize("name, values, shown", OUTSIDE)
def test_found_by_review_local_values_outside_a_range_raise(name, values, shown):
    x = torch.tensor([1.0] + values).fix_precision()
    with pytest.raises(ValueError) as err:
        getattr(x, name)()
    msg = str(err.value)
    shown_value = float(_decoded(torch.tensor(values))[0])  # what the encoding kept
    assert name in msg and shown in msg and f"got {shown_value:g}" in msg, msg


def test_found_by_review_division_and_softmax_outside_their_ranges_raise():
    with pytest.raises(ValueError, match=r"division .*\[0.0078125, 16384\].*got 20000"):
        torch.tensor([1.0]).fix_precision() / torch.tensor([20000.0]).fix_precision()
    with pytest.raises(ValueError, match=r"division .*got 0"):
        torch.tensor([1.0]).fix_precision() / torch.tensor([0.0]).fix_precision()
    for fn in (F.softmax, F.log_softmax):
        with pytest.raises(ValueError, match=r"within 600 of their max"):
            fn(torch.tensor([[0.0, 700.0]]).fix_precision(), dim=1)
        fn(torch.tensor([[0.0, 599.0]]).fix_precision(), dim=1)  # inside: no error


@pytest.mark.parametrize("kwargs", [{}, {"precision_fractional": 2},
                                    {"precision_fractional": 0},
                                    {"base": 2, "precision_fractional": 8}])
def test_found_by_review_exp_overflow_advice_is_true(kwargs):
    """exp(20) advised a lower precision or base 2, which do not help (the approximations
    compute at 6+ digits): the error now says so and gives the range and what does help."""
    with pytest.raises(ValueError) as err:
        torch.tensor([20.0]).fix_precision(**kwargs).exp()
    msg = str(err.value)
    assert "[-600, 10]" in msg and "does not help" in msg and "math.exp(c)" in msg, msg
    # the advice works: exp(20) = exp(20 - 10) * e**10
    x = torch.tensor([20.0]).fix_precision(**kwargs)
    got = (x - 10).exp().mul(float(torch.tensor(10.0).exp())).float_precision()
    assert abs(float(got) / float(torch.tensor(20.0).exp()) - 1) < 1e-2


# -- local add/sub/sum overflow: found by review (9e15 + 9e15 gave -4.47e14) ----------------------

@pytest.mark.parametrize("case", [
    lambda: torch.tensor([9e15]).fix_precision() + torch.tensor([9e15]).fix_precision(),
    lambda: torch.tensor([-9e15]).fix_precision() - torch.tensor([9e15]).fix_precision(),
    lambda: torch.tensor([9e15]).fix_precision() + 9e15,
    lambda: 9e15 - torch.tensor([-9e15]).fix_precision(),
    lambda: torch.full((4,), 4e15).fix_precision().sum(),
    lambda: torch.full((2, 4), 4e15).fix_precision().sum(1),
    lambda: torch.full((4,), 4e15).fix_precision().mean(),
    lambda: (lambda f: f + f + f)(torch.full((4,), 4e15).fix_precision()),
    lambda: torch.full((1, 4), 3e6).fix_precision() @ torch.full((4, 1), 3e6).fix_precision(),
    lambda: torch.tensor([4e6]).fix_precision() * torch.tensor([4e6]).fix_precision(),
])
def test_found_by_review_local_sums_past_the_ring_raise(case):
    with pytest.raises(OverflowError, match=r"out of range.*2\*\*63"):
        case()


def test_local_sums_inside_the_ring_are_exact():
    """The edge inside: 4e15 + 4e15 = 8e15 < 9.2e15, a sum whose partial sums wrap but whose
    total is in range (the ring's sum is exact)."""
    a = torch.tensor([4e15], dtype=torch.float64)
    assert (a.fix_precision() + a.fix_precision()).float_precision().item() == 8e15
    x = torch.tensor([9e15, 9e15, -9e15], dtype=torch.float64).fix_precision()
    assert x.sum().float_precision().item() == 9e15


# -- comparisons at the extremes: found by review (x > y inverted, argmax wrong at +-5e15) --------

def test_found_by_review_local_comparisons_past_the_range_raise():
    x = torch.tensor([-5e15, 5e15]).fix_precision()
    y = torch.tensor([5e15, -5e15]).fix_precision()
    for op in ("gt", "lt", "ge", "le", "eq", "ne"):
        with pytest.raises(OverflowError, match=r"\|x - y\|.*9.22e\+15"):
            getattr(x, op)(y)
    m = torch.tensor([[-1.6e15, 1.6e15, 0.0]]).fix_precision()  # spread 3.2e15, times m = 3
    for call in (lambda: m.argmax(1), lambda: m.max(1), lambda: m.min(1), lambda: m.argmax()):
        with pytest.raises(OverflowError, match=r"times 3"):
            call()


def test_comparisons_at_the_edge_of_their_range_agree_local_and_shared(shared):
    """|x - y| = 9e15 < 2**63 / 1000 and a spread of 3e15 over 3 entries (times m = 3: 9e15):
    shared equals local equals torch."""
    x = torch.tensor([4.5e15, -4.5e15, 1.0], dtype=torch.float64)
    y = torch.tensor([-4.5e15, 4.5e15, 0.0], dtype=torch.float64)
    want = (x > y).double()
    assert torch.equal((x.fix_precision() > y.fix_precision()).float_precision().double(), want)
    assert torch.equal((shared(x) > shared(y)).get().float_precision().double(), want)
    m = torch.tensor([[-1.5e15, 1.5e15, 0.0], [1.5e15, 0.0, -1.5e15]], dtype=torch.float64)
    for enc, dec in ((lambda t: t.fix_precision(), lambda r: r),
                     (shared, lambda r: r.get())):
        assert dec(enc(m).argmax(1)).float_precision().tolist() == [1.0, 0.0]
        assert dec(enc(m).max(1).values).float_precision().tolist() == [1.5e15, 1.5e15]


# -- shapes: found by review (x.max() had shape (1,)) ---------------------------------------------

def test_found_by_review_max_without_dim_has_torch_shape(shared):
    t = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    for name in ("max", "min"):
        want = getattr(t, name)()
        local = getattr(t.fix_precision(), name)().float_precision()
        remote = getattr(shared(t), name)().get().float_precision()
        for got in (local, remote):
            assert got.shape == want.shape == torch.Size([]) and float(got) == float(want)


# -- a public bound on the divisor decides the reciprocal's range ---------------------------------

@pytest.mark.parametrize("mode", ["local", "shared"])
def test_reciprocal_with_a_declared_bound(shared, mode):
    """The divisor's declared (public) bound widens the range past 16384, up to 2**20, or
    narrows it (fewer comparisons); local values above the bound raise."""
    x = torch.tensor([0.5, 3.0, -20000.0, 5e5, 1e6])
    fx = shared(x) if mode == "shared" else x.fix_precision()
    got = fx.reciprocal(bound=1e6)
    _close((got.get() if mode == "shared" else got).float_precision(), 1 / _decoded(x))
    small = torch.tensor([0.5, 2.0, -9.5])
    fs = shared(small) if mode == "shared" else small.fix_precision()
    got = fs.reciprocal(bound=10)
    _close((got.get() if mode == "shared" else got).float_precision(), 1 / _decoded(small))


def test_reciprocal_bound_is_checked():
    with pytest.raises(ValueError, match=r"\[0.0078125, 10\].*got 20"):
        torch.tensor([20.0]).fix_precision().reciprocal(bound=10)
    with pytest.raises(ValueError, match=r"\[0.5, 1e\+06\].*got 0.25"):
        torch.tensor([0.25]).fix_precision().reciprocal(bound=1e6)  # the window moved up
    with pytest.raises(ValueError, match=r"bound .* must be a number in"):
        torch.tensor([2.0]).fix_precision().reciprocal(bound=2.0 ** 21)
    with pytest.raises(ValueError, match=r"bound .* must be a number in"):
        torch.tensor([2.0]).fix_precision().reciprocal(bound="10")


# -- approximations at high precision: found by review (/work/reviewS/s30_p9_min.py,
# s29_approx_p9_repro.py, s31_p8_edges.py). At base 10 with 8-9 digits (base 2: 28-31 bits)
# shared exp / reciprocal / tanh / ... / x / y gave run-to-run varying garbage (reciprocal(7)
# 1.83, exp(2.5) -6.26) and local ones OverflowError: they computed at the input's precision
# (10**18 per product) instead of 6 digits. Now the input is truncated (exactly) to 6 digits
# first and the result multiplied back. -------------------------------------------------------

HIGH_PRECISIONS = [(10, 7), (10, 8), (10, 9), (2, 24), (2, 28), (2, 31)]
APPROXIMATIONS = ["exp", "reciprocal", "log", "sigmoid", "tanh", "softmax", "divide"]
#: repeats (shares are random) x values per repeat: 2000 values, so a 1% failure rate shows
HIGH_REPEATS, HIGH_N = 20, 100


def _log_uniform(n: int, low: float, high: float, signed: bool = False) -> torch.Tensor:
    v = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(low), math.log(high)))
    return v * torch.sign(torch.randn(n)).double() if signed else v


def _high_precision_case(name: str, n: int) -> tuple:
    """(inputs, reference function) at the edges of `name`'s documented range plus n random
    values inside it (float64)."""
    edges = {
        "exp": [-600.0, -300.0, -40.0, -3.0, -0.5, 0.0, 0.25, 1.0, 2.5, 9.9, 10.0],
        "reciprocal": [2 ** -7, 0.01, 7.0, 100.0, 16000.0, 16384.0, -2 ** -7, -7.0, -16384.0],
        "log": [0.001, 0.01, 0.5, 1.0, 7.0, 12000.0, 24000.0],
        "sigmoid": [-600.0, -500.0, -3.0, -0.5, 0.0, 0.25, 2.5, 500.0, 600.0],
        "tanh": [-300.0, -60.0, -3.0, -0.5, 0.0, 0.25, 2.5, 100.0, 300.0],
    }
    if name == "softmax":  # rows of 10 logits, spreads up to 600 (the range)
        x = torch.randn(n // 10, 10, dtype=torch.float64) * 5
        x[0] = torch.linspace(-600, 0, 10)
        x[1] = torch.linspace(400, 1000, 10)
        return x, lambda t: torch.softmax(t, 1)
    if name == "divide":  # |y| in [2**-7, 2**14], |x / y| < 4e6, |x| <= 1e3 once |y| > 1e3
        # (1/y keeps 6 digits), |x| <= 1e9
        y = _log_uniform(n, 2 ** -7, 2 ** 14, signed=True)
        x = y * _log_uniform(n, 1e-3, 4e6, signed=True)
        # |x| <= 1e9 < 2**62 / scale: a shared x is truncated exactly to 6 digits first
        x = torch.where(y.abs() > 1e3, x.clamp(-1e3, 1e3), x.clamp(-1e9, 1e9))
        x[:4] = torch.tensor([3e4, -1.0, 1e3, 4e4])
        y[:4] = torch.tensor([2 ** -7, 7.0, 16384.0, -0.01])
        return (x, y), torch.div
    low, high = {"exp": (-20.0, 10.0), "sigmoid": (-30.0, 30.0), "tanh": (-15.0, 15.0)}.get(
        name, (None, None))
    if name == "reciprocal":
        x = _log_uniform(n, 2 ** -7, 2 ** 14, signed=True)
    elif name == "log":
        x = _log_uniform(n, 0.001, 24000.0)
    else:
        x = torch.empty(n, dtype=torch.float64).uniform_(low, high)
    x[:len(edges[name])] = torch.tensor(edges[name], dtype=torch.float64)
    return x, getattr(torch, name)


@pytest.mark.parametrize("name", APPROXIMATIONS)
@pytest.mark.parametrize("mode", ["local", "shared"])
@pytest.mark.parametrize("base, precision", HIGH_PRECISIONS)
def test_found_by_review_approximations_at_high_precision(hook, mode, base, precision, name):
    """Every approximation, local and shared, at 7-9 digits (base 10) and 24-31 bits (base 2),
    at the edges of its documented range: within 1e-2 + 1e-2 |f(x)| of float64 torch, every
    time (the shares are random: 20 repeats of 100 values)."""
    (bob, alice), provider = make_parties(hook, 2)

    def enc(t: torch.Tensor):
        fx = t.fix_precision(base=base, precision_fractional=precision)
        return fx.share(bob, alice, crypto_provider=provider) if mode == "shared" else fx

    def dec(t):
        return (t.get() if mode == "shared" else t).float_precision().double()

    for seed in range(HIGH_REPEATS if mode == "shared" else 2):
        torch.manual_seed(seed)
        x, f = _high_precision_case(name, HIGH_N)
        if name == "log" and base == 2:  # 0.001 is not a binary fraction: the encoding
            x = x.clamp(min=0.001 + 2.0 ** -precision)  # rounds it to nearest, below 0.001
        if name == "divide":
            got = dec(enc(x[0]) / enc(x[1]))
        elif name == "softmax":
            got = dec(F.softmax(enc(x), dim=1))
        else:
            got = dec(getattr(enc(x), name)())
        want = f(*x) if name == "divide" else f(x)
        _close(got, want)
