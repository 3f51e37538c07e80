"""Binary operators between every kind of operand of the SMPC stack, in both orders: plain
float tensors, integer tensors and Python numbers; FixedPrecisionTensors, local and
secret-shared; AutogradTensors over either, with and without requires_grad. Each of
+ - * @ / < > <= >= == != either computes the plaintext result (an AutogradTensor whenever one
side is, tracking gradients when a side requires them, which are checked against torch's) or,
for `@` with a number (as torch.matmul), raises TypeError naming what is allowed."""
from __future__ import annotations

import itertools
import operator

import pytest
import torch

from fedmq.smpc import FixedPrecisionTensor
from fedmq.smpc.autograd import AutogradTensor
from smpc_helpers import make_parties

A = torch.tensor([[1.5, -2.0], [0.5, 3.0]])
B = torch.tensor([[0.75, 1.25], [-1.5, 2.0]])  # |B| in [0.1, 1000]: a valid secret divisor

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "@": operator.matmul,
       "/": operator.truediv, "<": operator.lt, ">": operator.gt, "<=": operator.le,
       ">=": operator.ge, "==": operator.eq, "!=": operator.ne}
COMPARISONS = {"<", ">", "<=", ">=", "==", "!="}

PLAIN = ("float", "int_tensor", "number")
SMPC = ("fp", "fp_shared", "ag", "ag_shared", "ag_nograd")
KINDS = PLAIN + SMPC
PAIRS = [(left, right) for left, right in itertools.product(KINDS, KINDS)
         if left in SMPC or right in SMPC]


@pytest.fixture(scope="module")
def parties():
    import fedmq
    hook = fedmq.TorchHook(torch)
    return make_parties(hook, 2)


def make(kind: str, t: torch.Tensor, parties):
    workers, provider = parties
    if kind == "float":
        return t.clone()
    if kind == "int_tensor":
        return torch.tensor([[2, -1], [3, 1]])
    if kind == "number":
        return 1.5
    fp = t.fix_precision()
    if kind == "fp":
        return fp
    if kind == "fp_shared":
        return fp.share(*workers, crypto_provider=provider)
    if kind == "ag":
        return AutogradTensor(fp, requires_grad=True)
    if kind == "ag_shared":
        return fp.share(*workers, crypto_provider=provider, requires_grad=True)
    return AutogradTensor(fp.share(*workers, crypto_provider=provider))  # ag_nograd


def plain(kind: str, t: torch.Tensor):
    """The same operand in plain torch (requires_grad where the AutogradTensor does)."""
    if kind == "int_tensor":
        return torch.tensor([[2, -1], [3, 1]])
    if kind == "number":
        return 1.5
    return t.clone().requires_grad_(kind in ("ag", "ag_shared"))


def decode(x) -> torch.Tensor:
    x = x.child if isinstance(x, AutogradTensor) else x
    return (x.virtual_get() if x.is_shared else x).float_precision()


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("left, right", PAIRS, ids=[f"{l}-{r}" for l, r in PAIRS])
def test_operator_matrix(left, right, op, parties):
    fn = OPS[op]
    x, y = make(left, A, parties), make(right, B, parties)
    if op == "@" and "number" in (left, right):
        with pytest.raises(TypeError, match="at least one dimension"):
            fn(x, y)
        return
    px, py = plain(left, A), plain(right, B)
    want = fn(px.float() if isinstance(px, torch.Tensor) else px,
              py.float() if isinstance(py, torch.Tensor) else py)
    out = fn(x, y)

    autograd = {"ag", "ag_shared", "ag_nograd"} & {left, right}
    tracking = {"ag", "ag_shared"} & {left, right}
    assert isinstance(out, AutogradTensor if autograd else FixedPrecisionTensor)
    shared = {"fp_shared", "ag_shared", "ag_nograd"} & {left, right}
    assert out.is_shared == bool(shared)
    if autograd:
        assert out.requires_grad == bool(tracking and op not in COMPARISONS)
    got = decode(out)
    if op in COMPARISONS:
        assert torch.equal(got, want.float())
        return
    # one unit in the last place per rounding; a secret divisor: reciprocal's 1e-2
    atol = 2e-2 if op == "/" and right in SMPC else 5e-3
    assert torch.allclose(got, want.detach(), atol=atol), (got, want)
    if autograd and out.requires_grad:
        out.sum().backward()
        want.sum().backward()
        for kind, enc, ref in ((left, x, px), (right, y, py)):
            if kind in ("ag", "ag_shared"):
                # (a gradient is shared where it depends on a shared value: that of x + t
                # for a shared x is the public ones of backward())
                assert enc.grad is not None
                assert torch.allclose(decode(enc.grad), ref.grad, atol=3e-2), \
                    (kind, decode(enc.grad), ref.grad)


