"""Differential privacy (issue 16, Deliver 3): DPConfig, DP-FedAvg's clipping and noise
(fedmq.privacy.central), the accountants against Opacus' own and against a hand computation,
DP-SGD in a worker's Fit through the wire path, and epsilon in metrics.jsonl, the progress
line and the plot."""
from __future__ import annotations

import json
import math
import types

import pytest
import torch

from fedmq import errors, serde
from fedmq.fl.connections import decode_reply, encode_request
from fedmq.fl.coordinator import RoundRecord, initial_weights
from fedmq.fl.messages import Fit
from fedmq.fl.metrics import METRICS, PLOT, figure, plot_series
from fedmq.fl.progress import ProgressReporter, status_text
from fedmq.fl.reporters import ConsoleReporter, MetricsReporter
from fedmq.models import MODELS, MNISTLogReg
from fedmq.plans import module_plan
from fedmq.privacy import DPConfig
from fedmq.privacy.accountant import CentralAccountant, LocalAccountants
from fedmq.privacy.central import (central_std, clip_update, distributed_std, noise)
from fedmq.privacy.local import check_model, sample_rate

from fl_helpers import data_worker

DELTA = 1e-5


# -- DPConfig ------------------------------------------------------------------------------

def test_dp_config_round_trips_through_plain_values():
    cfg = DPConfig("local", 1, 2.5, delta=1e-6, accountant="prv")
    plain = cfg.as_dict()
    assert plain == {"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 2.5,
                     "delta": 1e-6, "accountant": "prv"}
    assert all(type(v) in (str, float) for v in plain.values())
    assert DPConfig.from_dict(serde.decode(serde.encode(plain))) == cfg
    assert DPConfig("central", 0.0, math.inf).max_grad_norm == math.inf  # no clipping, no noise


