"""Tracing and running a plan cost memory in proportion to the values alive at once, not to the
number of traced steps (issue 14): the tracer holds its tensors weakly (fedmq/plans/tracer.py)
and the runner drops a slot after its last use (`runner.liveness`, fedmq/plans/runner.py).
Measured on the issue's loop (500 steps of `x = tanh(x @ w)`, 600x600, no grad): 1370 MB of
peak RSS growth when tracing and as much when running, before; a few MB after."""
from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

import pytest
import torch

from fedmq import messages as m
from fedmq.plans import runner, tracer
from fedmq.plans.messages import PlanRecord


def _loop(w: torch.Tensor, steps: int):
    def fn(x):
        for _ in range(steps):
            x = torch.tanh(x @ w)
        return x
    return fn


def _plan(fn, inputs, state) -> tuple[PlanRecord, torch.Tensor]:
    traced = tracer.trace(lambda: fn(*inputs), inputs, state)
    rec = PlanRecord(0, "loop", traced.input_slots, traced.state_slots, [], traced.ops,
                     traced.output)
    return rec, traced.output_value


def test_the_tracer_forgets_the_tensors_that_died(monkeypatch):
    most = []

    class Counting(tracer.Tracer):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            most.append(len(self.slots))
            return super().__torch_function__(func, types, args, kwargs)

    monkeypatch.setattr(tracer, "Tracer", Counting)
    x, w = torch.randn(8, 8), torch.randn(8, 8) / 4
    with torch.no_grad():
        rec, value = _plan(_loop(w, 300), [x], [w])
    assert len(rec.ops) == 600 and max(rec.ops[-1].result_ids) == 602  # slots are not reused
    assert max(most) <= 5  # x, w, and the one or two values alive at a time: not 600
    assert torch.equal(runner.run(rec, [x], [w], "me"), value)


def test_a_dead_tensors_id_no_longer_names_its_slot():
    """CPython may give a dead tensor's id to a new object: a constant made later must not be
    taken for the dead plan tensor. The id -> slot entry goes when the tensor dies; a tensor
    whose Python object torch keeps (a `.grad`) stays known."""
    t = tracer.Tracer()
    y, kept = torch.ones(2), torch.zeros(2)
    slot, key = t.new_slot(y), id(y)
    t.new_slot(kept)
    assert t.slots[key] == slot
    del y
    assert key not in t.slots and t.slots[id(kept)] == slot + 1
    p = torch.ones(2, requires_grad=True)
    (p * 2).sum().backward()
    grad_slot, grad_key = t.new_slot(p.grad), id(p.grad)
    assert t.slots[grad_key] == grad_slot and id(p.grad) == grad_key
    t.close()  # after tracing: nothing watched any more
    del kept
    assert not t._refs


def test_the_runner_drops_each_slot_after_its_last_use(monkeypatch):
    x, w = torch.randn(8, 8), torch.randn(8, 8) / 4
    with torch.no_grad():
        rec, value = _plan(_loop(w, 300), [x], [w])
    sizes = []
    run_command = runner.run_command

    def counting(op, scope, worker_id):
        sizes.append(len(scope))
        return run_command(op, scope, worker_id)

    monkeypatch.setattr(runner, "run_command", counting)
    assert torch.equal(runner.run(rec, [x], [w], "me"), value)
    assert max(sizes) <= 3  # x, w and the value between two ops: not 600


def test_liveness_keeps_inputs_state_and_outputs():
    ops = [m.Command("torch.mul", (m.Ref(1), m.Ref(2)), {}, [3]),   # 3 = x * w
           m.Command("Tensor.add_", (m.Ref(3), 1), {}, [None]),      # in place: 3 again
           m.Command("torch.tanh", (m.Ref(3),), {}, [4]),            # 3's last use
           m.Command("torch.exp", (m.Ref(4),), {}, [5]),             # 5 is never read
           m.Command("Tensor.__add__", (m.Ref(4), m.Ref(1)), {}, [6])]
    assert runner.liveness(ops, {1, 2, 6}) == [[], [], [3], [5], [4]]


def test_in_place_ops_and_views_survive_the_dropping():
    """A view outlives the slot it was taken from; an in-place op on a dropped slot's
    tensor still shows through its views (dropping a slot drops a reference, not data)."""
    def fn(x, w):
        a = x * w
        v = a.view(-1)        # a view of a
        a.add_(1)             # a's last use: the view sees the write
        b = torch.relu(x)
        b.mul_(2)
        return v * 1, b.sum()

    x, w = torch.randn(3, 4), torch.randn(3, 4, requires_grad=True)
    traced = tracer.trace(lambda: fn(x, w), [x], [w])
    rec = PlanRecord(0, "views", traced.input_slots, traced.state_slots, [], traced.ops,
                     traced.output)
    frees = runner.frees(rec)
    assert any(frees[:-1])  # something is dropped before the end
    x2 = torch.randn(3, 4)
    got, total = runner.run(rec, [x2], [w], "me")
    want, want_total = fn(x2, w)
    assert torch.equal(got, want) and torch.equal(total, want_total)
    got.sum().backward()  # autograd keeps what it saved, whatever the scope dropped
    assert torch.equal(w.grad, x2)


def test_the_liveness_pass_runs_once_per_plan(monkeypatch):
    x, w = torch.randn(4, 4), torch.randn(4, 4)
    with torch.no_grad():
        rec, _ = _plan(_loop(w, 5), [x], [w])
    calls = []
    liveness = runner.liveness
    monkeypatch.setattr(runner, "_FREES", collections.OrderedDict())
    monkeypatch.setattr(runner, "liveness", lambda *a: calls.append(1) or liveness(*a))
    for _ in range(3):
        runner.run(rec, [x], [w], "me")
    assert len(calls) == 1
    other = PlanRecord(0, "loop", rec.input_slots, rec.state_slots, [], list(rec.ops),
                       rec.output)  # another op list (equal, but it could change apart)
    runner.run(other, [x], [w], "me")
    assert len(calls) == 2


MEASURE = textwrap.dedent("""
    import resource, torch
    from fedmq.plans import runner, tracer
    from fedmq.plans.messages import PlanRecord

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MB

    torch.set_grad_enabled(False)
    x, w = torch.randn(600, 600), torch.randn(600, 600) / 30

    def loop(x):
        for _ in range(500):
            x = torch.tanh(x @ w)
        return x

    expected = loop(x)  # warm up: the allocator, the kernels
    base = peak()
    traced = tracer.trace(lambda: loop(x), [x], [w])
    rec = PlanRecord(0, "loop", traced.input_slots, traced.state_slots, [], traced.ops,
                     traced.output)
    assert torch.equal(traced.output_value, expected)
    del traced
    after_trace = peak()
    assert torch.equal(runner.run(rec, [x], [w], "me"), expected)
    print(after_trace - base, peak() - base)
""")


@pytest.mark.slow
def test_the_issues_loop_traces_and_runs_in_a_few_tensors_of_memory():
    """500 steps of 600x600 matmuls (1.44 MB each): peak RSS growth under 30 such tensors."""
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    tracing, running = map(float, out.stdout.split())
    bound = 30 * 600 * 600 * 4 / 2**20
    assert tracing < bound and running < bound, (tracing, running)
