"""Pointers to encrypted values (fedmq/smpc/remote.py): `ptr.fix_precision()` encodes where the
value lives, `ptr.share(...)` has the holder split it and send each party its share, the
client never sees a share, `.get()` on the pointer to a shared value is the shared value; bad
requests and the trust boundary (a stranger, a non-peer party, release none); and the seed's
§10.2 secure aggregation (tests/seed/s10_2_secure_aggregation.py) with only the import
changed.

Tests taking `bob`/`alice`/`provider` run twice (the `transport` fixture): in-process, and
against the `fedmq worker` services bob, alice and secure_worker over RabbitMQ.
"""
from __future__ import annotations

import contextlib
import gc
import io
import re
import time

import pytest
import torch

import fedmq
from fedmq import engine as engine_mod, errors, messages as m, principals
from fedmq.ids import new_id
from fedmq.policy import Policy
from fedmq.smpc import AdditiveSharingTensor, FixedPrecisionTensor
from fedmq.smpc.messages import ShareRequest
from fedmq.smpc.remote import FixedPrecisionPointer, SharedPointer
from listings import SEED_DIR
from worker_procs import delete_queue, wait_until


@pytest.fixture
def provider(hook, worker_factory):
    if worker_factory is None:
        return fedmq.VirtualWorker(hook, id="secure_worker")
    return worker_factory(hook, id="secure_worker")


# -- instrumentation: what the client sends and receives ------------------------------------------

class ClientTraffic:
    """Every message this process's clients encode and every reply they decode (not what
    in-process workers send each other while handling a message)."""

    def __init__(self) -> None:
        self.sent: list = []
        self.replies: list = []

    @contextlib.contextmanager
    def watching(self, monkeypatch):
        encode, decode = engine_mod.RequestEngine.encode, engine_mod.decode_reply

        def spy_encode(message, **kwargs):
            if principals.current() is None:
                self.sent.append(message)
            return encode(message, **kwargs)

        def spy_decode(frame, worker_id):
            reply = decode(frame, worker_id)
            if principals.current() is None:
                self.replies.append(reply)
            return reply

        monkeypatch.setattr(engine_mod.RequestEngine, "encode", staticmethod(spy_encode))
        monkeypatch.setattr(engine_mod, "decode_reply", spy_decode)
        yield self
        monkeypatch.undo()

    def messages(self) -> list:
        out = []
        for msg in self.sent:
            out.extend(msg.messages if type(msg) is m.Batch else [msg])
        return out

    def share_ids(self) -> set:
        return {i for msg in self.messages() if type(msg) is ShareRequest for i in msg.ids}

    def fetched_ids(self) -> set:
        return {i for msg in self.messages() if type(msg) is m.GetRequest for i in msg.ids}

    def assert_never_saw_a_share(self) -> None:
        """No share the holders made was ever asked for (a GetRequest is the only message that
        brings stored values back; nothing listed the stores), and the client sent no object."""
        kinds = {type(msg) for msg in self.messages()}
        assert not kinds & {m.ListObjects, m.SearchRequest, m.ObjectMessage}, kinds
        shares = self.share_ids()
        assert shares, "no ShareRequest was sent"
        assert not shares & self.fetched_ids()
        for reply in self.replies:  # no reply to a ShareRequest carries anything
            assert reply.error is None, reply.error


# -- fix_precision where the value lives -----------------------------------------------------------

def test_fix_precision_of_a_pointer_is_encoded_by_its_worker(bob):
    x = torch.tensor([1.5, -2.25, 3.0001, 0.0])
    ptr = x.send(bob)
    fp = ptr.fix_precision()
    assert isinstance(fp, FixedPrecisionPointer)
    assert fp.location is bob and fp.shape == x.shape
    local = fp.get()
    assert isinstance(local, FixedPrecisionTensor)
    assert (local.base, local.precision_fractional) == (10, 3)
    assert torch.equal(local.child, x.fix_precision().child)
    assert torch.equal(local.float_precision(), torch.tensor([1.5, -2.25, 3.0, 0.0]))
    fp2 = ptr.fix_prec(base=2, precision_fractional=16)
    got = fp2.get()
    assert (got.base, got.precision_fractional) == (2, 16)
    assert torch.equal(got.child, x.fix_prec(base=2, precision_fractional=16).child)


