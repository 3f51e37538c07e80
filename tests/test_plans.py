"""Plans (seed §8): tracing into an allowlisted op list, sending, running with one message,
state, class plans, a traced training step, and the seed's §8 listing."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedmq
from fedmq import messages as m, serde
from fedmq.errors import OpNotAllowedError, PointerError, RemoteExecutionError, RemoteOpNotAllowed
from fedmq.plans import Plan, PlanBuildError, PointerPlan
from fedmq.plans.messages import PlanRecord
from listings import POINTER_RE, run_listing

PLAN_POINTER_RE = re.compile(r"\[PointerPlan \| me:(\d+) -> (\w+):(\d+)\]")


# In-process workers (these tests look inside them); test_protocols.py runs plans over RabbitMQ.
@pytest.fixture
def bob(hook):
    return fedmq.VirtualWorker(hook, id="bob")


@pytest.fixture
def alice(hook):
    return fedmq.VirtualWorker(hook, id="alice")


def _stored_plan(worker, pointer_plan) -> PlanRecord:
    return worker.worker.store.get(pointer_plan.id_at_location)


# -- building -------------------------------------------------------------------------------------

def test_func2plan_builds_by_tracing(hook):
    @fedmq.func2plan()
    def double_abs(x):
        x = x + x
        return torch.abs(x)

    assert isinstance(double_abs, Plan) and not double_abs.is_built
    assert str(double_abs).splitlines()[1:] == ["def double_abs():", "    return"]
    out = double_abs.build(torch.tensor([1., -2.]))
    assert double_abs.is_built and torch.equal(out, torch.tensor([2., 4.]))
    assert [op.op for op in double_abs.ops] == ["Tensor.add", "torch.abs"]
    assert re.fullmatch(r"<Plan double_abs id:\d+ owner:me built>", str(double_abs).splitlines()[0])
    assert str(double_abs).splitlines()[1:] == [
        "def double_abs(arg_1):", "    _2 = _1.add(_1)", "    _3 = torch.abs(_2)", "    return _3"]
    # a built plan called locally runs its op list here
    assert torch.equal(double_abs(torch.tensor([-3., 1.])), torch.tensor([6., 2.]))


def test_args_shape_builds_at_decoration_and_minus_one_is_any_size(hook, bob):
    @fedmq.func2plan(args_shape=[(1, 2), (-1, 2)])
    def sum_abs(x, y):
        return torch.abs(x + y)

    assert sum_abs.is_built
    x = torch.tensor([[1., -5.]]).send(bob)
    y = torch.tensor([[1., 2.], [-3., 4.], [0., 0.]]).send(bob)
    result = sum_abs.send(bob)(x, y)
    assert tuple(result.shape) == (3, 2)  # from the meta replay, before anything came back
    assert result.get().tolist() == [[2., 3.], [2., 1.], [1., 5.]]


def test_state_is_read_with_state_read(hook, bob):
    @fedmq.func2plan(args_shape=[(1,)], state=(torch.tensor([1]),))
    def plan_abs(x, state):
        bias, = state.read()
        return x.abs() + bias

    assert torch.equal(plan_abs(torch.tensor([-1, 0])), torch.tensor([2, 1]))  # locally
    p = plan_abs.send(bob)(torch.tensor([-1, 0]).send(bob))
    assert p.dtype == torch.int64  # built on a float placeholder, run on longs: meta says int64
    assert torch.equal(p.get(), torch.tensor([2, 1]))
    assert "_2, = state.read()  # (1,)" in str(plan_abs)


def test_state_updated_in_place_stays_on_the_worker(hook, bob):
    counter = torch.zeros(1)

    @fedmq.func2plan(args_shape=[(1,)], state=(counter,))
    def count(x, state):
        total, = state.read()
        total.add_(x)
        return total * 1

    assert counter.item() == 0  # building did not count
    pointer_plan = count.send(bob)
    results = [pointer_plan(torch.ones(1).send(bob)) for _ in range(3)]
    assert [r.get().item() for r in results] == [1., 2., 3.]
    assert counter.item() == 0 and count.copy()(torch.ones(1)).item() == 1.
    assert pointer_plan.get() is count and counter.item() == 3.


def test_bad_args_shape_gives_the_seeds_message(hook):
    with pytest.raises(ValueError, match="Automatic build using @func2plan failed!") as info:
        @fedmq.func2plan(args_shape=[(1,)])
        def two_args(x, y):
            return x + y
    text = str(info.value)
    assert "correct number of shapes in args_shape" in text and "simple numbers" in text
    assert "TypeError" in text and "missing 1 required positional argument" in text  # the cause

    with pytest.raises(ValueError, match="Automatic build using @func2plan failed!") as info:
        @fedmq.func2plan(args_shape=[(1, -20)])
        def one_arg(x):
            return x + 1
    assert "args_shape[0] = (1, -20)" in str(info.value)


def test_ops_off_the_allowlist_are_refused_by_name(hook):
    with pytest.raises(OpNotAllowedError, match="cosine_similarity"):
        @fedmq.func2plan(args_shape=[(2,), (2,)])
        def cos(x, y):
            return torch.cosine_similarity(x, y, dim=0)


def test_data_dependent_python_values_are_refused(hook):
    @fedmq.func2plan()
    def branchy(x):
        if x.sum() > 0:
            return x + 1
        return x - 1

    with pytest.raises(PlanBuildError, match=r"Tensor.__bool__ returns a Python bool"):
        branchy.build(torch.ones(2))

    @fedmq.func2plan()
    def scalar(x):
        return x * x.max().item()

    with pytest.raises(PlanBuildError, match="Tensor.item"):
        scalar.build(torch.ones(2))
    with pytest.raises(TypeError, match="a number would be frozen"):
        scalar.build(torch.ones(2), 3)


def test_plan_without_build_cannot_be_sent(hook, bob):
    @fedmq.func2plan()
    def inc(x):
        return x + 1

    with pytest.raises(RuntimeError, match="not built"):
        inc.send(bob)


# -- class plans ----------------------------------------------------------------------------------

class Net(Plan):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=0)


def test_class_plan_parameters_are_its_state(hook, bob):
    torch.manual_seed(0)
    net = Net()
    x = torch.tensor([1., 2.])
    expected = F.log_softmax(net.fc2(F.relu(net.fc1(x))), dim=0)
    assert re.fullmatch(r"<Net Net id:\d+ owner:me>", str(net).splitlines()[0])
    net.build(x)
    assert net.state_tensors() == list(net.parameters())
    assert [op.op for op in net.ops] == ["F.linear", "F.relu", "F.linear", "F.log_softmax"]
    assert torch.allclose(net(x), expected)  # locally: the op list on the live parameters
    result = net.send(bob)(x.send(bob))
    assert result.requires_grad  # as the seed prints it: tensor([...], requires_grad=True)
    assert torch.allclose(result.get(), expected)


def test_a_plan_is_wire_data_not_code(hook, bob):
    @fedmq.func2plan(args_shape=[(2,)], state=(torch.tensor([10., 20.]),))
    def affine(x, state):
        w, = state.read()
        return x * w + 1

    record = affine.to_record()
    assert all(type(op) is m.Command for op in record.ops)
    back = serde.decode(serde.encode(record))
    assert isinstance(back, PlanRecord) and [o.op for o in back.ops] == ["Tensor.mul", "Tensor.add"]
    assert torch.equal(back.state[0], torch.tensor([10., 20.]))
    fetched = Plan.from_record(back)
    assert fetched.is_built
    assert torch.equal(fetched(torch.tensor([1., 2.])), torch.tensor([11., 41.]))

    # a forged plan naming a function off the allowlist is refused before any op runs
    x = torch.tensor([1., 2.]).send(bob)
    forged = PlanRecord(1, "forged", [1], [], [], [
        m.Command("Tensor.add_", (m.Ref(1), 1), {}, [None]),
        m.Command("os.system", ("echo pwned",), {}, [])], m.Ref(1))
    bob.post(m.ObjectMessage([m.StoredObject(99, forged)]))
    pp = PointerPlan(bob, 99, owner=hook.local_worker)
    with pytest.raises(RemoteOpNotAllowed, match="os.system"):
        pp(x)  # no local plan here: the worker replies, and refuses
    assert x.get().tolist() == [1., 2.]  # the add_ before it never ran


def test_forty_op_plan_costs_one_message(hook, bob):
    @fedmq.func2plan(args_shape=[(3,)])
    def forty(x):
        for _ in range(20):
            x = x * 2
            x = x - 1
        return x

    assert len(forty.ops) == 40
    pointer_plan = forty.send(bob)
    x = torch.tensor([1., 2., 3.]).send(bob)
    before = bob.message_count
    y = pointer_plan(x)
    assert bob.message_count == before + 1
    expected = torch.tensor([1., 2., 3.])
    for _ in range(20):
        expected = expected * 2 - 1
    assert torch.equal(y.get(), expected)


def test_one_plan_many_workers_without_rebuilding(hook, bob, alice):
    torch.manual_seed(1)
    net = Net()
    net.build(torch.tensor([1., 2.]))
    ops = net.ops
    p_bob, p_alice = net.send(bob), net.send(alice)
    assert net.send(bob) is p_bob  # sent once per worker
    assert net.ops == ops and net.get_pointers() == [p_bob, p_alice]
    x = torch.tensor([-1., 2.])
    r_bob = p_bob(x.send(bob)).get()
    r_alice = p_alice(x.send(alice)).get()
    assert torch.equal(r_bob, r_alice) and torch.allclose(r_bob, net(x))


def test_plain_plan_called_on_pointers_runs_remotely(hook, bob):
    @fedmq.func2plan(args_shape=[(2,)])
    def neg(x):
        return -x

    y = neg(torch.tensor([1., -2.]).send(bob))
    assert y.location is bob and y.get().tolist() == [-1., 2.]


def test_tagged_plan_is_found_by_search(hook, bob):
    @fedmq.func2plan(args_shape=[(2,)])
    def square(x):
        return x * x

    square.tag("#square").describe("squares its input")
    mine = square.send(bob)
    found = bob.search("#square")
    assert len(found) == 1 and isinstance(found[0], PointerPlan)
    assert found[0].id_at_location == mine.id_at_location and found[0].name == "square"
    assert not found[0].garbage_collect_data  # a found pointer does not own the plan
    # we do not hold its ops, so the worker chooses the result ids and replies with them
    result = found[0](torch.tensor([3., -4.]).send(bob))
    assert result.get().tolist() == [9., 16.]
    assert hook.local_worker.request_search(["#square"], location=bob)[0].id_at_location == \
        mine.id_at_location


def test_pointer_plan_get_brings_the_plan_back(hook, bob):
    @fedmq.func2plan(args_shape=[(1,)], state=(torch.tensor([5.]),))
    def add_state(x, state):
        s, = state.read()
        return x + s

    found = add_state.send(bob)
    fetched = bob.search()  # nothing tagged
    assert fetched == []
    back = found.get()
    assert back is add_state and bob.objects_count() == 0
    with pytest.raises(PointerError, match="already used"):
        found(torch.tensor([1.]).send(bob))


def test_plan_argument_errors_are_clear(hook, bob, alice):
    @fedmq.func2plan(args_shape=[(2,)])
    def inc(x):
        return x + 1

    pointer_plan = inc.send(bob)
    with pytest.raises(PointerError, match="local tensor"):
        pointer_plan(torch.ones(2))
    with pytest.raises(PointerError, match="is on 'alice'"):
        pointer_plan(torch.ones(2).send(alice))
    with pytest.raises(PointerError, match="takes 1 argument"):
        pointer_plan(torch.ones(2).send(bob), torch.ones(2).send(bob))


def test_a_failing_plan_reports_the_op(hook, bob):
    @fedmq.func2plan(args_shape=[(2,), (2,)])
    def dot(x, y):
        return torch.dot(x, y)

    pointer_plan = dot.send(bob)
    x, y = torch.ones(2).send(bob), torch.ones(3).send(bob)
    with pytest.raises(RemoteExecutionError, match=r"op 0 \(torch.dot\)"):
        pointer_plan(x, y).get()


def test_data_dependent_shapes_are_answered_by_the_worker(hook, bob):
    @fedmq.func2plan(args_shape=[(4,)])
    def positive(x):
        return torch.masked_select(x, x > 0)

    result = positive.send(bob)(torch.tensor([1., -1., 2., -2.]).send(bob))
    assert tuple(result.shape) == (2,) and result.get().tolist() == [1., 2.]


# -- training -------------------------------------------------------------------------------------

class TrainStep(Plan):
    """One SGD step, traced: forward, loss, backward, update, gradients cleared."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 4)
        self.fc2 = nn.Linear(4, 1)

    def forward(self, x, y):
        loss = ((self.fc2(F.relu(self.fc1(x))) - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in self.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        return loss


def _batches(n):
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g)) for _ in range(n)]


