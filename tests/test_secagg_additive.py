"""Additive-sharing secure aggregation (fedmq.secagg.additive): exact sums, the aggregator's
refusals (floor, differencing, duplicates, strangers, authenticated senders), no share ever at
the coordinator, a worker whose share failed to reach one aggregator, and real `fedmq worker`
processes over RabbitMQ.

In-process: every training worker and aggregator is a Worker reached through the local
transport (every message encoded and decoded); each training worker has a hook of its own whose
principal is its name, as each worker service has its own broker login. `protect` runs as in a
Fit: in a Session the worker built for the coordinator's message, acting for the coordinator,
having read the owner's private data."""
from __future__ import annotations

import asyncio
import time

import pytest
import torch

import fedmq
from fedmq import messages as m, principals, serde
from fedmq.engine import RequestEngine
from fedmq.errors import AccessDeniedError, RemoteError
from fedmq.policy import Policy
from fedmq.secagg import additive
from fedmq.secagg.additive import AdditiveAggregation, protect, store_of
from fedmq.secagg.additive_messages import AggregateResult, AggregateShares, AggregatorShare
from fedmq.secagg.base import SecureAggregationError
from fedmq.transport.local import LocalTransport

COORD = "coord"
TRAINERS = ("alice", "bob", "charlie")
AGGS = ("agg1", "agg2")
L = 1000


def ring_vectors(seed: int = 0, n: int = 3, length: int = L) -> list[torch.Tensor]:
    """int64 vectors spanning the whole ring (so sums wrap around)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(-2 ** 62, 2 ** 62, (length,), generator=g, dtype=torch.int64) * 2
            for _ in range(n)]


class Recorder:
    """The coordinator's request function over `engine`, keeping every reply it receives."""

    def __init__(self, engine: RequestEngine) -> None:
        self.engine = engine
        self.replies: list = []

    async def __call__(self, worker_id: str, message, timeout: float):
        value = await self.engine.arequest(worker_id, message, timeout=timeout)
        self.replies.append(value)
        return value


class Broken:
    """A worker that cannot be reached (its transport fails every frame)."""

    def __init__(self, id: str) -> None:
        self.id = id

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        raise fedmq.errors.TransportError(f"{self.id} is unreachable")


@pytest.fixture
def fed():
    """3 training workers, 2 aggregators, a coordinator engine acting as COORD and a stranger's
    engine; each training worker grants both aggregators `worker`."""
    additive._STORES.clear()
    hooks = {w: fedmq.TorchHook(torch, principal=w) for w in (*TRAINERS, "aggs")}
    aggs = {a: fedmq.VirtualWorker(hooks["aggs"], id=a, policy=Policy(
        owner=a, grants={"coordinator": {COORD}, "worker": set(TRAINERS)}, release="none"))
        for a in AGGS}
    trainers = {w: fedmq.VirtualWorker(hooks[w], id=w, policy=Policy(
        owner=w, grants={"coordinator": {COORD}, "worker": set(AGGS)}, release="none"))
        for w in TRAINERS}
    for w in TRAINERS:
        for a in AGGS:
            aggs[a].connect(hooks[w])  # w's network reaches the aggregators as w
    everyone = {**{a: v.worker for a, v in aggs.items()},
                **{w: v.worker for w, v in trainers.items()}}
    engines = {who: RequestEngine(LocalTransport(everyone, principal=who), sender=who,
                                  timeout=30) for who in (COORD, "mallory")}
    yield hooks, aggs, trainers, engines
    for engine in engines.values():
        engine.close()
    for hook in hooks.values():
        hook.context.close()
    additive._STORES.clear()


def fit_protect(worker, entry: dict, vector: torch.Tensor) -> dict:
    """`protect` as the worker's Fit runs it: in the Session of the coordinator's message,
    acting for the coordinator, tainted by the owner's data."""
    session = worker.session(m.Envelope(m.WIRE_VERSION, "coordinator", None), COORD)
    session.acting.tainted = session.acting.raw = True
    with principals.acting(session.acting):
        return protect(session.as_owner(), entry, vector)


