"""The fast SMPC paths (issue 15, item 5): PRG-seed dealing (every party but the last derives
its shares from a seed; the primitives keep their relations), the fan-in-4 comparison, relu/abs
with the product fused into B2A, and max/argmax by a tournament of groups of 4, against torch
(ties, extremes, every size up to 17 and 1 000), their round counts, and the same over RabbitMQ
worker services."""
from __future__ import annotations

import pytest
import torch

import fedmq
from fedmq import messages as m, serde
from fedmq.errors import RemoteError
from fedmq.smpc.comparison import comparison_primitives, max_levels, max_primitives
from fedmq.smpc.messages import LocalStep
from fedmq.smpc.provider import OR4_SUBSETS, primitive_store, selection_layout
from fedmq.smpc.ring import PRG, expand_shares
from fedmq.smpc.shares import _stats, open_shares
from smpc_helpers import make_parties

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


@pytest.fixture
def parties(hook):
    return make_parties(hook)


def deal(cp, workers, kind, params):
    """A primitive dealt now, opened (every share name: (additive sum, XOR of the shares))."""
    dealt = primitive_store(cp).deal_now(cp, workers, [(kind, params)])[0]
    out = []
    for pointers in dealt:
        (added,) = open_shares([pointers], combine="add", delete=False)
        (xored,) = open_shares([pointers], combine="xor")
        out.append((added, xored))
    return out


# -- PRG-seed dealing ---------------------------------------------------------------------------

def test_prg_is_deterministic_per_seed_and_records_its_draws():
    seed = bytes(range(32))
    a, b = PRG(seed), PRG(seed)
    x = a.uniform((3, 4))
    bits = a.bits((5,))
    assert torch.equal(x, b.uniform((3, 4))) and torch.equal(bits, b.bits((5,)))
    assert set(bits.tolist()) <= {0, 1}
    assert a.draws == [[[3, 4], False], [[5], True]]
    kept, opened = expand_shares(seed, a.draws)
    assert torch.equal(kept[0], x) and torch.equal(kept[1], bits) and opened == ()
    given = torch.arange(3)
    kept, _ = expand_shares(seed, a.draws, [1, -1, 0], [given])
    assert torch.equal(kept[0], bits) and kept[1] is given and torch.equal(kept[2], x)
    assert not torch.equal(PRG().uniform((4,)), PRG().uniform((4,)))  # fresh seeds differ
    words = PRG().uniform((20000,))
    for bit in (0, 31, 63):  # every bit position about half ones
        assert abs(float(((words >> bit) & 1).float().mean()) - 0.5) < 0.02


@pytest.mark.parametrize("seed, draws, match", [
    (b"short", [[[2], False]], "32 bytes"),
    ("x" * 32, [[[2], False]], "32 bytes"),
    (bytes(32), [], "non-empty"),
    (bytes(32), [[[2], 1]], "bits_only"),
    (bytes(32), [[[-1], False]], "non-negative"),
    (bytes(32), [[[1 << 14, 1 << 13], False]], "at most"),
    (bytes(32), [[[2], False]], "layout"),
    (bytes(32), [[[2], False]], "int64"),
])
def test_expand_shares_refuses_bad_input(seed, draws, match):
    layout, given = ([0, 1], []) if match == "layout" else (None, None)
    if match == "int64":
        layout, given = [0, -1], [torch.zeros(2)]
    with pytest.raises(ValueError, match=match):
        expand_shares(seed, draws, layout, given)


@pytest.mark.parametrize("n", [2, 3])
def test_seeded_triples_keep_their_relations(parties, n):
    workers, cp = parties
    group = workers[:n]
    (a, _), (b, _), (c, _) = deal(cp, group, "mul", {"a": [6, 5], "b": [6, 5]})
    assert torch.equal(c, a * b)
    (a, _), (b, _), (c, _) = deal(cp, group, "matmul", {"a": [4, 7], "b": [7, 3]})
    assert torch.equal(c, a @ b) and c.shape == (4, 3)
    (r, _), (r_div, _) = deal(cp, group, "trunc", {"shape": [50], "divisor": 1000})
    assert torch.equal(r_div, torch.div(r, 1000, rounding_mode="floor"))
    (r_arith, _), (_, r_xor) = deal(cp, group, "edabit", {"shape": [40]})
    assert torch.equal(r_arith, r_xor)
    (_, b_xor), (b_arith, _) = deal(cp, group, "bit", {"shape": [40]})
    assert torch.equal(b_xor, b_arith) and set(b_xor.tolist()) <= {0, 1}


