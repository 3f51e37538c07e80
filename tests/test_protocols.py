"""Protocols (seed §8 bis): deploy, run worker to worker, run from a worker that holds the
protocol (pointer to pointer), search / get / deploy again; the seed's §8 bis listing; and
plans and protocols over RabbitMQ (marked amqp)."""
from __future__ import annotations

import logging
import re

import pytest
import torch

import fedmq
from fedmq.plans import PointerPlan, PointerProtocol, Protocol
from listings import POINTER_RE, run_listing


def _inc_plans():
    plans = []
    for name in ("inc1", "inc2", "inc3"):
        def inc(x):
            return x + 1
        inc.__name__ = name
        plans.append(fedmq.func2plan(args_shape=[(1,)])(inc))
    return plans


@pytest.fixture
def workers(hook):
    return tuple(fedmq.VirtualWorker(hook, id=i) for i in ("alice", "bob", "charlie"))


@pytest.fixture
def james(hook):
    return fedmq.VirtualWorker(hook, id="james")


def _record_senders(worker) -> list:
    """(sender, message type) of every envelope `worker` handles from now on."""
    seen = []
    handle = worker.worker.handle

    def spy(envelope, session=None):
        seen.append((envelope.sender, type(envelope.message).__name__))
        return handle(envelope, session)
    worker.worker.handle = spy
    return seen


def test_deploy_maps_roles_to_workers(hook, workers):
    protocol = Protocol([(f"worker{i + 1}", p) for i, p in enumerate(_inc_plans())])
    assert not protocol.is_deployed
    assert str(protocol).splitlines()[1] == " - worker1: " + str(protocol.plans[0]).splitlines()[0]
    protocol.deploy(*workers)
    lines = str(protocol).splitlines()
    assert re.fullmatch(r"<Protocol id:\d+ owner:me resolved>", lines[0])
    for line, worker in zip(lines[1:], workers):
        assert re.fullmatch(rf" - {worker.id}: \[PointerPlan \| me:\d+ -> {worker.id}:\d+\]", line)
    with pytest.raises(RuntimeError, match="already deployed"):
        protocol.deploy(*workers)
    # one worker per distinct role, and roles named like the workers
    alice, bob, _ = workers
    inc1, inc2, inc3 = _inc_plans()
    shared = Protocol([("a", inc1), ("b", inc2), ("a", inc3)]).deploy(alice, bob)
    assert [p.location.id for p in shared.deployed] == ["alice", "bob", "alice"]
    named = Protocol([("bob", inc1), ("alice", inc2)]).deploy(alice, bob)
    assert [p.location.id for p in named.deployed] == ["bob", "alice"]
    with pytest.raises(RuntimeError, match="cannot map the roles"):
        Protocol([("x", inc1), ("y", inc2), ("z", inc3)]).deploy(alice, bob)
    with pytest.raises(RuntimeError, match="deploy the protocol"):
        Protocol([("x", inc1)]).run(torch.tensor([1.]))


def test_run_moves_results_worker_to_worker(hook, workers, caplog):
    alice, bob, charlie = workers
    protocol = Protocol([("worker1", p) for p in _inc_plans()])
    protocol.deploy(alice, bob, charlie)
    seen = {w.id: _record_senders(w) for w in workers}
    with caplog.at_level(logging.INFO, logger="fedmq.plans"):
        ptr = protocol.run(torch.tensor([1.0]))
    assert ptr.location is charlie and ptr.get().tolist() == [4.0]
    assert [r.getMessage() for r in caplog.records] == [
        "send alice", "move alice  ->  bob", "move bob  ->  charlie"]
    # we sent the input and one RunPlan per worker; the intermediate results went from alice to
    # bob and from bob to charlie directly
    assert seen["alice"][:2] == [("me", "ObjectMessage"), ("me", "RunPlan")]
    assert seen["bob"][:2] == [("alice", "ObjectMessage"), ("me", "RunPlan")]
    assert seen["charlie"][:2] == [("bob", "ObjectMessage"), ("me", "RunPlan")]


def test_plans_with_several_outputs_chain(hook, workers):
    alice, bob, _ = workers

    @fedmq.func2plan(args_shape=[(2,)])
    def split(x):
        return x * 2, x + 1

    @fedmq.func2plan(args_shape=[(2,), (2,)])
    def join(a, b):
        return a - b

    out = Protocol([("a", split), ("b", join)]).deploy(alice, bob).run(torch.tensor([1., 5.]))
    assert out.location is bob and out.get().tolist() == [-0., 4.]


