"""Non-linear functions of fixed-point values by published approximations, as CrypTen computes
them (Knott et al., "CrypTen: Secure Multi-Party Computation Meets Machine Learning",
NeurIPS 2021, §3 and its crypten/common/functions/approximations.py): exp, reciprocal, log,
sigmoid, tanh, softmax and log_softmax. The iterations are CrypTen's (limit approximation for
exp, Newton-Raphson for the reciprocal, Householder for log, reciprocal-based sigmoid/tanh,
max-shifted softmax); where a cheaper start or base step keeps the accuracy with fewer rounds
the docstring says so and why (exp: a degree-3 Taylor base step; reciprocal and log: initial
guesses from one batch of comparisons instead of an exp).

Each function takes a FixedPrecisionTensor (child local or secret-shared) and uses only its
methods (add, sub, mul, div by a public int, comparisons, max, sum, `_rescaled`), so the same
code runs on local values (exact integer arithmetic, truncation toward zero) and on shared ones
(Beaver products and ABY3 truncation, one protocol round each). The class is never imported:
fixed_precision.py, above this module, calls these functions from its methods.

Internal precision. Every function first re-encodes its input at `internal_precision(x)`
fractional digits, the smallest with base**digits >= 10**6 (6 digits in base 10, 20 bits in
base 2) whatever the input's precision: a local, exact multiplication by a public integer for
an input with fewer digits, one truncation (exact on shares, `truncate_exact`: one more round)
for an input with more (base 10 with 7-9 digits, base 2 with 21-31 bits). It computes there and
converts the result back to the input's precision once (a truncation, or a local
multiplication by a public integer). At that scale a product must satisfy
|x * y| < 2**62 / 10**12 ~ 4.6e6 (2**62 / 2**40 ~ 4.2e6 in base 2), which every intermediate
value below respects on the stated ranges. (Computing at the input's own precision when it
had more digits overflowed the ring: at 9 digits shared exp(2.5) gave -6.26, reciprocal(7)
1.83, and local values raised OverflowError; found by review.)
On shared values every function runs under `truncation.exact_truncation()`: each
truncation (a product's rescaling, a public division) is `truncate_exact`, which is exact
(ABY3's result, without its wraparound) for every value below 2**62 / 10**6, so inside the ranges a
shared result has no failure probability. (The ABY3 truncation used elsewhere wraps with
probability |x * y| * 10**12 / 2**64: a quotient of 1.6e6 failed 9% of the time, exp(10)
1.2e-3, reciprocal(16000) 8.7e-4 per element; found by review.) It costs the same rounds
and one random bit more per element from the dealer.

Ranges. Each function states its input range (the module's *_RANGE / *_BOUND constants);
local inputs outside raise ValueError naming the range and a way out (`_check_range`), as
local products past the ring raise OverflowError. Shared inputs cannot be checked: outside
the range the result is wrong, as each docstring says. softmax and log_softmax use the
public number of classes n to pick the initial-guess bands of the sum's reciprocal / log,
so they hold for any n (CrypTen instead scales the sum by a public power of two).

Accuracy. On the range stated in each docstring the result is within `atol + rtol * |f(x)|`
of the float64 function with atol = rtol = 1e-2 at the default precision (base 10, 3 digits);
tests/test_smpc_approximations.py checks the edges of each range, local and shared.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from fedmq.smpc.truncation import exact_truncation

#: fixed-point values here are FixedPrecisionTensors (fixed_precision.py, built on this module)
Fixed = Any

#: the internal scale every function computes at (at least)
INTERNAL_SCALE = 10 ** 6
#: exp: squarings after the Taylor step (the input is divided by 2**EXP_ITERATIONS)
EXP_ITERATIONS = 8
#: reciprocal: Newton-Raphson iterations (CrypTen takes 10 from its exp-based guess; from the
#: band guess below, |1 - x y0| <= 1/3 and 5 iterations leave (1/3)**32 ~ 5e-16)
RECIPROCAL_ITERATIONS = 5
#: reciprocal's initial guess: x's band [2**k, 2**(k+1)) for RECIPROCAL_LOW <= k < ..._HIGH,
#: so |x| in [2**-7, 2**14) = [0.0078, 16384) (21 comparisons in one batch)
RECIPROCAL_LOW, RECIPROCAL_HIGH = -7, 14
#: log: Householder iterations and their order (CrypTen's `log_order`; CrypTen iterates twice
#: from its exp-based guess, one iteration suffices from the band guess below)
LOG_ITERATIONS = 1
LOG_ORDER = 8
#: log's initial guess: x's band [e**(LOG_LOW + k), e**(LOG_LOW + k + 1)), k < LOG_BANDS,
#: so x in [0.001, 0.001 * e**17) = [0.001, 24154)
LOG_LOW = -6.907755278982137  # log(0.001)
LOG_BANDS = 17
#: the documented ranges, checked on local values (ValueError outside; shared values cannot be
#: checked and give a wrong result outside): exp's input, reciprocal's |x|, log's x
EXP_RANGE = (-600.0, 10.0)
RECIPROCAL_RANGE = (2.0 ** RECIPROCAL_LOW, 2.0 ** RECIPROCAL_HIGH)
LOG_RANGE = (0.001, 24000.0)
#: sigmoid's |x| and tanh's |x| (exp of -|x|, resp. -2|x|, must stay in EXP_RANGE)
SIGMOID_BOUND, TANH_BOUND = 600.0, 300.0
#: softmax / log_softmax: the largest spread max - min of the logits along dim (exp's range)
SOFTMAX_SPREAD = 600.0


def _exact(fn: Callable) -> Callable:
    """Run `fn` with every shared truncation exact (truncation.exact_truncation): at 6
    digits a product is rescaled from |value| * 10**12, which the ABY3 truncation wraps with
    probability |value| * 10**12 / 2**64 (x / y = 1.6e6: 9% per element)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with exact_truncation():
            return fn(*args, **kwargs)
    return run


