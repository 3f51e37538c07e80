"""Aggregation strategies (fedmq/strategy) against hand-computed aggregates.

Models are tiny float64 state dicts, {"w": ..., "bn.num_batches_tracked": int}; every expected
number is worked out by hand in the comment beside it. Pure CPU, no broker.
"""
import gc
import math
import random
import weakref

import pytest
import torch

from fedmq.serde import decode, encode
from fedmq.strategy import (STRATEGIES, AsyncStrategy, FedAdagrad, FedAdam, FedAsync, FedAvg,
                            FedAvgM, FedBuff, FedMedian, FedProx, FedTrimmedAvg, FedYogi,
                            FitResult, Krum, RoundFailed, Strategy, UpdateRejected,
                            make_strategy)
from fedmq.fl.proximal import proximal_term
from fedmq.strategy.base import RunningAverage

NBT = "bn.num_batches_tracked"


def weights(*w, b=None, nbt=0):
    out = {"w": torch.tensor(w, dtype=torch.float64)}
    if b is not None:
        out["b"] = torch.tensor(b, dtype=torch.float64)
    out[NBT] = torch.tensor(nbt)
    return out


def result(worker, *w, n=1, round=0, b=None):
    # workers' num_batches_tracked is 7: an integer buffer, the global model gets the maximum
    return FitResult(worker, weights(*w, b=b, nbt=7), n, loss=1.0, round=round)


def run_round(strategy, global_weights, results, round=1, failures=()):
    agg = strategy.begin_fit(round, global_weights)
    for r in results:
        agg.add(r)
    return strategy.aggregate_fit(round, agg, failures)


def values(w, name="w"):
    return w[name].tolist()


# --- FedAvg / FedProx ------------------------------------------------------------------------

def test_fedavg_is_sample_weighted():
    g = weights(0.0, 0.0, nbt=5)
    new = run_round(FedAvg(), g, [result("a", 1.0, 2.0, n=1), result("b", 3.0, 6.0, n=3)])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5.0
    assert values(new) == [2.5, 5.0]
    assert new[NBT].item() == 7 and new[NBT].dtype == torch.int64  # max(7, 7)
    assert new["w"].dtype == torch.float64


def test_fedavg_casts_back_to_float32():
    g = {"w": torch.zeros(1)}
    agg = FedAvg().begin_fit(1, g)
    agg.add(FitResult("a", {"w": torch.tensor([1.0])}, 1))
    agg.add(FitResult("b", {"w": torch.tensor([2.0])}, 2))
    new = FedAvg().aggregate_fit(1, agg)
    # (1 + 2*2)/3 = 5/3
    assert new["w"].dtype == torch.float32
    assert new["w"].item() == pytest.approx(5 / 3, rel=1e-6)


def test_fedavg_memory_is_o_model():
    g = weights(0.0, 0.0)
    agg = FedAvg().begin_fit(1, g)
    assert isinstance(agg, RunningAverage)
    refs = []
    for i in range(5):
        r = result(f"w{i}", float(i), 1.0)
        refs.append(weakref.ref(r.weights["w"]))
        agg.add(r)
        del r
    gc.collect()
    assert agg.results == []
    assert all(ref() is None for ref in refs), "RunningAverage kept a worker's tensor"
    assert set(agg._sum) == {"w"}  # one running sum per floating entry
    # (0+1+2+3+4)/5 = 2, (1*5)/5 = 1
    assert values(agg.average()) == [2.0, 1.0]


def test_fedprox_config_and_aggregate():
    strategy = FedProx(proximal_mu=0.5)
    base = {"epochs": 2}
    config = strategy.fit_config(3, base)
    assert config == {"epochs": 2, "proximal_mu": 0.5}
    assert base == {"epochs": 2}
    new = run_round(strategy, weights(0.0), [result("a", 1.0, n=1), result("b", 4.0, n=2)])
    assert values(new) == [3.0]  # (1 + 2*4)/3 = 3, as FedAvg
    with pytest.raises(ValueError, match="proximal_mu"):
        FedProx(proximal_mu=-1)


