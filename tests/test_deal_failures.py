"""A deal that fails or stalls leaves no primitive share behind (fedmq/smpc/provider.py).

The coordinator's `PrimitiveStore.deal_now` sends a DealRequest to the crypto provider, which
sends every party its shares and waits for them. Found by review: a provider that stalled past
the coordinator's timeout, and then carried out the stale request, left shares on the parties
that nobody owned (F1); a party killed mid-deal left the other parties' shares, and its own
queued ones once it restarted, unowned (F2); a party refusing its shares (its quota) left the
others' shares and its own recorded failures; one DealRequest could make far more than the
principal's room on the provider. In-process cases first, then real `fedmq worker` services
over RabbitMQ stalled (SIGSTOP) and killed (SIGKILL).
"""
from __future__ import annotations

import re
import signal
import time

import pytest
import torch

import fedmq
from fedmq import errors, messages as m
from fedmq.ids import new_id
from fedmq.policy import ANYONE, ROLES, Policy
from fedmq.smpc.messages import Deal, DealRequest
from fedmq.smpc.provider import DealTimeout, MAX_ELEMENTS, primitive_store
from worker_procs import wait_until


def _stores(*workers):
    return [sorted(w._objects) for w in workers]


@pytest.fixture
def trio(hook):
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    provider = fedmq.VirtualWorker(hook, id="james")
    return bob, alice, provider


def guest_policy(**limits_) -> Policy:
    """Everything granted, but the in-process client is a principal with a quota."""
    return Policy(owner="owner", grants={role: {ANYONE} for role in ROLES}, release="all",
                  **limits_)


# -- in-process ----------------------------------------------------------------------------------

def test_a_deal_still_works_and_its_shares_are_owned(trio):
    bob, alice, provider = trio
    a, b, c = primitive_store(provider).deal_now(provider, [bob, alice],
                                                 [("mul", {"a": [3], "b": [3]})])[0]
    assert len(bob._objects) == len(alice._objects) == 3
    va, vb, vc = (sum(p.get() for p in ptrs) for ptrs in (a, b, c))
    assert torch.equal(va * vb, vc)
    assert _stores(bob, alice) == [[], []]


def test_found_by_review_a_deal_whose_reply_is_lost_leaves_no_share(trio, monkeypatch):
    """F1 in-process: the provider dealt (every share in place) but its answer came after the
    coordinator's timeout: deal_now deletes every id it chose and says who was slow."""
    bob, alice, provider = trio
    call = type(provider).call

    def reply_lost(self, message, **kwargs):
        value = call(self, message, **kwargs)
        if isinstance(message, DealRequest):
            assert len(bob._objects) == len(alice._objects) == 3  # the shares were stored
            raise errors.ReplyTimeout("worker 'james' did not answer DealRequest within 1 s")
        return value
    monkeypatch.setattr(type(provider), "call", reply_lost)
    with pytest.raises(errors.ReplyTimeout) as caught:
        primitive_store(provider).deal_now(provider, [bob, alice],
                                           [("mul", {"a": [3], "b": [3]})])
    assert _stores(bob, alice) == [[], []]  # the leak first, then what the error says
    assert type(caught.value) is DealTimeout
    assert re.search("the crypto provider 'james' deals primitives.*busy and had not got to "
                     "it, or finished just then.*no share is left behind", str(caught.value))


def test_a_deal_cancelled_before_it_runs_stores_nothing(trio):
    bob, alice, provider = trio
    msg_id = new_id()
    assert provider.call(m.Cancel(msg_id)) is False  # not running: refused when it comes
    deal = Deal("trunc", ["bob", "alice"], [[new_id(), new_id()], [new_id(), new_id()]],
                {"shape": [4], "divisor": 1000})
    with pytest.raises(errors.RemoteError, match="cancelled by its sender before it ran"):
        provider.call(DealRequest([deal]), msg_id=msg_id)
    assert _stores(bob, alice) == [[], []]


