"""SecAgg+ (fedmq.secagg.secaggplus): Shamir, the graph, the full protocol through real
in-process workers (frames encoded and handled by `Worker.handle_frame`), dropouts, attacks
on what the coordinator holds, cost, and a round over RabbitMQ with real worker processes."""
from __future__ import annotations

import asyncio
import functools
import random
import time
import types

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import fedmq
from fedmq.engine import RequestEngine
from fedmq.extensions import load_extensions
from fedmq.policy import Policy
from fedmq.secagg import keys, secaggplus, shamir
from fedmq.secagg.base import SecureAggregationError
from fedmq.secagg.messages import (SecAggEncryptedShares, SecAggSetup, SecAggShareKeys,
                                   SecAggUnmask, SecAggUnmaskShares)
from fedmq.secagg.secaggplus import SecAggPlus, protect
from fedmq.smpc.ring import PRG, uniform
from fedmq.transport.local import LocalTransport
from fedmq.worker import Worker

load_extensions()

POLICY = Policy(owner="owner", grants={"coordinator": {"coord"}}, release="none")


def ring_sum(vectors) -> torch.Tensor:
    """Element-wise sum mod 2^64, computed with Python ints (the reference)."""
    vectors = list(vectors)
    out = [sum(col) % (1 << 64) for col in zip(*(v.tolist() for v in vectors))]
    return torch.tensor([c - (1 << 64) if c >= 1 << 63 else c for c in out], dtype=torch.int64)


class World:
    """n in-process workers granting `coordinator` to principal "coord", and the request
    engine the coordinator uses (`principal` its login); every reply it receives is kept."""

    def __init__(self, n: int, principal: str = "coord") -> None:
        self.ids = [f"w{i:02d}" for i in range(n)]
        self.workers = {w: Worker(w, policy=POLICY) for w in self.ids}
        self.transport = LocalTransport(self.workers, principal=principal)
        self.engine = RequestEngine(self.transport, sender="coordinator", timeout=None)
        self.kept: list = []  # (worker, message sent, reply) for every reply received
        self.silent: dict = {}  # message type -> workers that do not answer it

    async def request(self, worker: str, message, timeout: float):
        if worker in self.silent.get(type(message), ()):
            raise TimeoutError(f"{worker} is gone")
        reply = await self.engine.arequest(worker, message, timeout=timeout)
        self.kept.append((worker, message, reply))
        return reply

    def session(self, worker: str):
        """The worker's Session for a message from "coord" (what the Fit's protect gets)."""
        return self.workers[worker].session(types.SimpleNamespace(), "coord")

    def close(self) -> None:
        self.transport.close()


def secure_round(world: World, agg: SecAggPlus, xs: dict, round: int = 1,
                 silent_in_fit=(), tamper=None, protected_out=None, early=False):
    """One round as the coordinator runs it; `early`: each masked input is handed to
    `agg.masked` as it arrives (the coordinator's Fit loop), the event loop turning between
    arrivals so that the Unmasks sent early are answered during the Fits."""
    async def run():
        deadline = time.time() + 60
        entries = await agg.begin_round(round, world.ids, world.request, deadline)
        if tamper:
            tamper(entries)
        protected = {}
        for w, entry in entries.items():
            if w not in silent_in_fit:
                protected[w] = protect(world.session(w), entry, xs[w])
                if early:
                    agg.masked(round, w, protected[w], world.request, deadline)
                    await asyncio.sleep(0.001)
        if protected_out is not None:
            protected_out.update(protected)
        return await agg.end_round(round, protected, world.request, deadline)
    return asyncio.run(run())


@pytest.fixture
def make_world():
    made = []

    def make(n, principal="coord"):
        made.append(World(n, principal))
        return made[-1]
    yield make
    for world in made:
        world.close()


def vectors(ids, length=257, seed=0):
    torch.manual_seed(seed)
    return {w: uniform((length,)) for w in ids}


# -- Shamir ------------------------------------------------------------------------------------

def test_shamir_any_t_of_n_reconstruct_and_t_minus_1_do_not():
    rng = random.Random(3)
    for n, t in [(2, 2), (3, 2), (5, 3), (15, 9), (80, 41)]:  # 41 points: reduced as it goes
        secret = int.from_bytes(rng.randbytes(32), "big")
        shares = shamir.split(secret, list(range(1, n + 1)), t)
        for _ in range(5):
            chosen = rng.sample(sorted(shares), t)
            assert shamir.reconstruct({x: shares[x] for x in chosen}) == secret
            fewer = rng.sample(sorted(shares), t - 1)
            assert shamir.reconstruct({x: shares[x] for x in fewer}) != secret
        assert all(shamir.from_bytes(shamir.to_bytes(y)) == y for y in shares.values())
    with pytest.raises(ValueError):
        shamir.split(shamir.PRIME, [1, 2], 2)
    with pytest.raises(ValueError):
        shamir.from_bytes(b"\xff" * shamir.SHARE_BYTES)


def test_key_agreement_is_symmetric_and_the_aead_binds_its_context():
    a, b = keys.KeyPair.generate(), keys.KeyPair.generate()
    k = keys.agree(a.sk, b.pk, keys.INFO_MASK)
    assert k == keys.agree(b.sk, a.pk, keys.INFO_MASK) and len(k) == 32
    assert k != keys.agree(a.sk, b.pk, keys.INFO_ENCRYPTION)
    ad = keys.associated_data("s", 1, "alice", "bob")
    sealed = keys.seal(k, b"hello", ad)
    assert keys.open_sealed(k, sealed, ad) == b"hello"
    with pytest.raises(ValueError, match="authentication"):
        keys.open_sealed(k, sealed, keys.associated_data("s", 1, "bob", "alice"))
    with pytest.raises(ValueError):
        keys.agree(a.sk, bytes(32), keys.INFO_MASK)  # low-order point


@pytest.mark.parametrize("salt", [None, b"", b"s" * 40])
def test_the_hkdf_is_rfc_5869_as_the_cryptography_package_computes_it(salt):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    a, b = keys.KeyPair.generate(), keys.KeyPair.generate()
    shared = a.private.exchange(X25519PublicKey.from_public_bytes(b.pk))
    for secret in (shared, b"", bytes(range(77))):
        assert keys.hkdf(secret, salt, keys.INFO_MASK) == HKDF(
            algorithm=hashes.SHA256(), length=32, salt=salt, info=keys.INFO_MASK).derive(secret)
    assert keys.agree(a.sk, b.pk, keys.INFO_MASK, salt=salt) == HKDF(
        algorithm=hashes.SHA256(), length=32, salt=salt, info=keys.INFO_MASK).derive(shared)
    assert keys.mask_salt("s", 3) == keys.associated_data("s", 3, "", "")


def test_a_seed_expanded_without_its_prg_is_the_prgs_stream():
    seed, zeros = bytes(range(32)), bytes(8 * 1000)
    one, two = bytearray(len(zeros)), bytearray(len(zeros))
    PRG(seed).stream_into(zeros, one)
    PRG.expand_into(seed, zeros, two)
    assert one == two and torch.equal(torch.frombuffer(one, dtype=torch.int64),
                                      PRG(seed).uniform((1000,)))
    with pytest.raises(ValueError, match="32 bytes"):
        PRG.expand_into(b"short", zeros, two)


@pytest.mark.parametrize("n", [2, 3, 9, 12, 50, 200])
def test_harary_graph_is_symmetric_with_the_papers_degree(n):
    k = SecAggPlus().degree(n)
    log2 = (n - 1).bit_length()  # ceil(log2 n)
    assert k == (n - 1 if n <= 8 else min(n - 1, 2 * log2 + 2)) and (k % 2 == 0 or k == n - 1)
    order, nbrs = secaggplus.graph([f"w{i}" for i in range(n)], b"s" * 32, 4, k)
    assert sorted(order) == sorted(f"w{i}" for i in range(n))
    for u, near in nbrs.items():
        assert u not in near and len(near) == min(n - 1, k)
        assert all(u in nbrs[v] for v in near)
    if n == 50:
        assert k == 14  # 2 * ceil(log2 50) + 2
    assert secaggplus.graph(list(reversed(order)), b"s" * 32, 4, k) == (order, nbrs)
    if n > 3:  # another round, another permutation
        assert secaggplus.graph(order, b"s" * 32, 5, k)[0] != order


