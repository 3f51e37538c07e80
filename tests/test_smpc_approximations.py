"""exp, reciprocal, log, sigmoid, tanh, softmax, log_softmax of fixed-precision values
(fedmq/smpc/approximations.py), local and secret-shared, against torch in float64, at the
edges and inside of the range each docstring states: within atol + rtol * |f(x)|,
atol = rtol = 1e-2, at the default precision (base 10, 3 digits)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smpc_helpers import make_parties

TOL = 1e-2

#: function -> (inputs at the edges and inside of its stated range, torch's function)
CASES = {
    "exp": (torch.tensor([-40.0, -20.0, -5.0, -2.5, -1.0, -0.001, 0.0, 0.5, 1.0, 3.0, 7.5, 10.0]),
            torch.exp),  # shared: up to 5 (above, a truncation fails with probability ~1e-3)
    "reciprocal": (torch.tensor([0.1, 0.125, 0.15, 0.5, 1.0, 2.0, 7.0, 42.0, 250.0, 512.0, 1000.0,
                                 -0.1, -3.0, -1000.0]), torch.reciprocal),  # 0.125, 512: bands
    "log": (torch.tensor([0.01, 0.02, 0.1, 0.5, 1.0, 2.0, 2.718, 10.0, 55.0, 100.0, 148.41,
                          200.0]), torch.log),  # 148.41: a band edge of the initial guess
    "sigmoid": (torch.tensor([-100.0, -20.0, -4.0, -1.0, -0.01, 0.0, 0.01, 1.0, 4.0, 20.0,
                              100.0]), torch.sigmoid),
    "tanh": (torch.tensor([-50.0, -5.0, -1.0, -0.3, 0.0, 0.3, 1.0, 5.0, 50.0]), torch.tanh),
}


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got.double() - want.double()).abs()
    bound = TOL + TOL * want.double().abs()
    assert bool((err <= bound).all()), (got, want, err)


@pytest.fixture
def shared(hook):
    (bob, alice), provider = make_parties(hook, 2)
    return lambda t: t.fix_precision().share(bob, alice, crypto_provider=provider)


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_local_within_tolerance(hook, name):
    x, ref = CASES[name]
    fp = x.fix_precision()
    got = getattr(fp, name)().float_precision()
    _close(got, ref(fp.float_precision().double()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_shared_within_tolerance(shared, name):
    x, ref = CASES[name]
    if name == "exp":
        x = x[x <= 5]
    got = getattr(shared(x), name)().get().float_precision()
    _close(got, ref(x.fix_precision().float_precision().double()))  # 0.01 encodes as 0.009


def test_torch_functions_dispatch_to_the_approximations(shared):
    x = torch.tensor([[-1.0, 0.5], [2.0, 0.25]])
    for func in (torch.exp, torch.sigmoid, torch.tanh, F.sigmoid, F.tanh):
        _close(func(x.fix_precision()).float_precision(), func(x.double()))
    _close(torch.log(x.abs().fix_precision()).float_precision(), torch.log(x.abs().double()))
    _close(torch.reciprocal(shared(x)).get().float_precision(), 1 / x.double())


LOGITS = torch.tensor([[-20.0, 20.0, 0.0, 3.0, -7.5, 19.9, 1.0, 1.0, -3.0, 0.0],
                       [0.0] * 10,
                       [-20.0] * 9 + [20.0],
                       [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])


@pytest.mark.parametrize("dim", [1, -1, 0])
def test_softmax_and_log_softmax_local(hook, dim):
    fp = LOGITS.fix_precision()
    _close(F.softmax(fp, dim=dim).float_precision(), F.softmax(LOGITS.double(), dim=dim))
    _close(F.log_softmax(fp, dim=dim).float_precision(),
           F.log_softmax(LOGITS.double(), dim=dim))


def test_softmax_and_log_softmax_shared(shared):
    x = shared(LOGITS)
    _close(F.softmax(x, dim=1).get().float_precision(), F.softmax(LOGITS.double(), dim=1))
    _close(F.log_softmax(x, dim=1).get().float_precision(),
           F.log_softmax(LOGITS.double(), dim=1))
    # the stated range's widest rows keep the row sums at 1
    assert torch.allclose(F.softmax(shared(LOGITS), 1).get().float_precision().sum(1),
                          torch.ones(4), atol=2e-2)


def test_softmax_needs_a_dim_and_no_dtype(hook):
    fp = LOGITS.fix_precision()
    with pytest.raises(ValueError, match="dim="):
        fp.softmax(None)
    with pytest.raises(ValueError, match="dim must be an int in"):
        F.log_softmax(fp, dim=2)
    with pytest.raises(ValueError, match="dtype=None"):
        F.softmax(fp, dim=1, dtype=torch.float64)


def test_other_precisions(hook):
    """Base 2 computes at 20 fractional bits internally and returns at the input's."""
    x = torch.tensor([-3.0, -0.5, 0.0, 1.5])
    fp = x.fix_precision(base=2, precision_fractional=16)
    got = fp.exp()
    assert got.precision_fractional == 16 and got.base == 2
    _close(got.float_precision(), torch.exp(x.double()))
    _close(x.fix_precision(precision_fractional=5).sigmoid().float_precision(),
           torch.sigmoid(x.double()))


@pytest.mark.parametrize("kind", ["local", "shared"])
def test_division_by_fixed_precision_values(shared, kind):
    """x / y, t / y and 1 / y with y fixed-point: x * reciprocal(y) at 6 digits, |y| in
    [0.1, 500]; public divisors stay exact (int) or encoded reciprocals (float)."""
    make = (lambda t: t.fix_precision()) if kind == "local" else shared

    def dec(v):
        return (v.get() if v.is_shared else v).float_precision().double()

    x = torch.tensor([1.5, -2.0, 7.0, 0.0, 100.0])
    y = torch.tensor([0.5, 4.0, -250.0, 3.0, 0.1])
    t = torch.tensor([2.0, 3.0, 4.0, -1.0, 0.5])
    _close(dec(make(x) / make(y)), x.double() / y.double())
    _close(dec(t / make(y)), t.double() / y.double())
    _close(dec(1 / make(y)), 1 / y.double())
    assert (t / make(y)).float_dtype == torch.float32
    _close(dec(torch.div(make(x), make(y))), x.double() / y.double())
    _close(dec(make(x) / t), x.double() / t.double())
    assert torch.equal(dec(make(x) / 2), torch.tensor([0.75, -1.0, 3.5, 0.0, 50.0]).double())
    with pytest.raises(ValueError, match="by zero"):
        make(x) / 0
    with pytest.raises(ValueError, match="by zero"):
        make(x) / torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