@pytest.mark.parametrize("values, field", [
    ({"mode": "global"}, "mode"),
    ({"noise_multiplier": -0.1}, "noise_multiplier"),
    ({"noise_multiplier": math.nan}, "noise_multiplier"),
    ({"noise_multiplier": math.inf}, "noise_multiplier"),
    ({"noise_multiplier": "1"}, "noise_multiplier"),
    ({"noise_multiplier": True}, "noise_multiplier"),
    ({"max_grad_norm": 0}, "max_grad_norm"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ({"max_grad_norm": math.inf}, "max_grad_norm"),  # inf only with z == 0
    ({"delta": 0}, "delta"),
    ({"delta": 1}, "delta"),
    ({"delta": None}, "delta"),
    ({"accountant": "gdp"}, "accountant"),
])
def test_dp_config_refuses_bad_values_naming_the_field(values, field):
    good = {"mode": "central", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    with pytest.raises(ValueError, match=field):
        DPConfig(**(good | values))
    with pytest.raises(ValueError, match=field):
        DPConfig.from_dict(good | values)


@pytest.mark.parametrize("values, message", [
    (["central", 1.0, 1.0], "must be a dict"),
    ({"mode": "local", "noise_multiplier": 1.0}, "misses max_grad_norm"),
    ({"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "seed": 3},
     "unknown keys"),
])
def test_dp_config_from_the_network_is_checked(values, message):
    with pytest.raises(ValueError, match=message):
        DPConfig.from_dict(values)


# -- DP-FedAvg: clipping and noise ---------------------------------------------------------

def test_clip_update_scales_to_the_norm_and_keeps_the_direction():
    update = torch.randn(1000, generator=torch.Generator().manual_seed(0)).float() * 3
    original = float(torch.linalg.vector_norm(update.double()))
    clipped, norm = clip_update(update, 2.0)
    assert clipped.dtype == torch.float64 and clipped.shape == (1000,)
    assert norm == pytest.approx(original, rel=1e-12)
    assert float(torch.linalg.vector_norm(clipped)) == pytest.approx(2.0, rel=1e-12)
    assert torch.allclose(clipped * (original / 2.0), update.double(), rtol=1e-12, atol=1e-12)


def test_clip_update_leaves_an_update_within_the_norm_and_inf_unchanged():
    update = torch.tensor([[0.3, -0.4]], dtype=torch.float64)  # norm 0.5
    clipped, norm = clip_update(update, 0.5)
    assert torch.equal(clipped, update.reshape(-1)) and norm == pytest.approx(0.5)
    big = torch.full((10,), 1e6)
    clipped, norm = clip_update(big, math.inf)
    assert torch.equal(clipped, big.double()) and norm == pytest.approx(1e6 * math.sqrt(10))


@pytest.mark.parametrize("update, max_norm, message", [
    (torch.tensor([1.0, math.nan]), 1.0, "non-finite"),
    (torch.tensor([1.0, math.inf]), 1.0, "non-finite"),
    (torch.tensor([1, 2]), 1.0, "floats"),
    (torch.tensor([1.0]), 0.0, "max_norm"),
    (torch.tensor([1.0]), -2.0, "max_norm"),
])
def test_clip_update_refuses_bad_input(update, max_norm, message):
    with pytest.raises(ValueError, match=message):
        clip_update(update, max_norm)


def test_noise_has_the_std_asked_for():
    n, std = 1_000_000, 0.7
    sample = noise(n, std, torch.Generator().manual_seed(1))
    assert sample.dtype == torch.float64 and sample.shape == (n,)
    assert float(sample.std()) == pytest.approx(std, rel=0.02)
    assert abs(float(sample.mean())) < 5 * std / math.sqrt(n)
    assert torch.equal(sample, noise(n, std, torch.Generator().manual_seed(1)))
    assert not torch.equal(noise(100, 1.0), noise(100, 1.0))  # OS entropy, not a fixed seed
    assert torch.equal(noise(5, 0.0), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="std"):
        noise(5, -1.0)
    with pytest.raises(ValueError, match="n must"):
        noise(-1, 1.0)


def test_central_std_is_z_c_over_sampled():
    assert central_std(1.2, 0.5, 4) == pytest.approx(1.2 * 0.5 / 4)
    assert central_std(0.0, math.inf, 3) == 0.0
    with pytest.raises(ValueError, match="sampled"):
        central_std(1.0, 1.0, 0)


def test_the_mean_of_the_workers_noises_has_the_central_std():
    """Distributed DP: `sampled` workers each add N(0, distributed_std^2); the mean of their
    noisy updates carries N(0, central_std^2) (measured, not derived)."""
    z, c, m, n = 1.1, 0.8, 5, 400_000
    g = torch.Generator().manual_seed(2)
    s = distributed_std(z, c, m)
    mean = torch.stack([noise(n, s, g) for _ in range(m)]).mean(0)
    assert float(mean.std()) == pytest.approx(central_std(z, c, m), rel=0.02)
    assert s == pytest.approx(z * c / math.sqrt(m))


# -- accountants -----------------------------------------------------------------------------

ROUND_RATES = [0.5, 0.5, 0.5, 1.0, 1.0, 0.3]


def opacus_epsilon(kind: str, steps: list[tuple[float, float]], delta: float = DELTA) -> float:
    """Opacus' own accountant, stepped one step at a time: [(z, q)]."""
    import numpy as np
    from opacus.accountants import PRVAccountant, RDPAccountant
    acc = {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()
    for z, q in steps:
        acc.step(noise_multiplier=z, sample_rate=q)
    with np.errstate(divide="ignore"):  # PRV at q = 1
        return acc.get_epsilon(delta=delta)


def hand_rdp_epsilon(z: float, rates: list[float], delta: float = DELTA) -> float:
    """RDP composition by hand: the sum over steps of each step's RDP curve, converted once."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = np.sum([compute_rdp(q=q, noise_multiplier=z, steps=1, orders=orders)
                  for q in rates], axis=0)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_central_epsilon_is_opacus_accountants(kind):
    acc = CentralAccountant(1.1, DELTA, kind)
    assert acc.epsilon() == 0.0
    for q in ROUND_RATES:
        acc.step(q)
    assert acc.history == [(1.1, 0.5, 3), (1.1, 1.0, 2), (1.1, 0.3, 1)]
    assert acc.epsilon() == pytest.approx(opacus_epsilon(kind, [(1.1, q) for q in ROUND_RATES]),
                                          rel=1e-9)
    assert 0 < acc.epsilon() < math.inf


def test_central_rdp_epsilon_equals_a_hand_computation():
    acc = CentralAccountant(1.1, DELTA)
    for q in ROUND_RATES:
        acc.step(q)
    assert acc.epsilon() == pytest.approx(hand_rdp_epsilon(1.1, ROUND_RATES), rel=1e-9)
    more_noise = CentralAccountant(2.0, DELTA)
    for q in ROUND_RATES:
        more_noise.step(q)
    assert more_noise.epsilon() < acc.epsilon()


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_central_state_dict_round_trip_continues_the_count(kind):
    whole = CentralAccountant(1.3, DELTA, kind)
    first = CentralAccountant(1.3, DELTA, kind)
    for q in ROUND_RATES[:4]:
        whole.step(q)
        first.step(q)
    state = serde.decode(serde.encode(first.state_dict()))  # as a checkpoint holds it
    assert state["history"] == [[1.3, 0.5, 3], [1.3, 1.0, 1]]
    resumed = CentralAccountant(1.3, DELTA, kind)
    resumed.load_state_dict(state)
    assert resumed.epsilon() == first.epsilon()
    for q in ROUND_RATES[4:]:
        whole.step(q)
        resumed.step(q)
    assert resumed.history == whole.history
    assert resumed.epsilon() == pytest.approx(whole.epsilon(), rel=1e-12)


def test_no_noise_means_infinite_epsilon():
    acc = CentralAccountant(0.0, DELTA, "prv")
    assert acc.epsilon() == 0.0
    acc.step(0.5)
    assert acc.epsilon() == math.inf
    local = LocalAccountants(0, DELTA)
    local.step("alice", 0.1, 3)
    assert local.epsilon("alice") == math.inf == local.max_epsilon()


@pytest.mark.parametrize("call, message", [
    (lambda: CentralAccountant(-1.0, DELTA), "noise_multiplier"),
    (lambda: CentralAccountant(1.0, 0.0), "delta"),
    (lambda: CentralAccountant(1.0, DELTA, "gdp"), "kind"),
    (lambda: CentralAccountant(1.0, DELTA).step(0.0), "sample_rate"),
    (lambda: CentralAccountant(1.0, DELTA).step(1.5), "sample_rate"),
    (lambda: CentralAccountant(1.0, DELTA).step(math.nan), "sample_rate"),
    (lambda: LocalAccountants(1.0, DELTA).step("a", 0.1, -1), "steps"),
    (lambda: LocalAccountants(1.0, DELTA).step("a", 0.1, 2.0), "steps"),
    (lambda: LocalAccountants(1.0, DELTA).step("", 0.1, 2), "worker"),
    (lambda: CentralAccountant(1.0, DELTA).load_state_dict({"history": []}), "keys"),
    (lambda: CentralAccountant(1.0, DELTA).load_state_dict(
        CentralAccountant(1.0, DELTA, "prv").state_dict()), "kind"),
    (lambda: CentralAccountant(1.0, DELTA).load_state_dict(
        {"kind": "rdp", "noise_multiplier": 1.0, "delta": DELTA, "history": [[1.0, 2.0, 1]]}),
     "sample_rate"),
    (lambda: LocalAccountants(1.0, DELTA).load_state_dict(
        {"kind": "rdp", "noise_multiplier": 1.0, "delta": DELTA, "workers": {"a": "x"}}),
     "history"),
])
def test_accountants_refuse_bad_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_local_epsilons_are_opacus_accountants_per_worker(kind):
    accs = LocalAccountants(1.0, DELTA, kind)
    rounds = {"alice": [(0.2, 5), (0.2, 5), (0.25, 4)], "bob": [(0.1, 10)]}
    for worker, steps in rounds.items():
        for q, n in steps:
            accs.step(worker, q, n)
    expected = {w: opacus_epsilon(kind, [(1.0, q) for q, n in steps for _ in range(n)])
                for w, steps in rounds.items()}
    for worker in rounds:
        assert accs.epsilon(worker) == pytest.approx(expected[worker], rel=1e-9)
    assert accs.max_epsilon() == pytest.approx(max(expected.values()), rel=1e-9)
    assert expected["alice"] > expected["bob"]  # more steps at a higher rate
    assert accs.epsilon("carol") == 0.0


def test_local_rdp_epsilon_equals_a_hand_computation():
    accs = LocalAccountants(0.9, DELTA)
    accs.step("alice", 0.2, 7)
    accs.step("alice", 0.05, 3)
    assert accs.epsilon("alice") == pytest.approx(
        hand_rdp_epsilon(0.9, [0.2] * 7 + [0.05] * 3), rel=1e-9)


def test_local_state_dict_round_trip():
    accs = LocalAccountants(1.0, DELTA)
    accs.step("alice", 0.2, 5)
    accs.step("bob", 0.1, 3)
    state = serde.decode(serde.encode(accs.state_dict()))
    resumed = LocalAccountants(1.0, DELTA)
    resumed.load_state_dict(state)
    assert {w: resumed.epsilon(w) for w in ("alice", "bob")} == \
        {w: accs.epsilon(w) for w in ("alice", "bob")}
    accs.step("alice", 0.2, 2)
    resumed.step("alice", 0.2, 2)
    assert resumed.epsilon("alice") == accs.epsilon("alice")
    assert resumed.state_dict() == accs.state_dict()


# -- local DP: DP-SGD in a worker's Fit ------------------------------------------------------

CONFIG = {"batch_size": 8, "num_batches": 3, "optimizer": "sgd",
          "optimizer_args": {"lr": 0.05}, "loss": "nll", "seed": 7}


def local(z: float, c: float) -> dict:
    return DPConfig("local", z, c).as_dict()


def call(worker, message):
    """The whole wire path: encode, handle_frame, decode (raises the worker's error)."""
    return decode_reply(worker.handle_frame(encode_request(message)), worker.id)


@pytest.fixture(scope="module")
def alice():
    return data_worker("alice", n=40)


@pytest.fixture(scope="module")
def weights():
    return initial_weights("seed-cnn", seed=1)


def difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def distance(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_local_dp_fit_trains_and_reports_what_the_accountant_needs(alice, weights):
    res = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG, dp=local(1.0, 1.0))))
    assert res.status == "ok" and res.num_examples == 24
    assert res.weights.keys() == weights.keys()  # the plain model's keys, no "_module."
    assert distance(res.weights, weights) > 0
    assert res.metrics["dp_sample_rate"] == 8 / 40 and res.metrics["dp_steps"] == 3
    plain = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    assert "dp_steps" not in plain.metrics
    assert difference(res.weights, plain.weights) > 1e-3  # the noise moved it


@pytest.mark.parametrize("c", [1e9, math.inf])
def test_local_dp_without_noise_or_clipping_is_plain_training(alice, weights, c):
    plain = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    private = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG, dp=local(0.0, c))))
    assert difference(private.weights, plain.weights) < 1e-5


