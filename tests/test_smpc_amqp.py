"""SMPC with the shares held by real worker services over RabbitMQ (`fedmq worker` processes
bob and alice as the parties, secure_worker as the crypto provider): sharing, linear ops,
Beaver products, truncation, comparisons and max, against plaintext; the provider deals to the
parties directly (worker to worker through the broker); bad SMPC input is refused and the
workers keep serving."""
from __future__ import annotations

import pytest
import torch

import fedmq
from fedmq.errors import RemoteError
from fedmq.smpc.comparison import comparison_primitives
from fedmq.smpc.messages import Deal, DealRequest, LocalStep
from fedmq.smpc.provider import primitive_store
from smpc_helpers import assert_rescaled
from worker_procs import AMQP_URL, delete_queue

pytestmark = pytest.mark.amqp


@pytest.fixture
def parties(hook, worker_processes):
    bob, alice, provider = (fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=60)
                            for i in ("bob", "alice", "secure_worker"))
    for worker in (bob, alice, provider):
        worker.clear_objects()
    yield bob, alice, provider
    primitive_store(provider).clear()


def share(t, parties):
    bob, alice, provider = parties
    return t.share(bob, alice, crypto_provider=provider)


def test_shares_live_on_the_worker_services(parties):
    bob, alice, _ = parties
    x = share(torch.tensor([25, -7]), parties)
    bob_share = list(bob._objects.values())
    alice_share = list(alice._objects.values())
    assert len(bob_share) == len(alice_share) == 1
    assert not torch.equal(bob_share[0], torch.tensor([25, -7]))  # a share, not the secret
    assert torch.equal(bob_share[0] + alice_share[0], torch.tensor([25, -7]))
    assert torch.equal(x.get(), torch.tensor([25, -7]))
    assert bob.objects_count() == alice.objects_count() == 0  # get() deleted the shares


def test_linear_ops(parties):
    a, b = torch.tensor([25, 3, -4]), torch.tensor([5, -9, 11])
    x, y = share(a, parties), share(b, parties)
    assert torch.equal((x + y).get(), a + b)
    assert torch.equal((x - y).get(), a - b)
    assert torch.equal((x * 3).get(), a * 3)
    assert torch.equal((x + 10).get(), a + 10)
    assert torch.equal(x.sum().get(), a.sum())


def test_beaver_products_with_triples_dealt_by_the_provider_service(parties):
    _, _, provider = parties
    a, b = torch.tensor([25, -3, 7]), torch.tensor([5, 4, -2])
    before = provider.message_count
    assert torch.equal((share(a, parties) * share(b, parties)).get(), a * b)
    assert provider.message_count == before + 1  # one DealRequest for the triple
    ma, mb = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[2, 0], [0, 2]])
    assert torch.equal(share(ma, parties).mm(share(mb, parties)).get(), ma @ mb)


def test_fixed_point_mul_and_matmul_rescale(parties):
    torch.manual_seed(0)
    a, b = torch.randn(6, 5), torch.randn(5, 4)
    fa, fb = a.fix_prec(), b.fix_prec()
    sa, sb = share(a.fix_prec(), parties), share(b.fix_prec(), parties)
    assert_rescaled((sa @ sb).get().child, fa.child @ fb.child, 1000)
    c = torch.randn(6, 5)
    sc = share(c.fix_prec(), parties)
    assert_rescaled((sa * sc).get().child, fa.child * c.fix_prec().child, 1000)
    assert torch.allclose((sa * sc).get().float_prec(), a * c, atol=0.01)


def test_comparisons_relu_and_abs(parties):
    torch.manual_seed(1)
    a, b = torch.randint(-1000, 1000, (20,)), torch.randint(-1000, 1000, (20,))
    b[:3] = a[:3]
    x, y = share(a, parties), share(b, parties)
    assert torch.equal((x > y).get(), (a > b).long())
    assert torch.equal((x <= y).get(), (a <= b).long())
    assert torch.equal((x == y).get(), (a == b).long())
    assert torch.equal(x.relu().get(), a.clamp(min=0))
    assert torch.equal(x.abs().get(), a.abs())


def test_max_argmax_min(parties):
    torch.manual_seed(2)
    a = torch.randint(-500, 500, (3, 5))
    x = share(a, parties)
    assert x.max().get().tolist() == [int(a.max())]
    assert x.min().get().tolist() == [int(a.min())]
    for dim in (0, 1):
        for keepdim in (False, True):
            values, indices = x.max(dim=dim, keepdim=keepdim)
            ref = a.max(dim=dim, keepdim=keepdim)
            assert torch.equal(values.get(), ref.values)
            assert torch.equal(indices.get(), ref.indices)
    assert torch.equal(x.argmax(dim=1, keepdim=True).get(), a.argmax(dim=1, keepdim=True))