# -- the protocol ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_secure_sum_equals_the_plain_ring_sum(make_world, n):
    world = make_world(n)
    xs = vectors(world.ids, seed=n)
    total, contributors = secure_round(world, SecAggPlus(), xs)
    assert contributors == sorted(world.ids)
    assert torch.equal(total, ring_sum(xs.values()))


def test_two_rounds_of_one_session(make_world):
    world = make_world(5)
    agg = SecAggPlus(threshold=3)
    for round in (1, 2):
        xs = vectors(world.ids, seed=round)
        total, _ = secure_round(world, agg, xs, round=round)
        assert torch.equal(total, ring_sum(xs.values()))


def test_a_worker_that_drops_after_share_keys_is_left_out_exactly(make_world):
    world = make_world(5)
    xs = vectors(world.ids)
    gone = world.ids[2]
    total, contributors = secure_round(world, SecAggPlus(), xs, silent_in_fit={gone})
    assert contributors == sorted(set(world.ids) - {gone})
    assert torch.equal(total, ring_sum(xs[w] for w in contributors))


def test_a_worker_silent_at_unmasking_is_still_in_the_sum(make_world, caplog):
    world = make_world(5)
    xs = vectors(world.ids)
    world.silent[SecAggUnmask] = {world.ids[1]}
    with caplog.at_level("WARNING", logger="fedmq"):
        total, contributors = secure_round(world, SecAggPlus(), xs,
                                           silent_in_fit={world.ids[3]})
    assert world.ids[1] in contributors and world.ids[3] not in contributors
    assert torch.equal(total, ring_sum(xs[w] for w in contributors))
    # found by review: the round said nothing of either (right, but silent)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"did not answer stage 3 (e.g. {world.ids[1]!r}" in said
    assert f"dropped after sharing keys (e.g. {world.ids[3]!r})" in said


def test_a_worker_silent_in_stage_0_or_1_does_not_train(make_world):
    world = make_world(6)
    world.silent[SecAggSetup] = {world.ids[0]}
    world.silent[SecAggShareKeys] = {world.ids[1]}
    xs = vectors(world.ids)
    total, contributors = secure_round(world, SecAggPlus(), xs)
    assert contributors == world.ids[2:]
    assert torch.equal(total, ring_sum(xs[w] for w in contributors))


def test_too_many_drops_fail_the_round(make_world):
    world = make_world(5)  # k = 4, t = 3
    xs = vectors(world.ids)
    with pytest.raises(SecureAggregationError, match="fewer than the threshold 3"):
        secure_round(world, SecAggPlus(), xs, silent_in_fit=set(world.ids[:3]))
    world.silent[SecAggUnmask] = set(world.ids[:3])  # y arrived, too few shares
    with pytest.raises(SecureAggregationError, match="fewer than t = 3 shares of the secrets "
                                                     "of 5 workers.*3 of the 5 workers asked "
                                                     "refused or did not answer.*is gone"):
        secure_round(world, SecAggPlus(), xs)
    world.silent = {SecAggSetup: set(world.ids[:3])}
    with pytest.raises(SecureAggregationError, match="advertised keys"):
        secure_round(world, SecAggPlus(), xs)


# -- attacks: what the coordinator holds -------------------------------------------------------

def test_the_coordinator_cannot_recover_any_single_input(make_world):
    world = make_world(5)
    gone = world.ids[4]
    torch.manual_seed(1)
    xs = {w: torch.randint(-1000, 1000, (4096,), dtype=torch.int64) for w in world.ids}
    protected: dict = {}
    secure_round(world, SecAggPlus(), xs, silent_in_fit={gone}, protected_out=protected)
    for u, sent in protected.items():
        y, x = sent["masked"], xs[u]
        assert not torch.equal(y, x) and bool((y != x).all())
        assert abs(float(torch.corrcoef(torch.stack([y.double(), x.double()]))[0, 1])) < 0.1
        assert 0.45 < float((y < 0).double().mean()) < 0.55  # the top bit looks uniform
        assert float(y.double().abs().mean()) > 2 ** 60  # x is small; y spans the ring
    # every share the coordinator received, by whose secret and which kind
    held: dict = {}
    for worker, message, reply in world.kept:
        if isinstance(reply, SecAggUnmaskShares):
            for v in reply.shares:
                kind = "b" if v in message.survivors else "s"
                held.setdefault((v, kind), set()).add(worker)
        if isinstance(reply, SecAggEncryptedShares):  # relayed, never readable (the shares,
            # and the pairwise seed of an edge the sender agreed)
            assert all(len(c) - 12 - 16 in (2 * shamir.SHARE_BYTES,
                                            2 * shamir.SHARE_BYTES + secaggplus.SEED_BYTES)
                       for c in reply.ciphertexts.values())
    t = secaggplus.default_threshold(4)
    for u in protected:  # a survivor: b_u only, never its s^SK
        assert len(held.get((u, "s"), ())) == 0 and len(held[(u, "b")]) >= t
    assert len(held.get((gone, "b"), ())) < t and len(held[(gone, "s")]) >= t


def test_workers_refuse_to_reveal_both_shares_of_one_worker(make_world):
    world = make_world(4)
    agg = SecAggPlus()
    xs = vectors(world.ids)

    async def attack():
        deadline = time.time() + 30
        entries = await agg.begin_round(1, world.ids, world.request, deadline)
        for w, entry in entries.items():
            protect(world.session(w), entry, xs[w])
        a, b, c, d = world.ids
        with pytest.raises(ValueError, match="out of order"):  # a second masked input
            protect(world.session(a), entries[a], xs[a] + 1)
        # ask a for both shares of b: b's b-share and s^SK share
        with pytest.raises(Exception, match="both as survivors and dropped"):
            await world.request(a, SecAggUnmask(agg.session, 1, [a, b, c], [b]), 5)
        with pytest.raises(Exception, match="listed as dropped"):
            await world.request(a, SecAggUnmask(agg.session, 1, [b, c, d], [a]), 5)
        with pytest.raises(Exception, match="fewer than the threshold"):
            await world.request(a, SecAggUnmask(agg.session, 1, [a], [b, c, d]), 5)
        with pytest.raises(Exception, match="not neighbours"):
            await world.request(a, SecAggUnmask(agg.session, 1, [a, b, c, "zed"], []), 5)
        first = await world.request(a, SecAggUnmask(agg.session, 1, [a, b, c], [d]), 5)
        assert set(first.shares) == {a, b, c, d}
        # then d's self-mask share: refused (the sets changed)
        with pytest.raises(Exception, match="different survivors"):
            await world.request(a, SecAggUnmask(agg.session, 1, [a, b, c, d], []), 5)
        again = await world.request(a, SecAggUnmask(agg.session, 1, [a, b, c], [d]), 5)
        assert again.shares == first.shares
    asyncio.run(attack())


def test_a_tampered_ciphertext_is_refused_naming_its_sender(make_world):
    world = make_world(3)
    xs = vectors(world.ids)
    a, b, _ = world.ids

    def tamper(entries):
        ct = bytearray(entries[a]["ciphertexts"][b])
        ct[20] ^= 1
        entries[a]["ciphertexts"][b] = bytes(ct)

    with pytest.raises(ValueError, match=f"the shares from '{b}' were refused"):
        secure_round(world, SecAggPlus(), xs, tamper=tamper)

    def swap(entries):  # a ciphertext meant for someone else, relayed to a
        entries[a]["ciphertexts"][b] = entries[world.ids[2]]["ciphertexts"][b]

    with pytest.raises(ValueError, match=f"from '{b}' were refused"):
        secure_round(world, SecAggPlus(), xs, tamper=swap)


def test_stages_out_of_order_or_replayed_are_refused(make_world):
    world = make_world(3)
    agg = SecAggPlus()
    a = world.ids[0]
    order, nbrs = secaggplus.graph(world.ids, agg.seed, 1, 2)

    async def run():
        setup = SecAggSetup(agg.session, 1, order, nbrs[a], 2, 0)
        with pytest.raises(Exception, match="no such round"):
            await world.request(a, SecAggShareKeys(agg.session, 1, {}), 5)
        await world.request(a, setup, 5)
        with pytest.raises(Exception, match="stage 0 replayed"):
            await world.request(a, setup, 5)
        with pytest.raises(Exception, match="out of order"):
            await world.request(a, SecAggUnmask(agg.session, 1, order, []), 5)
        pks = {}
        for w in nbrs[a]:
            r = await world.request(w, SecAggSetup(agg.session, 1, order, nbrs[w], 2, 0), 5)
            pks[w] = [r.c_pk, r.s_pk]
        await world.request(a, SecAggShareKeys(agg.session, 1, pks), 5)
        with pytest.raises(Exception, match="out of order"):
            await world.request(a, SecAggShareKeys(agg.session, 1, pks), 5)
        with pytest.raises(Exception, match="stage 0 replayed"):  # an older round
            await world.request(a, SecAggSetup(agg.session, 0, order, nbrs[a], 2, 0), 5)
    asyncio.run(run())