def test_proximal_term_value_and_gradient():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.5]))
    global_weights = {"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([0.5])}
    term = proximal_term(model, global_weights, mu=0.5)
    # (0.5/2) * ((1-0)^2 + (2-0)^2 + (0.5-0.5)^2) = 0.25 * 5 = 1.25
    assert term.item() == pytest.approx(1.25)
    term.backward()
    # d/dp = mu * (p - g) = 0.5 * [1, 2], and 0 for the bias
    assert model.weight.grad.tolist() == [[0.5, 1.0]]
    assert model.bias.grad.tolist() == [0.0]
    assert global_weights["weight"].grad is None
    assert proximal_term(model, global_weights, mu=0.0).item() == 0.0
    with pytest.raises(KeyError, match="bias"):
        proximal_term(model, {"weight": global_weights["weight"]}, mu=1.0)


# --- FedAdagrad / FedAdam / FedYogi ------------------------------------------------------------

def test_fedadam_one_step_weighted_pseudo_gradient():
    strategy = FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9)
    g = weights(1.0, 2.0, nbt=3)
    strategy.initialize_parameters(g)
    new = run_round(strategy, g, [result("a", 2.0, 2.0, n=1), result("b", 4.0, 5.0, n=3)])
    # avg = [(2 + 3*4)/4, (2 + 3*5)/4] = [3.5, 4.25]; Δ = avg - g = [2.5, 2.25]
    # m = 0.1*Δ = [0.25, 0.225]; v = 0.01*Δ² = [0.0625, 0.050625]; √v = [0.25, 0.225]
    # w = g + 0.1 * m/√v = g + [0.1, 0.1] = [1.1, 2.1]
    assert values(new) == pytest.approx([1.1, 2.1], abs=1e-7)
    assert new[NBT].item() == 7  # an integer buffer: the workers' maximum, no server step


def test_fedadam_two_steps():
    strategy = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1e-9)
    g0 = weights(0.0)
    strategy.initialize_parameters(g0)
    g1 = run_round(strategy, g0, [result("a", 2.0)], round=1)
    # Δ=2: m = 0.5*2 = 1, v = 0.25*4 = 1, w = 0 + 1/1 = 1
    assert values(g1) == pytest.approx([1.0], abs=1e-7)
    g2 = run_round(strategy, g1, [result("a", 2.0)], round=2)
    # Δ=1: m = 0.5*1 + 0.5*1 = 1, v = 0.75*1 + 0.25*1 = 1, w = 1 + 1/1 = 2
    assert values(g2) == pytest.approx([2.0], abs=1e-7)


def test_fedyogi_two_steps():
    strategy = FedYogi(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1e-9)
    g0 = weights(0.0)
    strategy.initialize_parameters(g0)
    g1 = run_round(strategy, g0, [result("a", 2.0)], round=1)
    # Δ=2, Δ²=4 > v=τ²: v = τ² + 0.25*4 = 1; m = 1; w = 0 + 1/1 = 1
    assert values(g1) == pytest.approx([1.0], abs=1e-7)
    g2 = run_round(strategy, g1, [result("a", 1.56)], round=2)
    # Δ=0.56, Δ²=0.3136 < v=1: v = 1 - 0.25*0.3136 = 0.9216, √v = 0.96
    # m = 0.5*1 + 0.5*0.56 = 0.78; w = 1 + 0.78/0.96 = 1.8125   (Adam would give v = 0.8284)
    assert values(g2) == pytest.approx([1.8125], abs=1e-7)


def test_fedadagrad_two_steps():
    strategy = FedAdagrad(eta=1.0, tau=1e-9)
    g0 = weights(0.0)
    strategy.initialize_parameters(g0)
    g1 = run_round(strategy, g0, [result("a", 3.0)], round=1)
    # Δ=3: m = Δ = 3 (beta_1 = 0), v = 0 + 9; w = 0 + 3/3 = 1
    assert values(g1) == pytest.approx([1.0], abs=1e-7)
    g2 = run_round(strategy, g1, [result("a", 5.0)], round=2)
    # Δ=4: m = 4, v = 9 + 16 = 25; w = 1 + 4/5 = 1.8
    assert values(g2) == pytest.approx([1.8], abs=1e-7)


def test_fedopt_offers_client_lr():
    assert FedAdam(eta_l=0.03).fit_config(1, {"epochs": 1}) == {"epochs": 1, "lr": 0.03}
    assert FedYogi().fit_config(1, {"lr": 0.5})["lr"] == 0.5


def _random_rounds(seed, rounds):
    gen = torch.Generator().manual_seed(seed)
    return [[FitResult(f"w{i}", {"w": torch.randn(4, generator=gen, dtype=torch.float64),
                                 NBT: torch.tensor(1)}, i + 1) for i in range(3)]
            for _ in range(rounds)]


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_resume_continues_identically(cls):
    rounds = _random_rounds(0, 4)
    g = {"w": torch.zeros(4, dtype=torch.float64), NBT: torch.tensor(0)}

    straight = cls()
    straight.initialize_parameters(g)
    w = g
    for i, results in enumerate(rounds, 1):
        w = run_round(straight, w, results, round=i)
        if i == 2:
            checkpoint = decode(encode(straight.state_dict()))  # as a checkpoint file would
            w_checkpoint = w

    resumed = cls()
    resumed.load_state_dict(checkpoint)
    w2 = w_checkpoint
    for i, results in enumerate(rounds[2:], 3):
        w2 = run_round(resumed, w2, results, round=i)
    assert torch.equal(w["w"], w2["w"])
    assert resumed.steps == straight.steps == 4

    fresh = cls()  # without the moments, the run diverges: the test above can fail
    fresh.initialize_parameters(g)
    w3 = w_checkpoint
    for i, results in enumerate(rounds[2:], 3):
        w3 = run_round(fresh, w3, results, round=i)
    assert not torch.equal(w["w"], w3["w"])