def test_fix_precision_sends_nothing_back_and_float_precision_decodes_remotely(bob, hook,
                                                                             monkeypatch):
    x = torch.tensor([[0.125, -7.5], [2.0, 1e3]], dtype=torch.float64)
    ptr = x.send(bob)
    bob.flush()
    with ClientTraffic().watching(monkeypatch) as traffic:
        fp = ptr.fix_precision()
        decoded = fp.float_precision()  # a pointer: computed on bob
        bob.flush()
    # posted: no reply carries a value (over RabbitMQ posted messages are acknowledged)
    assert all(reply.value in (None, []) and reply.error is None for reply in traffic.replies)
    assert isinstance(decoded, fedmq.PointerTensor) and decoded.location is bob
    assert decoded.dtype == torch.float64
    assert torch.equal(decoded.get(), x)
    assert torch.equal(fp.copy().get().child, x.fix_precision().child)


def test_fix_precision_of_bad_values_fails_on_the_worker_at_the_next_use(bob):
    fp = torch.tensor([1.0, float("nan")]).send(bob).fix_precision()
    with pytest.raises(errors.RemoteError, match="NaN"):
        fp.get()
    fp = torch.tensor([1e17]).send(bob).fix_precision()
    with pytest.raises(errors.RemoteError, match="cannot be correctly embedded"):
        fp.get()
    ptr = torch.ones(2).send(bob)
    with pytest.raises(ValueError, match="base must be"):
        ptr.fix_precision(base=1)
    with pytest.raises(TypeError, match="dtype='int' is refused.*dtype=None or 'long' only"):
        ptr.fix_precision(dtype="int")
    with pytest.raises(TypeError, match="unexpected keyword argument 'precison_fractional'"):
        ptr.fix_precision(precison_fractional=5)
    with pytest.raises(ValueError, match="already in fixed precision"):
        ptr.fix_precision().fix_precision()
    assert torch.equal(ptr.get(), torch.ones(2))  # bob kept serving


def test_fixed_point_arithmetic_runs_on_the_worker_as_it_does_locally(bob, alice):
    torch.manual_seed(3)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    w = torch.randn(4, 2)
    a, b, c = (t.send(bob).fix_precision() for t in (x, y, w))
    fa, fb, fc = x.fix_precision(), y.fix_precision(), w.fix_precision()
    for remote, local in [(a + b, fa + fb), (a - b, fa - fb), (a * b, fa * fb), (-a, -fa),
                          (a * 3, fa * 3), (a * 0.25, fa * 0.25), (2.5 - a, 2.5 - fa),
                          (a @ c, fa @ fc), (a.sum(), fa.sum())]:
        assert isinstance(remote, FixedPrecisionPointer) and remote.location is bob
        assert torch.equal(remote.get().child, local.child)  # bit for bit the local result
    with pytest.raises(fedmq.PointerError, match="different workers"):
        (a + torch.ones(3, 4).send(alice).fix_precision()).get()
    with pytest.raises(TypeError, match="share it, or get\\(\\) it, first"):
        a + y
    with pytest.raises(ValueError, match="same base"):
        a + y.send(bob).fix_precision(precision_fractional=4)


