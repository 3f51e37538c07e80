"""Seed §14's API (issue 14): sy.TrainConfig, worker.fit / async_fit / evaluate,
model_ptr.get(), fedmq.fl.utils.federated_avg; models as plans in Fit / Evaluate."""
from __future__ import annotations

import asyncio

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fedmq as sy
from fedmq.fl import plan_cache, utils
from fedmq.fl.messages import Fit
from fedmq.plans.messages import ModelPlanRecord


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return F.log_softmax(self.fc2(self.drop(F.relu(self.bn(self.fc1(x))))), dim=1)


class FixedBatch(nn.Module):
    """Freezes the batch size into a view (x.size(0)): a batch-specific plan."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return F.log_softmax(self.fc(x.view(x.size(0), 12)), dim=1)


def _data(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


@pytest.fixture
def workers():
    hook = sy.TorchHook(torch)
    x, y = _data()
    tx, ty = _data(23, seed=1)
    alice = sy.VirtualWorker(hook, id="tc_alice", data=(x.tag("#toy", "#data", "#train"),
                                                        y.tag("#toy", "#target", "#train")))
    testing = sy.VirtualWorker(hook, id="tc_testing",
                               data=(tx.tag("#toy_testing", "#data", "#test"),
                                     ty.tag("#toy_testing", "#target", "#test")))
    yield alice, testing, (x, y), (tx, ty)
    plan_cache.clear()


def _reference(model, x, y, seed, batch_size, lr, max_batches=None):
    """Plain PyTorch, the batches and dropout masks the worker uses (fedmq.fl.training.fit:
    shuffle by Generator(seed), drop_last, dropout from a generator seeded seed + 1)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)
    losses = []
    for i, start in enumerate(range(0, len(x) - batch_size + 1, batch_size)):
        if max_batches is not None and i == max_batches:
            break
        idx = perm[start:start + batch_size]
        opt.zero_grad()
        loss = F.nll_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item() * len(idx))
    return sum(losses) / (len(losses) * batch_size)


@pytest.mark.parametrize("kind", ["module", "jit"])
def test_fit_equals_plain_pytorch(workers, kind):
    alice, _, (x, y), _ = workers
    torch.manual_seed(3)
    net = MLP()
    model = net if kind == "module" else torch.jit.trace(net, torch.zeros(8, 12))
    reference = MLP()  # after tracing, which ran a batch (BatchNorm's statistics moved)
    reference.load_state_dict(net.state_dict())
    tc = sy.TrainConfig(model=model, loss_fn=F.nll_loss, batch_size=8, epochs=1,
                        optimizer="SGD", optimizer_args={"lr": 0.05},
                        example_input=torch.zeros(8, 12) if kind == "module" else None)
    tc.send(alice)
    torch.manual_seed(99)
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))
    torch.manual_seed(99)
    loss = alice.fit(dataset_key="toy")
    expected_loss = _reference(reference, x, y, seed, 8, 0.05)
    trained = tc.model_ptr.get()
    assert isinstance(trained, torch.jit.ScriptModule if kind == "jit" else MLP)
    for name, value in reference.state_dict().items():
        assert torch.allclose(trained.state_dict()[name].double(), value.double(), atol=1e-6), \
            name
    assert abs(float(loss) - expected_loss) < 1e-5
    assert int(trained.state_dict()["bn.num_batches_tracked"]) == \
        int(net.bn.num_batches_tracked) + 50 // 8


def test_max_nr_batches_async_fit_and_plan_sent_once(workers):
    alice, _, (x, y), _ = workers
    torch.manual_seed(4)
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4, max_nr_batches=3,
                        example_input=torch.zeros(4, 12))
    tc.send(alice)
    sent = []
    original = alice.engine.arequest

    async def spy(worker_id, message, **kw):
        sent.append(message.model)
        return await original(worker_id, message, **kw)
    alice.engine.arequest = spy
    try:
        asyncio.run(alice.async_fit(dataset_key="toy", return_ids=[0]))
        asyncio.run(alice.async_fit(dataset_key="toy"))
        plan_cache.clear()  # the worker forgot it (a restart): sent again by itself
        asyncio.run(alice.async_fit(dataset_key="toy"))
    finally:
        del alice.engine.arequest
    assert isinstance(sent[0], ModelPlanRecord)
    assert isinstance(sent[1], str) and sent[1].startswith("sha256:")
    assert sent[2] == sent[1] and isinstance(sent[3], ModelPlanRecord)
    assert int(tc.model_ptr.get().state_dict()["bn.num_batches_tracked"]) == 3 * 3