# --- robust ------------------------------------------------------------------------------------

def test_fedmedian_odd_and_even():
    g = weights(0.0, 0.0, nbt=2)
    new = run_round(FedMedian(), g, [result("a", 1.0, 10.0, n=100), result("b", 2.0, -5.0),
                                     result("c", 100.0, 0.0)])
    # per coordinate, unweighted: median(1, 2, 100) = 2; median(10, -5, 0) = 0
    assert values(new) == [2.0, 0.0]
    assert new[NBT].item() == 7
    new = run_round(FedMedian(), weights(0.0), [result("a", 1.0), result("b", 2.0),
                                                 result("c", 4.0), result("d", 100.0)])
    # median(1, 2, 4, 100) = (2 + 4)/2 = 3   (torch.median would say 2)
    assert values(new) == [3.0]


def test_fedtrimmedavg():
    g = weights(0.0, 0.0)
    results = [result("a", 1.0, -50.0), result("b", 100.0, 0.0), result("c", 3.0, 5.0),
               result("d", 2.0, 1.0), result("e", 4.0, 2.0, n=1000)]
    new = run_round(FedTrimmedAvg(beta=0.2), g, results)
    # floor(0.2*5) = 1 trimmed from each end per coordinate, unweighted:
    # [1, 2, 3, 4, 100] -> mean(2, 3, 4) = 3;  [-50, 0, 1, 2, 5] -> mean(0, 1, 2) = 1
    assert values(new) == [3.0, 1.0]
    new = run_round(FedTrimmedAvg(beta=0.0), g, results)
    # no trimming: (1+100+3+2+4)/5 = 22, (-50+0+5+1+2)/5 = -8.4
    assert values(new) == pytest.approx([22.0, -8.4])
    with pytest.raises(ValueError, match="beta"):
        FedTrimmedAvg(beta=0.5)


def _krum_results():
    # w values 0, 1, 2.5, 4 (b = 0) and an attacker at w = 1.2 but b = 1000
    return [result("a", 0.0, b=[0.0]), result("b", 1.0, b=[0.0]), result("c", 2.5, b=[0.0]),
            result("d", 4.0, b=[0.0]), result("evil", 1.2, b=[1000.0])]


def test_krum_and_multikrum():
    g = weights(0.0, b=[0.0], nbt=9)
    # f=1, n=5: score = sum of squared distances to the n-f-2 = 2 nearest others
    #   0:   1 (to 1) + 6.25 (to 2.5)       = 7.25
    #   1:   1 (to 0) + 2.25 (to 2.5)       = 3.25   <- lowest
    #   2.5: 2.25 (to 1) + 2.25 (to 4)      = 4.5
    #   4:   2.25 (to 2.5) + 9 (to 1)       = 11.25
    #   evil: >= 1000^2                     (with w alone it would score 0.04 + 1.44 = 1.48)
    strategy = Krum(num_malicious=1)
    new = run_round(strategy, g, _krum_results())
    assert values(new) == [1.0] and values(new, "b") == [0.0] and new[NBT].item() == 7
    agg = strategy.begin_fit(1, g)
    for r in _krum_results():
        agg.add(r)
    assert strategy.select(agg) == [1]
    # Multi-Krum m=2: the two lowest scores, 1 and 2.5 -> mean 1.75
    new = run_round(Krum(num_malicious=1, num_to_keep=2), g, _krum_results())
    assert values(new) == [1.75]
    # m=3: 1, 2.5, 0 -> 3.5/3
    new = run_round(Krum(num_malicious=1, num_to_keep=3), g, _krum_results())
    assert values(new) == pytest.approx([3.5 / 3])


def test_krum_needs_2f_plus_3_results():
    with pytest.raises(RoundFailed, match="at least 5"):
        run_round(Krum(num_malicious=1), weights(0.0, b=[0.0]), _krum_results()[:4])


# --- sampling and the round rules --------------------------------------------------------------

