"""Additive sharing (priority 2): shares, refusals, uniformity, linear ops, where data goes."""
from __future__ import annotations

import pytest
import torch

import fedmq
from fedmq import messages as m, serde
from fedmq.smpc import AdditiveSharingTensor
from fedmq.smpc.messages import DealRequest
from smpc_helpers import make_parties


@pytest.fixture
def parties(hook):
    return make_parties(hook)


def test_share_get_roundtrip_2_to_5_parties(parties):
    workers, provider = parties
    x = torch.tensor([[25, -3], [2 ** 40, -(2 ** 62)]])
    for n in range(2, 6):
        shared = x.share(*workers[:n], crypto_provider=provider)
        assert isinstance(shared, AdditiveSharingTensor) and shared.child.field == 2 ** 64
        assert [s.location.id for s in shared.shares] == [w.id for w in workers[:n]]
        for w in workers[:n]:  # each share is an object in its worker's store
            assert len(w._objects) == 1
        assert torch.equal(shared.get(), x)
        assert all(len(w._objects) == 0 for w in workers)  # .get() deleted the shares


def test_refusals_say_what_to_do(parties):
    workers, provider = parties
    with pytest.raises(ValueError, match=r"fix_precision\(\)\.share"):
        torch.tensor([1.5]).share(*workers[:2])
    with pytest.raises(ValueError, match="must not be one of the share holders"):
        torch.tensor([1]).share(workers[0], workers[1], crypto_provider=workers[1])
    with pytest.raises(ValueError, match="2 to 5"):
        torch.tensor([1]).share(workers[0])
    with pytest.raises(ValueError, match="must not be the local worker"):
        torch.tensor([1]).share(*workers[:2], crypto_provider=fedmq.local_worker)
    x = torch.tensor([3]).share(*workers[:2])
    with pytest.raises(ValueError, match="crypto provider"):
        x * x
    with pytest.raises(ValueError, match="secret"):
        bool(x)


def _bits(values: torch.Tensor) -> torch.Tensor:
    """(n, 64) matrix of the bits of int64 values."""
    shifts = torch.arange(64)
    return (values.unsqueeze(1) >> shifts) & 1


@pytest.mark.parametrize("n_parties", [2, 3, 5])
def test_each_share_is_uniform(parties, n_parties):
    """Every single share looks uniform, whatever the secret: each of its 64 bits is set about
    half the time, and it is not the secret (a constant or the secret itself would fail)."""
    workers, _ = parties
    samples = 4000
    for secret in (torch.zeros(samples, dtype=torch.long),
                   torch.full((samples,), 25, dtype=torch.long)):
        shared = secret.share(*workers[:n_parties])
        for p, ptr in enumerate(shared.shares):
            share = ptr.copy().get()
            assert not torch.equal(share, secret)
            freq = _bits(share).float().mean(0)
            # 4000 fair bits: sd 0.0079; 0.06 is 7.5 sd (the test never fails by chance)
            assert float((freq - 0.5).abs().max()) < 0.06, (p, freq)
            assert share.unique().numel() > samples - 5  # not a constant, no repeats
        assert torch.equal(shared.get(), secret)


def test_linear_ops_are_local_and_exact(parties):
    workers, _ = parties
    torch.manual_seed(3)
    a, b = torch.randint(-10**6, 10**6, (3, 4)), torch.randint(-10**6, 10**6, (3, 4))
    for n in (2, 3, 5):
        sa, sb = a.share(*workers[:n]), b.share(*workers[:n])
        before = [w.message_count for w in workers[:n]]
        results = {
            "add": (sa + sb, a + b), "sub": (sa - sb, a - b), "neg": (-sa, -a),
            "add_int": (sa + 7, a + 7), "rsub": (7 - sa, 7 - a), "mul_int": (sa * -3, a * -3),
            "add_pub": (sa + b, a + b), "mul_pub": (sa * b, a * b),
            "matmul_pub": (sa @ b.t(), a @ b.t()), "sum": (sa.sum(), a.sum()),
            "sum0": (sa.sum(0), a.sum(0)), "t": (sa.t(), a.t()), "slice": (sa[1:, ::2], a[1:, ::2]),
            "reshape": (sa.reshape(4, 3), a.reshape(4, 3)),
        }
        # linear ops need no crypto provider and are buffered: nothing was sent yet
        assert [w.message_count for w in workers[:n]] == before
        for name, (shared, plain) in results.items():
            assert torch.equal(shared.get(), plain), name