def test_local_dp_noise_is_not_the_seeds(alice, weights):
    """Two Fits with the same seed: the batches are the same, the noise is not (a
    coordinator knowing the seed cannot replay it)."""
    config = dict(CONFIG, dp=local(1.0, 1.0))
    a = call(alice, Fit(1, "seed-cnn", weights, config))
    b = call(alice, Fit(1, "seed-cnn", weights, config))
    assert difference(a.weights, b.weights) > 1e-4


def test_local_dp_clips_each_step(alice, weights):
    """Without noise, each step moves the weights by at most lr * C (the mean of clipped
    per-sample gradients has norm <= C); plain training moves them further."""
    lr, c = 0.05, 0.01
    private = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG, dp=local(0.0, c))))
    plain = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    assert 0 < distance(private.weights, weights) <= 3 * lr * c * (1 + 1e-5)
    assert distance(plain.weights, weights) > 10 * 3 * lr * c


def test_local_dp_keeps_fedprox_proximal_term(alice, weights):
    """Noise 0, no clipping: DP-SGD with FedProx's mu equals plain FedProx training."""
    config = dict(CONFIG, proximal_mu=5.0, optimizer_args={"lr": 0.05, "momentum": 0.5})
    plain = call(alice, Fit(1, "seed-cnn", weights, config))
    private = call(alice, Fit(1, "seed-cnn", weights, dict(config, dp=local(0.0, math.inf))))
    without = call(alice, Fit(1, "seed-cnn", weights, dict(config, proximal_mu=0.0)))
    assert difference(private.weights, plain.weights) < 1e-5
    assert difference(without.weights, plain.weights) > 1e-4  # the term matters here