def test_sampling_fraction_and_minimum():
    """The base class's sampling rules (Strategy is abstract: FedAvg does not override them)."""
    with pytest.raises(TypeError, match="abstract"):
        Strategy()
    assert FedAvg.sample is Strategy.sample
    ids = [f"w{i}" for i in range(10)]
    strategy = FedAvg(fraction_fit=0.5, min_fit_workers=3)
    chosen = strategy.sample(ids, 1, random.Random(7))
    assert len(chosen) == 5 and set(chosen) <= set(ids)  # ceil(0.5 * 10) = 5
    assert chosen == sorted(chosen, key=ids.index)  # in the workers' order
    assert strategy.sample(ids, 1, random.Random(7)) == chosen  # seeded: deterministic
    assert len({tuple(strategy.sample(ids, 1, random.Random(s))) for s in range(10)}) > 1
    # ceil(0.1 * 10) = 1 < min_fit_workers = 3
    assert len(FedAvg(fraction_fit=0.1, min_fit_workers=3).sample(ids, 1, random.Random(0))) == 3
    # ceil(0.25 * 10) = 3
    assert len(FedAvg(fraction_fit=0.25).sample(ids, 1, random.Random(0))) == 3
    assert FedAvg().sample(ids, 1, random.Random(0)) == ids
    with pytest.raises(RoundFailed, match="4 required"):
        FedAvg(min_available_workers=4).sample(ids[:3], 1, random.Random(0))


def test_round_failed_below_min_fit_workers():
    with pytest.raises(RoundFailed, match="2 worker.*min_fit_workers is 3"):
        run_round(FedAvg(min_fit_workers=3), weights(0.0), [result("a", 1.0), result("b", 2.0)])
    assert values(run_round(FedAvg(min_fit_workers=2), weights(0.0),
                            [result("a", 1.0), result("b", 2.0)])) == [1.5]  # (1 + 2)/2


def test_accept_failures():
    results = [result("a", 1.0), result("b", 3.0)]
    with pytest.raises(RoundFailed, match="accept_failures is False"):
        run_round(FedAvg(accept_failures=False), weights(0.0), results, failures={"c": "missed the round deadline"})
    # accepted: the failure is ignored, (1 + 3)/2 = 2
    assert values(run_round(FedAvg(), weights(0.0), results, failures={"c": "missed the round deadline"})) == [2.0]
    assert values(run_round(FedAvg(accept_failures=False), weights(0.0), results)) == [2.0]


# --- bad updates -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"w": torch.zeros(3, dtype=torch.float64), NBT: torch.tensor(0)}, r"w has shape \(3,\)"),
    ({"w": torch.tensor([float("nan"), 0.0], dtype=torch.float64), NBT: torch.tensor(0)},
     "NaN or infinite"),
    ({"w": torch.tensor([float("inf"), 0.0], dtype=torch.float64), NBT: torch.tensor(0)},
     "NaN or infinite"),
    ({"w": torch.zeros(2, dtype=torch.float64)}, "missing.*num_batches_tracked"),
    ({"w": [0.0, 0.0], NBT: torch.tensor(0)}, "not a tensor"),
])
@pytest.mark.parametrize("cls", [FedAvg, FedMedian, FedAdam])
def test_incompatible_update_rejected(cls, bad, message):
    g = weights(0.0, 0.0)
    strategy = cls()
    agg = strategy.begin_fit(1, g)
    with pytest.raises(ValueError, match=message):
        agg.add(FitResult("mallory", bad, 1))
    assert agg.count == 0 and agg.num_examples == 0
    agg.add(result("a", 2.0, 4.0))  # the round goes on
    new = strategy.aggregate_fit(1, agg)
    if cls is not FedAdam:  # one result: the average and the median are that result
        assert values(new) == [2.0, 4.0]


def test_duplicate_and_negative_results_rejected():
    agg = FedAvg().begin_fit(1, weights(0.0))
    agg.add(result("a", 1.0))
    with pytest.raises(ValueError, match="second result from a"):
        agg.add(result("a", 5.0))
    with pytest.raises(ValueError, match="num_examples"):
        agg.add(result("b", 5.0, n=-1))
    assert agg.count == 1


# --- purity ------------------------------------------------------------------------------------

ROUND_STRATEGIES = [FedAvg(), FedProx(), FedAdam(), FedYogi(), FedAdagrad(), FedMedian(),
                    FedTrimmedAvg(), Krum(num_malicious=1), Krum(num_malicious=1, num_to_keep=2)]


def _storages(w):
    return {t.untyped_storage().data_ptr() for t in w.values()}