def internal_precision(x: Fixed) -> int:
    """The fractional digits (in x's base) the approximations compute with: the smallest with
    base**digits >= INTERNAL_SCALE (6 in base 10, 20 bits in base 2), whatever x's own
    precision (a product at that scale stays below 2**62 for |x * y| < 4.2e6)."""
    digits = 0
    while x.base ** digits < INTERNAL_SCALE:
        digits += 1
    return digits


def _up(x: Fixed) -> Fixed:
    """x at `internal_precision(x)`: a local multiplication by a public power of the base when
    x has fewer digits, an (exact, on shares: `truncate_exact`) truncation when it has more
    (base 10 with 7-9 digits, base 2 with 21-31 bits: computing at x's own scale overflowed
    the ring, found by review)."""
    return x._rescaled(internal_precision(x))


def _check_range(x: Fixed, name: str, low: float, high: float, way_out: str,
                 magnitude: bool = False) -> None:
    """ValueError if x is local and a value (its |value| when `magnitude`) is outside
    [low, high]. Shared values cannot be checked: outside the range their result is wrong
    (each function's docstring says how)."""
    if x.is_shared or not x.numel():
        return
    values = x.child.double() / x.scale
    if magnitude:
        values = values.abs()
    bad = (values < low) | (values > high)
    if bool(bad.any()):
        what = "|x|" if magnitude else "x"
        raise ValueError(
            f"{name} of a fixed-precision tensor is an approximation valid for {what} in "
            f"[{low:g}, {high:g}] (computed at 6 fractional digits whatever the input's "
            f"precision); got {float(x.child.double().flatten()[bad.flatten()][0]) / x.scale:g}"
            f". Outside that range the result would be wrong (and silently so on shared "
            f"values). {way_out}")


# -- exp -------------------------------------------------------------------------------------------

def _exp(y: Fixed, iterations: int = EXP_ITERATIONS) -> Fixed:
    """exp at y's own precision (see `exp`)."""
    u = y.div(2 ** iterations)
    # Taylor polynomial of degree 3: 1 + u + u**2 (3 + u) / 6 (the / 6 fused into the product)
    p = u.mul(u)._mul_div(u.add(3), 6).add(u).add(1)
    for _ in range(iterations):
        p = p.mul(p)
    return p