def test_protocol_sent_to_a_worker_runs_from_there(hook, workers, james, caplog):
    protocol = Protocol([("worker1", p) for p in _inc_plans()]).deploy(*workers)
    remote = protocol.send(james)
    assert isinstance(remote, PointerProtocol)
    with pytest.raises(RuntimeError, match="local"):
        protocol.run(torch.tensor([1.0]))
    x = torch.tensor([1.0]).send(james)
    seen = _record_senders(workers[0])
    before = james.message_count
    with caplog.at_level(logging.INFO, logger="fedmq.plans"):
        ptr = protocol.run(x)
    assert james.message_count == before + 1  # one RunProtocol
    assert caplog.records[0].getMessage() == "send remote run request to james"
    assert seen[0][0] == "me"  # in-process, james's clients are the same objects as ours
    assert POINTER_RE.fullmatch(str(ptr)).groups()[2] == "james"
    inner = ptr.get()
    assert POINTER_RE.fullmatch(str(inner)).groups()[2] == "charlie"
    assert inner.get().tolist() == [4.0]
    assert james.objects_count() == 2  # the protocol and x; the result pointer was fetched


def test_search_get_and_deploy_again(hook, workers, james):
    protocol = Protocol([("worker1", p) for p in _inc_plans()]).tag("my_protocol")
    protocol.send(james)
    responses = hook.local_worker.request_search(["my_protocol"], location=james)
    assert len(responses) == 1 and isinstance(responses[0], PointerProtocol)
    assert re.fullmatch(r"\[PointerProtocol \| me:\d+ -> james:\d+\]", str(responses[0]))
    back = responses[0].get()
    assert james.objects_count() == 0 and not back.is_deployed
    text = str(back)
    assert text.count("def inc") == 3 and "    _2 = _1.add(1)" in text
    back.deploy(*workers)
    assert back.run(torch.tensor([1.0])).get().tolist() == [4.0]


def test_a_deployed_protocol_sent_and_fetched_keeps_its_plans(hook, workers, james):
    protocol = Protocol([("worker1", p) for p in _inc_plans()]).deploy(*workers)
    back = protocol.send(james).get()
    assert back.is_deployed and all(isinstance(p, PointerPlan) for p in back.deployed)
    assert back.run(torch.tensor([2.0])).get().tolist() == [5.0]
    assert protocol.run(torch.tensor([0.0])).get().tolist() == [3.0]  # runs here again


def test_seed_s8_bis_protocols_listing(hook):
    out, ns = run_listing("s8_bis_protocols.py")
    lines = out.strip().splitlines()
    assert re.fullmatch(r"<Protocol id:\d+ owner:me resolved>", lines[0])
    assert [re.match(r" - (\w+): \[PointerPlan \| me:\d+ -> (\w+):\d+\]", line).groups()
            for line in lines[1:4]] == [("alice", "alice"), ("bob", "bob"), ("charlie", "charlie")]
    assert POINTER_RE.fullmatch(lines[4]).groups()[2] == "charlie"
    assert lines[5] == "tensor([4.])"
    # the pointer-to-pointer chain: me -> james, then (fetched) -> charlie, then the value
    assert POINTER_RE.fullmatch(lines[6]).groups()[2] == "james"
    assert POINTER_RE.fullmatch(lines[7]).groups()[2] == "charlie"
    assert lines[8] == "tensor([4.])"
    assert re.fullmatch(r"\[\[PointerProtocol \| me:\d+ -> james:\d+\]\]", lines[9])
    assert lines[10] == lines[9][1:-1]
    assert re.fullmatch(r"<Protocol id:\d+ owner:me>", lines[11])
    for i, name in enumerate(("inc1", "inc2", "inc3")):
        block = lines[12 + 4 * i: 16 + 4 * i]
        assert re.fullmatch(rf" - worker{i + 1}: <Plan {name} id:\d+ owner:me built>", block[0])
        assert block[1:] == [f"def {name}(arg_1):", "    _2 = _1.add(1)", "    return _2"]
    assert lines[24] == "tensor([4.])"
    assert len(lines) == 25


# -- over RabbitMQ (worker processes; not run by default) ----------------------------------------

@pytest.mark.amqp
def test_plans_and_protocols_over_rabbitmq(hook, worker_processes):
    from worker_procs import AMQP_URL

    bob, alice, secure = (fedmq.AMQPClientWorker(hook, id=i, url=AMQP_URL, timeout=60)
                          for i in ("bob", "alice", "secure_worker"))
    for w in (bob, alice, secure):
        w.clear_objects()

    @fedmq.func2plan(args_shape=[(-1,)])
    def forty(x):
        for _ in range(40):
            x = x + 1
        return x

    pointer_plan = forty.send(bob)
    x = torch.tensor([1., 2.]).send(bob)
    before = bob.message_count
    y = pointer_plan(x)
    assert bob.message_count == before + 1
    assert y.get().tolist() == [41., 42.]

    protocol = Protocol([("worker1", p) for p in _inc_plans()]).deploy(bob, alice, secure)
    assert protocol.run(torch.tensor([1.0])).get().tolist() == [4.0]
    protocol.send(secure)
    ptr = protocol.run(torch.tensor([1.0]).send(secure))
    assert ptr.get().get().tolist() == [4.0]