def run(coro):
    return asyncio.run(coro)


def deadline(seconds: float = 30) -> float:
    return time.time() + seconds


def begin(driver, request, round_=1, workers=TRAINERS):
    return run(driver.begin_round(round_, list(workers), request, deadline()))


def protected_round(fed, seed: int):
    """Round 1 begun by a coordinator (its requests recorded) and every trainer's vector
    (`ring_vectors(seed)`) protected as its Fit does: (request, driver, entries, session,
    vectors)."""
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    vectors = dict(zip(TRAINERS, ring_vectors(seed)))
    for w in TRAINERS:
        fit_protect(trainers[w].worker, entries[w], vectors[w])
    return request, driver, entries, entries["alice"]["session"], vectors


def test_three_workers_two_aggregators_sum_exact_and_coordinator_never_holds_a_share(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    assert set(entries) == set(TRAINERS)
    sid = entries["alice"]["session"]
    assert entries["alice"] == {"method": "additive", "session": sid, "round": 1,
                                "aggregators": list(AGGS)}
    vectors = dict(zip(TRAINERS, ring_vectors(1)))
    # keep every share the workers send, to compare with what the coordinator receives
    sent: list[torch.Tensor] = []
    original = additive.additive_split

    def spy(value, n, prgs=None):
        shares = original(value, n, prgs)
        sent.extend(shares)
        return shares
    additive.additive_split = spy
    try:
        protected = {w: fit_protect(trainers[w].worker, entries[w], vectors[w])
                     for w in TRAINERS}
    finally:
        additive.additive_split = original
    assert protected == {w: {} for w in TRAINERS}
    # each aggregator holds one uniform share per worker, under the worker's principal
    for a in AGGS:
        assert store_of(a).held((sid, 1), list(TRAINERS)) == sorted(TRAINERS)
    total, contributors = run(driver.end_round(1, protected, request, deadline()))
    expected = vectors["alice"] + vectors["bob"] + vectors["charlie"]  # int64 wraps
    assert contributors == sorted(TRAINERS)
    assert total.dtype == torch.int64 and torch.equal(total, expected)
    # the coordinator received: probes, held lists, one sum per aggregator, nothing else
    tensors = [r.total for r in request.replies
               if isinstance(r, AggregateResult) and r.total is not None]
    assert len(tensors) == len(AGGS) and len(sent) == len(TRAINERS) * len(AGGS)
    for t in tensors:
        for secret in [*sent, *vectors.values()]:
            assert not torch.equal(t, secret)
        # and no sum of fewer than all contributors' shares at that aggregator
        assert not any(torch.equal(t, s1 + s2) for i, s1 in enumerate(sent)
                       for s2 in sent[i + 1:])
    for r in request.replies:
        assert not isinstance(r, torch.Tensor)
    # the aggregators forgot the session
    for a in AGGS:
        assert store_of(a).bytes_held() == 0


def test_shares_are_uniform_and_split_exactly(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    x = torch.zeros(20000, dtype=torch.int64)  # a constant vector: shares must still look random
    fit_protect(trainers["alice"].worker, entries["alice"], x)
    sid = entries["alice"]["session"]
    s1 = store_of("agg1")._open[(sid, 1)].shares["alice"]
    s2 = store_of("agg2")._open[(sid, 1)].shares["alice"]
    assert torch.equal(s1 + s2, x)
    bits = ((s1.unsqueeze(1) >> torch.arange(64)) & 1).double()
    assert abs(bits.mean().item() - 0.5) < 0.01
    assert len(set(s1.tolist())) == len(s1)


def test_coordinator_asks_for_a_single_contributor_refused(fed):
    hooks, aggs, trainers, engines = fed
    request, driver, entries, sid, vectors = protected_round(fed, 2)
    with pytest.raises(RemoteError, match="at least 2 workers"):
        engines[COORD].request("agg1", AggregateShares(sid, 1, ["alice"]))
    # the driver refuses too, before asking anyone
    with pytest.raises(SecureAggregationError, match="at least 2"):
        run(driver.end_round(1, {"alice": {}}, request, deadline()))
    # nothing was revealed by the refusal: the session is still whole
    assert store_of("agg1").held((sid, 1), list(TRAINERS)) == sorted(TRAINERS)


def test_coordinator_asks_twice_differencing_refused(fed):
    hooks, aggs, trainers, engines = fed
    request, driver, entries, sid, vectors = protected_round(fed, 3)
    coord = engines[COORD]
    first = coord.request("agg1", AggregateShares(sid, 1, sorted(TRAINERS)))
    assert first.total is not None
    # sum over all three, then over two: the difference would be charlie's share
    with pytest.raises(RemoteError, match="over"):
        coord.request("agg1", AggregateShares(sid, 1, ["alice", "bob"]))
    with pytest.raises(RemoteError, match="over"):
        coord.request("agg1", AggregateShares(sid, 1, sorted(TRAINERS)))
    with pytest.raises(RemoteError, match="over"):
        coord.request("agg1", AggregateShares(sid, 1, ["alice", "bob"], reveal=False))
    # and a late share for that session is refused
    with pytest.raises(RemoteError, match="over"):
        hooks["alice"].network.client("agg1").call(AggregatorShare(sid, 1, vectors["alice"]))


def test_a_worker_sends_two_shares_for_one_session_refused(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    sid = entries["alice"]["session"]
    vectors = dict(zip(TRAINERS, ring_vectors(4)))
    fit_protect(trainers["alice"].worker, entries["alice"], vectors["alice"])
    with pytest.raises(RemoteError, match="held already"):
        fit_protect(trainers["alice"].worker, entries["alice"], vectors["bob"])
    # that Fit failed, so alice told both aggregators to drop her share: nothing partial, and
    # she is no contributor of the round (her FitRes never arrives)
    for a in AGGS:
        assert store_of(a).held((sid, 1), ["alice"]) == []
    for w in ("bob", "charlie"):
        fit_protect(trainers[w].worker, entries[w], vectors[w])
    # a share sent straight to an aggregator, a second time: refused too
    with pytest.raises(RemoteError, match="held already"):
        hooks["bob"].network.client("agg2").call(AggregatorShare(sid, 1, vectors["bob"]))
    total, contributors = run(driver.end_round(1, {"bob": {}, "charlie": {}}, request,
                                               deadline()))
    assert contributors == ["bob", "charlie"]
    assert torch.equal(total, vectors["bob"] + vectors["charlie"])


def test_found_by_review_a_stranger_cannot_fill_an_aggregator(fed):
    """Found by review: any principal could store shares on an aggregator (64 made-up
    sessions held it for an hour, and the next real round failed). A share now needs the
    `worker` role the aggregator's owner grants the training workers."""
    hooks, aggs, trainers, engines = fed
    frame = serde_frame(AggregatorShare("m" * 32, 1, torch.arange(5)))
    for sender in ("mallory", COORD):
        reply = aggs["agg1"].worker.handle_frame(frame, sender)
        assert "--grant worker:" in fedmq.serde.decode(reply).error.message
    assert ("m" * 32, 1) not in store_of("agg1")._open


def test_sender_is_the_authenticated_principal_not_a_field(fed):
    """A share sent by bob lands under bob, whatever its envelope claims (sender, on_behalf):
    a peer claiming to act for alice is refused (a share is not delegable)."""
    hooks, aggs, trainers, engines = fed
    sid = "s" * 32
    bob = hooks["bob"].network.client("agg1")
    bob.call(AggregatorShare(sid, 1, torch.arange(5)), sender="alice")
    assert sorted(store_of("agg1")._open[(sid, 1)].shares) == ["bob"]
    # on behalf of alice: bob is a peer of agg1 (it sends it shares), and a peer may only
    # store objects on someone's behalf; a stranger may not act on behalf of anyone
    frame = serde_frame(AggregatorShare(sid, 1, torch.arange(5)), on_behalf="alice")
    reply = aggs["agg1"].worker.handle_frame(frame, "bob")
    assert "peer worker may only store objects" in fedmq.serde.decode(reply).error.message
    reply = aggs["agg1"].worker.handle_frame(frame, "mallory")
    assert "may not act on behalf" in fedmq.serde.decode(reply).error.message
    assert sorted(store_of("agg1")._open[(sid, 1)].shares) == ["bob"]


def serde_frame(message, on_behalf=None) -> bytes:
    return fedmq.serde.encode(m.Envelope(m.WIRE_VERSION, "alice", message, 0, [], on_behalf))


def test_aggregator_sums_only_listed_workers(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    vectors = dict(zip(TRAINERS, ring_vectors(5)))
    for w in TRAINERS:
        fit_protect(trainers[w].worker, entries[w], vectors[w])
    # charlie's FitRes "did not arrive": only alice and bob are summed
    total, contributors = run(driver.end_round(
        1, {"alice": {}, "bob": {}}, request, deadline()))
    assert contributors == ["alice", "bob"]
    assert torch.equal(total, vectors["alice"] + vectors["bob"])


def test_a_stranger_without_the_coordinator_role_cannot_ask_for_sums(fed):
    hooks, aggs, trainers, engines = fed
    request, driver, entries, sid, vectors = protected_round(fed, 6)
    for reveal in (True, False):
        with pytest.raises(AccessDeniedError, match="--grant coordinator:mallory"):
            engines["mallory"].request("agg1", AggregateShares(sid, 1, sorted(TRAINERS),
                                                               reveal=reveal))
    # a training worker is no coordinator either
    with pytest.raises(AccessDeniedError):
        hooks["alice"].network.client("agg1").call(AggregateShares(sid, 1, sorted(TRAINERS)))
    total, _ = run(driver.end_round(1, {w: {} for w in TRAINERS}, request, deadline()))
    assert torch.equal(total, sum(vectors.values()))


def test_share_failed_at_one_aggregator_fit_errors_other_dropped_rest_exact(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    sid = entries["alice"]["session"]
    vectors = dict(zip(TRAINERS, ring_vectors(7)))
    # alice cannot reach agg2 (its link is down); bob and charlie can
    alice_transport = hooks["alice"].context.transport
    alice_transport.add(Broken("agg2"), "agg2")
    with pytest.raises(fedmq.errors.FedmqError, match="unreachable"):
        fit_protect(trainers["alice"].worker, entries["alice"], vectors["alice"])
    assert store_of("agg1").held((sid, 1), ["alice"]) == []  # agg1 dropped alice's share
    assert store_of("agg2").held((sid, 1), ["alice"]) == []
    for w in ("bob", "charlie"):
        fit_protect(trainers[w].worker, entries[w], vectors[w])
    total, contributors = run(driver.end_round(
        1, {"bob": {}, "charlie": {}}, request, deadline()))
    assert contributors == ["bob", "charlie"]
    assert torch.equal(total, vectors["bob"] + vectors["charlie"])


def test_an_aggregator_missing_a_share_the_driver_sums_the_intersection(fed):
    """alice's FitRes 'arrived' but agg2 lost her share (say it restarted): the driver asks
    which workers every aggregator holds and sums over those."""
    hooks, aggs, trainers, engines = fed
    request, driver, entries, sid, vectors = protected_round(fed, 8)
    assert store_of("agg2").drop((sid, 1), "alice")
    total, contributors = run(driver.end_round(1, {w: {} for w in TRAINERS}, request,
                                               deadline()))
    assert contributors == ["bob", "charlie"]
    assert torch.equal(total, vectors["bob"] + vectors["charlie"])
    # with two lost, fewer than min_contributors remain: the round fails
    entries = begin(driver, request, round_=2)
    sid = entries["alice"]["session"]
    for w in TRAINERS:
        fit_protect(trainers[w].worker, entries[w], vectors[w])
    store_of("agg2").drop((sid, 2), "alice")
    store_of("agg1").drop((sid, 2), "bob")
    with pytest.raises(SecureAggregationError, match="only 1 workers"):
        run(driver.end_round(2, {w: {} for w in TRAINERS}, request, deadline()))


def test_policy_gate_aggregators_must_be_peers(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    sid = entries["alice"]["session"]
    trainers["alice"].worker.policy = Policy(owner="alice", grants={
        "coordinator": {COORD}, "worker": {"agg1"}}, release="none")
    with pytest.raises(AccessDeniedError, match="--grant worker:agg2"):
        fit_protect(trainers["alice"].worker, entries["alice"], ring_vectors(9)[0])
    for a in AGGS:  # checked before anything was sent
        assert store_of(a).held((sid, 1), ["alice"]) == []


def test_bad_configuration_and_input_give_clear_errors(fed):
    hooks, aggs, trainers, engines = fed
    request = Recorder(engines[COORD])
    with pytest.raises(ValueError, match="2 to 5 distinct"):
        AdditiveAggregation(["agg1"])
    with pytest.raises(ValueError, match="2 to 5 distinct"):
        AdditiveAggregation(["agg1", "agg1"])
    with pytest.raises(ValueError, match="min_contributors"):
        AdditiveAggregation(list(AGGS), min_contributors=1)
    driver = AdditiveAggregation(["agg1", "alice"])
    with pytest.raises(SecureAggregationError, match="both train and aggregate"):
        begin(driver, request)
    # an aggregator that does not answer fails the round early
    driver = AdditiveAggregation(["agg1", "nobody"])
    with pytest.raises(SecureAggregationError, match="'nobody'"):
        begin(driver, request)
    driver = AdditiveAggregation(list(AGGS))
    entries = begin(driver, request)
    worker = trainers["alice"].worker
    with pytest.raises(ValueError, match="1-D int64"):
        fit_protect(worker, entries["alice"], torch.zeros(3))
    with pytest.raises(ValueError, match="not an additive"):
        fit_protect(worker, {"method": "secagg+"}, torch.zeros(3, dtype=torch.int64))
    # malformed messages from the network: refused, the aggregator keeps serving
    bob = hooks["bob"].network.client("agg1")
    for bad in (AggregatorShare(7, 1, torch.zeros(2, dtype=torch.int64)),
                AggregatorShare("s", -1, torch.zeros(2, dtype=torch.int64)),
                AggregatorShare("s", 1, torch.zeros(2)),
                AggregatorShare("s", 1, "x" * 10)):
        with pytest.raises(RemoteError):
            bob.call(bad)
    with pytest.raises(RemoteError, match="distinct worker ids"):
        engines[COORD].request("agg1", AggregateShares("s", 1, ["a", "a"]))
    with pytest.raises(RemoteError, match="contributors must be list"):
        engines[COORD].request("agg1", AggregateShares("s", 1, "ab"))
    assert engines[COORD].request("agg1", m.ObjectsCount()) == 0


def test_aggregator_memory_is_bounded_and_sessions_expire():
    store = additive.ShareStore(max_sessions=2, max_bytes=800, ttl=0.2)
    store.put(("a", 1), "w1", torch.zeros(50, dtype=torch.int64))
    store.put(("b", 1), "w1", torch.zeros(10, dtype=torch.int64))
    with pytest.raises(fedmq.errors.QuotaExceededError, match="open sessions"):
        store.put(("c", 1), "w1", torch.zeros(1, dtype=torch.int64))
    with pytest.raises(fedmq.errors.QuotaExceededError, match="bytes"):
        store.put(("a", 1), "w2", torch.zeros(50, dtype=torch.int64))
    with pytest.raises(ValueError, match="elements"):
        store.put(("a", 1), "w2", torch.zeros(3, dtype=torch.int64))
    time.sleep(0.3)
    store.put(("c", 1), "w1", torch.zeros(1, dtype=torch.int64))  # the old ones expired
    assert store.bytes_held() == 8
    with pytest.raises(ValueError, match="over"):
        store.held(("a", 1), ["w1"])


# -- over RabbitMQ: real `fedmq worker` processes, each logged in as its own broker user -------

@pytest.mark.amqp
def test_over_rabbitmq_three_workers_two_aggregators_sum_exact(role_users, tmp_path):
    """3 training workers and 2 aggregators, real processes, each its own broker user (so an
    aggregator keys shares by the broker-checked user id); the real coordinator runs an
    additive round (Fit protects the update): the sum of the aggregators' sums is exactly the
    sum of the workers' encoded updates (from a plain FedAvg round of the same config), the
    model is FedAvg's within the quantization error, the coordinator never receives a vector
    or a share, and it cannot ask an aggregator twice."""
    from fedmq.fl.config import initial_weights
    from fedmq.fl.connections import AMQPRoundConnection
    from fedmq.fl.messages import FitRes
    from fedmq.fl.secure import make_private_rounds
    from fedmq.secagg import quantize
    from private_amqp import AdditiveServices, config, max_diff, rounds, summary

    services = AdditiveServices(role_users, tmp_path, "sa")
    cfg = config(rounds=1)
    privacy = make_private_rounds("additive", services.aggregators)
    driver = privacy.aggregator
    begin_round, end_round = driver.begin_round, driver.end_round
    seen: dict = {}

    async def keep_entries(*args, **kwargs):
        seen["entries"] = await begin_round(*args, **kwargs)
        return seen["entries"]

    async def keep_total(*args, **kwargs):
        seen["total"], seen["contributors"] = await end_round(*args, **kwargs)
        return seen["total"], seen["contributors"]
    driver.begin_round, driver.end_round = keep_entries, keep_total

    async def ask_again():
        conn = await AMQPRoundConnection.connect(services.coord_url)
        sid = next(iter(seen["entries"].values()))["session"]
        try:
            with pytest.raises(RemoteError, match="over"):
                await conn.arequest(services.ids["agg1"],
                                    AggregateShares(sid, 1, services.trainers), timeout=30)
        finally:
            await conn.aclose()
    plain_frames: list = []
    frames: list = []
    try:
        services.start_all()
        plain, plain_weights, _ = rounds(cfg, services.trainers, url=services.coord_url,
                                         received=plain_frames)
        records, weights, _ = rounds(cfg, services.trainers, privacy, url=services.coord_url,
                                     received=frames)
        asyncio.run(ask_again())
    finally:
        logs = services.logs()
        services.stop_all()
    assert plain[0].status == records[0].status == "ok", (summary(plain + records), logs)
    assert sorted(records[0].workers) == sorted(services.trainers)
    start = initial_weights(cfg.model, cfg.seed)
    names = list(start)
    fits = [v for v in (getattr(serde.decode(f), "value", None) for f in plain_frames)
            if isinstance(v, FitRes)]
    vectors = [quantize.encode(quantize.flatten(r.weights, names) -
                               quantize.flatten(start, names), r.num_examples)[0] for r in fits]
    assert len(vectors) == 3 and seen["contributors"] == sorted(services.trainers)
    total = seen["total"]
    assert total.shape == vectors[0].shape == (7850,)
    assert torch.equal(total, vectors[0] + vectors[1] + vectors[2])
    assert max_diff(plain_weights[0], weights[0]) < 1e-5
    # the coordinator's replies: probes, held lists, two sums, never a vector or a share
    replies = [getattr(serde.decode(f), "value", None) for f in frames]
    sums = [r.total for r in replies if isinstance(r, AggregateResult) and r.total is not None]
    assert len(sums) == 2 and torch.equal(sums[0] + sums[1], total)
    assert not any(torch.equal(s, v) for s in sums for v in vectors)
    carried = [r.weights for r in replies if isinstance(r, FitRes)]
    assert len(carried) == 3 and all(not isinstance(c, torch.Tensor) and
                                     not any(isinstance(v, torch.Tensor) for v in c.values())
                                     for c in carried), carried