def test_or4_select_and_bitmul_primitives_keep_their_relations(parties):
    workers, cp = parties
    group = workers[:3]
    (_, alpha), (_, products) = deal(cp, group, "or4", {"shape": [30], "shift": 4})
    assert products.shape == (len(OR4_SUBSETS), 30)
    for index, subset in enumerate(OR4_SUBSETS):
        expect = ~torch.zeros(30, dtype=torch.int64)
        for k in range(4):
            if subset >> k & 1:
                expect = expect & (alpha >> (4 * k))
        assert torch.equal(products[index], expect)
    (_, r), (a, _), (R, _), (Ra, _) = deal(cp, group, "select",
                                           {"shape": [5], "group": 4, "width": 2})
    _, members, _ = selection_layout(4)
    assert r.shape == (5, 6) and set(r.flatten().tolist()) <= {0, 1}
    assert a.shape == (2, 5, 4) and R.shape == (5, 4, 7) and Ra.shape == (2, 5, 4, 7)
    for i in range(4):
        for s in range(1, 8):
            expect = torch.ones(5, dtype=torch.int64)
            for t, pair in enumerate(members[i]):
                if s >> t & 1:
                    expect = expect * r[:, pair]
            assert torch.equal(R[:, i, s - 1], expect)
    assert torch.equal(Ra, R.unsqueeze(0) * a.unsqueeze(-1))
    (_, b_xor), (b_arith, _), (a, _), (ab, _) = deal(cp, group, "bitmul", {"shape": [25]})
    assert torch.equal(b_xor, b_arith) and torch.equal(ab, a * b_arith)


def test_seeded_dealing_sends_seeds_and_only_the_last_party_the_corrections(parties,
                                                                           monkeypatch):
    """Every party gets one prg_shares LocalStep: a 32-byte seed and the shapes to draw. A
    triple's a and b are the sums of the parties' draws (no tensor sent); c = a * b is drawn
    by the first parties and the last gets the correction, its only tensor. The coordinator
    sees none of these messages' contents (it only sent the DealRequest)."""
    workers, cp = parties
    seen = []
    transport = cp.engine.transport
    original = transport.send

    def spy(worker_id, frame, **options):
        seen.append((worker_id, serde.decode(frame)))
        return original(worker_id, frame, **options)
    monkeypatch.setattr(transport, "send", spy)
    deal(cp, workers[:3], "mul", {"a": [100], "b": [100]})
    from_provider = {wid: env.message for wid, env in seen if env.sender == "crypto_provider"}
    assert sorted(from_provider) == ["alice", "bill", "bob"]
    for party, n_drawn in (("bob", 3), ("alice", 3), ("bill", 2)):
        msg = from_provider[party]
        assert isinstance(msg, LocalStep) and msg.step == "prg_shares"
        seed, draws, layout, given = msg.args
        assert type(seed) is bytes and len(seed) == 32 and len(draws) == n_drawn
        assert len(given) == 3 - n_drawn and len(layout) == 3
    assert from_provider["bill"].args[2] == [0, 1, -1]
    assert len({msg.args[0] for msg in from_provider.values()}) == 3  # a seed per party
    assert not any(isinstance(env.message, (LocalStep, m.ObjectMessage))
                   for wid, env in seen if env.sender not in ("crypto_provider", "me"))


def test_a_party_refuses_a_bad_prg_shares_step(parties):
    workers, _ = parties
    with pytest.raises(RemoteError, match="32 bytes"):
        workers[0].call(LocalStep("prg_shares", [b"x", [[[2], False]]], [fedmq.ids.new_id()]))


# -- comparison, relu, abs -------------------------------------------------------------------

EXTREMES = torch.tensor([0, -1, 1, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1,
                         1 << 62, -(1 << 62), (1 << 62) - 1, -(1 << 62) - 1, 1 << 40, -(1 << 40)])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_ltz_relu_abs_on_extremes_and_random(parties, n):
    workers, cp = parties
    g = torch.Generator().manual_seed(n)
    a = torch.cat([EXTREMES, torch.randint(INT64_MIN, INT64_MAX, (300,), generator=g)])
    x = a.share(*workers[:n], crypto_provider=cp)
    assert torch.equal((x < 0).get(), (a < 0).long())
    small = torch.cat([torch.tensor([0, 1, -1, (1 << 61), -(1 << 61)]),
                       torch.randint(-(1 << 40), 1 << 40, (200,), generator=g)])
    y = small.share(*workers[:n], crypto_provider=cp)
    assert torch.equal(y.relu().get(), small.clamp(min=0))
    assert torch.equal(y.abs().get(), small.abs())