def test_training_plan_matches_plain_torch(hook, bob):
    torch.manual_seed(2)
    step = TrainStep()
    plain = copy.deepcopy(step)
    initial = [p.detach().clone() for p in step.parameters()]
    step.build(*_batches(1)[0])
    assert [torch.equal(a, b) for a, b in zip(initial, step.parameters())] == [True] * 4
    assert "Tensor.backward" in [op.op for op in step.ops]
    remote_step = step.send(bob)
    batches = _batches(25)
    losses = [remote_step(x.send(bob), y.send(bob)) for x, y in batches]

    plain_losses = []
    for x, y in batches:
        loss = ((plain.fc2(F.relu(plain.fc1(x))) - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            for p in plain.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        plain_losses.append(loss.item())

    assert [loss.get().item() for loss in losses] == plain_losses
    # the weights trained on bob and stayed there; ours are untouched until we fetch them
    assert all(torch.equal(a, b) for a, b in zip(initial, step.parameters()))
    on_bob = _stored_plan(bob, remote_step).state
    assert all(torch.equal(a, b) for a, b in zip(on_bob, plain.parameters()))
    back = remote_step.get()
    assert back is step
    assert all(torch.equal(a, b) for a, b in zip(step.parameters(), plain.parameters()))


class OptimizerStep(Plan):
    """The same, with torch.optim.SGD inside the plan (zero_grad after step: see Plan docs)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.opt = torch.optim.SGD(self.parameters(), lr=0.05, foreach=False)

    def forward(self, x, y):
        loss = F.mse_loss(self.lin(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss


def test_training_plan_with_an_optimizer(hook, bob):
    torch.manual_seed(3)
    step = OptimizerStep()
    plain = nn.Linear(2, 1)
    plain.load_state_dict(step.lin.state_dict())
    opt = torch.optim.SGD(plain.parameters(), lr=0.05, foreach=False)
    step.build(*_batches(1)[0])
    remote_step = step.send(bob)
    for x, y in _batches(10):
        remote_step(x.send(bob), y.send(bob))
        opt.zero_grad()
        F.mse_loss(plain(x), y).backward()
        opt.step()
    remote_step.get()
    assert torch.equal(step.lin.weight, plain.weight) and torch.equal(step.lin.bias, plain.bias)


def test_a_path_frozen_at_build_time_fails_loudly(hook, bob):
    class ZeroFirst(OptimizerStep):
        def forward(self, x, y):
            self.opt.zero_grad()  # at build time there is no .grad, so nothing is recorded
            loss = F.mse_loss(self.lin(x), y)
            loss.backward()
            self.opt.step()
            return loss

    step = ZeroFirst()
    step.build(*_batches(1)[0])
    remote_step = step.send(bob)
    x, y = _batches(1)[0]
    remote_step(x.send(bob), y.send(bob)).get()
    with pytest.raises(RemoteExecutionError, match="zero gradients after the update"):
        remote_step(x.send(bob), y.send(bob)).get()


# -- the seed's §8 listing ------------------------------------------------------------------------

def test_seed_s8_plans_listing(hook):
    out, ns = run_listing("s8_plans.py")
    lines = out.strip().splitlines()
    assert re.fullmatch(r"<Plan plan_double_abs id:\d+ owner:me>", lines[0])
    assert lines[1:3] == ["def plan_double_abs():", "    return"]
    assert POINTER_RE.fullmatch(lines[3]).groups()[2] == "device_1"
    assert lines[4:6] == ["\tTags: input_data ", "\tShape: torch.Size([2])"]
    assert lines[6:8] == ["False", "True"]
    assert PLAN_POINTER_RE.fullmatch(lines[8]).groups()[1] == "device_1"
    assert POINTER_RE.fullmatch(lines[9]).groups()[2] == "device_1"
    assert lines[10] == "tensor([2., 4.])"
    assert re.fullmatch(r"<Net Net id:\d+ owner:me>", lines[11])
    assert lines[12:14] == ["def Net():", "    return"]
    assert PLAN_POINTER_RE.fullmatch(lines[14]).groups()[1] == "device_1"
    assert re.fullmatch(r"tensor\(\[-?\d\.\d{4}, -?\d\.\d{4}\], requires_grad=True\)", lines[15])
    assert lines[16] == "True"  # the auto-built plan_double_abs
    assert len(lines) == 17
    # §8.4: one plan on two devices; §8.5: the state plan (its result was only displayed)
    assert ns["pointer_to_net_1"].location is ns["device_1"]
    assert ns["pointer_to_net_2"].location is ns["device_2"]
    again = ns["pointer_plan"](torch.tensor([-1, 0]).send(ns["device_1"]))
    assert torch.equal(again.get(), torch.tensor([2, 1]))
