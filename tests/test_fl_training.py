"""The worker side of federated rounds: Fit and Evaluate through Worker.handle_frame."""
from __future__ import annotations

import time

import pytest
import torch

from fedmq import errors
from fedmq.fl.connections import decode_reply, encode_request
from fedmq.fl.coordinator import initial_weights
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.models import SeedCNN

from fl_helpers import data_worker

CONFIG = {"batch_size": 8, "num_batches": 3, "optimizer": "sgd",
          "optimizer_args": {"lr": 0.05}, "loss": "nll", "seed": 7}


def call(worker, message):
    """The whole wire path: encode, handle_frame, decode (raises the worker's error)."""
    return decode_reply(worker.handle_frame(encode_request(message)), worker.id)


@pytest.fixture
def alice():
    return data_worker("alice", n=40)


@pytest.fixture
def weights():
    return initial_weights("seed-cnn", seed=1)


def distance(a, b):
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_fit_trains_and_reports_samples_and_loss(alice, weights):
    res = call(alice, Fit(3, "seed-cnn", weights, dict(CONFIG)))
    assert isinstance(res, FitRes)
    assert (res.round, res.worker, res.status) == (3, "alice", "ok")
    assert res.num_examples == 24
    assert res.weights.keys() == weights.keys()
    assert all(res.weights[k].shape == weights[k].shape for k in weights)
    assert 0 < res.loss < 10
    assert distance(res.weights, weights) > 0


def test_fit_is_deterministic_for_a_seed_and_differs_across_seeds(alice, weights):
    a = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    b = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    c = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG, seed=8)))
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in weights)
    assert a.loss == b.loss
    assert any(not torch.equal(a.weights[k], c.weights[k]) for k in weights)


def test_fit_matches_plain_pytorch_sgd(alice, weights):
    """The same batches and SGD steps as a local loop over the worker's data."""
    res = call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG)))
    data = alice.store.search(["#data", "#train"])[0][1].obj
    target = alice.store.search(["#target", "#train"])[0][1].obj
    model = SeedCNN()
    model.load_state_dict(weights)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(7)
    perm = torch.randperm(40, generator=g)
    for i in range(3):
        idx = perm[i * 8:(i + 1) * 8]
        opt.zero_grad()
        torch.nn.functional.nll_loss(model(data[idx]), target[idx]).backward()
        opt.step()
    assert all(torch.allclose(res.weights[k], v, atol=1e-6)
               for k, v in model.state_dict().items())


def test_epochs_cover_the_whole_partition(alice, weights):
    res = call(alice, Fit(1, "seed-cnn", weights, {"batch_size": 16, "epochs": 2,
                                                  "optimizer_args": {"lr": 0.01}}))
    assert res.num_examples == 80  # 2 x 40 samples, batches of 16, 16, 8


def test_proximal_term_keeps_the_update_near_the_global_model(alice, weights):
    config = dict(CONFIG, num_batches=8, optimizer_args={"lr": 0.1})
    free = call(alice, Fit(1, "seed-cnn", weights, config))
    prox = call(alice, Fit(1, "seed-cnn", weights, dict(config, proximal_mu=4.0)))
    assert distance(prox.weights, weights) < 0.9 * distance(free.weights, weights)


def test_a_fit_whose_deadline_passed_is_skipped(alice, weights):
    started = time.perf_counter()
    res = call(alice, Fit(2, "seed-cnn", weights, dict(CONFIG, num_batches=200),
                          deadline=time.time() - 1))
    assert res.status == "expired" and res.num_examples == 0 and res.weights == {}
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("change, message", [
    ({"model": "no-such-net"}, "unknown model"),
    ({"config": dict(CONFIG, optimizer="lbfgs")}, "unknown optimizer"),
    ({"config": dict(CONFIG, optimizer_args={"lr": 0.1, "foreach": True})}, "not allowed"),
    ({"config": dict(CONFIG, loss="mse")}, "unknown loss"),
    ({"config": dict(CONFIG, batch_size=0)}, "batch_size"),
    ({"weights": {"conv1.weight": torch.zeros(3)}}, "do not fit"),
])
def test_bad_fit_is_refused_and_the_worker_keeps_serving(alice, weights, change, message):
    fields = {"model": "seed-cnn", "weights": weights, "config": dict(CONFIG)} | change
    with pytest.raises(errors.RemoteExecutionError, match=message):
        call(alice, Fit(1, fields["model"], fields["weights"], fields["config"]))
    assert call(alice, Fit(1, "seed-cnn", weights, dict(CONFIG))).status == "ok"


def test_fit_without_data_names_what_is_missing(weights):
    empty = data_worker("carol", split="test")
    with pytest.raises(errors.RemoteExecutionError, match="0 data tensors for the train split"):
        call(empty, Fit(1, "seed-cnn", weights, dict(CONFIG)))


def test_evaluate_counts_and_histograms(weights):
    testing = data_worker("testing", n=50, split="test", seed=3)
    res = call(testing, Evaluate(1, "seed-cnn", weights, {"batch_size": 16}))
    assert isinstance(res, EvaluateRes)
    data = testing.store.search(["#data", "#test"])[0][1].obj
    target = testing.store.search(["#target", "#test"])[0][1].obj
    model = SeedCNN()
    model.load_state_dict(weights)
    with torch.no_grad():
        out = model(data)
    assert res.correct == int((out.argmax(1) == target).sum())
    assert res.num_examples == 50
    assert res.loss == pytest.approx(float(torch.nn.functional.nll_loss(out, target)), rel=1e-5)
    assert res.prediction_hist == torch.bincount(out.argmax(1), minlength=10).tolist()
    assert res.target_hist == torch.bincount(target, minlength=10).tolist()


def test_training_improves_accuracy(weights):
    train = data_worker("alice", n=128)
    testing = data_worker("testing", n=100, split="test", seed=5)
    before = call(testing, Evaluate(1, "seed-cnn", weights, {}))
    res = call(train, Fit(1, "seed-cnn", weights, {"batch_size": 16, "num_batches": 30,
                                                   "optimizer_args": {"lr": 0.05}}))
    after = call(testing, Evaluate(1, "seed-cnn", res.weights, {}))
    assert after.accuracy > max(0.6, before.accuracy + 0.3)