@_exact
def exp(x: Fixed, iterations: int = EXP_ITERATIONS) -> Fixed:
    """e**x by scaling and squaring: exp(x) = p(x / 2**n) ** (2**n), with p the degree-3 Taylor
    polynomial and n = `iterations` (8) squarings. This is CrypTen's limit approximation
    (1 + x/2**n)**(2**n) with three Taylor terms instead of one, which removes its bias
    (the limit form is e**x * e**(-x**2 / 2**(n+1)): 3% low at x = -4 with n = 8); method:
    Moler and Van Loan, "Nineteen Dubious Ways to Compute the Exponential of a Matrix,
    Twenty-Five Years Later", SIAM Review 45(1), 2003, §3.

    Range: x in EXP_RANGE = [-600, 10], whatever x's base and precision (the squarings run
    at 6 fractional digits). Local values outside raise ValueError. Shared values cannot be
    checked: inside the range every truncation is exact (module docstring); up to x = 15 the
    result is still right, and past x = 15.3 the last squaring leaves the internal range
    (|x*y| < 4.6e6): the result is then garbage; below about -640 the Taylor step's
    |p| exceeds 1 and the squarings blow up (between -600 and -40 the result is within 1e-3
    of exp(x) ~ 0). For larger x take out a public constant c: exp(x - c) * e**c.
    Relative error ~ 2**n / internal scale (2.6e-4). Cost: one division, 2 products and n
    squarings (shared: 21 rounds).
    Returns a FixedPrecisionTensor of x's shape and precision.
    """
    _check_range(x, "exp", *EXP_RANGE,
                 "Lowering precision_fractional or using base=2 does not help; take a public "
                 "constant c out, (x - c).exp() * math.exp(c), or normalize first (softmax "
                 "subtracts the max).")
    return _exp(_up(x), iterations)._rescaled(x.precision_fractional)


# -- reciprocal ------------------------------------------------------------------------------------

def _reciprocal_guess(y: Fixed, low: int = RECIPROCAL_LOW, high: int = RECIPROCAL_HIGH
                      ) -> Fixed:
    """2 / (3 * 2**k) on the band [2**k, 2**(k+1)) that y is in (|1 - y y0| <= 1/3), for y in
    [2**low, 2**high) (public bounds: callers that know a tighter range pass it and pay fewer
    comparisons): c_low + sum_k [y >= 2**k] (c_k - c_(k-1)), from one batch of high - low - 1
    comparisons and one product by public constants."""
    ks = list(range(low + 1, high))
    level = [2.0 / (3.0 * 2.0 ** k) for k in [low] + ks]
    if not ks:
        return y.mul(0).add(level[0])
    steps = torch.tensor([b - a for a, b in zip(level, level[1:])], dtype=torch.float64)
    thresholds = torch.tensor([2.0 ** k for k in ks], dtype=torch.float64)
    n = len(ks)
    stacked = y.stack([y] * n, 0)
    shape = [n] + [1] * y.dim()
    bands = stacked.ge(thresholds.reshape(shape).expand(tuple(stacked.shape)))
    return bands.mul(steps.reshape(shape).expand(tuple(stacked.shape))).sum(0).add(level[0])


def _reciprocal_pos(y: Fixed, iterations: int = RECIPROCAL_ITERATIONS,
                    one_to_two: bool = False, bands: tuple = (RECIPROCAL_LOW, RECIPROCAL_HIGH)
                    ) -> Fixed:
    """1/y for y > 0 at y's precision: Newton-Raphson r <- r (2 - y r) from the band guess
    (`_reciprocal_guess`), or, when `one_to_two` promises y in [1, 2], from the minimax
    linear estimate 24/17 - 8/17 y (relative error <= 1/17, so 3 iterations reach
    1/17**8 ~ 1.4e-10); `bands` = (low, high) promises y in [2**low, 2**high). Both are the
    classic starts of Newton-Raphson division (a table
    lookup on the leading bits; 48/17 - 32/17 d on [1/2, 1]: M. J. Flynn, "On Division by
    Functional Iteration", IEEE Trans. Computers C-19(8), 1970)."""
    if one_to_two:
        r, iterations = y.mul(-8).add(24).div(17), 3
    else:
        r = _reciprocal_guess(y, *bands)
    for _ in range(iterations):
        r = r.mul(y.mul(r).rsub(2))
    return r


#: the largest `bound` reciprocal accepts (1/x then keeps at least one unit at 6 digits)
RECIPROCAL_MAX_BOUND = 2.0 ** 20


