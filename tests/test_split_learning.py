"""Split learning across workers: `move(worker, requires_grad=True)` (PySyft 0.2's keyword)
keeps the autograd link, so `loss.backward()` on the last worker brings gradients back to the
earlier parts (fedmq/pointers/split.py). Gradients and trained weights equal plain PyTorch's;
in-process and over RabbitMQ worker services (the gradient goes worker to worker)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fedmq as sy


def _parts(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 2)


def _copies(parts):
    out = []
    for part in parts:
        twin = type(part)(part.in_features, part.out_features)
        twin.load_state_dict(part.state_dict())
        out.append(twin)
    return out


def _data(seed: int = 1, outputs: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, outputs, generator=g)


def _assert_grads(remote_parts, plain_parts):
    for remote, plain in zip(remote_parts, plain_parts):
        for (name, p), q in zip(remote.named_parameters(), plain.parameters()):
            assert p.grad is not None, name
            got = p.grad.get() if hasattr(p.grad, "location") else p.grad
            torch.testing.assert_close(got, q.grad, msg=name)


def test_gradients_flow_back_across_a_move(alice, bob):
    part1, part2, _ = _parts()
    plain1, plain2 = _copies((part1, part2))
    x, y = _data(outputs=4)
    plain_loss = ((plain2(torch.relu(plain1(x))) - y) ** 2).mean()
    plain_loss.backward()

    part1.send(alice)
    part2.send(bob)
    activations = torch.relu(part1(x.send(alice)))
    on_bob = activations.move(bob, requires_grad=True)
    assert on_bob.location is bob and on_bob.requires_grad
    loss = ((part2(on_bob) - y.send(bob)) ** 2).mean()
    loss.backward()
    assert part1.weight.grad.location is alice  # the gradient went to alice, not to us
    _assert_grads((part1, part2), (plain1, plain2))
    assert abs(loss.get().item() - plain_loss.item()) < 1e-6


def test_split_training_equals_plain_pytorch(alice, bob):
    """Three parts, alice -> bob -> alice, SGD with momentum on each, three steps."""
    parts = _parts()
    plain = _copies(parts)
    opts = [torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9) for p in parts]
    plain_opts = [torch.optim.SGD(p.parameters(), lr=0.1, momentum=0.9) for p in plain]
    parts[0].send(alice)
    parts[1].send(bob)
    parts[2].send(alice)
    x, y = _data()
    x_alice, y_alice = x.send(alice), y.send(alice)
    for _ in range(3):
        for opt in opts + plain_opts:
            opt.zero_grad()
        h = torch.relu(parts[0](x_alice)).move(bob, requires_grad=True)
        h = torch.relu(parts[1](h)).move(alice, requires_grad=True)
        loss = ((parts[2](h) - y_alice) ** 2).mean()
        loss.backward()
        plain_loss = ((plain[2](torch.relu(plain[1](torch.relu(plain[0](x))))) - y) ** 2).mean()
        plain_loss.backward()
        for opt in opts + plain_opts:
            opt.step()
        assert abs(loss.get().item() - plain_loss.item()) < 1e-5
    for part, twin in zip(parts, plain):
        part.get()
        for p, q in zip(part.parameters(), twin.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_local_first_part_sends_with_requires_grad(hook, bob):
    """The client holds part 1: `a.send(bob, requires_grad=True)` and bob's backward
    backpropagates into the client's graph."""
    part1, part2, _ = _parts()
    plain1, plain2 = _copies((part1, part2))
    x, y = _data(outputs=4)
    ((plain2(plain1(x)) - y) ** 2).mean().backward()
    part2.send(bob)
    a = part1(x)
    loss = ((part2(a.send(bob, requires_grad=True)) - y.send(bob)) ** 2).mean()
    loss.backward()
    _assert_grads((part1, part2), (plain1, plain2))