def test_fix_precision_of_a_sent_parameter_and_after_a_deferred_get(bob, alice, provider):
    model = torch.nn.Linear(3, 2)
    weight = model.weight.detach().clone()
    model.send(bob)
    fp = model.weight.fix_precision()  # the parameter itself, on bob: encoded there
    assert isinstance(fp, FixedPrecisionPointer) and fp.location is bob
    assert torch.equal(fp.get().child, weight.fix_precision().child)
    with pytest.raises(ValueError, match="fix_precision"):
        model.weight.share(bob, alice, crypto_provider=provider)  # floats: encode first
    shared = model.bias.fix_precision().share(bob, alice, crypto_provider=provider).get()
    assert torch.allclose(shared.get().float_precision(), model.bias.copy().get(), atol=1e-3)
    model.get()  # deferred until someone looks: fix_precision looks, and encodes locally
    local = model.weight.fix_precision()
    assert type(local) is FixedPrecisionTensor
    assert torch.equal(local.child, weight.fix_precision().child)


# -- share where the value lives -----------------------------------------------------------------

def test_share_of_a_fixed_precision_pointer_is_the_locally_shared_value(bob, alice, provider):
    x = torch.tensor([0.5, -1.25, 3.0])
    shared_ptr = x.send(bob).fix_precision().share(bob, alice, crypto_provider=provider)
    assert isinstance(shared_ptr, SharedPointer) and shared_ptr.location is bob
    value = shared_ptr.get()
    local = x.fix_precision().share(bob, alice, crypto_provider=provider)
    for got in (value, local):  # the same structure as the local path's
        assert type(got) is FixedPrecisionTensor and type(got.child) is AdditiveSharingTensor
        assert [w.id for w in got.child.locations] == ["bob", "alice"]
        assert got.child.crypto_provider is provider
        assert (got.base, got.precision_fractional) == (10, 3)
    with pytest.raises(fedmq.PointerError, match="already fetched"):
        shared_ptr.get()
    # still shared, and it computes like the local value: a Beaver product, an opening
    assert torch.allclose((value * local).get().float_precision(), x * x, atol=2e-3)
    assert torch.equal(value.get().float_precision(), x)


def test_share_of_an_integer_pointer_and_a_holder_that_is_not_a_party(bob, alice, provider):
    a = torch.tensor([25, -7, 1 << 40])
    shared = a.send(bob).share(bob, alice, crypto_provider=provider).get()
    assert type(shared) is AdditiveSharingTensor
    b = torch.tensor([3, 4, 5])
    other = b.send(alice).share(bob, alice, crypto_provider=provider).get()
    assert torch.equal((shared + other).get(), a + b)
    # bob holds the value and shares it among alice and secure_worker (no provider: adds only)
    c = torch.tensor([[1, 2], [3, 4]])
    ptr = c.send(bob)
    away = ptr.share(alice, provider).get()
    assert [w.id for w in away.locations] == ["alice", "secure_worker"]
    assert torch.equal((away + 1).get(), c + 1)
    assert torch.equal(ptr.get(), c)  # sharing leaves the value where it was


def test_the_client_never_sees_a_share(bob, alice, provider, monkeypatch):
    x, y = torch.tensor([0.25, -3.5]), torch.tensor([1.0, 2.0])
    px, py = x.send(bob), y.send(alice)
    bob.flush(), alice.flush()
    with ClientTraffic().watching(monkeypatch) as traffic:
        sx = px.copy().fix_precision().share(bob, alice, crypto_provider=provider).get()
        sy_ = py.copy().fix_precision().share(bob, alice, crypto_provider=provider).get()
        total = sx + sy_
        for s in (*sx.child.shares, *sy_.child.shares):
            s.location.flush()
    traffic.assert_never_saw_a_share()
    assert len(traffic.share_ids()) == 4
    assert torch.allclose(total.get().float_precision(), x + y, atol=1e-3)