def test_comparison_and_relu_take_4_rounds_and_one_provider_request(parties):
    workers, cp = parties
    x = torch.arange(-5, 5).share(*workers[:2], crypto_provider=cp)
    for op, rounds in ((lambda: x > 0, 4), (lambda: x.relu(), 4), (lambda: x.abs(), 4)):
        r0, d0 = _stats.rounds, primitive_store(cp).requests
        op()
        assert (_stats.rounds - r0, primitive_store(cp).requests - d0) == (rounds, 1)
    assert len(comparison_primitives([3])) == 5


# -- max / argmax ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", list(range(1, 18)) + [64, 65, 1000])
def test_max_and_argmax_equal_torch_with_ties(parties, k):
    workers, cp = parties
    g = torch.Generator().manual_seed(k)
    a = torch.randint(-3, 3, (3, k), generator=g)  # many ties
    a[0] = 7  # a row of equal values: index 0, as torch
    x = a.share(*workers[:2], crypto_provider=cp)
    values, indices = x.max(dim=1)
    ref = a.max(dim=1)
    assert torch.equal(values.get(), ref.values) and torch.equal(indices.get(), ref.indices)
    assert torch.equal(x.argmax(dim=1, keepdim=True).get(), a.argmax(dim=1, keepdim=True))
    assert x.max().get().tolist() == [int(a.max())]
    assert x.argmax().get().tolist() == int(a.argmax())
    values, indices = x.min(dim=0)
    ref = a.min(dim=0)
    assert torch.equal(values.get(), ref.values) and torch.equal(indices.get(), ref.indices)


def test_max_on_extremes_of_the_comparison_range(parties):
    """Differences must fit in int64 (|values| < 2**62); at its edges, and with 3 parties."""
    workers, cp = parties
    top = (1 << 62) - 1
    a = torch.tensor([[-top, top, top, 0, -top], [5, -top, 5, top - 1, top - 1]])
    x = a.share(*workers[:3], crypto_provider=cp)
    values, indices = x.max(dim=1)
    ref = a.max(dim=1)
    assert torch.equal(values.get(), ref.values) and torch.equal(indices.get(), ref.indices)
    values, indices = x.min(dim=1)
    ref = a.min(dim=1)
    assert torch.equal(values.get(), ref.values) and torch.equal(indices.get(), ref.indices)


def test_max_over_1000_takes_20_rounds_one_request_and_preprocesses(parties):
    workers, cp = parties
    pair = workers[:2]
    assert [(k, g) for k, g, _ in max_levels(1000)] == [(1000, 4), (250, 4), (64, 4),
                                                        (16, 4), (4, 4)]
    assert [(k, g) for k, g, _ in max_levels(7)] == [(7, 4), (4, 4)]
    assert [(k, g) for k, g, _ in max_levels(3)] == [(3, 3)]
    a = torch.randn(1000).fix_prec().child
    x = a.share(*pair, crypto_provider=cp)
    r0, d0 = _stats.rounds, primitive_store(cp).requests
    assert x.max().get().tolist() == [int(a.max())]
    assert _stats.rounds - r0 == 20 + 1  # + the opening
    assert primitive_store(cp).requests - d0 == 1
    for kind, params in max_primitives((), 1000, with_indices=False):
        primitive_store(cp).provide(cp, pair, kind, params)
    before = (primitive_store(cp).requests, cp.message_count)
    assert x.max().get().tolist() == [int(a.max())]
    assert (primitive_store(cp).requests, cp.message_count) == before
    assert len(primitive_store(cp)) == 0


def test_fixed_precision_max_argmax_and_encrypted_mlp_argmax(parties):
    workers, cp = parties
    torch.manual_seed(4)
    logits = torch.randn(50, 10)
    s = logits.fix_precision().share(*workers[:2], crypto_provider=cp)
    assert torch.equal(s.argmax(dim=1).get().float_precision().long(), logits.argmax(dim=1))
    values, indices = s.max(dim=1)
    assert torch.allclose(values.get().float_precision(), logits.max(dim=1).values, atol=1e-3)