def test_bad_setups_are_refused(make_world):
    world = make_world(3)
    a, b, c = world.ids

    async def run():
        for bad, says in [(SecAggSetup("s1", 1, [a, b, c], [b, c], 4, 0), "threshold"),
                          (SecAggSetup("s2", 1, [b, c], [b], 2, 0), "must be in the round"),
                          (SecAggSetup("s3", 1, [a, b, c], [a, b], 2, 0), "must be in the round"),
                          (SecAggSetup("", 1, [a, b, c], [b, c], 2, 0), "non-empty str"),
                          (SecAggSetup("s4", 1, [a, b, c], [b, c], 2, 1 << 40), "length")]:
            with pytest.raises(Exception, match=says):
                await world.request(a, bad, 5)
    asyncio.run(run())


def test_a_stranger_is_refused(make_world):
    world = make_world(3, principal="mallory")
    with pytest.raises(fedmq.AccessDeniedError, match="may not send SecAggSetup"):
        asyncio.run(world.request(world.ids[0], SecAggSetup("s", 1, world.ids, world.ids[1:],
                                                            2, 0), 5))
    with pytest.raises(fedmq.AccessDeniedError, match="may not send SecAggUnmask"):
        asyncio.run(world.request(world.ids[0], SecAggUnmask("s", 1, world.ids, []), 5))


def test_worker_state_is_bounded(make_world):
    world = make_world(2)
    agg = SecAggPlus()
    for round in range(1, 8):
        secure_round(world, agg, vectors(world.ids, length=3), round=round)
    mine = [k for k in secaggplus._STATES if k[2] == agg.session]
    # protocol rounds 1-7 ran (round 1 set up by its own messages, 2-7 ahead), and the Fit
    # of round 7 shared protocol round 8 and made the keys of 9: the last KEEP_ROUNDS = 3
    # are kept
    assert agg._seq == 9
    assert sorted({k[3] for k in mine}) == [7, 8, 9]
    assert len(secaggplus._STATES) <= secaggplus.MAX_STATES


# -- cost --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("n,length", [(3, 431080), (50, 7850)])
def test_cost(make_world, n, length, capsys):
    world = make_world(n)
    agg = SecAggPlus()
    xs = vectors(world.ids, length=length)
    times = {}

    async def run():
        deadline = time.time() + 120
        start = time.perf_counter()
        entries = await agg.begin_round(1, world.ids, world.request, deadline)
        times["begin_round"] = time.perf_counter() - start
        protected = {}
        start = time.perf_counter()
        for w, entry in entries.items():
            protected[w] = protect(world.session(w), entry, xs[w])
        times["protect per worker"] = (time.perf_counter() - start) / n
        start = time.perf_counter()
        total, _ = await agg.end_round(1, protected, world.request, deadline)
        times["end_round"] = time.perf_counter() - start
        return total
    total = asyncio.run(run())
    expected = functools.reduce(torch.add, xs.values())
    assert torch.equal(total, expected)
    with capsys.disabled():
        print(f"\nSecAgg+ cost n={n} L={length}: " +
              ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()))


# -- over RabbitMQ -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def secagg_workers(tmp_path_factory):
    """Three real `fedmq worker` processes on mnist5k (the seed's labels)."""
    from private_amqp import LABELS
    from worker_procs import WorkerProcesses

    procs = WorkerProcesses(tmp_path_factory.mktemp("secagg-workers"))
    ids = {f"sa-{who}": labels for who, labels in LABELS.items()}
    for w, labels in ids.items():
        procs.start(w, "--dataset", "mnist5k", "--labels", labels, wait=False)
    for w in ids:
        procs.wait_consuming(w, procs.procs[w], timeout=120)
    yield procs, ids
    procs.stop_all(delete_queues=True)


@pytest.mark.amqp
@pytest.mark.slow
def test_secure_sum_over_rabbitmq_with_real_workers(secagg_workers):
    """Real rounds (the coordinator, Fit protecting the update): the unmasked sum is exactly
    the ring sum of the workers' encoded updates (from plain FedAvg rounds of the same config),
    so the model is FedAvg's; a worker SIGKILLed after it sent its masked input (round 2,
    before unmasking) is still in the exact sum."""
    from fedmq.fl.config import initial_weights
    from fedmq.fl.messages import FitRes
    from fedmq.fl.secure import make_private_rounds
    from fedmq.secagg import quantize
    from private_amqp import config, max_diff, rounds, summary

    procs, ids = secagg_workers
    workers = list(ids)
    victim = workers[1]
    cfg = config(rounds=2)
    plain_frames: list = []
    plain, plain_weights, _ = rounds(cfg, workers, received=plain_frames)
    privacy = make_private_rounds("secagg+", seed=cfg.seed)
    driver = privacy.aggregator
    end_round = driver.end_round
    totals: dict = {}

    async def kill_then_unmask(round, protected, request, deadline):
        if round == 2:  # its masked input has arrived; unmasking has not begun
            await asyncio.to_thread(procs.kill, victim)
        totals[round] = await end_round(round, protected, request, deadline)
        return totals[round]
    driver.end_round = kill_then_unmask
    try:
        records, weights, _ = rounds(cfg, workers, privacy)
    finally:
        if victim not in procs.procs:
            procs.start(victim, "--dataset", "mnist5k", "--labels", ids[victim])
    assert all(r.status == "ok" and sorted(r.workers) == sorted(workers) and not r.failed
               for r in plain + records), summary(plain + records)
    fits = [v for v in (getattr(fedmq.serde.decode(f), "value", None) for f in plain_frames)
            if isinstance(v, FitRes)]
    assert len(fits) == 6
    # round 1: from the same global weights, the unmasked sum is the plain updates' ring sum
    start = initial_weights("mnist-logreg", cfg.seed)
    names = list(start)
    vectors = [quantize.encode(quantize.flatten(r.weights, names) -
                               quantize.flatten(start, names), r.num_examples)[0]
               for r in fits if r.round == 1]
    assert torch.equal(totals[1][0], ring_sum(vectors))
    # round 2 (the victim killed before unmasking): all three counted, FedAvg's model
    assert totals[1][1] == totals[2][1] == sorted(workers)
    for round in (1, 2):
        assert max_diff(plain_weights[round - 1], weights[round - 1]) < 1e-5


# -- review findings (a coordinator that deviates) ---------------------------------------------

def test_found_by_review_withheld_ciphertexts_make_the_worker_refuse_to_mask(make_world):
    """r02: a coordinator relaying fewer than t-1 ciphertexts to u (so fewer than t holders of
    u's shares) could unmask y_u from b_u alone; u refuses stage 2 (Bell et al. Fig. 2: abort
    when |U2| < t) and leaves the round; with t-1 it masks."""
    world = make_world(5)  # complete graph, k = 4, t = 3
    agg = SecAggPlus()
    xs = vectors(world.ids, length=16)
    t = secaggplus.default_threshold(4)

    async def run():
        entries = await agg.begin_round(1, world.ids, world.request, time.time() + 30)
        target, short, enough = sorted(entries)[:3]
        assert all(len(e["ciphertexts"]) == 4 for e in entries.values())
        entries[target]["ciphertexts"] = {}
        kept = sorted(entries[short]["ciphertexts"])[:t - 2]
        entries[short]["ciphertexts"] = {v: entries[short]["ciphertexts"][v] for v in kept}
        kept = sorted(entries[enough]["ciphertexts"])[:t - 1]
        entries[enough]["ciphertexts"] = {v: entries[enough]["ciphertexts"][v] for v in kept}
        for u, got in [(target, 0), (short, t - 2)]:
            with pytest.raises(ValueError, match=f"shares from {got} neighbours reached "
                                                 f"'{u}'.*fewer than the threshold {t}"):
                protect(world.session(u), entries[u], xs[u])
            state = secaggplus._STATES[(u, "coord", agg.session, 1)]
            assert state.b is None and state.s is None and state.held == {}
            with pytest.raises(ValueError, match="refused stage 2"):  # it left the round
                protect(world.session(u), entries[u], xs[u])
            with pytest.raises(Exception, match="refused stage 2"):
                await world.request(u, SecAggUnmask(agg.session, 1, sorted(entries), []), 5)
        y = protect(world.session(enough), entries[enough], xs[enough])["masked"]
        assert y.shape == (16,) and not torch.equal(y, xs[enough])
    asyncio.run(run())