def test_fixed_precision_first_joins_the_graph(parties):
    """helperC's case: `x_fp * w` (a plain FixedPrecisionTensor first, an AutogradTensor
    second) records the product, as `w * x_fp` does; also the method forms."""
    workers, provider = parties
    x = A.fix_precision().share(*workers, crypto_provider=provider)
    w = B.fix_precision().share(*workers, crypto_provider=provider, requires_grad=True)
    for out in (x * w, x.mul(w), x @ w, x.matmul(w), x - w, x.sub(w), x.add(w)):
        assert isinstance(out, AutogradTensor) and out.requires_grad
    (x * w).sum().backward()
    assert torch.allclose(decode(w.grad), A, atol=2e-3)


def test_in_place_operators_rebind(parties):
    """`x_fp += w` (FixedPrecisionTensor x, AutogradTensor w) rebinds x to the tracked sum."""
    x = A.fix_precision()
    w = AutogradTensor(B.fix_precision(), requires_grad=True)
    x += w
    assert isinstance(x, AutogradTensor) and x.requires_grad
    x *= 2
    x.sum().backward()
    assert torch.equal(decode(w.grad), torch.full((2, 2), 2.0))


@pytest.mark.parametrize("divisor", [torch.tensor([[1.0, 0.0], [2.0, 3.0]]), 0],
                         ids=["tensor", "int"])
def test_division_by_public_zero_is_refused(divisor):
    w = AutogradTensor(A.fix_precision(), requires_grad=True)
    with pytest.raises(ValueError, match="by zero"):
        w / divisor


def test_division_by_a_complex_or_bool_tensor_is_refused():
    w = AutogradTensor(A.fix_precision(), requires_grad=True)
    with pytest.raises(ValueError, match="real tensors and fixed-precision values"):
        w / torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="real tensors and fixed-precision values"):
        w / "2"


FUNCTIONS = {"torch.add": torch.add, "torch.sub": torch.sub, "torch.mul": torch.mul,
             "torch.matmul": torch.matmul, "torch.div": torch.div, "torch.lt": torch.lt,
             "torch.eq": torch.eq}


@pytest.mark.parametrize("first", ["fp", "fp_shared", "float", "int_tensor"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_torch_functions_with_the_autograd_tensor_second(name, first, parties):
    """torch.mul(x_fp, w), torch.add(t, w), ...: the first operand becomes a constant of w's
    graph."""
    fn = FUNCTIONS[name]
    w = make("ag_shared", B, parties)
    out = fn(make(first, A, parties), w)
    want = fn(plain(first, A).float(), B)
    assert isinstance(out, AutogradTensor)
    assert out.requires_grad == (name not in ("torch.lt", "torch.eq"))
    atol = 2e-2 if name == "torch.div" else 5e-3
    assert torch.allclose(decode(out), want.float(), atol=atol)


def test_a_complex_first_operand_is_refused(parties):
    w = make("ag", B, parties)
    with pytest.raises(TypeError, match="real \\(float or integer\\) tensor"):
        torch.mul(torch.ones(2, 2, dtype=torch.complex64), w)


def test_a_fixed_precision_method_without_lifting_names_the_fix(parties):
    """FixedPrecisionTensor methods other than the operators' (conv2d here) do not hand an
    AutogradTensor operand over: TypeError saying what to do (F.conv2d(x_fp, w) works)."""
    x = torch.randn(1, 1, 4, 4).fix_precision()
    w = AutogradTensor(torch.randn(1, 1, 3, 3).fix_precision(), requires_grad=True)
    with pytest.raises(TypeError, match="put the AutogradTensor first"):
        x.conv2d(w)
    out = torch.nn.functional.conv2d(x, w)
    assert isinstance(out, AutogradTensor) and out.requires_grad