def test_bad_share_requests_are_refused_before_anything_is_sent(bob, alice, provider):
    ptr = torch.tensor([1.5, 2.0]).send(bob)
    before = bob.objects_count(), alice.objects_count()
    with pytest.raises(ValueError, match="cannot secret-share a torch.float32.*fix_precision"):
        ptr.share(bob, alice, crypto_provider=provider)
    ints = torch.tensor([1, 2]).send(bob)
    bools = torch.tensor([True]).send(bob)
    fp = ptr.fix_precision()
    for call, error, match in [
        (lambda: ints.share(bob, crypto_provider=provider), ValueError, "2 to 5 workers"),
        (lambda: fp.share(bob, bob, crypto_provider=provider), ValueError, "distinct"),
        (lambda: fp.share(bob, alice, crypto_provider=alice), ValueError,
         "must not be one of the share holders"),
        (lambda: fp.share(bob, alice, crypto_provider=bob.network.local_worker), ValueError,
         "must not be the local worker"),
        (lambda: fp.share(bob.network.local_worker, alice, crypto_provider=provider),
         ValueError, "cannot hold a share"),
        (lambda: ints.share(bob, alice, crypto_provider=provider, requires_grad=True),
         ValueError, "integer tensors have no gradients"),
        (lambda: fp.share(bob, alice, crypto_provider=provider, field=2**32), TypeError,
         "field=4294967296 is refused"),
        (lambda: fp.share(bob, alice, crypto_provder=provider), TypeError,
         "unexpected keyword argument 'crypto_provder'"),
        (lambda: fp.share(bob, "alice", crypto_provider=provider), TypeError,
         "got str 'alice' as party 2 of 2 \\(pass the worker object"),
        (lambda: fp.share(bob, alice, crypto_provider="james"), TypeError,
         "crypto_provider is a worker.*got str 'james'"),
        (lambda: bools.share(bob, alice, crypto_provider=provider), ValueError,
         "cannot secret-share a torch.bool tensor"),
    ]:
        with pytest.raises(error, match=match):
            call()
    assert (bob.objects_count(), alice.objects_count()) == (before[0] + 3, before[1])


def test_the_holder_refuses_malformed_requests_and_floats_itself(bob, alice):
    floats = torch.tensor([1.5]).send(bob)
    bob.flush()
    with pytest.raises(errors.RemoteError, match="cannot secret-share a torch.float32"):
        bob.call(ShareRequest(floats.id_at_location, ["bob", "alice"], [11, 12]))
    bools = torch.tensor([True]).send(bob)
    bob.flush()
    with pytest.raises(errors.RemoteError, match="cannot secret-share a torch.bool tensor"):
        bob.call(ShareRequest(bools.id_at_location, ["bob", "alice"], [11, 12]))
    for bad, match in [(ShareRequest(floats.id_at_location, ["bob"], [11]), "2 to 5"),
                       (ShareRequest(floats.id_at_location, ["bob", "bob"], [1, 2]), "distinct"),
                       (ShareRequest(floats.id_at_location, ["bob", "alice"], [1]), "one"),
                       (ShareRequest("x", ["bob", "alice"], [1, 2]), "must be int"),
                       (ShareRequest(12345, ["bob", "alice"], [1, 2]), "not on worker")]:
        with pytest.raises(errors.RemoteError, match=match):
            bob.call(bad)
    assert alice.objects_count() == 0
    assert torch.equal(floats.get(), torch.tensor([1.5]))


def test_a_party_that_cannot_be_reached_leaves_no_share_anywhere(hook):
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    ptr = torch.tensor([1, 2]).send(bob)
    bob.flush()
    for parties in (["bob", "nobody"], ["alice", "nobody"]):
        with pytest.raises(errors.RemoteError, match="'nobody'"):
            bob.call(ShareRequest(ptr.id_at_location, parties, [new_id(), new_id()]))
    assert list(bob._objects) == [ptr.id_at_location] and alice._objects == {}


# -- a share request the client gave up on leaves no share behind ----------------------------------

def _stores(*workers):
    return [sorted(w._objects) for w in workers]