def test_found_by_review_a_threshold_below_a_majority_of_the_holders_is_refused(make_world):
    """r03: with t <= (k+1)/2 two disjoint groups of t holders could reveal b_v and s_v^SK;
    workers refuse such a SecAggSetup and the coordinator refuses such a configuration."""
    world = make_world(5)  # k = 4: 5 holders, t from 3 to 5
    a = world.ids[0]

    async def setups():
        for t in (2, 6):
            with pytest.raises(Exception, match=r"threshold must be in \[3, 5\].*strict "
                                                r"majority of the 5"):
                await world.request(a, SecAggSetup(f"maj{t}", 1, world.ids, world.ids[1:],
                                                   t, 0), 5)
        reply = await world.request(a, SecAggSetup("maj3", 1, world.ids, world.ids[1:], 3, 0), 5)
        assert len(reply.c_pk) == keys.KEY_BYTES
        # k = 1 (2 holders): only t = 2; k = 3 (4 holders): t = 3 or 4
        with pytest.raises(Exception, match=r"\[3, 4\]"):
            await world.request(a, SecAggSetup("maj-k3", 1, world.ids, world.ids[1:4], 2, 0), 5)
    asyncio.run(setups())
    with pytest.raises(SecureAggregationError, match="from 3 to 5"):
        secure_round(world, SecAggPlus(threshold=2), vectors(world.ids))
    assert not [m for _, m, _ in world.kept if isinstance(m, SecAggSetup) and m.threshold == 2]
    xs = vectors(world.ids)
    total, _ = secure_round(world, SecAggPlus(threshold=5), xs)
    assert torch.equal(total, ring_sum(xs.values()))


@pytest.mark.parametrize("n", [2, 3, 5, 9, 20, 50])
def test_found_by_review_check_threshold_allows_exactly_a_strict_majority(n):
    """r03/r20: check_threshold(n) accepts exactly the t with (k+1)/2 < t <= k+1 for the
    round's k (reference: the definition), never clamping (20 of 20 workers: k = 12)."""
    k = SecAggPlus().degree(n)
    SecAggPlus().check_threshold(n)  # the default always suits
    for t in range(2, n + 3):
        agg = SecAggPlus(threshold=t)
        if 2 * t > k + 1 and t <= k + 1:
            agg.check_threshold(n)
            assert agg.fewest_contributors(n) == t
        else:
            with pytest.raises(ValueError, match=f"from {(k + 1) // 2 + 1} to {k + 1}"):
                agg.check_threshold(n)
    if n == 20:
        assert k == 12
        with pytest.raises(ValueError, match="threshold 20 does not suit 20 workers"):
            SecAggPlus(threshold=20).check_threshold(20)
    with pytest.raises(ValueError, match="at least 2 workers"):
        SecAggPlus().check_threshold(1)