def test_triples_never_pass_through_the_coordinator(parties, monkeypatch):
    """The coordinator ("me") sends a DealRequest to the provider; the provider, not the
    coordinator, stores the triple shares on each party, and the coordinator never asks a
    party for one of them (it only opens eps and delta)."""
    workers, provider = parties
    seen: list = []
    transport = provider.engine.transport  # every in-process worker of the hook: one transport
    assert all(w.engine.transport is transport for w in workers[:3])
    original = transport.send

    def spy(worker_id, frame, **options):
        seen.append((worker_id, serde.decode(frame)))
        return original(worker_id, frame, **options)
    monkeypatch.setattr(transport, "send", spy)

    x = torch.tensor([[1, 2], [3, 4]]).share(*workers[:3], crypto_provider=provider)
    y = torch.tensor([[5, 6], [7, 8]]).share(*workers[:3], crypto_provider=provider)
    assert torch.equal((x * y).get(), torch.tensor([[5, 12], [21, 32]]))

    deals = [env.message for _, env in seen if isinstance(env.message, DealRequest)]
    assert len(deals) == 1 and all(env.sender == "me" for _, env in seen
                                   if isinstance(env.message, DealRequest))
    triple_ids = {i for deal in deals[0].deals for ids in deal.ids for i in ids}
    for worker_id, env in seen:
        msg = env.message
        if isinstance(msg, m.ObjectMessage):
            ids = {o.id for o in msg.objects}
            if ids & triple_ids:
                assert env.sender == "crypto_provider" and worker_id != "me"
            else:
                assert env.sender == "me"
        if isinstance(msg, m.GetRequest) and env.sender == "me":
            assert not set(msg.ids) & triple_ids
    # every party got exactly its own shares, from the provider, in one message
    from_provider = [(wid, env.message) for wid, env in seen if env.sender == "crypto_provider"]
    assert sorted(wid for wid, _ in from_provider) == ["alice", "bill", "bob"]


def test_protocols_leave_no_intermediate_objects(parties):
    """Masks, triples, openings and partial results are deleted (PySyft leaked them, M1)."""
    workers, provider = parties
    trio = workers[:3]
    x = torch.tensor([1.5, -2.0]).fix_prec().share(*trio, crypto_provider=provider)
    y = torch.tensor([0.5, 3.0]).fix_prec().share(*trio, crypto_provider=provider)
    for op in (lambda: x * y, lambda: x > y, lambda: x.relu(), lambda: x.max(),
               lambda: x.max(dim=0), lambda: x == y, lambda: x.reshape(2, 1) @ y.reshape(1, 2),
               lambda: x.mean()):
        result = op()
        del result
    for w in trio:
        w.flush()
    assert [len(w._objects) for w in trio] == [2, 2, 2]  # x's and y's shares only
    assert len(provider._objects) == 0


def test_manual_reconstruction_modulo_field(parties):
    """§9.3: `(s0 + s1 + s2) % x.child.field` is the secret (the int64 sum already wraps
    modulo 2**64; the field is an int 2**64 for which `int64_tensor % field` is that element)."""
    workers, provider = parties
    secret = torch.tensor([25, -7, 0, 2 ** 62, -(2 ** 63)])
    x = secret.share(*workers[:3])
    field = x.child.field
    assert field == 2 ** 64 and isinstance(field, int) and field - 1 == 2 ** 64 - 1
    s0, s1, s2 = (list(w._objects.values())[0] for w in workers[:3])
    assert torch.equal((s0 + s1 + s2) % field, secret)
    assert torch.equal(torch.remainder(s0 + s1 + s2, x.child.field), secret)
    assert 25 % field == 25 and (-7) % field == 2 ** 64 - 7  # Python ints: exact
    fp = torch.tensor([1.5]).fix_precision()
    assert fp.field == 2 ** 64 and torch.equal(fp.child % fp.field, fp.child)
    with pytest.raises(ValueError, match=r"only `int64_tensor % field` is defined"):
        s0 + field
    with pytest.raises(ValueError, match="integer tensor"):
        torch.tensor([1.5]) % field