# -- over RabbitMQ worker services -----------------------------------------------------------

@pytest.mark.amqp
def test_fast_paths_over_worker_services(hook, worker_processes):
    from worker_procs import AMQP_URL

    bob, alice, provider = (fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=60)
                            for i in ("bob", "alice", "secure_worker"))
    for worker in (bob, alice, provider):
        worker.clear_objects()
    try:
        (a, _), (b, _), (c, _) = deal(provider, [bob, alice], "mul", {"a": [20], "b": [20]})
        assert torch.equal(c, a * b)
        g = torch.Generator().manual_seed(9)
        v = torch.cat([EXTREMES, torch.randint(-(1 << 40), 1 << 40, (100,), generator=g)])
        x = v.share(bob, alice, crypto_provider=provider)
        assert torch.equal((x < 0).get(), (v < 0).long())
        w = torch.randint(-4, 4, (4, 37), generator=g)
        y = w.share(bob, alice, crypto_provider=provider)
        assert torch.equal(y.relu().get(), w.clamp(min=0))
        values, indices = y.max(dim=1)
        ref = w.max(dim=1)
        assert torch.equal(values.get(), ref.values) and torch.equal(indices.get(), ref.indices)
        assert y.max().get().tolist() == [int(w.max())]
    finally:
        primitive_store(provider).clear()
        for worker in (bob, alice):
            worker.flush()


# -- the Beaver cache of a fixed operand ---------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3])
def test_cached_operand_products_are_exact_and_open_delta_once(parties, n, monkeypatch):
    from smpc_helpers import assert_rescaled
    workers, cp = parties
    group = workers[:n]
    store = primitive_store(cp)
    g = torch.Generator().manual_seed(n)
    w = torch.randint(-1000, 1000, (7, 5), generator=g)
    sw = w.share(*group, crypto_provider=cp)
    store.cache_operand(sw)
    opened_sizes = []
    import fedmq.smpc.beaver as beaver
    original = beaver.run_steps

    def spy(step, args, n_kept, shape, want_reply):
        kept, opened = original(step, args, n_kept, shape, want_reply)
        if step.startswith("beaver_mask"):
            opened_sizes.append(len(opened[0]))
        return kept, opened
    monkeypatch.setattr(beaver, "run_steps", spy)
    for _ in range(3):
        x = torch.randint(-1000, 1000, (4, 7), generator=g)
        assert torch.equal((x.share(*group, crypto_provider=cp) @ sw).get(), x @ w)
    assert opened_sizes == [2, 1, 1]  # eps and delta once, then eps only
    fw = torch.randn(7, 5, generator=g)
    sfw = fw.fix_precision().share(*group, crypto_provider=cp)
    store.cache_operand(sfw.child)
    for _ in range(3):
        fx = torch.randn(4, 7, generator=g)
        got = (fx.fix_precision().share(*group, crypto_provider=cp) @ sfw).get()
        assert_rescaled(got.child, fx.fix_precision().child @ fw.fix_precision().child, 1000)
    store.uncache_operand(sw)
    assert store.cached_mask(sw) is None and store.cached_mask(sfw.child) is not None
    x = torch.randint(-1000, 1000, (4, 7), generator=g)
    assert torch.equal((x.share(*group, crypto_provider=cp) @ sw).get(), x @ w)
    assert opened_sizes[-1] == 2  # uncached: a plain Beaver product again
    with pytest.raises(ValueError, match="2-d shared tensor"):
        store.cache_operand(torch.zeros(3, 3))