def test_preprocessing_keeps_the_provider_out_of_the_online_phase(parties):
    bob, alice, provider = parties
    shape = [8]
    primitive_store(provider).provide(provider, [bob, alice], "mul", {"a": shape, "b": shape})
    for kind, params in comparison_primitives(shape):
        primitive_store(provider).provide(provider, [bob, alice], kind, params)
    a, b = torch.arange(8) - 3, torch.arange(8, 0, -1)
    x, y = share(a, parties), share(b, parties)
    before = provider.message_count
    z, w = x * y, x > y
    assert torch.equal(z.get(), a * b)
    assert torch.equal(w.get(), (a > b).long())
    assert provider.message_count == before  # nothing dealt online


def test_bad_smpc_input_is_refused_and_the_services_keep_serving(parties):
    bob, alice, provider = parties
    with pytest.raises(RemoteError, match="unknown SMPC step"):
        bob.call(LocalStep("os.system", ["true"], []))
    with pytest.raises(RemoteError, match="no Beaver product"):
        bob.call(LocalStep("beaver_finish", ["exec", None, None, None, None, None, True, None,
                                             None], []))
    with pytest.raises(RemoteError, match="cannot hold shares"):
        provider.call(DealRequest([Deal("mul", ["bob", "secure_worker"], [[1, 2, 3], [4, 5, 6]],
                                        {"a": [2], "b": [2]})]))
    with pytest.raises(RemoteError, match="at most"):
        provider.call(DealRequest([Deal("and", ["bob", "alice"], [[1, 2, 3], [4, 5, 6]],
                                        {"shape": [1 << 14, 1 << 14]})]))
    a = torch.tensor([4, -5])
    assert torch.equal((share(a, parties) * share(a, parties)).get(), a * a)


def test_call_all_answers_in_order_and_raises_after_every_reply(parties):
    """One round of a protocol: every party's message goes out before any reply is awaited."""
    from fedmq import messages as m
    from fedmq.client import call_all
    bob, alice, _ = parties
    x, y = torch.tensor([1, 2]).send(bob), torch.tensor([3]).send(alice)
    got = call_all([(alice, m.GetRequest([y.id_at_location], delete=False)),
                    (bob, m.GetRequest([x.id_at_location], delete=False))])
    assert [v[0].tolist() for v in got] == [[3], [1, 2]]
    with pytest.raises(RemoteError, match="unknown SMPC step"):
        call_all([(bob, LocalStep("nope", [], [])),
                  (alice, m.GetRequest([y.id_at_location], delete=True))])
    y._disown()
    assert alice.objects_count() == 0  # alice's message was carried out all the same
    assert torch.equal(x.get(), torch.tensor([1, 2]))


@pytest.fixture(scope="module")
def dealer_service(worker_processes):
    """A fourth service, so that bob, alice and secure_worker can all be parties."""
    worker_processes.start("smpc_dealer")
    yield "smpc_dealer"
    worker_processes.stop("smpc_dealer")
    delete_queue("fedmq.worker.smpc_dealer")


def test_three_services_fixed_point_products_conv2d_and_comparison(hook, dealer_service):
    import torch.nn.functional as F
    trio = [fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=60)
            for i in ("bob", "alice", "secure_worker")]
    dealer = fedmq.AMQPClientWorker(hook, id=dealer_service, url=AMQP_URL, timeout=60)
    for worker in trio:
        worker.clear_objects()
    torch.manual_seed(3)
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    sa = a.fix_prec().share(*trio, crypto_provider=dealer)
    sb = b.fix_prec().share(*trio, crypto_provider=dealer)
    assert_rescaled((sa @ sb).get().child, a.fix_prec().child @ b.fix_prec().child, 1000)
    assert_rescaled((sa * sa).get().child, a.fix_prec().child ** 2, 1000)
    assert torch.equal((sa > 0).get().child, (a.fix_prec().child > 0).long() * 1000)
    x, w = torch.randint(-50, 50, (1, 2, 5, 5)), torch.randint(-5, 5, (3, 2, 3, 3))
    sx = x.share(*trio, crypto_provider=dealer)
    sw = w.share(*trio, crypto_provider=dealer)
    assert torch.equal(F.conv2d(sx, sw, padding=1).get(), F.conv2d(x, w, padding=1))
    for shared in (sa, sb, sx, sw):
        shared.get()
    assert [p.objects_count() for p in trio] == [0, 0, 0]  # nothing left behind
    primitive_store(dealer).clear()