def test_found_by_review_huge_setups_are_refused_and_shamir_points_are_a_dict(make_world):
    """r07: a setup listing more than MAX_WORKERS workers or MAX_NEIGHBOURS neighbours is
    refused; at the caps, ShareKeys stays cheap (x() is a dict look-up)."""
    assert secaggplus.MAX_WORKERS == 10_000 and secaggplus.MAX_NEIGHBOURS == 1_024
    world = make_world(1)
    a = world.ids[0]
    others = [f"x{i:05d}" for i in range(secaggplus.MAX_WORKERS)]
    k, ids = secaggplus.MAX_NEIGHBOURS, []

    async def run():
        with pytest.raises(Exception, match="at most 10000 workers in a round, got 10001"):
            await world.request(a, SecAggSetup("big1", 1, [a, *others], others[:4], 4, 0), 5)
        ids[:] = [a, *others[:-1]]  # 10 000 workers
        with pytest.raises(Exception, match="at most 1024 neighbours, got 1025"):
            await world.request(a, SecAggSetup("big2", 1, ids, ids[1:k + 2], k // 2 + 1, 0), 5)
        await world.request(a, SecAggSetup("big3", 1, ids, ids[1:k + 1], k // 2 + 1, 0), 5)
        pks = {v: [keys.KeyPair.generate().pk, keys.KeyPair.generate().pk]
               for v in ids[1:k + 1]}
        start = time.perf_counter()
        reply = await world.request(a, SecAggShareKeys("big3", 1, pks), 60)
        assert len(reply.ciphertexts) == k and time.perf_counter() - start < 10
    asyncio.run(run())
    state = secaggplus._STATES[(a, "coord", "big3", 1)]
    # found by review (second pass): only the holders' points are kept, not the round's list
    assert state.points == {w: ids.index(w) + 1 for w in ids[:k + 1]} and not state.workers
    assert state.x(ids[k]) == k + 1


def test_found_by_review_a_worker_short_of_shares_is_not_asked_to_mask(make_world):
    """r02, coordinator side: a worker whose neighbours all dropped in stage 1 got no
    ciphertexts; it would refuse stage 2, so it gets no Fit entry, and the others' round
    still sums exactly (no s^SK is needed for it: no survivor masked with it)."""
    world = make_world(12)
    agg = SecAggPlus(neighbours=4)  # k = 4, t = 3
    order, nbrs = secaggplus.graph(world.ids, agg.seed, 1, 4)
    lonely = order[0]
    world.silent[SecAggShareKeys] = set(nbrs[lonely])
    xs = vectors(world.ids)
    seen: dict = {}
    total, contributors = secure_round(world, agg, xs, tamper=seen.update)
    assert lonely not in seen and not set(nbrs[lonely]) & set(seen)
    assert contributors == sorted(set(world.ids) - {lonely, *nbrs[lonely]}) == sorted(seen)
    assert torch.equal(total, ring_sum(xs[w] for w in contributors))


# -- the next round's stages run ahead (SecAggPlus(ahead=True)) --------------------------------

def _stage_messages(world, since):
    return [type(m).__name__ for _, m, _ in world.kept[since:]]


@pytest.mark.parametrize("premask", [True, False])
def test_stages_run_ahead_across_rounds_with_dropouts_keep_every_sum_exact(make_world,
                                                                          monkeypatch, premask):
    """Round 1 sets up by messages (its stage 0 also makes the next protocol round's keys);
    later rounds use the setup shared in the last round's Fits when the workers are the same
    and all shared, and fall back to messages otherwise. A worker silent at unmasking is
    counted in its round (the others stand in for its shares) and its next round still runs
    ahead; one silent in the Fit is recovered (its s^SK) and back in the next round (set up
    by messages). Masks summed ahead in stage 1 (premask) or in stage 2 give the same sums."""
    if not premask:
        monkeypatch.setattr(secaggplus, "PREMASK_ELEMENTS", 0)
    world = make_world(8)
    agg = SecAggPlus(neighbours=4, length=257)
    late, quitter = world.ids[2], world.ids[5]
    plan = {3: dict(unmask_silent={late}), 5: dict(fit_silent={quitter})}
    for round in range(1, 8):
        xs = vectors(world.ids, seed=round)
        since = len(world.kept)
        world.silent[SecAggUnmask] = plan.get(round, {}).get("unmask_silent", set())
        got = {}
        total, contributors = secure_round(world, agg, xs, round=round, protected_out=got,
                                           silent_in_fit=plan.get(round, {}).get("fit_silent",
                                                                                 ()))
        assert torch.equal(total, ring_sum(xs[w] for w in contributors)), round
        kinds = _stage_messages(world, since)
        set_up_by_messages = "SecAggSetup" in kinds
        if round == 3:
            assert late in contributors  # its masked input is in, its shares are not needed
        if round == 5:  # shared ahead in round 4 by all; the quitter went silent in the Fit
            assert not set_up_by_messages and quitter not in got
            assert contributors == sorted(set(world.ids) - {quitter})
        if round == 6:  # shared in round 5 by everyone but the quitter: by messages
            assert set_up_by_messages and contributors == world.ids
        if round in (2, 3, 4, 7):
            assert not set_up_by_messages, (round, kinds)
            assert contributors == world.ids
        assert all(type(p.get("next_keys")) is bytes and len(p["next_keys"]) == 64
                   for p in got.values())
        assert all(isinstance(p.get("next_ciphertexts"), dict) for p in got.values())
    assert all(state.premask is None for key, state in secaggplus._STATES.items()
               if key[2] == agg.session and state.stage >= 2)


def test_stages_ahead_refused_by_a_worker_leave_it_out_of_the_next_round_only(make_world):
    """A next round's setup a worker refuses in its Fit (here: a threshold that is no strict
    majority) comes back as next_refused beside its masked input: this round is right, and
    the next round sets up again by messages, with that worker."""
    world = make_world(5)
    agg = SecAggPlus(length=64)
    xs = vectors(world.ids, length=64)
    secure_round(world, agg, xs, round=1)

    def bad_threshold(entries):
        entries[world.ids[0]]["share"] = {**entries[world.ids[0]]["share"], "threshold": 1}
    got = {}
    total, contributors = secure_round(world, agg, xs, round=2, tamper=bad_threshold,
                                       protected_out=got)
    assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
    assert "threshold" in got[world.ids[0]]["next_refused"]
    assert "next_ciphertexts" not in got[world.ids[0]]
    since = len(world.kept)
    total, contributors = secure_round(world, agg, xs, round=3)
    assert torch.equal(total, ring_sum(xs[w] for w in contributors))
    assert "SecAggSetup" in _stage_messages(world, since) and contributors == world.ids


def test_a_replayed_or_foreign_next_setup_is_refused(make_world):
    """The keys made ahead serve one setup: a Fit whose share names a round other than the
    next one, or a round this worker made no keys for, is refused (next_refused, its masked
    input sent all the same), and a stage 0 for a round made ahead is a replay."""
    world = make_world(3)
    agg = SecAggPlus(length=8)
    xs = vectors(world.ids, length=8)
    secure_round(world, agg, xs, round=1)
    w = world.ids[0]
    nxt = agg._prepared.round.seq
    with pytest.raises(Exception, match="stage 0 replayed"):
        asyncio.run(world.request(w, SecAggSetup(agg.session, nxt, world.ids, world.ids[1:], 2,
                                                 8), 5))
    session = world.session(w)
    with pytest.raises(ValueError, match="no keys made ahead"):
        secaggplus._share_ahead(session, agg.session,
                                SecAggSetup(agg.session, nxt + 5, world.ids, world.ids[1:], 2,
                                            8), {})

    def foreign(entries):
        for u, entry in entries.items():
            share = entry["share"]
            entry["share"] = {**share, "round": share["round"] + 1} if u == w else \
                {**share, "extra": 1}
    got = {}
    total, contributors = secure_round(world, agg, xs, round=2, tamper=foreign,
                                       protected_out=got)
    assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
    assert "next protocol round" in got[w]["next_refused"]
    assert all("has the fields" in got[u]["next_refused"] for u in world.ids[1:])


def _unmasks(world, since):
    return [(w, m) for w, m, _ in world.kept[since:] if isinstance(m, SecAggUnmask)]


def test_unmask_asks_only_the_workers_whose_shares_it_needs(make_world):
    """Stage 3 asks a covering subset (each b_u from t+1 holders), not every worker: 50
    workers (k=14, t=8) are asked about 31 times, and every sum is exact."""
    world = make_world(50)
    agg = SecAggPlus(length=16)
    for round in (1, 2, 3):
        xs = vectors(world.ids, length=16, seed=round)
        since = len(world.kept)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
        asked = [w for w, _ in _unmasks(world, since)]
        assert len(asked) == len(set(asked)) and 27 <= len(asked) <= 36, len(asked)


def test_unmask_plan_covers_every_target_t_plus_one_times():
    rng = random.Random(5)
    ids = [f"w{i}" for i in range(60)]
    for k in (4, 10, 14, 59):
        t = secaggplus.default_threshold(k)
        order, nbrs = secaggplus.graph(ids, b"p" * 32, rng.randrange(100), k)
        targets = {v: [v, *nbrs[v]] for v in order}
        for asked in ((), tuple(rng.sample(ids, 5))):
            plan = secaggplus.unmask_plan(targets, t, asked)
            assert not set(plan) & set(asked) and len(plan) == len(set(plan))
            chosen = {*plan, *asked}
            assert all(sum(u in chosen for u in holders) >= min(t + 1, len(holders))
                       for holders in targets.values())
            if k < 59 and not asked:
                assert len(plan) < len(ids)  # not everyone
    # a large round (the plan is O(sum of holders): 4 000 workers, k = 26)
    many = [f"w{i}" for i in range(4000)]
    order, nbrs = secaggplus.graph(many, b"q" * 32, 1, 26)
    targets = {v: [v, *nbrs[v]] for v in order}
    plan = set(secaggplus.unmask_plan(targets, 14))
    assert all(sum(u in plan for u in holders) >= 15 for holders in targets.values())
    assert len(plan) < 3000
    # a target with fewer holders than t+1 gets all of them
    assert sorted(secaggplus.unmask_plan({"a": ["a", "b"], "b": ["b"]}, 3)) == ["a", "b"]


@pytest.mark.parametrize("silent", ["none", "fit", "unmask"])
def test_unmasks_sent_during_the_fits_keep_every_sum_exact(make_world, silent):
    """`masked` sends a worker's Unmask as soon as its closed neighbourhood has masked (all
    survivors, nobody dropped): with nobody silent, every Unmask of the round goes out
    during the Fits and end_round sends none; a worker silent in the Fit holds back only
    its neighbours' (end_round asks them, with it dropped); one silent at unmasking is
    stood in for. The lists sent early are the lists end_round would send."""
    world = make_world(20)
    agg = SecAggPlus(length=32)
    quiet = world.ids[7]
    secure_round(world, agg, vectors(world.ids, length=32), round=1)
    for round in (2, 3):
        xs = vectors(world.ids, length=32, seed=round)
        world.silent[SecAggUnmask] = {quiet} if silent == "unmask" else set()
        early_sent = []
        real = agg.masked

        def spy(*args):
            before = len(agg._rounds[args[0]].asking.sent) if agg._rounds.get(args[0]) \
                and agg._rounds[args[0]].asking else 0
            real(*args)
            st = agg._rounds[args[0]]
            early_sent.extend(list(st.asking.sent)[before:] if st.asking else [])
        agg.masked = spy
        since = len(world.kept)
        total, contributors = secure_round(
            world, agg, xs, round=round, early=True,
            silent_in_fit={quiet} if silent == "fit" else ())
        agg.masked = real
        assert torch.equal(total, ring_sum(xs[w] for w in contributors))
        assert contributors == (sorted(set(world.ids) - {quiet}) if silent == "fit"
                                else world.ids)
        sent = _unmasks(world, since)
        assert len({w for w, _ in sent}) == len(sent)  # nobody asked twice
        if silent == "none":
            assert early_sent and set(early_sent) == {w for w, _ in sent}
        if silent == "fit":  # nobody whose neighbourhood holds the quiet one went early
            state_nbrs = {w for w, m in sent if quiet in m.dropped}
            assert state_nbrs and not state_nbrs & set(early_sent)
            assert all(not m.dropped for w, m in sent if w in early_sent)
        world.silent[SecAggUnmask] = set()


@pytest.mark.parametrize("sessions", [6, 12])
def test_found_by_review_concurrent_sessions_keep_the_rounds_they_are_unmasking(make_world,
                                                                               sessions):
    """Several SecAgg+ sessions on the same workers (one coordinator principal's concurrent
    trainings), rounds interleaved: every session's begin_round, every Fit, then every
    end_round. Each holds up to 3 states per worker; beyond MAX_STATES_PER_WORKER what can
    be set up again by messages (keys made ahead, rounds shared but not masked) is forgotten
    before a round awaiting stage 3: every round of every session sums exactly."""
    world = make_world(4)
    aggs = [SecAggPlus(length=8) for _ in range(sessions)]

    async def interleaved(round, xs):
        deadline = time.time() + 30
        entries = [await a.begin_round(round, world.ids, world.request, deadline)
                   for a in aggs]
        protected = [{w: protect(world.session(w), entry, xs[w]) for w, entry in e.items()}
                     for e in entries]
        return [await a.end_round(round, p, world.request, deadline)
                for a, p in zip(aggs, protected)]
    for round in (1, 2, 3):
        xs = vectors(world.ids, length=8, seed=round)
        for total, contributors in asyncio.run(interleaved(round, xs)):
            assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
    assert all(len(secaggplus._BY_WORKER[(w, "coord")]) <= secaggplus.MAX_STATES_PER_WORKER
               for w in world.ids)


@pytest.mark.parametrize("n", [3, 4])
def test_found_by_review_a_hung_holder_in_a_small_round_costs_two_graces_not_the_deadline(
        make_world, monkeypatch, n):
    """With 3 or 4 workers every holder is in the first wave and t+1 shares need them all:
    one that never answers stage 3 holds the round for the first wave's grace and the
    second's, then t shares do (no cross-check), not until the deadline."""
    monkeypatch.setattr(secaggplus, "UNMASK_WAVE_WAIT", 0.3)
    world = make_world(n)
    agg = SecAggPlus(length=8)
    hung = world.ids[1]
    real = world.request

    async def hangs(worker, message, timeout):
        if worker == hung and isinstance(message, SecAggUnmask):
            await asyncio.sleep(timeout)
            raise TimeoutError(f"{worker} hung")
        return await real(worker, message, timeout)
    world.request = hangs
    xs = vectors(world.ids, length=8)
    started = time.monotonic()
    total, contributors = secure_round(world, agg, xs)  # its deadline: 60 s
    assert time.monotonic() - started < 5
    assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))


def test_the_unmask_is_light_and_the_setups_are_not():
    """A service answers SecAggUnmask on its event loop (dict lookups only), not the
    stages that compute (key agreements, masks)."""
    from fedmq import messages as m
    load_extensions(("secagg",))
    worker = Worker("w", policy=POLICY)

    def env(message):
        return m.Envelope(m.WIRE_VERSION, "coord", message)
    assert worker.is_light(env(SecAggUnmask("s", 1, ["w"], [])))
    assert not worker.is_light(env(SecAggSetup("s", 1, ["w", "v"], ["v"], 2, 0)))
    assert not worker.is_light(env(SecAggShareKeys("s", 1, {})))


def test_found_by_review_many_workers_in_one_process_keep_their_states(make_world):
    """State bounds are per worker (MAX_STATES_PER_WORKER), not one cap shared by every worker a
    process hosts: 140 in-process workers, each keeping this round's state and the next one's,
    finish every round with every worker."""
    world = make_world(140)
    agg = SecAggPlus(length=8)
    for round in (1, 2, 3):
        xs = vectors(world.ids, length=8, seed=round)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == sorted(world.ids) and torch.equal(total, ring_sum(xs.values()))


def test_found_by_review_channel_keys_and_states_stay_bounded(make_world, monkeypatch):
    """A coordinator naming ever new neighbours, in ever new sessions, grows neither the
    agreed channel keys nor one worker's round states past their bounds."""
    monkeypatch.setattr(secaggplus, "MAX_CHANNEL_KEYS", 50)
    monkeypatch.setattr(secaggplus, "MAX_STATES_PER_WORKER", 4)
    world = make_world(1)
    me, session = world.ids[0], world.session(world.ids[0])
    for s in range(6):
        for rnd in (1, 2, 3):
            others = [f"n{s}_{rnd}_{i}" for i in range(30)]
            secaggplus.advertise_keys(session, SecAggSetup(f"s{s}", rnd, [me, *others], others,
                                                           16, 0))
            secaggplus.share_keys(session, SecAggShareKeys(f"s{s}", rnd, {
                v: [keys.KeyPair.generate().pk, keys.KeyPair.generate().pk] for v in others}))
            assert len(secaggplus._CHANNEL_KEYS) <= 50
            assert sum(map(len, secaggplus._KEYS_OF.values())) == \
                len(secaggplus._CHANNEL_KEYS)  # the index of end_session, as bounded
            assert sum(k[0] == me for k in secaggplus._STATES) <= 4


def test_found_by_review_a_prepare_other_than_the_next_round_is_refused(make_world):
    """A Fit entry whose "prepare" is not the round after next (one far ahead would make the
    worker forget the round it is masking, or refuse every later setup) is refused before the
    worker masks, and leaves its round state untouched for the coordinator's retry."""
    world = make_world(3)
    agg = SecAggPlus(length=4)
    xs = vectors(world.ids, length=4)

    async def run():
        entries = await agg.begin_round(1, world.ids, world.request, time.time() + 30)
        w = world.ids[0]
        for bad in (entries[w]["round"] + 3, 2 ** 40, entries[w]["round"],
                    entries[w]["round"] + 1, "x"):
            with pytest.raises(ValueError, match="protocol round after next"):
                protect(world.session(w), {**entries[w], "prepare": bad}, xs[w])
        protected = {u: protect(world.session(u), e, xs[u]) for u, e in entries.items()}
        return await agg.end_round(1, protected, world.request, time.time() + 30)
    total, contributors = asyncio.run(run())
    assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))