@pytest.mark.parametrize("strategy", ROUND_STRATEGIES, ids=lambda s: repr(s).split("(")[0])
def test_strategies_do_not_touch_inputs(strategy):
    gen = torch.Generator().manual_seed(1)
    g = {"w": torch.randn(3, 2, generator=gen), NBT: torch.tensor(4)}
    results = [FitResult(f"w{i}", {"w": torch.randn(3, 2, generator=gen), NBT: torch.tensor(i)},
                         i + 1) for i in range(5)]
    before = [{k: t.clone() for k, t in w.items()} for w in [g] + [r.weights for r in results]]
    strategy.initialize_parameters(g)
    new = run_round(strategy, g, results)
    for snapshot, w in zip(before, [g] + [r.weights for r in results]):
        assert all(torch.equal(snapshot[k], w[k]) for k in w)
    inputs = set().union(*(_storages(w) for w in [g] + [r.weights for r in results]))
    assert not _storages(new) & inputs
    assert new[NBT].item() == 4 and new["w"].dtype == torch.float32


@pytest.mark.parametrize("strategy", [FedAsync(), FedBuff(buffer_size=1)],
                         ids=["FedAsync", "FedBuff"])
def test_async_strategies_do_not_touch_inputs(strategy):
    g = {"w": torch.ones(2), NBT: torch.tensor(4)}
    r = FitResult("a", {"w": torch.full((2,), 3.0), NBT: torch.tensor(9)}, 1, round=0)
    before = [g["w"].clone(), r.weights["w"].clone()]
    strategy.initialize_parameters(g)
    new = strategy.on_update(g, 0, r)
    assert torch.equal(before[0], g["w"]) and torch.equal(before[1], r.weights["w"])
    assert not _storages(new) & (_storages(g) | _storages(r.weights))
    assert new[NBT].item() == 9  # max(4, 9)


# --- asynchronous ------------------------------------------------------------------------------

def test_fedasync_staleness_weighting():
    g = weights(0.0, nbt=1)
    strategy = FedAsync(alpha=0.5, staleness="polynomial", a=1.0)
    strategy.initialize_parameters(g)
    # staleness 0: s = 1, α_t = 0.5 -> 0.5*0 + 0.5*8 = 4
    assert values(strategy.on_update(g, 3, result("a", 8.0, round=3))) == [4.0]
    # staleness 1: s = (1+1)^-1 = 0.5, α_t = 0.25 -> 0.75*0 + 0.25*8 = 2
    assert values(strategy.on_update(g, 3, result("a", 8.0, round=2))) == [2.0]
    # staleness 3: s = 4^-1, α_t = 0.125 -> 0.875*2 + 0.125*10 = 3
    assert values(strategy.on_update(weights(2.0), 3, result("a", 10.0, round=0))) == [3.0]

    hinge = FedAsync(alpha=0.5, staleness="hinge", a=1.0, b=1)
    # staleness 1 <= b: s = 1, α_t = 0.5 -> 0.5*6 = 3
    assert values(hinge.on_update(g, 1, result("a", 6.0, round=0))) == [3.0]
    # staleness 3 > b: s = 1/(1*(3-1)+1) = 1/3, α_t = 1/6 -> 6/6 = 1
    assert values(hinge.on_update(g, 3, result("a", 6.0, round=0))) == pytest.approx([1.0])

    constant = FedAsync(alpha=0.5, staleness="constant")
    # any staleness: α_t = 0.5 -> 0.5*6 = 3
    assert values(constant.on_update(g, 9, result("a", 6.0, round=0))) == [3.0]


def test_fedasync_max_staleness_drops_and_counts():
    strategy = FedAsync(alpha=0.5, max_staleness=2)
    g = weights(0.0)
    assert strategy.on_update(g, 5, result("a", 8.0, round=2)) is None  # staleness 3
    assert strategy.on_update(g, 5, result("a", 8.0, round=3)) is not None  # staleness 2
    assert (strategy.received, strategy.applied, strategy.dropped) == (2, 1, 1)
    with pytest.raises(ValueError, match="newer than the current version"):
        strategy.on_update(g, 5, result("a", 8.0, round=6))
    with pytest.raises(ValueError, match="NaN"):
        strategy.on_update(g, 5, result("a", float("nan"), round=5))
    assert strategy.received == 2


def test_fedbuff_buffers_and_uses_the_starting_model():
    strategy = FedBuff(buffer_size=2, server_lr=1.0, staleness="polynomial", a=1.0)
    g0 = weights(1.0, nbt=6)
    strategy.initialize_parameters(g0)
    assert strategy.on_update(g0, 0, result("a", 3.0, round=0)) is None  # Δ = 3-1 = 2, s = 1
    assert strategy.buffered == 1
    g1 = strategy.on_update(g0, 0, result("b", 5.0, round=0))  # Δ = 5-1 = 4, s = 1
    # w = 1 + 1.0 * (2 + 4)/2 = 4
    # num_batches_tracked: max(6, 7, 7) = 7
    assert values(g1) == [4.0] and g1[NBT].item() == 7 and strategy.buffered == 0
    # started from version 0 (w=1), arrives at version 1: Δ = 9-1 = 8, s = (1+1)^-1 -> 4
    assert strategy.on_update(g1, 1, result("c", 9.0, round=0)) is None
    # started from version 1 (w=4): Δ = 6-4 = 2, s = 1
    g2 = strategy.on_update(g1, 1, result("d", 6.0, round=1))
    # w = 4 + (4 + 2)/2 = 7   (deltas against the current model would give 4 + (2.5+2)/2 = 6.25)
    assert values(g2) == [7.0]
    # server_lr scales the step: a fresh run with server_lr=0.5 -> 1 + 0.5*(2+4)/2 = 2.5
    half = FedBuff(buffer_size=2, server_lr=0.5)
    half.initialize_parameters(g0)
    half.on_update(g0, 0, result("a", 3.0, round=0))
    assert values(half.on_update(g0, 0, result("b", 5.0, round=0))) == [2.5]