def test_a_share_request_cancelled_before_it_runs_is_refused_and_stores_nothing(hook):
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    ptr = torch.tensor([1, 2]).send(bob)
    bob.flush()
    before = _stores(bob, alice)
    msg_id = new_id()
    assert bob.call(m.Cancel(msg_id)) is False  # not running: refused when it comes
    with pytest.raises(errors.RemoteError, match="cancelled by its sender before it ran"):
        bob.call(ShareRequest(ptr.id_at_location, ["bob", "alice"], [new_id(), new_id()]),
                 msg_id=msg_id)
    assert _stores(bob, alice) == before


def test_a_share_request_cancelled_while_a_party_is_slow_takes_every_share_back(
        hook, monkeypatch):
    """Found by review (R1 a8_party_stalls.py): the client's Cancel comes while the holder waits
    for a slow party, which took its share: the holder deletes its own and, after it, the
    party's."""
    from fedmq.smpc import remote
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    ptr = torch.tensor([1, 2]).send(bob)
    bob.flush()
    before = _stores(bob, alice)
    msg_id = new_id()
    send_shares = remote.call_all

    def slow_party(calls, **kwargs):
        out = send_shares(calls, **kwargs)
        assert len(alice._objects) == 1  # alice took her share; then the client gives up
        assert bob.worker.cancel(bob.engine.transport.principal, msg_id) is True
        return out
    monkeypatch.setattr(remote, "call_all", slow_party)
    with pytest.raises(errors.RemoteError, match="cancelled by its sender"):
        bob.call(ShareRequest(ptr.id_at_location, ["bob", "alice"], [new_id(), new_id()]),
                 msg_id=msg_id)
    assert _stores(bob, alice) == before


def test_a_share_that_timed_out_after_the_holder_finished_is_deleted_and_explained(
        hook, monkeypatch):
    """The reply was lost or late: the holder finished, every share is in place, and the
    client's deletes (after its Cancel was answered) take them all back."""
    bob, alice = fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice")
    james = fedmq.VirtualWorker(hook, id="james")
    fp = torch.tensor([1.5, -2.0]).send(bob).fix_precision()
    bob.flush()
    before = _stores(bob, alice)
    call = type(bob).call

    def reply_lost(self, message, **kwargs):
        value = call(self, message, **kwargs)
        if isinstance(message, ShareRequest):
            assert len(alice._objects) == 1  # the shares were stored
            raise errors.ReplyTimeout("worker 'bob' did not answer ShareRequest within 1 s")
        return value
    monkeypatch.setattr(type(bob), "call", reply_lost)
    with pytest.raises(errors.ReplyTimeout, match="worker 'bob' holds the value and sends each "
                       "party its share.*busy and had not got to it, or finished just then.*no "
                       "share is left behind") as caught:
        fp.share(bob, alice, crypto_provider=james)
    assert type(caught.value).__name__ == "ShareTimeout"
    assert _stores(bob, alice) == before


@pytest.mark.amqp
@pytest.mark.slow  # ~25 s: two timeouts
@pytest.mark.parametrize("stalled", ["alice", "bob"])
def test_a_stalled_party_or_holder_leaves_no_share_and_is_named(hook, worker_processes,
                                                                stalled):
    """Found by review (R1 a8_party_stalls.py, a5_holder_stalls.py): a worker that stalls
    (SIGSTOP) longer than the client's timeout during ptr.share(...) left shares on the holder
    and the party for ever, and the ReplyTimeout blamed the healthy holder."""
    import signal
    from worker_procs import AMQP_URL
    bob, alice, provider = (fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=4)
                            for i in ("bob", "alice", "secure_worker"))
    for w in (bob, alice, provider):
        w.clear_objects()
    x = torch.tensor([1.5, -2.25, 3.0]).send(bob)
    fp = x.fix_precision()
    bob.flush()
    assert (bob.objects_count(), alice.objects_count()) == (2, 0)
    proc = worker_processes.procs[stalled]
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(errors.ReplyTimeout) as caught:
            fp.share(bob, alice, crypto_provider=provider)
        time.sleep(2)  # stalled longer than the client waited
    finally:
        proc.send_signal(signal.SIGCONT)
    message = str(caught.value)
    assert type(caught.value).__name__ == "ShareTimeout"
    if stalled == "alice":
        assert "party 'alice' did not take its share" in message
    else:
        assert "the holder 'bob' itself does not answer" in message
    assert "no share is left behind" in message
    # once the stalled worker runs again, the late share is dropped, and the holder's too
    assert wait_until(lambda: (bob.objects_count(), alice.objects_count()) == (2, 0), 15), \
        (bob.objects_count(), alice.objects_count())
    # and both still serve
    shared = fp.share(bob, alice, crypto_provider=provider).get()
    assert torch.allclose(shared.get().float_precision(), torch.tensor([1.5, -2.25, 3.0]))