def test_evaluate_returns_pysyft_keys(workers):
    alice, testing, _, (tx, ty) = workers
    torch.manual_seed(5)
    model = MLP()
    tc = sy.TrainConfig(model=model, loss_fn=F.nll_loss, batch_size=7,
                        example_input=torch.zeros(7, 12))
    tc.send(testing)
    result = testing.evaluate(dataset_key="toy_testing", return_histograms=True, nr_bins=3,
                              return_loss=True, return_raw_accuracy=True)
    model.eval()
    with torch.no_grad():
        out = model(tx)
    assert result["nr_predictions"] == 23
    assert result["nr_correct_predictions"] == int((out.argmax(1) == ty).sum())
    assert abs(result["loss"] - F.nll_loss(out, ty, reduction="sum").item() / 23) < 1e-5
    assert result["histogram_predictions"].tolist() == \
        torch.bincount(out.argmax(1), minlength=3).tolist()
    assert result["histogram_target"].tolist() == torch.bincount(ty, minlength=3).tolist()
    short = testing.evaluate(dataset_key="toy_testing", return_loss=False,
                             return_raw_accuracy=False)
    assert set(short) == {"nr_predictions"}


def test_a_batch_specific_plan_trains_full_batches_and_pads_evaluation(workers):
    alice, testing, (x, y), (tx, ty) = workers
    torch.manual_seed(6)
    model = FixedBatch()
    tc = sy.TrainConfig(model=model, loss_fn=F.nll_loss, batch_size=8,
                        example_input=torch.zeros(8, 12))
    assert tc.plan.batch_generic is False
    tc.send(testing)
    result = testing.evaluate(dataset_key="toy_testing")  # 23 = 8 + 8 + 7 (padded)
    with torch.no_grad():
        expected = int((model(tx).argmax(1) == ty).sum())
    assert result["nr_predictions"] == 23 and result["nr_correct_predictions"] == expected
    tc.send(alice)
    assert torch.isfinite(alice.fit(dataset_key="toy"))


def test_scripted_and_plan_losses(workers):
    alice, _, _, _ = workers

    def nll(pred, target):
        return F.nll_loss(input=pred, target=target)
    scripted = torch.jit.script(nll)
    plan = sy.func2plan()(nll)
    plan.build(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    for loss_fn in (scripted, plan):
        torch.manual_seed(7)
        tc = sy.TrainConfig(model=MLP(), loss_fn=loss_fn, batch_size=4,
                            example_input=torch.zeros(4, 12),
                            example_target=torch.zeros(4, dtype=torch.long))
        tc.send(alice)
        assert [op.op for op in tc.plan.loss.ops] == ["F.nll_loss"]
        assert torch.isfinite(alice.fit(dataset_key="toy"))


def test_federated_avg_averages_parameters_and_buffers():
    torch.manual_seed(8)
    a, b = MLP(), MLP()
    a.bn.running_mean.fill_(1.0)
    b.bn.running_mean.fill_(3.0)
    a.bn.num_batches_tracked.fill_(4)
    b.bn.num_batches_tracked.fill_(6)
    avg = utils.federated_avg({"a": a, "b": b})
    assert avg is not a and avg is not b
    assert torch.allclose(avg.fc1.weight, (a.fc1.weight + b.fc1.weight) / 2)
    assert torch.allclose(avg.bn.running_mean, torch.full((16,), 2.0))
    assert int(avg.bn.num_batches_tracked) == 6
    traced = utils.federated_avg([torch.jit.trace(a.eval(), torch.zeros(2, 12)),
                                  torch.jit.trace(b.eval(), torch.zeros(2, 12))])
    assert isinstance(traced, torch.jit.ScriptModule)
    assert all(p.is_leaf for p in traced.parameters())
    with pytest.raises(ValueError):
        utils.federated_avg({})
    with pytest.raises(ValueError):
        utils.federated_avg([MLP(), FixedBatch()])


def test_bad_arguments_are_refused_before_sending(workers):
    alice, _, _, _ = workers
    with pytest.raises(TypeError, match="model_id"):
        sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, model_id=3)
    with pytest.raises(ValueError, match="optimizer"):
        sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, optimizer="LBFGS")
    with pytest.raises(ValueError, match="batch_size"):
        sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=0)
    with pytest.raises(TypeError, match="model"):
        sy.TrainConfig(model=lambda x: x, loss_fn=F.nll_loss)
    with pytest.raises(TypeError, match="example input"):
        sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss).send(alice)
    fresh = sy.VirtualWorker(alice.hook if hasattr(alice, "hook") else sy.hook, id="tc_fresh")
    with pytest.raises(RuntimeError, match="no TrainConfig"):
        fresh.fit(dataset_key="toy")
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12)).send(alice)
    with pytest.raises(ValueError, match="CPU"):
        alice.fit(dataset_key="toy", device="cuda")
    with pytest.raises(TypeError, match="unexpected"):
        alice.fit(dataset_key="toy", epoch=3)
    with pytest.raises(sy.RemoteExecutionError, match="holds 0"):
        alice.fit(dataset_key="nothing_here")
    assert tc.location is alice