def test_central_dp_config_changes_nothing_on_the_worker(alice, weights):
    plain = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    central = call(alice, Fit(1, "seed-cnn", weights,
                              dict(CONFIG, dp=DPConfig("central", 1.0, 1.0).as_dict())))
    assert all(torch.equal(plain.weights[k], central.weights[k]) for k in weights)
    assert "dp_steps" not in central.metrics


class BatchNormNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(1)
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        return torch.log_softmax(self.fc(self.bn(x).flatten(1)), dim=1)


def test_a_batchnorm_model_is_refused_with_the_reason(alice, monkeypatch):
    monkeypatch.setitem(MODELS, "bn-net", BatchNormNet)
    weights = BatchNormNet().state_dict()
    assert call(alice, Fit(1, "bn-net", weights, dict(CONFIG))).status == "ok"
    with pytest.raises(errors.RemoteExecutionError, match="BatchNorm"):
        call(alice, Fit(1, "bn-net", weights, dict(CONFIG, dp=local(1.0, 1.0))))
    with pytest.raises(ValueError, match="BatchNorm"):
        check_model(BatchNormNet())


def test_a_model_plan_is_refused_with_the_reason(alice):
    net = MNISTLogReg()
    rec = module_plan.model_plan(net, torch.zeros(8, 1, 28, 28))
    weights = net.state_dict()
    assert call(alice, Fit(1, rec, weights, dict(CONFIG))).status == "ok"
    with pytest.raises(errors.RemoteExecutionError, match="not a model plan"):
        call(alice, Fit(1, rec, weights, dict(CONFIG, dp=local(1.0, 1.0))))