# -- the trust boundary (in-process workers with closed policies, as in tests/security) ---------

@pytest.fixture
def lab():
    """bob holds the owner's data and releases nothing; carol is bob's peer worker, dave is
    not; `sci` is a scientist on bob and carol, `mallory` a stranger."""
    hooks = {who: fedmq.TorchHook(torch, principal=who) for who in ("owner", "sci", "mallory")}
    grants = {"scientist": {"sci"}, "worker": {"carol"}}
    closed = Policy(owner="owner", grants=grants, release="none")
    workers = {"bob": fedmq.VirtualWorker(hooks["owner"], id="bob", policy=closed),
               "carol": fedmq.VirtualWorker(hooks["owner"], id="carol", policy=closed),
               "dave": fedmq.VirtualWorker(hooks["owner"], id="dave",
                                           policy=Policy.open("owner")),
               "james": fedmq.VirtualWorker(hooks["owner"], id="james",
                                            policy=Policy.open("owner"))}
    data = torch.tensor([[0.5, -1.5], [2.25, 4.0]])
    ptr = data.clone().tag("#data").send(workers["bob"])
    ptr.garbage_collect_data = False
    workers["bob"].flush()
    clients = {who: {name: w.connect(hooks[who]) for name, w in workers.items()}
               for who in ("sci", "mallory", "owner")}
    yield workers, clients, data, ptr.id_at_location
    for hook in hooks.values():
        hook.context.close()


def test_a_stranger_cannot_share_someone_elses_value(lab):
    workers, clients, data, data_id = lab
    mallory = clients["mallory"]
    with pytest.raises(errors.ObjectNotFoundError):
        mallory["bob"].call(ShareRequest(data_id, ["dave", "james"], [1, 2]))
    sci_value = torch.tensor([7, 8]).send(clients["sci"]["bob"])
    clients["sci"]["bob"].flush()
    with pytest.raises(errors.ObjectNotFoundError):
        mallory["bob"].call(ShareRequest(sci_value.id_at_location, ["dave", "james"], [1, 2]))
    assert workers["dave"].worker.store.total() == workers["james"].worker.store.total() == 0