def test_found_by_review_too_few_keys_says_how_many_advertised(make_world):
    world = make_world(4)
    world.silent[SecAggSetup] = set(world.ids[1::2])
    with pytest.raises(SecureAggregationError, match="2 of 4 workers advertised keys, 0 of "
                                                     "them with at least t-1 = 2 neighbours"):
        secure_round(world, SecAggPlus(threshold=3), vectors(world.ids))


def test_premasks_stay_within_their_budget_and_are_released(make_world, monkeypatch):
    """Masks summed ahead (premask) take at most PREMASK_BUDGET bytes in a process; workers
    beyond it sum their masks in stage 2, with the same sums, and every premask is released
    once used."""
    with secaggplus._LOCK:  # other tests' rounds set up ahead are forgotten: a budget of 3
        for key in list(secaggplus._STATES):
            secaggplus._evict(key)
    assert secaggplus._PREMASK_BYTES[0] == 0
    monkeypatch.setattr(secaggplus, "PREMASK_BUDGET", 3 * 8 * 64)
    world = make_world(6)
    agg = SecAggPlus(length=64, ahead=False)
    seen = []
    real = secaggplus._mask_input

    def spy(me, state, *args):
        seen.append(state.premask is not None)
        assert secaggplus._PREMASK_BYTES[0] <= secaggplus.PREMASK_BUDGET
        return real(me, state, *args)
    monkeypatch.setattr(secaggplus, "_mask_input", spy)
    for round in (1, 2):
        xs = vectors(world.ids, length=64, seed=round)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
        held = [st.premask.numel() * 8 for st in secaggplus._STATES.values()
                if st.premask is not None]
        assert secaggplus._PREMASK_BYTES[0] == sum(held)  # the books match what is held
        assert not any(st.premask is not None for k, st in secaggplus._STATES.items()
                       if k[2] == agg.session)
    # 3 a round fit, the budget left the others out
    assert seen.count(True) == 6 and seen.count(False) == 6


def test_found_by_review_a_worker_whose_channel_pair_was_forgotten_agrees_anew(make_world):
    """Agreed channel keys are kept under both ends' public keys: when a worker's channel pair
    is forgotten (the process's LRU of pairs, or its TTL) and drawn anew, it does not reuse
    the keys agreed with the old one (its neighbours would refuse its shares, every round)."""
    world = make_world(4)
    agg = SecAggPlus(length=16)
    for round in range(1, 6):
        if round == 3:
            for key in [k for k in secaggplus._CHANNELS if k[0] == world.ids[0]]:
                del secaggplus._CHANNELS[key]
        xs = vectors(world.ids, length=16, seed=round)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values())), round


def test_found_by_review_a_round_in_progress_outlives_the_ttl_between_its_stages(make_world,
                                                                                monkeypatch):
    """The TTL counts from a state's last use, not its creation: a round set up ahead (in the
    previous round's messages), then trained for longer than the TTL in all, keeps its state
    while each gap between its stages is shorter."""
    monkeypatch.setattr(secaggplus, "STATE_TTL", 1.0)
    world = make_world(3)
    agg = SecAggPlus(length=8)

    async def one(round, xs):  # a protocol round lives 2 rounds and more: over 1.5 s
        entries = await agg.begin_round(round, world.ids, world.request, time.time() + 30)
        await asyncio.sleep(0.3)  # training
        protected = {u: protect(world.session(u), e, xs[u]) for u, e in entries.items()}
        await asyncio.sleep(0.3)
        return await agg.end_round(round, protected, world.request, time.time() + 30)
    for round in (1, 2, 3):
        xs = vectors(world.ids, length=8, seed=round)
        total, contributors = asyncio.run(one(round, xs))
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))