def _reciprocal_bands(bound: Any) -> tuple:
    """(low, high, shift): reciprocal's initial guess covers [2**low, 2**high) after x is
    divided by the public 2**shift. Default: [2**-7, 2**14), no shift. With a public `bound`
    on |x|: 2**high > bound when bound < 2**14 (fewer bands); above, the window moves up
    (CrypTen's scaling by a public power of two): shift = high - 14, so |x| must be in
    [2**(shift - 7), bound] (the guess's levels 2 / (3 * 2**k) need k <= 14 to keep 2 digits
    at the internal 6)."""
    if bound is None:
        return RECIPROCAL_LOW, RECIPROCAL_HIGH, 0
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or \
            not 2.0 ** RECIPROCAL_LOW < bound <= RECIPROCAL_MAX_BOUND:
        raise ValueError(f"reciprocal's bound (a public upper bound on |x|) must be a number in "
                         f"({2.0 ** RECIPROCAL_LOW:g}, {RECIPROCAL_MAX_BOUND:g}], got {bound!r}")
    high = math.floor(math.log2(bound)) + 1
    shift = max(0, high - RECIPROCAL_HIGH)
    return RECIPROCAL_LOW, high - shift, shift


@_exact
def reciprocal(x: Fixed, all_pos: bool = False, iterations: int = RECIPROCAL_ITERATIONS,
               bound: float | None = None) -> Fixed:
    """1/x by Newton-Raphson, y <- y (2 - x y), `iterations` (5) times; the relative error
    squares at every step (CrypTen's method, Knott et al. 2021, Appendix C.1). CrypTen starts
    from 3 e**(0.5 - x) + 0.003 and needs 10 iterations; here the start is 2 / (3 * 2**k) on
    the band [2**k, 2**(k+1)) holding x (one batch of 21 comparisons: |1 - x y0| <= 1/3).
    Negative x: s / (s x) with s = 1 - 2[x < 0] (one comparison) unless `all_pos=True`
    promises x > 0.

    Range: |x| in RECIPROCAL_RANGE = [2**-7, 2**14] = [0.0078, 16384] (the guess's bands;
    at the default 3 digits an x near 0.01 is only known to 10%, which the result inherits:
    it is the reciprocal of the encoded x). Local values outside (0 included) raise
    ValueError. Shared values cannot be checked: outside, Newton-Raphson starts with
    |1 - x y0| > 1/3 and converges slowly (below the range: too large)  or diverges (above: garbage). A larger x: divide it by a public power of two
    first, reciprocal(x / 2**k) / 2**k. On shared values every truncation is exact (module
    docstring): inside the range there is no failure probability.
    A public `bound` on |x| (the divisor's declared bound, up to 2**20) replaces the upper end:
    below 2**14 the guess's bands cover [2**-7, 2**(floor(log2 bound) + 1)) only (bound=10:
    10 comparisons instead of 21); above, x is first divided by a public 2**s (CrypTen's
    scaling) so the range becomes [2**(s - 7), bound], s = floor(log2 bound) + 1 - 14 (bound
    1e6: [0.5, 1e6]). Local values outside raise.
    Cost (shared): one comparison, one product and 5 iterations: ~29 rounds.
    Returns a FixedPrecisionTensor of x's shape and precision.
    """
    low, high, shift = _reciprocal_bands(bound)
    _check_range(x, "reciprocal", 2.0 ** (low + shift), bound or RECIPROCAL_RANGE[1],
                 _RECIPROCAL_WAY_OUT, magnitude=True)
    return _reciprocal(_up(x), all_pos, iterations, (low, high), shift
                       )._rescaled(x.precision_fractional)


_RECIPROCAL_WAY_OUT = ("For a larger |x| divide by a public power of two first: "
                       "(x / 2**k).reciprocal() / 2**k; to divide by a public number use "
                       "x / 2000.0 (exact, no approximation).")


def _reciprocal(y: Fixed, all_pos: bool, iterations: int,
                bands: tuple = (RECIPROCAL_LOW, RECIPROCAL_HIGH), shift: int = 0) -> Fixed:
    if shift:  # 1/y = (1 / (y / 2**shift)) / 2**shift: two public divisions
        return _reciprocal(y.div(2 ** shift), all_pos, iterations, bands).div(2 ** shift)
    if all_pos:
        return _reciprocal_pos(y, iterations, bands=bands)
    sign = y.lt(0).mul(-2).add(1)  # 1 - 2 [y < 0]: one comparison
    return _reciprocal_pos(y.mul(sign), iterations, bands=bands).mul(sign)