def test_private_data_is_shared_only_among_peers_and_stays_private(lab):
    workers, clients, data, data_id = lab
    sci = clients["sci"]
    ptr = sci["bob"].search(["#data"])[0]
    fp = ptr.fix_precision()
    with pytest.raises(fedmq.AccessDeniedError, match="private"):
        fp.copy().get()  # the encoding is computed from the data: bob does not release it
    bob_store = workers["bob"].worker.store
    encoding = data.fix_precision().child
    with pytest.raises(fedmq.AccessDeniedError, match="'dave'.*--grant worker:dave"):
        fp.share(sci["bob"], sci["dave"], crypto_provider=sci["james"])
    assert workers["dave"].worker.store.total() == 0  # nothing reached the stranger worker
    sci["bob"].objects_count()  # (the failed copy's release reaches bob)
    left = bob_store.space("sci").entries.values()
    assert [torch.equal(e.obj, encoding) for e in left] == [True]  # no share left on bob
    # among peers the shares are made, carry the mark, and opening them is a release
    shared = fp.share(sci["bob"], sci["carol"], crypto_provider=sci["james"]).get()
    carol_entry = workers["carol"].worker.store.space("sci").entries[
        shared.child.shares[1].id_at_location]
    assert carol_entry.private and carol_entry.raw
    with pytest.raises(fedmq.AccessDeniedError):
        shared.get()
    # the data owner may do all of it, and gets the value back
    own = clients["owner"]
    mine = own["bob"].search(["#data"])[0].fix_precision().share(
        own["bob"], own["carol"], crypto_provider=own["james"]).get()
    assert torch.equal(mine.get().float_precision(), data)


def test_a_peer_that_releases_more_refuses_shares_of_private_data(lab):
    workers, clients, data, data_id = lab
    workers["carol"].worker.policy = Policy(owner="owner", grants={"scientist": {"sci"}},
                                            release="all")
    sci = clients["sci"]
    fp = sci["bob"].search(["#data"])[0].fix_precision()
    with pytest.raises(fedmq.AccessDeniedError, match="releases more"):
        fp.share(sci["bob"], sci["carol"], crypto_provider=sci["james"])
    assert workers["carol"].worker.store.total() == 0
    sci["bob"].objects_count()
    assert len(workers["bob"].worker.store.space("sci").entries) == 1  # the encoding only


def test_release_derived_lets_a_scientist_aggregate_but_not_fetch_the_raw_data(lab):
    workers, clients, data, data_id = lab
    open_ = Policy(owner="owner", grants={"scientist": {"sci"}, "worker": {"carol"}},
                   release="derived")
    workers["bob"].worker.policy = workers["carol"].worker.policy = open_
    sci = clients["sci"]
    ptr = sci["bob"].search(["#data"])[0]
    # a share of the raw data is raw: reconstructing it is fetching the data
    raw = ptr.fix_precision().share(sci["bob"], sci["carol"], crypto_provider=sci["james"]).get()
    with pytest.raises(fedmq.AccessDeniedError, match="private data"):
        raw.get()
    # a value computed from it (here twice the data) is derived: its aggregate is released
    doubled = (ptr * 2).fix_precision().share(sci["bob"], sci["carol"],
                                              crypto_provider=sci["james"]).get()
    assert torch.equal((doubled + doubled).get().float_precision(), data * 4)


# -- the seed's §10.2 listing ----------------------------------------------------------------------

LISTING = "s10_2_secure_aggregation.py"
#: the listing's fragments, as the seed presents them (A: train, B: encrypted aggregation,
#: C: cleanup, then the whole loop): the test runs them one by one, looking in between
MARKS = ("# A:训练", "# B:加密聚合", "# C:清理")


def _fragments() -> list[str]:
    source = (SEED_DIR / LISTING).read_text()
    out, rest = [], source
    for mark in MARKS:
        head, _, rest = rest.partition(mark)
        out.append(head)
        rest = mark + rest
    out.append(rest)
    return out  # setup, A, B, then C and the rest


@pytest.fixture(scope="module")
def james_service(worker_processes):
    worker_processes.start("james", wait=True)
    yield
    worker_processes.stop("james")
    delete_queue("fedmq.worker.james")


def _run(fragments: list[str], namespace: dict, out: io.StringIO) -> None:
    for fragment in fragments:
        with contextlib.redirect_stdout(out):
            exec(compile(fragment, str(SEED_DIR / LISTING), "exec"), namespace)


def _namespace(request, worker_factory) -> dict:
    namespace: dict = {"__name__": "__main__", "__file__": str(SEED_DIR / LISTING)}
    if worker_factory is not None:
        request.getfixturevalue("james_service")
    return namespace