def test_fedbuff_max_staleness_and_unknown_base():
    strategy = FedBuff(buffer_size=1, max_staleness=1, staleness="constant")
    g0 = weights(0.0)
    strategy.initialize_parameters(g0)
    g1 = strategy.on_update(g0, 0, result("a", 2.0, round=0))  # 0 + 2 = 2
    g2 = strategy.on_update(g1, 1, result("a", 3.0, round=1))  # 2 + (3-2) = 3
    assert values(g2) == [3.0]
    assert strategy.on_update(g2, 2, result("b", 9.0, round=0)) is None  # staleness 2 > 1
    assert (strategy.received, strategy.applied, strategy.dropped) == (3, 2, 1)
    assert 0 not in strategy._history  # the version-0 model is no longer kept
    # staleness 1: from version 1 (w=2): 3 + (4-2) = 5
    assert values(strategy.on_update(g2, 2, result("b", 4.0, round=1))) == [5.0]
    other = FedBuff(buffer_size=1, max_staleness=None)
    other.initialize_parameters(g0)
    with pytest.raises(ValueError, match="never saw"):
        other.on_update(weights(7.0), 5, result("a", 1.0, round=4))


def test_fedbuff_state_dict_resumes_mid_buffer():
    g0 = weights(0.0, 0.0)
    updates = [(0, result("a", 1.0, 2.0, round=0)), (0, result("b", 3.0, -1.0, round=0)),
               (0, result("c", 5.0, 5.0, round=0)), (1, result("d", 0.5, 0.25, round=0)),
               (1, result("e", 2.0, 1.0, round=1)), (1, result("f", -1.0, 4.0, round=1))]

    def drive(strategy, g, version, todo):
        for _, r in todo:
            new = strategy.on_update(g, version, r)
            if new is not None:
                g, version = new, version + 1
        return g, version

    straight = FedBuff(buffer_size=3)
    straight.initialize_parameters(g0)
    g, version = drive(straight, g0, 0, updates[:4])
    checkpoint = decode(encode(straight.state_dict()))
    assert checkpoint["buffered"] == 1
    g_end, _ = drive(straight, g, version, updates[4:])

    resumed = FedBuff(buffer_size=3)
    resumed.load_state_dict(checkpoint)
    g_resumed, _ = drive(resumed, g, version, updates[4:])
    assert torch.equal(g_end["w"], g_resumed["w"])
    assert resumed.state_dict()["received"] == straight.state_dict()["received"] == 6


def test_staleness_function_validation():
    with pytest.raises(ValueError, match="valid: constant, polynomial, hinge"):
        FedAsync(staleness="exponential")
    with pytest.raises(ValueError, match="alpha"):
        FedAsync(alpha=0.0)
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuff(buffer_size=0)


# --- registry ----------------------------------------------------------------------------------

def test_registry_names():
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad",
                               "fedavgm", "fedmedian", "fedtrimmedavg", "krum", "fedasync", "fedbuff"}
    for name, cls in STRATEGIES.items():
        strategy = make_strategy(name)
        assert type(strategy) is cls
        assert isinstance(strategy, AsyncStrategy if name in ("fedasync", "fedbuff")
                          else Strategy)


def test_make_strategy_converts_cli_strings():
    s = make_strategy("fedadam", eta="0.01", min_fit_workers="2", accept_failures="false")
    assert (s.eta, s.min_fit_workers, s.accept_failures) == (0.01, 2, False)
    assert make_strategy("FedBuff", max_staleness="none").max_staleness is None
    assert make_strategy("fedasync", staleness="hinge", max_staleness="3").max_staleness == 3
    assert make_strategy("krum", num_malicious=2).num_malicious == 2