def test_reflected_operators_with_a_plain_tensor_on_the_left(parties):
    workers, provider = parties
    x = torch.tensor([[3, -2], [0, 7]])
    t = torch.tensor([[1, 5], [-4, 2]])
    shared = x.share(*workers[:2], crypto_provider=provider)
    assert torch.equal((t + shared).get(), t + x)
    assert torch.equal((t - shared).get(), t - x)
    assert torch.equal((t * shared).get(), t * x)
    assert torch.equal((t @ shared).get(), t @ x)
    assert torch.equal(torch.sub(t, shared).get(), t - x)
    for op in ("lt", "gt", "le", "ge", "eq", "ne"):
        got = getattr(t, op)(shared).get()
        assert torch.equal(got, getattr(t, op)(x).long()), op
    assert torch.equal((t < shared).get(), (t < x).long())
    with pytest.raises(ValueError, match="divided by a shared integer tensor"):
        t / shared


def test_found_by_review_true_division_of_integer_shares_is_refused(parties):
    """`x.share(...) / 2` returned random integers (floor or one more: [1, -2, 3, 0, -1, 2]
    one run, [2, -2, 4, 1, 0, 3] the next) where torch gives 1.5, -2, 3.5, ...: now a
    TypeError naming fix_precision() and //; x // d stays within 1 unit of floor(x / d)."""
    workers, provider = parties
    x = torch.tensor([3, -4, 7, 1, -1, 5, 1000, -999])
    shared = x.share(*workers[:2], crypto_provider=provider)
    with pytest.raises(TypeError, match=r"fix_precision\(\).*//"):
        shared / 2
    for d in (2, 3, 7):
        got = (x.share(*workers[:2], crypto_provider=provider) // d).get()
        assert ((got - torch.div(x, d, rounding_mode="floor")).abs() <= 1).all(), (d, got)
    got = (x.float().fix_precision().share(*workers[:2], crypto_provider=provider) / 2)
    assert torch.allclose(got.get().float_precision(), x / 2)
    # the mean of integer shares lost its fraction the same way ([7, -7, 100, -1] -> 25)
    with pytest.raises(TypeError, match=r"fix_precision\(\)"):
        x.share(*workers[:2], crypto_provider=provider).mean()
    with pytest.raises(TypeError, match=r"fix_precision\(\)"):
        torch.mean(x.share(*workers[:2], crypto_provider=provider))
    fixed = x.float().fix_precision().share(*workers[:2], crypto_provider=provider)
    assert abs(fixed.mean().get().float_precision().item() - x.float().mean().item()) < 1e-3


def test_found_by_review_clear_errors_for_huge_divisors_and_pointer_arithmetic(hook, parties):
    """x / 10**30 on shares raised the crypto provider's internal message; `ptr * 0.5` on a
    pointer to a shared value a bare 'unsupported operand'."""
    workers, provider = parties
    shared = torch.tensor([5, -3]).share(*workers[:2], crypto_provider=provider)
    with pytest.raises(ValueError, match=r"below 2\*\*62"):
        shared // 10 ** 30
    holder = fedmq.VirtualWorker(hook, id="holder")
    ptr = torch.tensor([1.5]).send(holder).fix_precision().share(
        *workers[:2], crypto_provider=provider)
    for op in (lambda p: p * 0.5, lambda p: 0.5 * p, lambda p: p + p, lambda p: p @ p,
               lambda p: p / 2, lambda p: -p, lambda p: p > 0):
        with pytest.raises(TypeError, match=r"\.get\(\) it first"):
            op(ptr)
    assert abs(ptr.get().get().float_precision().item() - 1.5) < 1e-3