def test_last_part_local_moves_home_with_requires_grad(hook, alice):
    """`ptr.move(me, requires_grad=True)`: a local leaf whose gradient goes back to alice."""
    part1, part2, _ = _parts()
    plain1, plain2 = _copies((part1, part2))
    x, y = _data(outputs=4)
    ((plain2(plain1(x)) - y) ** 2).mean().backward()
    part1.send(alice)
    a = part1(x.send(alice)).move(hook.local_worker, requires_grad=True)
    assert type(a) is torch.Tensor and a.requires_grad and a.is_leaf
    ((part2(a) - y) ** 2).mean().backward()
    _assert_grads((part1, part2), (plain1, plain2))


def test_move_without_requires_grad_cuts_the_graph(alice, bob):
    """Plain `move` hands the value over (the source keeps nothing): no gradient comes back,
    as in PySyft."""
    part1, part2, _ = _parts()
    part1.send(alice)
    part2.send(bob)
    x, _ = _data()
    on_bob = part1(x.send(alice)).move(bob)
    part2(on_bob).sum().backward()
    assert part2.weight.grad is not None
    assert part1.weight.grad is None


def test_requires_grad_on_a_value_that_needs_no_gradient(alice, bob):
    """Moving data that does not require grad with requires_grad=True: bob's copy is a leaf
    that requires grad (its gradient can be read there), nothing to send back."""
    x, _ = _data()
    on_bob = x.send(alice).move(bob, requires_grad=True)
    assert on_bob.requires_grad
    (on_bob * 3).sum().backward()
    torch.testing.assert_close(on_bob.grad.get(), torch.full_like(x, 3.0))


def test_refused_keyword_values(alice, bob):
    ptr = torch.ones(2).send(alice)
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        ptr.move(bob, requires_grad="yes")
    with pytest.raises(TypeError, match="unexpected keyword argument 'inplace'"):
        ptr.move(bob, inplace=True)
    with pytest.raises(TypeError, match="requires_grad=True is refused"):
        ptr.send(bob, requires_grad=True)
    assert torch.equal(ptr.get(), torch.ones(2))  # refusals leave the pointer usable


def test_move_home_with_requires_grad_of_a_value_without_graph(hook, alice):
    x, _ = _data()
    home = x.send(alice).move(hook.local_worker, requires_grad=True)
    assert home.requires_grad and home.is_leaf and torch.equal(home.detach(), x)
    assert alice.objects_count() == 0  # nothing left behind: there is no graph to go back to


# -- found by review ------------------------------------------------------------------------------

def _third(hook, worker_factory):
    if worker_factory is None:
        return sy.VirtualWorker(hook, id="secure_worker")
    return worker_factory(hook, id="secure_worker")


def _two_parts():
    part1, part2, _ = _parts()
    return (part1, part2), tuple(_copies((part1, part2)))


def _part1_grad(part):
    g = part.weight.grad
    return g.copy().get() if hasattr(g, "location") else g


def _backward_twice(x, y, p1, p2, remote):
    h = torch.relu(p1(x))
    if remote:
        h = h.move(remote, requires_grad=True)
    loss = ((p2(h) - y) ** 2).mean()
    loss.backward(retain_graph=True)
    loss.backward()


def _two_losses(x, y, p1, p2, remote):
    h = torch.relu(p1(x))
    if remote:
        h = h.move(remote, requires_grad=True)
    out = p2(h)
    ((out - y) ** 2).mean().backward(retain_graph=True)
    out.sum().backward()


def _moved_twice(x, y, p1, p2, remote):
    h = torch.relu(p1(x))
    first = h.move(remote, requires_grad=True) if remote else h
    second = h.move(remote, requires_grad=True) if remote else h
    ((p2(first) - y) ** 2).mean().backward(retain_graph=True)
    p2(second).sum().backward()


@pytest.mark.parametrize("case", [_backward_twice, _two_losses, _moved_twice],
                         ids=lambda f: f.__name__.strip("_"))
def test_found_by_review_second_backward_through_a_moved_activation(case, alice, bob):
    """found by review: a second backward through a moved activation (retain_graph=True, two
    losses, one activation moved twice) silently dropped its gradient (sp1_split.py,
    sp2_two_moves.py, a6_amqp_misc.py): the gradient link was used once."""
    (p1, p2), (q1, q2) = _two_parts()
    x, y = _data(outputs=4)
    case(x, y, q1, q2, None)
    p1.send(alice)
    p2.send(bob)
    case(x.send(alice), y.send(bob), p1, p2, bob)
    _assert_grads((p1, p2), (q1, q2))