def test_make_strategy_errors_list_valid_choices():
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'; valid: fedavg, fedprox"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match="krum does not take eta; valid: accept_failures.*"
                                         "num_malicious, num_to_keep"):
        make_strategy("krum", eta=0.1)
    with pytest.raises(ValueError, match="eta='fast' is not a number"):
        make_strategy("fedyogi", eta="fast")
    with pytest.raises(ValueError, match="fraction_fit must be in"):
        make_strategy("fedavg", fraction_fit="1.5")


def test_nothing_to_aggregate_is_a_round_failure():
    for strategy in (FedAvg(min_fit_workers=1), FedMedian()):
        agg = strategy.begin_fit(1, weights(0.0))
        with pytest.raises(RoundFailed):
            strategy.aggregate_fit(1, agg)
    assert math.isnan(FedAvg().begin_fit(1, weights(0.0)).loss())


# --- buffers: BatchNorm statistics and integer counters ----------------------------------------

BN = {"fc.weight": [0.0, 0.0], "bn.running_mean": [0.0, 0.0], "bn.running_var": [1.0, 1.0]}


def bn_weights(fc, mean, var, nbt):
    return {"fc.weight": torch.tensor(fc), "bn.running_mean": torch.tensor(mean),
            "bn.running_var": torch.tensor(var), "bn.num_batches_tracked": torch.tensor(nbt)}


def bn_results():
    # samples 1, 3, 4 (total 8); num_batches_tracked 5, 10, 7
    return [FitResult("a", bn_weights([1.0, 1.0], [1.0, 2.0], [2.0, 2.0], 5), 1),
            FitResult("b", bn_weights([3.0, 3.0], [3.0, 6.0], [4.0, 6.0], 10), 3),
            FitResult("c", bn_weights([2.0, 2.0], [2.0, 4.0], [3.0, 4.0], 7), 4)]


BN_STRATEGIES = [FedAvg(), FedProx(), FedAdam(), FedYogi(), FedAdagrad(),
                 FedAvgM(server_learning_rate=2.0, server_momentum=0.9), FedMedian(),
                 FedTrimmedAvg(beta=0.2), Krum(), Krum(num_to_keep=2)]