def _source(fragment: str, worker_factory) -> str:
    return fragment if worker_factory is None else \
        fragment.replace("sy.VirtualWorker(", "__fedmq_worker__(")


def test_s10_2_secure_aggregation_is_the_plain_average(request, worker_factory, monkeypatch):
    """Fragments A and B as printed: the encrypted average of bob's and alice's parameters
    equals their plain average to 1e-3, and the client never held a share."""
    namespace = _namespace(request, worker_factory)
    namespace["__fedmq_worker__"] = worker_factory
    setup, a, b, _ = [_source(f, worker_factory) for f in _fragments()]
    out = io.StringIO()
    _run([setup, a], namespace, out)
    params = namespace["params"]
    for location in namespace["compute_nodes"]:
        location.flush()
    plain = [(bobs.copy().get() + alices.copy().get()) / 2
             for bobs, alices in zip(params[0], params[1])]
    with ClientTraffic().watching(monkeypatch) as traffic:
        started = time.perf_counter()
        _run([b], namespace, out)
        print(f"\n§10.2 B ({len(params[0])} parameters x 2 models): "
              f"{time.perf_counter() - started:.3f} s")
    traffic.assert_never_saw_a_share()
    assert len(traffic.share_ids()) == 2 * 2 * len(params[0])  # 2 models, 2 parties each
    new_params = namespace["new_params"]
    assert len(new_params) == len(plain) == 6
    for got, want in zip(new_params, plain):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, atol=1e-3, rtol=0), (got - want).abs().max()
    spdz = namespace["spdz_params"]
    assert all(type(p) is FixedPrecisionTensor and p.is_shared for p in spdz)


_RUNS: dict = {}


def _run_whole(request, worker_factory, transport) -> tuple[str, dict]:
    """The whole listing as printed (10 epochs; about 40 s over RabbitMQ)."""
    if transport not in _RUNS:
        namespace = _namespace(request, worker_factory)
        namespace["__fedmq_worker__"] = worker_factory
        out = io.StringIO()
        _run([_source(f, worker_factory) for f in _fragments()], namespace, out)
        _RUNS[transport] = out.getvalue(), namespace
    return _RUNS[transport]


def test_s10_2_runs_as_printed(request, worker_factory, transport):
    out, ns = _run_whole(request, worker_factory, transport)
    epochs = ns["args"].epochs
    lines = [line for line in out.splitlines() if line]
    assert lines[0::2][:epochs] == [f"Epoch {e + 1}" for e in range(epochs)]
    losses = [float(x) for x in re.findall(r"Test set: Average loss: (\d+\.\d{4})", out)]
    assert len(losses) == epochs and all(loss > 0 for loss in losses)
    assert re.fullmatch(r"Total \d+(\.\d+)? s", lines[-1])
    # every round's shares and encodings are gone once nothing points at them: the parties
    # hold only their data (what fragment B left in module globals is dropped first)
    for name in ("spdz_params", "param", "encrypted_param", "fixed_precision_param",
                 "copy_of_parameter"):
        ns.pop(name, None)
    gc.collect()
    for worker in (ns["bob"], ns["alice"], ns["james"]):
        worker.flush()
    assert ns["james"].objects_count() == 0  # the crypto provider holds nothing
    for worker in (ns["bob"], ns["alice"]):
        left = worker._objects.values()
        assert all(t.dtype == torch.float32 for t in left), [t.dtype for t in left]


def test_s10_2_cleanup_writes_the_average_into_both_models(request, worker_factory, transport):
    """C: `model.get()` then `param.set_(new)`: both models hold the average, so training
    moves the test loss (before the fix the write was lost and the loss stayed constant)."""
    out, ns = _run_whole(request, worker_factory, transport)
    losses = [float(x) for x in re.findall(r"Test set: Average loss: (\d+\.\d{4})", out)]
    assert losses[-1] < losses[0] - 1.0, losses