@_exact
def divide(x: Fixed, y: Fixed, iterations: int = RECIPROCAL_ITERATIONS,
           bound: float | None = None) -> Fixed:
    """x / y for a fixed-point y: x times `reciprocal(y)`, both at internal precision (so
    1/y keeps 6 digits before the product). Range: |y| in RECIPROCAL_RANGE = [0.0078, 16384]
    (local y outside, 0 included: ValueError; shared: wrong, see `reciprocal`), and
    |x / y| < 4.6e6 (4.2e6 in base 2; the product range of the module docstring: x at 6
    digits times 1/y at 6 digits is |x / y| * 10**12 before rescaling, which must stay
    below 2**62; shared values are then exact, local ones raise OverflowError past 9.2e6);
    `bound`: a public upper bound on |y| (see `reciprocal`). An x with more digits than the
    internal precision is first truncated to it (`_up`), which on shares is exact only for
    |x| * x.scale < 2**62: a shared x must then satisfy |x| < 2**62 / scale (4.6e9 at 9
    digits, 2.1e9 at 31 bits; half the encoding's range; 4e9 at 31 bits failed 45% of the
    time). Result at x's precision."""
    low, high, shift = _reciprocal_bands(bound)
    _check_range(y, "division by a fixed-point tensor (its reciprocal)", 2.0 ** (low + shift),
                 bound or RECIPROCAL_RANGE[1],
                 _RECIPROCAL_WAY_OUT.replace("x / 2000.0", "x / 2000.0 or x / (y / 16) / 16"),
                 magnitude=True)
    return _up(x).mul(_reciprocal(_up(y), False, iterations, (low, high), shift)
                      )._rescaled(x.precision_fractional)


# -- log -------------------------------------------------------------------------------------------

#: lcm(1, ..., 8): the series sum h**k / k is computed as sum (840 / k) h**k, then / 840
_SERIES_DENOMINATOR = 840


def _powers(h: Fixed, order: int) -> list:
    """[h, h**2, ..., h**order] in ceil(log2(order)) products (each layer one stacked product)."""
    powers = [h]
    while len(powers) < order:
        top = powers[-1]
        n = min(len(powers), order - len(powers))
        more = h.stack([top] * n, 0).mul(h.stack(powers[:n], 0))
        powers += [more[i] for i in range(n)]
    return powers


def _log_guess(y: Fixed, low: float = LOG_LOW, count: int = LOG_BANDS) -> Fixed:
    """low + 0.7 + #{1 <= k < count : y >= e**(low + k)}: within (-0.3, 0.7] of log(y) for y in
    [e**low, e**(low + count)) ([0.001, 24154) by default), from one batch of comparisons (all
    thresholds at once; callers that know a tighter public range pass it)."""
    if count <= 1:
        return y.mul(0).add(low + 0.7)
    thresholds = torch.tensor([math.exp(low + k) for k in range(1, count)],
                              dtype=torch.float64)
    n = len(thresholds)
    stacked = y.stack([y] * n, 0)
    bands = stacked.ge(thresholds.reshape([n] + [1] * y.dim()).expand(tuple(stacked.shape)))
    return bands.sum(0).add(low + 0.7)