def test_found_by_review_a_deal_cancelled_while_a_party_is_slow_is_taken_back(
        trio, monkeypatch):
    """The coordinator's Cancel comes while the provider waits for a slow party, which took its
    shares: the provider deletes them on every party."""
    from fedmq.smpc import provider as provider_mod
    bob, alice, provider = trio
    msg_id = new_id()
    send = provider_mod.call_all

    def slow_party(calls, **kwargs):
        out = send(calls, **kwargs)
        assert len(bob._objects) == len(alice._objects) == 2  # both took their shares
        assert provider.worker.cancel(provider.engine.transport.principal, msg_id) is True
        return out
    monkeypatch.setattr(provider_mod, "call_all", slow_party)
    deal = Deal("trunc", ["bob", "alice"], [[new_id(), new_id()], [new_id(), new_id()]],
                {"shape": [4], "divisor": 1000})
    with pytest.raises(errors.RemoteError, match="cancelled by its sender"):
        provider.call(DealRequest([deal]), msg_id=msg_id)
    assert _stores(bob, alice) == [[], []]


def test_found_by_review_a_party_that_refuses_its_shares_leaves_none_anywhere(trio):
    """alice's quota refuses her shares: bob's (stored already) and alice's recorded failures
    were left behind; the provider now deletes every id on every party and names alice."""
    bob, alice, provider = trio
    alice.worker.policy = guest_policy(max_bytes=1000)
    with pytest.raises(errors.QuotaExceededError) as caught:
        primitive_store(provider).deal_now(provider, [bob, alice],
                                           [("mul", {"a": [100], "b": [100]})])
    assert _stores(bob, alice) == [[], []]
    assert re.search("could not deal to party 'alice'.*quota.*deleted every share",
                     str(caught.value)), caught.value
    alice.worker.policy = Policy.open()  # both still serve
    primitive_store(provider).deal_now(provider, [bob, alice], [("bit", {"shape": [5]})])


def test_a_deal_to_an_unknown_party_stores_nothing_and_names_it(trio):
    bob, alice, provider = trio
    deal = Deal("bit", ["bob", "nobody"], [[new_id(), new_id()], [new_id(), new_id()]],
                {"shape": [4]})
    with pytest.raises(errors.RemoteError) as caught:
        provider.call(DealRequest([deal]))
    assert _stores(bob, alice) == [[], []]
    assert re.search("could not deal to.*'nobody'", str(caught.value)), caught.value


def test_found_by_review_one_deal_request_cannot_pass_the_room_on_the_provider(trio):
    """Before anything is generated: the principal's room on the provider bounds what one
    request makes (every primitive in the clear and every party's shares), and a triple's
    product (a broadcast) is bounded like its operands."""
    bob, alice, provider = trio
    provider.worker.policy = guest_policy(max_bytes=1 << 20)
    store = primitive_store(provider)
    store.deal_now(provider, [bob, alice], [("trunc", {"shape": [1000], "divisor": 10})])
    with pytest.raises(errors.QuotaExceededError, match="makes 4800000 bytes.*'james'.*"
                       "deal fewer primitives at once"):
        store.deal_now(provider, [bob, alice], [("trunc", {"shape": [1000], "divisor": 10})]
                       * 100)
    provider.worker.policy = Policy.open()
    side = 1 << 14  # operands of 16 Ki elements, a product of 256 Mi
    with pytest.raises(errors.RemoteError, match=f"at most {MAX_ELEMENTS} elements"):
        store.deal_now(provider, [bob, alice], [("mul", {"a": [side, 1], "b": [1, side]})])
    assert _stores(bob, alice) == [[], []]


# -- worker services over RabbitMQ ---------------------------------------------------------------

IDS = ("df_bob", "df_alice", "df_provider")


@pytest.fixture(scope="module")
def services(worker_processes):
    with worker_processes.running(*IDS):
        yield worker_processes


def _clients(hook, timeout):
    from worker_procs import AMQP_URL
    workers = [fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=timeout) for i in IDS]
    for w in workers:
        w.clear_objects()
    return workers