def test_found_by_review_second_backward_without_retain_graph_raises(alice, bob):
    """Where torch raises (the graph upstream was freed by the first backward), so do we:
    never a silently missing gradient."""
    (p1, p2), (q1, q2) = _two_parts()
    x, y = _data(outputs=4)
    h = torch.relu(q1(x))
    q2(h).sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        q2(h).sum().backward()
    p1.send(alice)
    p2.send(bob)
    h = torch.relu(p1(x.send(alice))).move(bob, requires_grad=True)
    p2(h).sum().backward()
    with pytest.raises(sy.errors.RemoteExecutionError, match="backward through the graph"):
        p2(h).sum().backward()


def test_found_by_review_three_workers_and_batches(hook, worker_factory, alice, bob):
    """alice -> bob -> a third worker, two batches with retain_graph: gradients equal plain
    PyTorch's (links of the first batch do not fire again in the second)."""
    carol = _third(hook, worker_factory)
    (p1, p2), (q1, q2) = _two_parts()
    x, y = _data(outputs=4)
    p1.send(alice)
    p2.send(bob)
    xa, yc = x.send(alice), y.send(carol)
    for _ in range(2):
        out = q2(torch.relu(q1(x)))
        loss = ((out - y) ** 2).mean()
        loss.backward(retain_graph=True)
        loss.backward()
        o = p2(torch.relu(p1(xa)).move(bob, requires_grad=True)).move(carol, requires_grad=True)
        rloss = ((o - yc) ** 2).mean()
        rloss.backward(retain_graph=True)
        rloss.backward()
    _assert_grads((p1, p2), (q1, q2))


def test_found_by_review_move_home_backward_twice(hook, alice):
    """found by review (minor 6): `move(me, requires_grad=True)` and retain_graph: the second
    backward failed on the worker (its graph had been freed by the first)."""
    (p1, p2), (q1, q2) = _two_parts()
    x, y = _data(outputs=4)
    _backward_twice(x, y, q1, q2, None)
    p1.send(alice)
    h = torch.relu(p1(x.send(alice))).move(hook.local_worker, requires_grad=True)
    loss = ((p2(h) - y) ** 2).mean()
    loss.backward(retain_graph=True)
    loss.backward()
    _assert_grads((p1, p2), (q1, q2))


def test_found_by_review_links_do_not_leak_without_backward(alice, bob):
    """found by review: forwards through move(..., requires_grad=True) that are never
    backpropagated (evaluation, a skipped batch) kept both copies alive on the workers
    (sp3_link_leak.py); the link now dies with the last pointer that reaches the copy."""
    import gc
    (p1, p2), _ = _two_parts()
    p1.send(alice)
    p2.send(bob)
    x = torch.randn(8, 6).send(alice)
    gc.collect()
    start = alice.objects_count(), bob.objects_count()
    for _ in range(20):
        out = p2(torch.relu(p1(x)).move(bob, requires_grad=True))
        pred = out.argmax(1)
        del out, pred
    with torch.no_grad():
        for _ in range(5):
            out = p2(torch.relu(p1(x)).move(bob, requires_grad=True))
            del out
    for _ in range(5):
        out = p2(torch.relu(p1(x)).move(bob, requires_grad=True))
        out.sum().backward()
        del out
    gc.collect()
    assert (alice.objects_count(), bob.objects_count()) == start


def test_found_by_review_link_survives_a_data_dependent_op(alice, bob):
    """A loss computed through an op whose result shape depends on the data (answered by
    the worker, not the shape engine) still reaches the moved copy's link."""
    (p1, p2), (q1, q2) = _two_parts()
    x, y = _data(outputs=4)
    out = q2(torch.relu(q1(x)))
    out.masked_select(out > 0).sum().backward()
    p1.send(alice)
    p2.send(bob)
    out = p2(torch.relu(p1(x.send(alice))).move(bob, requires_grad=True))
    out.masked_select(out > 0).sum().backward()
    _assert_grads((p1, p2), (q1, q2))