def _log(y: Fixed, iterations: int = LOG_ITERATIONS, order: int = LOG_ORDER,
         bands: tuple = (LOG_LOW, LOG_BANDS)) -> Fixed:
    """log at y's precision (see `log`); `bands` = (low, count) promises y in
    [e**low, e**(low + count))."""
    if _SERIES_DENOMINATOR % _lcm(order):
        raise ValueError(f"log's order must be at most 8, got {order}")
    z = _log_guess(y, *bands)
    for _ in range(iterations):
        h = y.mul(_exp(z.neg())).rsub(1)
        # z -= h + h**2/2 + ... + h**order/order  (the series of -log(1 - h)), with integer
        # coefficients and one division
        series = z.mul(_SERIES_DENOMINATOR)
        for k, power in enumerate(_powers(h, order), start=1):
            series = series.sub(power.mul(_SERIES_DENOMINATOR // k))
        z = series.div(_SERIES_DENOMINATOR)
    return z


def _lcm(n: int) -> int:
    out = 1
    for k in range(2, n + 1):
        a, b = out, k
        while b:
            a, b = b, a % b
        out = out * k // a
    return out


@_exact
def log(x: Fixed, iterations: int = LOG_ITERATIONS, order: int = LOG_ORDER) -> Fixed:
    """Natural logarithm by a Householder iteration of order `order` (8) on f(y) = 1 - x e**-y:
    y <- y - sum_{k=1..order} h**k / k with h = 1 - x e**-y (the order-8 truncation of
    y - (-log(1 - h)); CrypTen's method, Knott et al. 2021, Appendix C.1; Householder, "The
    Numerical Treatment of a Single Nonlinear Equation", 1970). CrypTen starts two iterations
    from y0 = x/120 - 20 e**(-2x - 1) + 3, which costs an exp; here y0 is piecewise constant,
    LOG_LOW + 0.7 + #{k : x >= e**(LOG_LOW + k)} (one batch of 16 comparisons, log(x) in bands
    of width 1), so |y0 - log x| <= 0.7 and one iteration leaves at most 4.3e-4 (float64; the
    order-8 tail |h|**9 / (9 (1 - |h|)) with h = 1 - e**-0.7).

    Range: x in LOG_RANGE = [0.001, 24000] (absolute error below 1e-2 there, for the encoded
    x: at the default 3 digits x = 0.01 is known to 10% and 0.001 is one unit, which log(x)
    inherits; tests compare with the log of the decoded input). Local values outside (x <= 0
    included) raise ValueError. Shared values cannot be checked: outside, the initial guess is
    more than 0.7 off and one iteration does not converge (log(500) gave -20 with the old
    bands), x <= 0 gives a meaningless number. A larger x: log(x / 2**k) + k log 2.
    Cost (shared): one comparison, one exp, a product, h's powers in 3 stacked products and
    one division for the series (integer coefficients 840/k): ~40 rounds.
    Returns a FixedPrecisionTensor of x's shape and precision.
    """
    _check_range(x, "log", *LOG_RANGE,
                 "For a larger x divide by a public power of two first: "
                 "(x / 2**k).log() + k * math.log(2).")
    return _log(_up(x), iterations, order)._rescaled(x.precision_fractional)


# -- sigmoid, tanh ----------------------------------------------------------------------------------

def _sigmoid(y: Fixed) -> Fixed:
    negative = y.lt(0)  # fixed-point 0/1
    sign = negative.mul(-2).add(1)
    # p = 1 / (1 + e**-|y|), in [1/2, 1]: the denominator is in [1, 2]
    p = _reciprocal_pos(_exp(y.mul(sign).neg()).add(1), one_to_two=True)
    return p.add(negative.mul(p.mul(-2).add(1)))  # p, or 1 - p where y < 0


@_exact
def sigmoid(x: Fixed) -> Fixed:
    """1 / (1 + e**-x), computed as CrypTen's "reciprocal" method: p = 1 / (1 + e**-|x|) by
    `exp` and Newton-Raphson (denominator in [1, 2], never overflowing, so the linear initial
    estimate of `_reciprocal_pos` and 3 iterations suffice), then p
    where x >= 0 and 1 - p where x < 0 (one comparison; Knott et al. 2021, Appendix C.1).

    Range: |x| <= SIGMOID_BOUND = 600 (e**-|x| in exp's range). Local values outside raise
    ValueError; shared ones give garbage past about 640 (exp's Taylor step, see `exp`):
    clamp first if larger inputs can occur (sigmoid(600) is 1 to within 1e-260).
    Returns a FixedPrecisionTensor of x's shape and precision, values in [0, 1].
    """
    _check_range(x, "sigmoid", -SIGMOID_BOUND, SIGMOID_BOUND,
                 "sigmoid is 0 or 1 to float precision there: clamp the input first.",
                 magnitude=False)
    return _sigmoid(_up(x))._rescaled(x.precision_fractional)


@_exact
def tanh(x: Fixed) -> Fixed:
    """tanh(x) = 2 sigmoid(2x) - 1 (CrypTen's "reciprocal" method for tanh), with `sigmoid`.

    Range: |x| <= TANH_BOUND = 300 (sigmoid's, halved). Local values outside raise
    ValueError; shared ones give garbage past about 320. Returns a FixedPrecisionTensor of x's shape and precision, values in
    [-1, 1].
    """
    _check_range(x, "tanh", -TANH_BOUND, TANH_BOUND,
                 "tanh is -1 or 1 to float precision there: clamp the input first.")
    return _sigmoid(_up(x).mul(2)).mul(2).sub(1)._rescaled(x.precision_fractional)


# -- softmax, log_softmax -----------------------------------------------------------------------------

def _shifted(x: Fixed, dim: int, name: str) -> Fixed:
    """x - max(x, dim) (<= 0, 0 at the maximum): the stability shift, at internal precision.
    Local values: ValueError if a shifted logit is below -SOFTMAX_SPREAD (exp's range)."""
    top = x.max(dim, keepdim=True).values
    z = x.sub(top)
    _check_range(z, f"{name} (exp of the logits minus their max)", -SOFTMAX_SPREAD, 0.0,
                 f"The logits along dim must lie within {SOFTMAX_SPREAD:g} of their max; "
                 f"clamp them first (a logit {SOFTMAX_SPREAD:g} below the max has "
                 f"probability below e**-600).")
    return _up(z)


def _sum_bands(n: int) -> tuple:
    """(low, high) with 2**low <= 1 - 1e-6 and 2**high > n: reciprocal's bands for a sum of n
    exps of values <= 0 with one exp equal to 1 (the sum is in [1, n])."""
    return -1, max(1, int(n).bit_length())


def _log_sum_bands(n: int) -> tuple:
    """(low, count) for log's guess on [1 - 1e-6, n]: e**low <= 1 - 1e-6 < e**(low + count)
    > n, low = -0.3 (so the guess's error stays in (-0.3, 0.7])."""
    return -0.3, int(math.log(max(n, 1)) + 0.3) + 1


@_exact
def softmax(x: Fixed, dim: int) -> Fixed:
    """e**(x - m) / sum(e**(x - m)) along `dim`, m = max(x, dim) (the max-subtraction that makes
    the sum lie in [1, n] and every exponent <= 0; CrypTen's softmax), with `exp` and
    `reciprocal` (all positive).

    The sum is in [1, n] for n = x.shape[dim] (public), so the reciprocal's initial guess
    uses the bands [2**-1, 2**(bit_length(n))) only: any n (1000 classes: 10 comparisons in
    one batch; 10 classes: 4), with no overflow (the sum is at most n at 6 digits).

    Range: logits within SOFTMAX_SPREAD = 600 of their max along `dim` (exp's range); local
    values outside raise ValueError; shared ones give garbage past about 640 (clamp first).
    For n up to 2**20 entries the result is within 1e-2 of torch's (1/n keeps 6 digits
    at the internal scale). Cost: one max (log2 n comparison layers) plus exp, a sum and a
    reciprocal.
    Returns a FixedPrecisionTensor of x's shape and precision, rows summing to ~1.
    """
    e = _exp(_shifted(x, dim, "softmax"))
    total = e.sum(dim, keepdim=True)
    bands = _sum_bands(x.shape[dim])
    return e.mul(_reciprocal_pos(total, bands=bands))._rescaled(x.precision_fractional)


@_exact
def log_softmax(x: Fixed, dim: int) -> Fixed:
    """(x - m) - log(sum(e**(x - m))) along `dim`, m = max(x, dim): the stable form, with
    `exp` and `log` (the sum is in [1, n]).

    The sum is in [1, n] for n = x.shape[dim] (public), so log's initial guess uses the
    bands [e**-0.3, e**(ceil(log n + 0.3) + 0.7)) only: any n (1000 classes: 7
    comparisons in one batch; 10 classes: 2).

    Range: logits within SOFTMAX_SPREAD = 600 of their max along `dim`, as `softmax`
    (local values outside raise ValueError, shared ones give garbage past about 640).
    Returns a FixedPrecisionTensor of x's shape and precision (values <= 0).
    """
    z = _shifted(x, dim, "log_softmax")
    total = _exp(z).sum(dim, keepdim=True)
    bands = _log_sum_bands(x.shape[dim])
    return z.sub(_log(total, bands=bands))._rescaled(x.precision_fractional)