@pytest.mark.parametrize("dp, message", [
    ({"mode": "local", "noise_multiplier": -1.0, "max_grad_norm": 1.0}, "noise_multiplier"),
    ({"mode": "locally", "noise_multiplier": 1.0, "max_grad_norm": 1.0}, "mode"),
    ({"mode": "local", "noise_multiplier": 1.0, "max_grad_norm": math.inf}, "max_grad_norm"),
    ({"mode": "local", "noise_multiplier": 1.0}, "misses max_grad_norm"),
    ("local", "must be a dict"),
])
def test_bad_dp_config_is_refused_and_the_worker_keeps_serving(alice, weights, dp, message):
    with pytest.raises(errors.RemoteExecutionError, match=message):
        call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG, dp=dp)))
    assert call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG))).status == "ok"


def test_too_many_per_sample_gradients_are_refused(alice, weights):
    with pytest.raises(errors.RemoteExecutionError, match="smaller batch_size"):
        call(alice, Fit(1, "seed-cnn", weights,
                        dict(CONFIG, batch_size=1000, dp=local(1.0, 1.0))))


def test_sample_rate_is_at_most_one():
    assert sample_rate(8, 40) == 0.2 and sample_rate(64, 40) == 1.0
    with pytest.raises(ValueError):
        sample_rate(0, 40)


# -- reporting epsilon -----------------------------------------------------------------------

def record(round: int, epsilon: float | None, accuracy: float | None = 0.5) -> RoundRecord:
    return RoundRecord(round, 1.5, 0.01, "ok", 0.7, {"alice": {"loss": 0.7, "samples": 10}},
                       {}, accuracy=accuracy, test_loss=0.6 if accuracy else None,
                       epsilon=epsilon)


def test_metrics_jsonl_and_the_plot_carry_epsilon(tmp_path):
    reporter = MetricsReporter(tmp_path)
    reporter.on_prepare(None)
    for r, eps, acc in [(1, 0.5, 0.4), (2, 0.8, None), (3, 1.1, 0.7)]:
        reporter.on_round_closed(record(r, eps, acc))
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [line["epsilon"] for line in lines] == [0.5, 0.8, 1.1]
    assert (tmp_path / PLOT).stat().st_size > 0
    series = plot_series(lines)
    assert series["accuracy_epsilon"] == ([0.5, 1.1], [40.0, 70.0])
    import matplotlib.pyplot as plt
    fig = figure(lines, title="dp-run")
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["Test accuracy", "Loss", "Privacy budget spent (epsilon)",
                          "Accuracy against epsilon"]
        trade = fig.axes[3]
        assert trade.get_xlabel().startswith("epsilon")
        assert "accuracy" in trade.get_ylabel()
        xs, ys = trade.lines[0].get_data()
        assert list(xs) == [0.5, 1.1] and list(ys) == [40.0, 70.0]
    finally:
        plt.close(fig)


