"""Sent models: parameters keep their identity, optimizers keep working, gradients live on the
worker, nothing accumulates in the worker's store over a long loop."""
from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return F.log_softmax(self.fc(x.view(-1, 36)), dim=1)


def _train(model, opt, batches, worker=None):
    for data, target in batches:
        if worker is not None:
            model.send(worker)
            data, target = data.send(worker), target.send(worker)
        opt.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        opt.step()
        if worker is not None:
            model.get()
    return model


@pytest.mark.parametrize("make_opt", [
    lambda p: optim.SGD(p, lr=0.1),
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    lambda p: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: optim.Adam(p, lr=0.01),
    lambda p: optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=1e-3),
    lambda p: optim.AdamW(p, lr=0.01),
    lambda p: optim.RMSprop(p, lr=0.01, momentum=0.5),
    lambda p: optim.Adamax(p),
    lambda p: optim.Adadelta(p),
    lambda p: optim.Rprop(p),
    lambda p: optim.NAdam(p),
    lambda p: optim.RAdam(p),
], ids=["sgd", "sgd-momentum", "sgd-nesterov", "adam", "adam-amsgrad", "adamw", "rmsprop",
        "adamax", "adadelta", "rprop", "nadam", "radam"])
def test_training_through_pointers_equals_plain_torch(bob, make_opt):
    torch.manual_seed(0)
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(4)]
    plain = SmallCNN()
    remote = copy.deepcopy(plain)
    _train(plain, make_opt(plain.parameters()), batches)
    params_before = [id(p) for p in remote.parameters()]
    _train(remote, make_opt(remote.parameters()), batches, worker=bob)
    assert [id(p) for p in remote.parameters()] == params_before
    for (name, a), b in zip(plain.state_dict().items(), remote.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(plain.parameters(), remote.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_optimizer_step_is_one_command_whatever_the_model_size(vbob):
    """Remote parameters take torch's foreach path: SGD's step is one `_foreach_add_`."""
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(6)]).send(vbob)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 4).send(vbob)).sum().backward()
    sent = []
    real_post = vbob.post
    vbob.post = lambda message: (sent.append(message), real_post(message))[1]
    try:
        opt.step()
    finally:
        del vbob.post
    assert [c.op for c in sent] == ["torch._foreach_add_"]
    assert len(sent[0].args[0]) == 12
    opt_loop = optim.SGD(model.parameters(), lr=0.1, foreach=False)  # an explicit choice holds
    sent.clear()
    vbob.post = lambda message: (sent.append(message), real_post(message))[1]
    try:
        opt_loop.step()
    finally:
        del vbob.post
    assert [c.op for c in sent] == ["Tensor.add_"] * 12


def test_optimizer_built_after_send_and_remote_grads(bob):
    model = nn.Linear(3, 1).send(bob)
    opt = optim.SGD(model.parameters(), lr=0.5)
    x = torch.randn(4, 3).send(bob)
    assert model.weight.grad is None
    loss = model(x).sum()
    loss.backward()
    assert model.weight.grad is not None and model.weight.grad.location is bob
    grad = model.weight.grad.get()
    opt.step()
    opt.zero_grad()
    assert model.weight.grad is None
    model.get()
    assert model.weight.grad is None and grad.shape == (1, 3)


def test_module_send_and_get_are_one_message_each(vbob):
    bob = vbob
    model = SmallCNN()
    expected = copy.deepcopy(model.state_dict())
    before = bob.message_count
    model.send(bob)
    assert bob.message_count - before == 1
    model.get()  # deferred: carried out by the first look at the parameters
    assert bob.message_count - before == 1
    assert torch.equal(model.conv.weight, expected["conv.weight"])
    assert bob.message_count - before == 2
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert bob.objects_count() == 0


def test_deferred_get_then_send_again_moves_nothing(vbob, hook):
    import fedmq
    bob = vbob
    alice = fedmq.VirtualWorker(hook, id="alice")
    model = nn.Linear(4, 2)
    expected = copy.deepcopy(model.state_dict())
    model.send(bob).get()
    before = bob.message_count
    model.send(bob)  # the get was never carried out: nothing travels
    assert bob.message_count == before
    model.get()
    model.send(alice)  # goes bob -> alice directly
    assert bob.objects_count() == 0 and alice.objects_count() == 2
    model.get()
    assert alice.objects_count() == 0  # looking at the store carries the get out
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v)


def test_deferred_get_is_carried_out_by_any_use(vbob):
    import fedmq
    model = nn.Linear(3, 1)
    expected = model.weight.detach().clone()
    model.send(vbob).get()
    assert torch.equal(model.weight.data, expected)  # .data
    model.send(vbob).get()
    assert "Parameter" in repr(model.weight)          # printing
    model.send(vbob).get()
    clone = copy.deepcopy(model)                       # copying
    assert torch.equal(clone.weight, expected)
    model.send(vbob).get()
    assert torch.equal(model(torch.ones(1, 3)), clone(torch.ones(1, 3)))  # running it
    assert isinstance(model.weight, nn.Parameter) and not isinstance(
        model.weight, fedmq.RemoteParameter)


def test_model_move_goes_worker_to_worker(bob, alice):
    model = nn.Linear(2, 2)
    expected = copy.deepcopy(model.state_dict())
    model.send(bob).move(alice)
    assert bob.objects_count() == 0 and alice.objects_count() == 2
    model.get()
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v)


def test_copy_of_a_sent_model_is_refused(bob):
    import fedmq
    model = nn.Linear(2, 2).send(bob)
    with pytest.raises(fedmq.PointerError, match="before sending"):
        model.copy()


@pytest.mark.slow
def test_long_loop_does_not_grow_the_store(bob):
    model = nn.Linear(10, 2)
    opt = optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(16, 10).send(bob)
    y = torch.randint(0, 2, (16,)).send(bob)
    counts = []
    for step in range(300):
        model.send(bob)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        model.get()
        loss.get()
        if step % 100 == 99:
            counts.append(bob.objects_count())
    gc.collect()
    assert counts[0] == counts[-1] <= 3
    del x, y
    gc.collect()
    assert bob.objects_count() == 0


def test_garbage_collected_pointer_deletes_remote_object(bob):
    x = torch.ones(3).send(bob)
    y = x * 2
    assert bob.objects_count() == 2
    del y
    assert bob.objects_count() == 1
    search_hit = torch.ones(1).tag("#keep").send(bob)
    found = bob.search("#keep")[0]
    del found  # a pointer found by search does not own the object
    assert bob.objects_count() == 2