def test_found_by_review_setups_with_long_ids_are_refused(make_world):
    world = make_world(2)
    a, b = world.ids
    with pytest.raises(Exception, match="1-256 characters"):
        asyncio.run(world.request(a, SecAggSetup("long", 1, [a, b, "x" * 257], [b], 2, 0), 5))


def test_found_by_review_premasks_of_setups_never_used_are_released(make_world):
    """A round set up ahead but not used (the coordinator set up anew) gives its premask back
    to the budget as soon as the worker shares a newer round of the session."""
    world = make_world(4)
    agg = SecAggPlus(length=32)

    def refused(entries):  # round 2's setup made ahead lacks the shares of ids[1]
        entries[world.ids[1]]["share"] = {**entries[world.ids[1]]["share"], "threshold": 1}
    secure_round(world, agg, vectors(world.ids, length=32), round=1, tamper=refused)
    secure_round(world, agg, vectors(world.ids, length=32, seed=2), round=2)  # set up anew
    # only the round shared ahead in round 2's Fits holds premasks; the books match
    holding = {k[3] for k, st in secaggplus._STATES.items()
               if k[2] == agg.session and st.premask is not None}
    assert holding == {agg._prepared.round.seq}
    assert secaggplus._PREMASK_BYTES[0] == sum(st.premask.numel() * 8 for st in
                                               secaggplus._STATES.values()
                                               if st.premask is not None)


# -- one X25519 agreement per edge (`agrees`) ------------------------------------------------

def test_agrees_picks_exactly_one_end_of_every_edge_and_splits_a_ring_evenly():
    for a in range(1, 40):
        for b in range(1, 40):
            if a != b:
                assert secaggplus.agrees(a, b) != secaggplus.agrees(b, a)
    for n, k in ((50, 14), (9, 4), (200, 16)):
        order, nbrs = secaggplus.graph([f"w{i}" for i in range(n)], b"s", 3, k)
        points = {w: i for i, w in enumerate(order, 1)}
        counts = [sum(secaggplus.agrees(points[u], points[v]) for v in nbrs[u]) for u in order]
        assert sum(counts) == n * k // 2  # every edge once
        assert max(counts) - min(counts) <= 2 and abs(sum(counts) / n - k / 2) < 1e-9


def _count_mask_agreements(monkeypatch):
    calls = []
    agree = keys.agree

    def counted(sk, pk, info, salt=None):
        if info == keys.INFO_MASK:
            calls.append(pk)
        return agree(sk, pk, info, salt)
    monkeypatch.setattr(keys, "agree", counted)
    return calls


@pytest.mark.parametrize("premask", [True, False])
def test_each_pairwise_seed_is_agreed_by_one_end_and_handed_to_the_other(make_world,
                                                                       monkeypatch, premask):
    """Stage 1 agrees the seeds of the edges a worker `agrees` and seals each into the
    ciphertext to the other end; stage 2 takes the handed seeds: over rounds run ahead, the
    workers agree n*k/2 seeds per round (one per edge, not two), and every sum is exact."""
    if not premask:
        monkeypatch.setattr(secaggplus, "PREMASK_ELEMENTS", 0)
    calls = _count_mask_agreements(monkeypatch)
    world = make_world(12)
    agg = SecAggPlus(neighbours=6, length=97)
    for round in range(1, 5):
        xs = vectors(world.ids, length=97, seed=round)
        before = len(calls)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))
        if round > 1:  # stage 1 of this round ran in the last round's Fits: one per edge
            assert len(calls) - before == 12 * 6 // 2, round


@pytest.mark.parametrize("rule", ["both ends", "neither end"])
def test_ends_that_disagree_on_who_agrees_still_mask_exactly(make_world, monkeypatch, rule):
    """The two ends of an edge decide from their Shamir points, which a coordinator could
    give them differently: when both agree the seed (each hands it over) or neither does (the
    receiver agrees it in stage 2), the masks still cancel: KA is symmetric."""
    monkeypatch.setattr(secaggplus, "agrees", lambda a, b: rule == "both ends")
    world = make_world(6)
    agg = SecAggPlus(length=64)
    for round in (1, 2):
        xs = vectors(world.ids, length=64, seed=round)
        total, contributors = secure_round(world, agg, xs, round=round,
                                           silent_in_fit={world.ids[3]})
        assert world.ids[3] not in contributors
        assert torch.equal(total, ring_sum(xs[w] for w in contributors))


def test_a_share_ciphertext_of_a_wrong_length_is_refused(make_world, monkeypatch):
    """A ciphertext whose plaintext is neither the two shares nor the shares and a seed is
    refused in stage 2, naming its sender."""
    world = make_world(3)
    seal = keys.seal
    monkeypatch.setattr(keys, "seal", lambda key, plain, ad: seal(key, plain + b"\0" * 5, ad))
    with pytest.raises(ValueError, match="the shares from '.*' are malformed"):
        secure_round(world, SecAggPlus(), vectors(world.ids))


def _end(world, agg):
    """Ends `agg`'s session on the world's workers; returns it (`agg` draws a new one)."""
    session = agg.session
    asyncio.run(agg.end_session(world.request, time.time() + 10))
    assert agg.session != session and agg.ended_sessions[-1] == session
    return session


def _held(session):
    return [key for key in secaggplus._STATES if key[2] == session]


def _fresh(world):
    """The world's workers as freshly started processes (earlier tests' runs left states
    under the same worker ids)."""
    with secaggplus._LOCK:
        for key in [k for k in secaggplus._STATES if k[0] in world.workers]:
            secaggplus._evict(key)


@pytest.mark.parametrize("ended", [True, False])
def test_found_by_review_successive_runs_do_not_push_out_the_live_rounds(make_world, ended):
    """Each finished run leaves states on a worker (its last round, never unmasked there, and
    the rounds it set up ahead), unless its coordinator ends the session (SecAggEnd, as
    `Coordinator.run` does). With 45 runs one after the other, ended or not (a coordinator
    that crashed), every round of every run keeps all its workers (the reviewer saw a worker
    fail every other round from run 31 on: "no such round")."""
    world = make_world(5)
    _fresh(world)
    for run in range(1, 46):
        agg = SecAggPlus(length=33)
        for round in range(1, 4):
            xs = vectors(world.ids, length=33, seed=round)
            total, contributors = secure_round(world, agg, xs, round=round)
            assert contributors == world.ids, (run, round)
            assert torch.equal(total, ring_sum(xs.values()))
        if ended:
            assert _held(_end(world, agg)) == []
    assert max((len(keys) for keys in secaggplus._BY_WORKER.values()), default=0) <= \
        secaggplus.MAX_STATES_PER_WORKER


@pytest.mark.parametrize("ended", [True, False])
def test_found_by_review_a_slow_round_survives_many_short_runs_meanwhile(make_world, ended):
    """A run whose training is slow (its round set up, not yet masked: two minutes) while 12
    short runs of the same principal start and finish on the same workers: its round keeps
    every worker when the short runs end their sessions, as `Coordinator.run` does (a rule
    that ranked sessions idle for a minute as left over lost the slow round on every
    worker). Runs that never end theirs (a coordinator's crash) leave states that compete
    with it beyond MAX_STATES_PER_WORKER; with no idle time it still keeps every worker."""
    world = make_world(4)
    _fresh(world)
    slow = SecAggPlus(length=8)
    for round in (1, 2, 3):
        xs = vectors(world.ids, length=8, seed=round)
        deadline = time.time() + 60
        entries = asyncio.run(slow.begin_round(round, world.ids, world.request, deadline))
        for key in _held(slow.session) if ended else ():  # it trains for two minutes
            secaggplus._STATES[key].used -= 120.0
        for _ in range(12):  # while the slow run trains
            fast = SecAggPlus(length=8)
            for r in (1, 2):
                total, contributors = secure_round(world, fast, vectors(world.ids, 8, r),
                                                   round=r)
                assert contributors == world.ids
            if ended:
                _end(world, fast)
        protected = {w: protect(world.session(w), entry, xs[w]) for w, entry in entries.items()}
        total, contributors = asyncio.run(slow.end_round(round, protected, world.request,
                                                         deadline))
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))


