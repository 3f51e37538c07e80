"""Issue 14, deliverable 3: each model of the zoo (an MLP with BatchNorm and Dropout, a small
residual CNN, torchvision's resnet18 on small inputs, an LSTM text classifier) trains one
round through `Fit` with the model as a plan, in-process and over RabbitMQ (a real `fedmq
worker` process), and ends where plain PyTorch ends (same seed, same batches) to 1e-6:
weights, buffers and the reported loss."""
from __future__ import annotations

import copy

import pytest
import torch

import fedmq as sy
from test_model_plans import ZOO

NAMES = ["mlp_batchnorm_dropout", "residual_cnn", "resnet18", "lstm_classifier"]
TOL = 1e-6


def _data(name: str, batches: int = 3):
    _, make_x, make_y, _, _ = ZOO[name]
    g = torch.Generator().manual_seed(77)
    pairs = [(make_x(g), make_y(g)) for _ in range(batches)]
    return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs]), len(pairs[0][0])


def _reference(model, loss_fn, lr, x, y, batch, seed):
    """fedmq.fl.training.fit in plain PyTorch: shuffle by Generator(seed), full batches,
    dropout from the global RNG seeded seed + 1, SGD."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed + 1)
    total = 0.0
    for start in range(0, len(x) - batch + 1, batch):
        idx = perm[start:start + batch]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(x)


def _round(worker, name):
    factory, _, _, loss_fn, lr = ZOO[name]
    x, y, batch = _data(name)
    key = f"zoo_{name}"
    for t, kind in ((x, "#data"), (y, "#target")):
        ptr = t.clone().tag(f"#{key}", kind, "#train").send(worker)
        ptr.garbage_collect_data = False
    torch.manual_seed(0)
    model = factory()
    reference = copy.deepcopy(model)
    tc = sy.TrainConfig(model=model, loss_fn=loss_fn, batch_size=batch, epochs=1,
                        optimizer="SGD", optimizer_args={"lr": lr},
                        example_input=x[:batch], example_target=y[:batch])
    tc.send(worker)
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2 ** 31 - 1, ()))
    torch.manual_seed(5)
    loss = worker.fit(dataset_key=key)
    expected = _reference(reference, loss_fn, lr, x, y, batch, seed)
    trained = tc.model_ptr.get().state_dict()
    for entry, value in reference.state_dict().items():
        got = trained[entry]
        assert got.dtype == value.dtype, entry
        assert torch.allclose(got.double(), value.double(), atol=TOL, rtol=0), \
            (name, entry, float((got.double() - value.double()).abs().max()))
    assert abs(float(loss) - expected) <= TOL * max(1.0, abs(expected)), (name, loss, expected)


@pytest.mark.parametrize("name", NAMES)
def test_one_round_in_process_equals_plain_pytorch(name):
    hook = sy.TorchHook(torch)
    worker = sy.VirtualWorker(hook, id=f"zoo_{name}")
    _round(worker, name)


@pytest.mark.amqp
@pytest.mark.slow
def test_one_round_over_rabbitmq_equals_plain_pytorch(tmp_path):
    from worker_procs import AMQP_URL, WorkerProcesses
    procs = WorkerProcesses(tmp_path)
    hook = sy.TorchHook(torch)
    try:
        procs.start("zoo-worker")
        worker = sy.AMQPClientWorker(hook, id="zoo-worker", url=AMQP_URL, timeout=120)
        for name in NAMES:
            _round(worker, name)
    finally:
        hook.context.close()
        procs.stop_all(delete_queues=True)