def test_a_malformed_plan_or_weights_are_refused_by_the_worker(workers):
    alice, _, _, _ = workers
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12))
    rec = tc.plan
    bad_weights = dict(tc.weights, **{"fc1.weight": torch.zeros(3, 3)})
    with pytest.raises(sy.RemoteExecutionError, match="fc1.weight"):
        alice.call(Fit(0, rec, bad_weights, {"dataset": "toy"}))
    with pytest.raises(sy.ObjectNotFoundError, match="not cached"):
        alice.call(Fit(0, "sha256:" + "0" * 64, tc.weights, {"dataset": "toy"}))
    evil = ModelPlanRecord(rec.name, rec.train, rec.eval, rec.state_names, rec.state_shapes,
                           rec.state_dtypes, rec.parameters, rec.batch_size, True, None)
    evil.train.ops[0].op = "os.system"
    with pytest.raises(sy.RemoteError, match="os.system"):
        alice.call(Fit(0, evil, tc.weights, {"dataset": "toy"}))


def test_a_class_plan_is_a_model(workers):
    alice, _, _, _ = workers

    class PlanNet(sy.Plan):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return F.log_softmax(self.fc(x), dim=1)
    torch.manual_seed(9)
    model = PlanNet()
    model.build(torch.zeros(4, 12))
    tc = sy.TrainConfig(model=model, loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12)).send(alice)
    assert tc.plan.state_names == ["fc.weight", "fc.bias"]
    assert torch.isfinite(alice.fit(dataset_key="toy"))
    trained = tc.model_ptr.get()
    assert isinstance(trained, PlanNet)
    assert not torch.equal(trained.fc.weight, model.fc.weight)


# -- found by review (issue 14) -------------------------------------------------------------------

def test_config_values_of_the_wrong_type_are_refused(workers):
    alice, _, _, _ = workers
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12))
    bad = [({"shuffle": "no"}, "shuffle"), ({"drop_last": "yes"}, "drop_last"),
           ({"seed": 2 ** 70}, "seed"), ({"seed": "1"}, "seed"),
           ({"optimizer_args": {"lr": "0.1"}}, "lr"),
           ({"optimizer_args": {"lr": float("inf")}}, "lr"),
           ({"optimizer_args": {"nesterov": "yes"}}, "nesterov"),
           ({"proximal_mu": "1"}, "proximal_mu"), ({"dataset": ""}, "dataset")]
    for change, word in bad:
        config = dict(tc.config("toy"), **change)
        with pytest.raises(sy.RemoteExecutionError, match=word):
            alice.call(Fit(0, tc.plan, tc.weights, config))
    assert torch.isfinite(alice.call(Fit(0, tc.plan, tc.weights, tc.config("toy"))).weights[
        "fc1.weight"]).all()  # the worker goes on serving


def test_evaluate_bounds_what_it_allocates(workers):
    from fedmq.fl.messages import Evaluate
    from fedmq.plans.messages import ModelPlanRecord as Rec
    _, testing, _, _ = workers
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12)).send(testing)
    with pytest.raises(sy.RemoteExecutionError, match="nr_bins"):
        testing.call(Evaluate(0, tc.plan, tc.weights, {"dataset": "toy_testing",
                                                       "nr_bins": 10 ** 9}))
    rec = tc.plan
    huge = Rec(rec.name, rec.train, rec.eval, rec.state_names, rec.state_shapes,
               rec.state_dtypes, rec.parameters, 10 ** 7, False, rec.loss)
    with pytest.raises(sy.RemoteExecutionError, match="malformed"):
        testing.call(Evaluate(0, huge, tc.weights, {"dataset": "toy_testing"}))
    three = testing.evaluate(dataset_key="toy_testing", return_histograms=True, nr_bins=2)
    assert len(three["histogram_predictions"]) == 2 and len(three["histogram_target"]) == 2