def test_without_epsilon_the_plot_has_no_privacy_panels(tmp_path):
    lines = [record(1, None).as_json(), record(2, None).as_json()]
    assert plot_series(lines)["accuracy_epsilon"] is None
    import matplotlib.pyplot as plt
    fig = figure(lines)
    try:
        assert [ax.get_title() for ax in fig.axes] == ["Test accuracy", "Loss"]
    finally:
        plt.close(fig)


def test_the_progress_line_and_bar_show_epsilon():
    console = ConsoleReporter().bind(types.SimpleNamespace(config=types.SimpleNamespace(rounds=4)))
    assert console.progress_line(record(2, 1.234), 1).endswith("accuracy 50.00%, ε=1.23")
    assert "ε" not in console.progress_line(record(2, None), 1)
    assert "ε=inf" in console.progress_line(record(2, math.inf), 1)
    assert status_text(0.5, 0.25, 0, 1.234) == "accuracy 50.00% · ε=1.23 · loss 0.2500 · " \
                                              "0 failed Fits"
    assert "ε" not in status_text(0.5, 0.25, 0)
    from rich.console import Console
    bar = ProgressReporter("lines", Console(file=open("/dev/null", "w"))).bind(
        types.SimpleNamespace(unit="round"))
    bar.on_round_end(record(1, 0.75))
    assert "ε=0.75" in bar.status()


# -- over RabbitMQ, on a real `fedmq worker` process -----------------------------------------

@pytest.mark.amqp
@pytest.mark.slow
def test_local_dp_fit_on_a_worker_process_over_rabbitmq(tmp_path):
    """A `fedmq worker --dataset mnist5k` process trains with DP-SGD (Opacus imported there
    on the first such Fit) and answers the plain model's weights and the accountant's
    metrics; a bad dp config comes back as a clear error and the worker keeps serving."""
    import asyncio

    from fedmq.fl.connections import AMQPRoundConnection
    from worker_procs import AMQP_URL, WorkerProcesses

    procs = WorkerProcesses(tmp_path)
    procs.start("dp-alice", "--dataset", "mnist5k", "--labels", "0-4")
    weights = initial_weights("mnist-logreg", seed=3)
    config = {"batch_size": 16, "num_batches": 4, "optimizer_args": {"lr": 0.1}, "seed": 2}

    async def run():
        conn = await AMQPRoundConnection.connect(AMQP_URL)
        try:
            good = await conn.arequest("dp-alice", Fit(1, "mnist-logreg", weights,
                                                       dict(config, dp=local(1.0, 1.0))),
                                       timeout=120)
            with pytest.raises(errors.RemoteExecutionError, match="noise_multiplier"):
                await conn.arequest("dp-alice", Fit(2, "mnist-logreg", weights, dict(
                    config, dp={"mode": "local", "noise_multiplier": -1,
                                "max_grad_norm": 1.0})), timeout=60)
            plain = await conn.arequest("dp-alice", Fit(3, "mnist-logreg", weights, config),
                                        timeout=60)
            return good, plain
        finally:
            await conn.aclose()

    try:
        good, plain = asyncio.run(run())
    finally:
        procs.stop_all(delete_queues=True)
    assert good.status == "ok" and good.weights.keys() == weights.keys()
    assert good.metrics["dp_steps"] == 4
    assert 0 < good.metrics["dp_sample_rate"] < 0.01  # 16 of a few thousand images
    assert plain.status == "ok" and "dp_steps" not in plain.metrics
    assert difference(good.weights, plain.weights) > 1e-3


def test_found_by_review_local_dp_keeps_its_sampling_and_loss_from_the_coordinator(alice,
                                                                                   weights):
    """Found by review: under --dp local the coordinator read exact losses (how many samples
    of a batch were not label 0, from crafted weights) and chose the batches through the
    Fit's seed or `shuffle: false`, which the accountant's subsampling assumes it cannot."""
    config = dict(CONFIG, dp=local(1.0, 1.0))
    res = call(alice, Fit(1, "seed-cnn", weights, config))
    assert math.isnan(res.loss)
    with pytest.raises(Exception, match="shuffle false"):
        call(alice, Fit(1, "seed-cnn", weights, dict(config, shuffle=False)))
    plain = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    assert not math.isnan(plain.loss)