def test_cached_masks_are_the_same_per_handle_and_differ_across_handles(parties):
    workers, cp = parties
    pair = workers[:2]
    (b1, _), = deal(cp, pair, "fixmask", {"shape": [6, 3], "handle": 11})
    (b2, _), = deal(cp, pair, "fixmask", {"shape": [6, 3], "handle": 11})
    (b3, _), = deal(cp, pair, "fixmask", {"shape": [6, 3], "handle": 12})
    assert torch.equal(b1, b2) and not torch.equal(b1, b3)
    (a, _), (c, _) = deal(cp, pair, "matmul_fixed", {"a": [4, 6], "b": [6, 3], "handle": 11})
    assert torch.equal(c, a @ b1)
    with pytest.raises(RemoteError, match="2-d matmul"):
        deal(cp, pair, "matmul_fixed", {"a": [4, 5], "b": [6, 3], "handle": 11})
    with pytest.raises(RemoteError, match="unknown cached mask handle 13"):
        deal(cp, pair, "matmul_fixed", {"a": [4, 6], "b": [6, 3], "handle": 13})
    for bad in ({"shape": None, "shift": 1}, {"shape": [3], "shift": 40}):
        with pytest.raises(RemoteError, match="shape|shift"):
            deal(cp, pair, "or4", bad)
    for bad in ({"shape": "x", "group": 4, "width": 1}, {"shape": [3], "group": 5, "width": 1},
                {"shape": [3], "group": 4, "width": 3}):
        with pytest.raises(RemoteError, match="shape|group|width"):
            deal(cp, pair, "select", bad)


def test_recorded_primitives_preprocess_a_whole_step(parties):
    """PrimitiveStore.record: one run of a step lists what it takes; dealt ahead with
    `provide`, the next run needs no provider round trip and gives the same results."""
    workers, cp = parties
    pair = workers[:2]
    store = primitive_store(cp)
    torch.manual_seed(5)
    x, w = torch.randn(6, 8), torch.randn(8, 4)
    sx = x.fix_precision().share(*pair, crypto_provider=cp)
    sw = w.fix_precision().share(*pair, crypto_provider=cp)

    def step():
        return (sx @ sw).relu().argmax(dim=1)
    recorded = store.record()
    first = step().get().float_precision().long()
    assert store.stop_recording() is recorded and store.recorded is None
    # two parties rescale the product locally (SecureML): no truncation pair is dealt
    assert [kind for kind, _ in recorded][:2] == ["matmul", "edabit"] and len(recorded) > 5
    assert "trunc" not in [kind for kind, _ in recorded]
    for kind, params in recorded:
        store.provide(cp, pair, kind, params)
    before = (store.requests, cp.message_count)
    assert torch.equal(step().get().float_precision().long(), first)
    assert (store.requests, cp.message_count) == before and len(store) == 0
    plain = torch.relu(x @ w)  # the chosen column is a maximum (up to fixed point's rounding)
    assert bool((plain[torch.arange(6), first] >= plain.max(dim=1).values - 0.01).all())


def test_prg_shares_is_refused_past_the_senders_quota_before_drawing(hook, monkeypatch):
    """A short prg_shares message cannot make a party allocate past its sender's quota: the
    quota is checked for everything the seed expands to before anything is drawn."""
    from fedmq.policy import ANYONE, ROLES, Policy
    from fedmq.smpc import ring
    bob = fedmq.VirtualWorker(hook, id="qbob")
    bob.worker.policy = Policy(owner="owner", grants={role: {ANYONE} for role in ROLES},
                               release="all", max_bytes=1 << 20)
    drawn = []
    monkeypatch.setattr(ring.PRG, "_words", lambda self, shape: drawn.append(shape))
    with pytest.raises(RemoteError, match="(?i)quota"):
        bob.call(LocalStep("prg_shares", [bytes(32), [[[1 << 18], False]]],
                           [fedmq.ids.new_id()]))
    assert drawn == []
    monkeypatch.undo()
    ids = [fedmq.ids.new_id()]
    bob.call(LocalStep("prg_shares", [bytes(32), [[[1 << 10], False]]], ids))  # within quota
    assert bob.objects_count() == 2  # the refusal recorded under its id, and the tensor


@pytest.mark.parametrize("n", [3, 4])
def test_max_argmax_over_every_dim_of_a_3d_tensor_with_ties(parties, n):
    workers, cp = parties
    g = torch.Generator().manual_seed(20 + n)
    a = torch.randint(-2, 2, (3, 6, 5), generator=g)
    x = a.share(*workers[:n], crypto_provider=cp)
    for dim in (0, 1, 2, -1):
        for keepdim in (False, True):
            values, indices = x.max(dim=dim, keepdim=keepdim)
            ref = a.max(dim=dim, keepdim=keepdim)
            assert torch.equal(values.get(), ref.values)
            assert torch.equal(indices.get(), ref.indices)
            assert torch.equal(x.argmin(dim=dim, keepdim=keepdim).get(),
                               a.argmin(dim=dim, keepdim=keepdim))