@pytest.mark.parametrize("trainable", [{"fc.weight"}, None], ids=["named", "by-suffix"])
@pytest.mark.parametrize("strategy", BN_STRATEGIES, ids=lambda s: repr(s).split("(")[0])
def test_buffers_are_averaged_and_integers_stay_integer(strategy, trainable):
    g = bn_weights([0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 3)
    strategy.initialize_parameters(g, trainable)
    for round in (1, 2):  # the second round: server optimizers have momentum by now
        new = run_round(strategy, g, bn_results(), round=round)
        # sample-weighted: mean (1*1 + 3*3 + 4*2)/8 = 2.25, (2 + 18 + 16)/8 = 4.5;
        # var (2 + 12 + 12)/8 = 3.25, (2 + 18 + 16)/8 = 4.5 -- whatever the parameters' rule
        assert new["bn.running_mean"].tolist() == [2.25, 4.5]
        assert new["bn.running_var"].tolist() == [3.25, 4.5]
        assert new["bn.running_mean"].dtype == torch.float32
        # an integer buffer: the maximum of 5, 10, 7, still int64
        assert new["bn.num_batches_tracked"].dtype == torch.int64
        assert new["bn.num_batches_tracked"].item() == 10
        assert list(new) == list(g)
        g = new
    for state in ("m", "v"):  # server optimizers keep moments of the parameters only
        if getattr(strategy, state, None) is not None:
            assert set(getattr(strategy, state)) == {"fc.weight"}


def test_a_named_buffer_is_not_moved_by_the_server_optimizer():
    """With the model's trainable names, any floating entry outside them is a buffer (here
    `pos.table`, which the suffix rule would take for a parameter)."""
    g = dict(bn_weights([0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 0), **{"pos.table": torch.zeros(2)})
    results = [FitResult(r.worker_id, dict(r.weights, **{"pos.table": torch.full((2,), 4.0)}),
                         r.num_examples) for r in bn_results()]
    named, by_suffix = FedAdam(eta=0.5), FedAdam(eta=0.5)
    named.initialize_parameters(g, {"fc.weight"})
    by_suffix.initialize_parameters(g)
    assert run_round(named, g, results)["pos.table"].tolist() == [4.0, 4.0]
    # taken for a parameter: one Adam step of eta * m/sqrt(v) = 0.5 * 0.1*4/sqrt(0.01*16) = 0.5
    assert run_round(by_suffix, g, results)["pos.table"].tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="not in the model"):
        FedAvg().initialize_parameters(g, {"fc.bias"})


def test_fedavgm_momentum_on_parameters():
    strategy = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    g0 = weights(0.0)
    strategy.initialize_parameters(g0)
    g1 = run_round(strategy, g0, [result("a", 2.0)], round=1)
    # Δ = 2, m = 2, w = 0 + 2 = 2
    assert values(g1) == [2.0]
    g2 = run_round(strategy, g1, [result("a", 3.0)], round=2)
    # Δ = 1, m = 0.5*2 + 1 = 2, w = 2 + 2 = 4
    assert values(g2) == [4.0]
    resumed = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    resumed.load_state_dict(decode(encode(strategy.state_dict())))
    assert values(run_round(resumed, g2, [result("a", 4.0)], round=3)) == \
        values(run_round(strategy, g2, [result("a", 4.0)], round=3)) == [5.0]
    # Δ = 4 - 4 = 0, m = 0.5*2 + 0 = 1, w = 4 + 1 = 5; without the momentum m = 0, w = 4
    assert values(run_round(FedAvgM(server_momentum=0.5), g2, [result("a", 4.0)])) == [4.0]
    assert values(run_round(FedAvgM(), weights(0.0), [result("a", 1.0, n=1),
                                                     result("b", 4.0, n=2)])) == [3.0]  # FedAvg


def test_async_strategies_average_buffers_without_a_server_step():
    g = bn_weights([0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 3)
    fedasync = FedAsync(alpha=0.5, staleness="constant")
    fedasync.initialize_parameters(g)
    new = fedasync.on_update(g, 0, FitResult("a", bn_weights([2.0, 2.0], [2.0, 4.0],
                                                             [3.0, 5.0], 5), 2))
    # mixing: 0.5*g + 0.5*update for parameters and float buffers alike; max(3, 5) = 5
    assert new["fc.weight"].tolist() == [1.0, 1.0]
    assert new["bn.running_mean"].tolist() == [1.0, 2.0]
    assert new["bn.running_var"].tolist() == [2.0, 3.0]
    assert new["bn.num_batches_tracked"].item() == 5
    assert new["bn.num_batches_tracked"].dtype == torch.int64

    fedbuff = FedBuff(buffer_size=2, server_lr=0.5, staleness="constant")
    fedbuff.initialize_parameters(g)
    a, b, _ = bn_results()
    assert fedbuff.on_update(g, 0, a) is None
    checkpoint = decode(encode(fedbuff.state_dict()))
    new = fedbuff.on_update(g, 0, b)
    # parameters: 0 + 0.5 * ((1 - 0) + (3 - 0))/2 = 1; buffers, samples 1 and 3, no server_lr:
    # mean (1 + 9)/4 = 2.5, (2 + 18)/4 = 5; var (2 + 12)/4 = 3.5, (2 + 18)/4 = 5; max(3, 5, 10)
    assert new["fc.weight"].tolist() == [1.0, 1.0]
    assert new["bn.running_mean"].tolist() == [2.5, 5.0]
    assert new["bn.running_var"].tolist() == [3.5, 5.0]
    assert new["bn.num_batches_tracked"].item() == 10
    assert set(fedbuff._history[1]) == {"fc.weight"}  # only parameters need their start
    resumed = FedBuff(buffer_size=2, server_lr=0.5, staleness="constant")
    resumed.load_state_dict(checkpoint)  # mid-buffer: the buffers' sums are in the checkpoint
    again = resumed.on_update(g, 0, b)
    assert all(torch.equal(again[k], new[k]) for k in new)


# --- results dropped with a reason ---------------------------------------------------------------

def _bad_results():
    good = bn_weights([1.0, 1.0], [1.0, 2.0], [2.0, 2.0], 5)
    return [
        (FitResult("empty", good, 0), "num_examples is 0"),
        (FitResult("nan", dict(good, **{"fc.weight": torch.tensor([float("nan"), 0.0])}), 1),
         "fc.weight holds NaN or infinite"),
        (FitResult("inf", dict(good, **{"bn.running_var": torch.tensor([float("inf"), 1.0])}),
                   1), "bn.running_var holds NaN or infinite"),
        (FitResult("int", dict(good, **{"bn.running_mean": torch.tensor([1, 2])}), 1),
         "bn.running_mean is torch.int64"),
    ]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_and_non_finite_results_are_dropped_with_a_reason(name):
    strategy = make_strategy(name)
    g = bn_weights([0.0, 0.0], [0.0, 0.0], [1.0, 1.0], 3)
    strategy.initialize_parameters(g)
    results = strategy.begin_fit(0, g)
    for bad, reason in _bad_results():
        with pytest.raises(UpdateRejected, match=reason):
            results.add(bad)
        if isinstance(strategy, AsyncStrategy):
            with pytest.raises(UpdateRejected, match=reason):
                strategy.on_update(g, 0, bad)
    assert results.count == 0 and results.num_examples == 0
    if isinstance(strategy, AsyncStrategy):
        assert strategy.received == 0