def test_evaluate_reports_the_loss_of_a_regression(workers):
    hook = sy.TorchHook(torch)
    x = torch.randn(30, 12)
    y = x[:, :1] * 2.0
    worker = sy.VirtualWorker(hook, id="tc_regression",
                              data=(x.tag("#reg", "#data", "#train"),
                                    y.tag("#reg", "#target", "#train")))
    model = nn.Linear(12, 1)
    tc = sy.TrainConfig(model=model, loss_fn=F.mse_loss, batch_size=5,
                        example_input=torch.zeros(5, 12),
                        example_target=torch.zeros(5, 1)).send(worker)
    assert torch.isfinite(worker.fit(dataset_key="reg"))
    result = worker.evaluate(dataset_key="reg", return_histograms=True)
    expected = F.mse_loss(tc.model_ptr.get()(x), y, reduction="sum").item() / 30
    assert result["nr_predictions"] == 30 and result["nr_correct_predictions"] == 0
    assert abs(result["loss"] - expected) < 1e-4
    assert result["histogram_predictions"].numel() == 0


def test_the_plan_cache_is_per_principal_and_bounded(monkeypatch):
    from fedmq.plans import module_plan
    plan_cache.clear()
    monkeypatch.setattr(plan_cache, "LIMIT", 2)
    recs = []
    for width in (3, 4, 5):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(12, width)

            def forward(self, x):
                return self.fc(x)
        recs.append(module_plan.model_plan(Net(), torch.zeros(2, 12)))
    mine, digest = plan_cache.resolve(recs[0], "w", "owner")
    assert digest == module_plan.digest(mine)
    for rec in recs:  # another principal fills its own share; the owner's plan stays
        plan_cache.resolve(rec, "w", "coord")
    assert plan_cache.resolve(digest, "w", "owner")[0] is mine
    with pytest.raises(sy.ObjectNotFoundError):  # evicted: coord's oldest
        plan_cache.resolve(module_plan.digest(recs[0]), "w", "coord")
    with pytest.raises(sy.ObjectNotFoundError):  # never the other principal's
        plan_cache.resolve(module_plan.digest(recs[2]), "w", "owner")
    monkeypatch.setattr(plan_cache, "MAX_PLAN_BYTES", 100)
    with pytest.raises(sy.QuotaExceededError):
        plan_cache.resolve(recs[1], "w", "owner")
    plan_cache.clear()


def test_a_fit_past_its_deadline_is_not_run(workers):
    alice, _, _, _ = workers
    tc = sy.TrainConfig(model=MLP(), loss_fn=F.nll_loss, batch_size=4,
                        example_input=torch.zeros(4, 12)).send(alice)
    res = alice.call(Fit(0, tc.plan, tc.weights, tc.config("toy"), 1.0))
    assert res.status == "expired" and res.num_examples == 0


def test_one_model_has_one_digest_whatever_batch_it_was_traced_with():
    """What a data owner allows (--allow-model sha256:...) is the model: the §14 program
    traces it for training (batch 32) and for evaluation (batch 128) from new objects every
    round; a model that froze its batch size has a digest per batch size."""
    import sys
    from fedmq.plans import module_plan
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "examples"))
    import run_websocket_client as rwc
    torch.manual_seed(0)
    traced = torch.jit.trace(rwc.Net(), torch.zeros(1, 1, 28, 28))
    digests = {module_plan.digest(sy.TrainConfig(model=m, loss_fn=rwc.loss_fn,
                                                 batch_size=b).plan)
               for m, b in ((traced, 32), (traced, 128), (utils.federated_avg([traced]), 32))}
    assert len(digests) == 1
    fixed = {module_plan.digest(sy.TrainConfig(model=FixedBatch(), loss_fn=F.nll_loss,
                                               batch_size=b,
                                               example_input=torch.zeros(b, 12)).plan)
             for b in (4, 8)}
    assert len(fixed) == 2