def _counts(*workers):
    return [w.objects_count() for w in workers]


WANTED = [("mul", {"a": [50, 50], "b": [50, 50]}), ("trunc", {"shape": [50], "divisor": 1000})]


@pytest.mark.amqp
@pytest.mark.slow  # ~15 s: one timeout
def test_found_by_review_a_stalled_provider_leaves_no_share_when_it_resumes(hook, services):
    """F1: the provider stalls (SIGSTOP) past the coordinator's timeout and carries out the
    stale DealRequest when it runs again: its shares were left on the parties for ever."""
    bob, alice, provider = _clients(hook, 4)
    store = primitive_store(provider)
    proc = services.procs["df_provider"]
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(errors.ReplyTimeout) as caught:
            store.deal_now(provider, [bob, alice], WANTED)
    finally:
        proc.send_signal(signal.SIGCONT)
    time.sleep(3)  # the provider has run again: whatever it did, nothing stays
    assert wait_until(lambda: _counts(bob, alice) == [0, 0], 10), _counts(bob, alice)
    assert type(caught.value) is DealTimeout
    message = str(caught.value)
    assert "the crypto provider 'df_provider' itself does not answer" in message, message
    assert "no share is left behind" in message
    a, b, c = store.deal_now(provider, [bob, alice], WANTED[:1])[0]  # all still serve
    assert torch.equal(sum(p.get() for p in a) * sum(p.get() for p in b),
                       sum(p.get() for p in c))
    assert _counts(bob, alice) == [0, 0]


@pytest.mark.amqp
@pytest.mark.slow  # ~20 s: a stall, a kill and a restart
def test_found_by_review_a_party_killed_mid_deal_leaves_no_share_anywhere(hook, services):
    """F2: alice is stalled while the provider sends her her shares, then killed; bob's shares
    were left, and alice's queued ones were stored for ever once she restarted."""
    bob, alice, provider = _clients(hook, 6)
    store = primitive_store(provider)
    proc = services.procs["df_alice"]
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises((errors.RemoteError, errors.ReplyTimeout)) as caught:
            store.deal_now(provider, [bob, alice], WANTED)
    finally:
        services.kill("df_alice")
    assert wait_until(lambda: bob.objects_count() == 0, 10), bob.objects_count()
    services.start("df_alice", fresh=False)  # its queue kept the shares, and the deletes
    assert wait_until(lambda: _counts(bob, alice) == [0, 0], 15), _counts(bob, alice)
    time.sleep(1)
    assert _counts(bob, alice) == [0, 0]
    message = str(caught.value)
    assert "df_alice" in message, message
    assert "deleted every share" in message or "no share is left behind" in message, message
    dealt = store.deal_now(provider, [bob, alice], WANTED)  # all serve again
    assert _counts(bob, alice) == [5, 5]
    del dealt


@pytest.mark.amqp
@pytest.mark.slow  # ~15 s: a timeout, a kill and a restart
def test_found_by_review_a_provider_restarted_after_the_give_up_deals_nothing(hook, services):
    """The provider is killed; a deal fails (nobody consumes its queue) and the caller deletes
    every id on the parties; the provider is restarted under the same id: its durable queue
    still held the DealRequest, which the new process dealt (60 objects left on each party
    in the review's run). The request now expires with the caller's wait."""
    bob, alice, provider = _clients(hook, 4)
    store = primitive_store(provider)
    services.kill("df_provider")
    with pytest.raises((DealTimeout, errors.WorkerNotFoundError, errors.ReplyTimeout)):
        store.deal_now(provider, [bob, alice], WANTED)
    time.sleep(4.5)  # past the caller's 4 s wait: the request has expired
    services.start("df_provider", fresh=False)  # the same queue, with what it still holds
    time.sleep(2)
    assert _counts(bob, alice) == [0, 0]
    dealt = store.deal_now(provider, [bob, alice], WANTED)  # it serves again
    assert _counts(bob, alice) == [5, 5]
    del dealt