def test_ending_a_session_frees_its_states_on_every_worker_and_only_them(make_world):
    """SecAggEnd (from `SecAggPlus.end_session`): every worker forgets its states of the
    session and its channel pair, not those of another session; a stranger may not end a
    session, and a malformed one is refused."""
    world = make_world(5)
    a, b = SecAggPlus(length=16), SecAggPlus(length=16)
    for agg in (a, b):
        for round in (1, 2):
            secure_round(world, agg, vectors(world.ids, 16, round), round=round)
    assert _held(a.session) and _held(b.session)
    ended = _end(world, a)
    assert _held(ended) == [] and _held(b.session)
    assert not any(key[2] == ended for key in secaggplus._CHANNELS)
    assert not any(key[2] == ended for key in secaggplus._CHANNEL_KEYS)
    assert not any(key[2] == ended for key in secaggplus._KEYS_OF)
    assert any(key[2] == b.session for key in secaggplus._KEYS_OF)
    total, contributors = secure_round(world, b, vectors(world.ids, 16, 3), round=3)
    assert contributors == world.ids  # b goes on
    stranger = World(5, principal="mallory")
    stranger.workers, stranger.transport = world.workers, LocalTransport(world.workers,
                                                                          principal="mallory")
    stranger.engine = RequestEngine(stranger.transport, sender="mallory", timeout=None)
    with pytest.raises(fedmq.errors.AccessDeniedError):
        asyncio.run(stranger.engine.arequest(world.ids[0], secaggplus.SecAggEnd(b.session),
                                             timeout=10))
    with pytest.raises(fedmq.errors.RemoteError, match="session"):
        asyncio.run(world.engine.arequest(world.ids[0], secaggplus.SecAggEnd(""), timeout=10))
    assert _held(b.session)
    stranger.transport.close()


@pytest.mark.parametrize("stage", ["_mask_input", "_share"])
def test_found_by_review_a_fit_that_outlives_its_session_sets_nothing_up_again(make_world,
                                                                              monkeypatch,
                                                                              stage):
    """SecAggEnd is light: a worker answers it while its Fit is still masking (stage 2) or
    sharing the next round's keys ahead (its stage 1). That Fit then makes no keys ahead for
    the ended session, no channel pair and keeps no channel key (the reviewers saw all three
    come back, held by nothing that would end them); a setup of the ended session is
    refused; the aggregator's next run draws a new session and runs as before."""
    world = make_world(4)
    _fresh(world)
    agg = SecAggPlus(length=8)
    xs = vectors(world.ids, 8, 1)
    entries = asyncio.run(agg.begin_round(1, world.ids, world.request, time.time() + 60))
    assert all("prepare" in entry and "share" in entry for entry in entries.values())
    session = agg.session
    real = getattr(secaggplus, stage)

    def ended_meanwhile(me, *args):
        ended = asyncio.run(world.engine.arequest(me, secaggplus.SecAggEnd(session),
                                                  timeout=10))
        assert isinstance(ended, secaggplus.SecAggEnded)
        return real(me, *args)
    monkeypatch.setattr(secaggplus, stage, ended_meanwhile)
    for w, entry in entries.items():
        out = protect(world.session(w), entry, xs[w])
        assert "next_keys" not in out
    monkeypatch.undo()
    assert _held(session) == []
    assert not any(key[2] == session for key in secaggplus._CHANNELS)
    assert not any(key[2] == session for key in secaggplus._CHANNEL_KEYS)
    order, nbrs = secaggplus.graph(world.ids, agg.seed, 9, 2)
    with pytest.raises(fedmq.errors.RemoteError, match="has ended"):
        asyncio.run(world.request(world.ids[0], SecAggSetup(session, 9, order,
                                                             nbrs[world.ids[0]], 2, 0), 5))
    assert _held(session) == []
    asyncio.run(agg.end_session(world.request, time.time() + 10))
    assert agg.ended_sessions[0] == session and agg.session != session
    for round in (1, 2):
        xs = vectors(world.ids, 8, round)
        total, contributors = secure_round(world, agg, xs, round=round)
        assert contributors == world.ids and torch.equal(total, ring_sum(xs.values()))


def test_found_by_review_ended_sessions_are_kept_per_principal(make_world, monkeypatch):
    """A worker remembers the sessions each principal ended apart: another principal
    (granted `coordinator` too) ending many sessions of its own does not make the worker
    forget one that "coord" ended, nor can it end coord's session (states are per
    principal)."""
    monkeypatch.setattr(secaggplus, "ENDED_PER_PRINCIPAL", 8)
    world = make_world(3)
    _fresh(world)
    agg = SecAggPlus(length=8)
    secure_round(world, agg, vectors(world.ids, 8, 1), round=1)
    ended = _end(world, agg)
    me = world.ids[0]
    other = types.SimpleNamespace(id=me, principal="mallory", acting=None,
                                  require=lambda *args: None)
    for i in range(50):
        secaggplus.end_session(other, secaggplus.SecAggEnd(f"made-up-{i}"))
    with secaggplus._LOCK:
        assert secaggplus._ended((me, "coord", ended))
        assert not secaggplus._ended((me, "mallory", "made-up-0"))  # its own, bounded
        assert secaggplus._ended((me, "mallory", "made-up-49"))
    total, contributors = secure_round(world, agg, vectors(world.ids, 8, 2), round=2)
    assert contributors == world.ids


def test_a_stolen_channel_key_exposes_its_own_worker_only(make_world):
    """The documented bound of the session-long channel pair: with c_u^SK (stolen from u's
    memory) and every frame the coordinator kept, a thief opens every ciphertext u sent or
    received: u's own input follows (its outgoing shares rebuild s_u^SK and b_u), but of
    every other worker only one share of each secret and at most the one seed of its edge
    with u."""
    world = make_world(7)
    agg = SecAggPlus(neighbours=4, length=64)
    xs = vectors(world.ids, length=64)
    entries, protected = {}, {}
    secure_round(world, agg, xs, tamper=entries.update, protected_out=protected)
    sa = agg.session
    setup = {w: m for w, m, r in world.kept if isinstance(m, SecAggSetup)}
    seq, order = setup[world.ids[0]].round, setup[world.ids[0]].workers
    pk = {w: (r.c_pk, r.s_pk) for w, m, r in world.kept if isinstance(m, SecAggSetup)}
    sent = {w: r.ciphertexts for w, m, r in world.kept if isinstance(r, SecAggEncryptedShares)}
    t, size = setup[world.ids[0]].threshold, shamir.SHARE_BYTES
    u = world.ids[0]
    c_u = secaggplus._CHANNELS[(u, "coord", sa)][0]
    own, others, seeds = {}, {}, {}
    for v in setup[u].neighbours:
        key = keys.agree(c_u.sk, pk[v][0], keys.INFO_ENCRYPTION, salt=keys.session_salt(sa))
        out = keys.open_sealed(key, sent[u][v], keys.associated_data(sa, seq, u, v))
        inbound = keys.open_sealed(key, entries[u]["ciphertexts"][v],
                                   keys.associated_data(sa, seq, v, u))
        own[order.index(v) + 1] = shamir.from_bytes(out[:size])
        others.setdefault(v, []).append(inbound[:size])
        for plain in (out, inbound):
            if len(plain) > 2 * size:
                seeds[v] = plain[2 * size:]
    s_sk = shamir.reconstruct(dict(list(own.items())[:t])).to_bytes(32, "big")
    public = keys.private_key(s_sk).public_key().public_bytes_raw()
    assert public == pk[u][1]  # u's own s_u^SK: exposed, as documented
    assert all(len(shares) == 1 < t for shares in others.values())  # one share of each v
    assert set(seeds) <= set(setup[u].neighbours)  # only the seeds of u's own edges
    assert all(len(setup[v].neighbours) >= 2 for v in others)  # v keeps a seed unknown to it


def test_found_by_review_a_round_nobody_sets_up_says_why(make_world):
    """A coordinator whose principal the workers do not grant `coordinator` learns why its
    round failed from the error itself, not only from the workers' logs ("0 of 3 workers
    advertised keys" said nothing of the refusals)."""
    world = make_world(3, principal="mallory")
    with pytest.raises(SecureAggregationError, match="0 of 3 workers advertised keys.*"
                                                     "AccessDenied.*mallory"):
        asyncio.run(SecAggPlus(length=8).begin_round(1, world.ids, world.request,
                                                     time.time() + 10))
