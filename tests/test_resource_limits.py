"""Resource limits (issue 12, item 4), in-process: one op cannot allocate past what the
principal may store; a message has a time limit and can be cancelled by its sender. The worker
keeps serving after each. (Frames: test_frame_limits.py; decoding: test_decode_limits.py.)"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
import torch
import torch.nn.functional as F

import fedmq
from fedmq import errors, limits, messages as m, serde, shapes
from fedmq.engine import RequestEngine
from fedmq.execution import execute
from fedmq.fl.connections import InProcessConnection, decode_reply
from fedmq.fl.coordinator import Coordinator, TrainConfig, initial_weights
from fedmq.fl.messages import Fit
from fedmq.ids import new_id
from fedmq.policy import ANYONE, ROLES, Policy
from fedmq.store import ObjectStore

from fl_helpers import data_worker

MIB = 1 << 20


def guest_policy(**limits_) -> Policy:
    """Every role to everyone, release all, but the data owner is someone else: the in-process
    client ("me") is a principal like any other, with a quota."""
    return Policy(owner="owner", grants={role: {ANYONE} for role in ROLES}, release="all",
                  **limits_)


@pytest.fixture
def qbob(hook):
    """bob, where the client may store 64 MiB."""
    bob = fedmq.VirtualWorker(hook, id="qbob")
    bob.worker.policy = guest_policy(max_bytes=64 * MIB)
    return bob


def usage(worker) -> tuple[int, int]:
    return worker.worker.store.usage(fedmq.principals.LOCAL)


# -- 3. one op cannot allocate past the quota -------------------------------------------------------

def _attacks(bob):
    x = torch.ones(10).send(bob)
    col = torch.ones(10 ** 6, 1).send(bob)
    row = torch.ones(1, 10 ** 6).send(bob)
    v = torch.ones(10 ** 6).send(bob)
    y = torch.ones(1000, 1000).send(bob)
    mask = torch.ones(1, 10 ** 6, dtype=torch.bool).send(bob)
    big_index = torch.tensor([10 ** 12]).send(bob)
    many = torch.ones(4 * MIB).send(bob)  # 16 MiB of floats: 4 Mi Python floats as a list
    return {
        "Tensor.repeat(10**5, 10**5)": lambda: x.repeat(10 ** 5, 10 ** 5),
        "expand + contiguous": lambda: x.expand(10 ** 5, 10 ** 5, 10).contiguous(),
        "zeros_like of a broadcast": lambda: torch.zeros_like(col + row),
        "ones_like of a broadcast": lambda: torch.ones_like(col * row),
        "F.pad with a huge pad": lambda: F.pad(x, (0, 10 ** 12)),
        "torch.cat of many refs": lambda: torch.cat([y] * 20_000),
        "outer product": lambda: torch.outer(v, v),
        "matmul of an outer product": lambda: col @ row,
        "one_hot of a huge index": lambda: F.one_hot(big_index),
        "masked_select of a broadcast": lambda: torch.masked_select(col, mask),
        "tolist of a big tensor": lambda: many.tolist(),
    }


ATTACKS = ["Tensor.repeat(10**5, 10**5)", "expand + contiguous", "zeros_like of a broadcast",
           "ones_like of a broadcast", "F.pad with a huge pad", "torch.cat of many refs",
           "outer product", "matmul of an outer product", "one_hot of a huge index",
           "masked_select of a broadcast", "tolist of a big tensor"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_op_whose_results_would_pass_the_quota_is_refused_without_running(qbob, attack):
    attacks = _attacks(qbob)
    before = usage(qbob)
    started = time.monotonic()
    with pytest.raises(errors.QuotaExceededError, match="without running it"):
        result = attacks[attack]()
        if isinstance(result, torch.Tensor):
            result.get()
    assert time.monotonic() - started < 2.0
    assert usage(qbob)[0] <= before[0]  # nothing was stored
    assert torch.equal((torch.ones(3).send(qbob) + 1).get(), torch.full((3,), 2.0))


def test_nonzero_of_a_dense_mask_is_sized_before_it_runs(qbob):
    b = torch.ones(3000, 3000, dtype=torch.bool).send(qbob)  # 9 MB; nonzero: 144 MB
    with pytest.raises(errors.QuotaExceededError, match="Tensor.nonzero would make 144000000"):
        b.nonzero().get()
    sparse = torch.zeros(3000, 3000, dtype=torch.bool)
    sparse[0, :5] = True
    assert b.nonzero is not None and sparse.send(qbob).nonzero().get().shape == (5, 2)


def test_the_per_op_cap_bounds_the_data_owner_too(hook):
    bob = fedmq.VirtualWorker(hook, id="capbob")
    bob.worker.policy = dataclasses.replace(Policy.open(), max_op_bytes=MIB)  # "me" owns it
    x = torch.ones(1000).send(bob)
    with pytest.raises(errors.QuotaExceededError, match="Tensor.repeat would make 4000000"):
        x.repeat(1000).get()
    assert x.repeat(10).get().shape == (10_000,)


def test_small_ops_skip_the_shape_engine(monkeypatch):
    """The pre-check costs nothing for small ops: a quick bound shows they cannot pass."""
    def fail(*args, **kwargs):
        raise AssertionError("the shape engine was asked")
    monkeypatch.setattr(shapes, "spec_for", fail)
    a, b = torch.ones(32, 32), torch.ones(32, 32)
    assert limits.result_bytes(torch.matmul, "torch.matmul", (a, b), {}, 64 * MIB) == 0
    assert limits.result_bytes(torch.Tensor.__getitem__, "Tensor.__getitem__",
                               (a, (slice(0, 3), 2)), {}, 64 * MIB) == 0
    with pytest.raises(AssertionError, match="shape engine"):  # a big one is asked
        limits.result_bytes(torch.Tensor.repeat, "Tensor.repeat", (a, 1000, 1000), {}, 64 * MIB)


def test_in_place_ops_make_nothing_and_a_repeated_call_is_sized_once(monkeypatch):
    asked = []
    real = shapes.spec_for
    monkeypatch.setattr(shapes, "spec_for", lambda *a, **k: asked.append(a[1]) or real(*a, **k))
    params = [torch.ones(1000, 1000) for _ in range(4)]
    assert limits.result_bytes(torch._foreach_add_, "torch._foreach_add_", (params, params), {},
                               MIB) == 0
    assert limits.result_bytes(torch.Tensor.__setitem__, "Tensor.__setitem__",
                               (params[0], 0, 1.0), {}, MIB) == 0
    assert asked == []
    x, w = torch.ones(64, 1, 28, 28), torch.ones(32, 1, 3, 3)
    for _ in range(3):  # a training loop's conv2d: the shape engine is asked once
        assert limits.result_bytes(F.conv2d, "F.conv2d", (x, w), {"padding": 1},
                                   MIB) == 64 * 32 * 28 * 28 * 4
    assert asked == ["F.conv2d"]
    assert not limits.in_place("Tensor.__invert__") and limits.in_place("Tensor.__iadd__")


def test_an_op_sized_only_by_its_values_is_bounded_after_it_ran():
    """Boolean indexing cannot run on meta tensors: the result is measured once made, and
    dropped if it passes the room (here a plan's scope, which has no quota of its own)."""
    view = ObjectStore("w", guest_policy(max_bytes=MIB)).view("me")
    scope = ObjectStore("w")
    scope.put(1, torch.ones(1_000_000))
    scope.put(2, torch.ones(1_000_000, dtype=torch.bool))
    with limits.running(limits.Budget("w", "me", view=view)):
        with pytest.raises(errors.QuotaExceededError, match="made 4000000 bytes .* dropped"):
            execute(None, (m.Ref(1), m.Ref(2)), None, [3], scope, "w", op="Tensor.__getitem__")
        scope.put(2, torch.zeros(1_000_000, dtype=torch.bool))
        execute(None, (m.Ref(1), m.Ref(2)), None, [3], scope, "w", op="Tensor.__getitem__")
    assert scope.get(3).shape == (0,)


def test_a_plans_intermediate_results_count_against_the_room(hook, qbob):
    @fedmq.func2plan(args_shape=[(MIB,)])
    def heavy(x):
        parts = [x * i for i in range(20)]  # 20 intermediates of 4 MiB, all alive at once
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total.sum()

    @fedmq.func2plan(args_shape=[(MIB,)])
    def chained(x):
        total = x
        for i in range(20):  # each intermediate is dropped after its last use (runner.py)
            total = total + x * i
        return total.sum()

    x = torch.ones(MIB).send(qbob)
    with pytest.raises(errors.QuotaExceededError, match="plan 'heavy', op"):
        heavy.send(qbob)(x).get()
    assert torch.equal((x[:2] + 1).get(), torch.full((2,), 2.0))
    assert chained.send(qbob)(x).get() == 191 * MIB


# -- 4. time limit and cancellation ---------------------------------------------------------------

FIT_CONFIG = {"batch_size": 8, "optimizer": "sgd", "optimizer_args": {"lr": 0.05},
              "loss": "nll", "seed": 7}


def long_fit(num_batches: int = 1_000_000) -> Fit:
    return Fit(1, "seed-cnn", initial_weights("seed-cnn", seed=1),
               dict(FIT_CONFIG, num_batches=num_batches))


def call(worker, message, login="me", msg_id=0):
    frame = serde.encode(m.Envelope(m.WIRE_VERSION, "test", message, msg_id))
    return decode_reply(worker.handle_frame(frame, login), worker.id)


def test_a_fit_asking_for_a_million_batches_stops_at_the_time_limit():
    alice = data_worker("alice", n=40)
    alice.policy = dataclasses.replace(Policy.open(), max_op_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(errors.TimeLimitError, match="Fit: stopped after running longer than "
                                                    "the time limit of worker 'alice', 1 s"):
        call(alice, long_fit())
    assert 1.0 <= time.monotonic() - started < 3.0
    assert call(alice, long_fit(2)).status == "ok"  # it keeps serving


def test_a_batch_of_commands_stops_at_the_time_limit(hook):
    bob = fedmq.VirtualWorker(hook, id="tbob")
    # 0.05 s: one Batch of 250 matmuls of 400 x 400 takes 0.2-1.2 s (~1-5 ms each, as fast
    # as the BLAS and the machine's load allow); a limit of 0.2 s was once not reached
    bob.worker.policy = dataclasses.replace(Policy.open(), max_op_seconds=0.05)
    a = torch.randn(400, 400).send(bob)
    started = time.monotonic()
    results = [a @ a for _ in range(250)]  # one Batch
    with pytest.raises(errors.TimeLimitError, match="time limit of worker 'tbob', 0.05 s"):
        results[-1].get()
    assert time.monotonic() - started < 3.0
    assert results[0].get().shape == (400, 400)  # the first ran in time
    assert torch.equal((torch.ones(2).send(bob) + 1).get(), torch.full((2,), 2.0))


def test_a_plan_stops_between_ops_at_the_time_limit(hook):
    bob = fedmq.VirtualWorker(hook, id="pbob")
    bob.worker.policy = dataclasses.replace(Policy.open(), max_op_seconds=0.1)

    @fedmq.func2plan(args_shape=[(300, 300)])
    def slow(x):
        for _ in range(300):
            x = (x @ x).tanh()
        return x

    with pytest.raises(errors.TimeLimitError, match="plan 'slow', op [1-9][0-9]*"):
        slow.send(bob)(torch.randn(300, 300).send(bob)).get()


def _run_fit_in_thread(engine: RequestEngine, worker_id: str, msg_id: int, outcome: list):
    def run():
        try:
            outcome.append(asyncio.run(engine.arequest(worker_id, long_fit(), msg_id=msg_id)))
        except Exception as exc:  # noqa: BLE001 - checked by the test
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def backstopped(worker):
    """`worker` with a time limit that ends a Fit a broken Cancel would leave running."""
    worker.policy = dataclasses.replace(Policy.open(), max_op_seconds=60)
    return worker


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_sender_cancels_a_running_fit_and_the_worker_keeps_serving():
    alice = backstopped(data_worker("alice", n=40))
    engine = InProcessConnection({"alice": alice})
    msg_id = new_id()
    outcome: list = []
    thread = _run_fit_in_thread(engine, "alice", msg_id, outcome)
    wait_until(lambda: alice.running_messages() == [("me", msg_id)])
    time.sleep(0.2)
    started = time.monotonic()
    assert engine.request("alice", m.Cancel(msg_id), timeout=5) is True  # not behind the Fit
    assert time.monotonic() - started < 0.5
    thread.join(5)
    assert not thread.is_alive()
    (error,) = outcome
    assert isinstance(error, errors.RemoteCancelledError) and error.code == "cancelled"
    assert "Fit: cancelled by its sender" in str(error)
    assert alice.running_messages() == []
    assert engine.request("alice", long_fit(2)).status == "ok"


def test_only_the_principal_that_sent_a_message_may_cancel_it():
    alice = backstopped(data_worker("alice", n=40))
    engine = InProcessConnection({"alice": alice})
    msg_id = new_id()
    outcome: list = []
    thread = _run_fit_in_thread(engine, "alice", msg_id, outcome)
    wait_until(lambda: alice.running_messages() != [])
    cancel = serde.encode(m.Envelope(m.WIRE_VERSION, "mallory", m.Cancel(msg_id)))
    assert decode_reply(alice.handle_control_frame(cancel, "mallory"), "alice") is False
    time.sleep(0.3)
    assert alice.running_messages() == [("me", msg_id)] and not outcome  # still training
    assert decode_reply(alice.handle_control_frame(cancel, "me"), "alice") is True
    thread.join(5)
    assert isinstance(outcome[0], errors.RemoteCancelledError)


def test_a_message_cancelled_before_it_came_is_refused_when_it_does():
    alice = data_worker("alice", n=40)
    msg_id = new_id()
    assert call(alice, m.Cancel(msg_id)) is False
    with pytest.raises(errors.RemoteCancelledError, match="cancelled by its sender before it ran"):
        call(alice, long_fit(), msg_id=msg_id)
    assert call(alice, long_fit(2), msg_id=msg_id).status == "ok"  # a Cancel stops one message
    with pytest.raises(errors.RemoteSerdeError, match="not 0"):
        call(alice, m.Cancel(0))


def test_the_coordinator_cancels_the_fits_it_gave_up_on():
    """A round whose deadline passes while every worker still trains (a million batches):
    the coordinator sends each a Cancel, and they stop instead of training for an hour."""
    ws = {name: backstopped(data_worker(name, n=48, seed=i))
          for i, name in enumerate(("alice", "bob"))}
    config = TrainConfig(rounds=1, batch_size=8, num_batches=1_000_000, lr=0.05, eval_every=0,
                         round_timeout=1.0, seed=3)
    coord = Coordinator(InProcessConnection(ws), list(ws), config, echo=lambda line: None)
    coord.prepare()
    started = time.monotonic()
    record = asyncio.run(coord.run_round(1))
    assert record.status == "failed"
    assert record.failed == {"alice": "missed the round deadline",
                             "bob": "missed the round deadline"}
    wait_until(lambda: not any(w.running_messages() for w in ws.values()), timeout=2.0)
    assert time.monotonic() - started < 4.0
    again = InProcessConnection(ws)  # they serve the next round's messages at once
    assert again.request("alice", long_fit(2), timeout=5).status == "ok"


def test_one_principals_cancels_never_push_out_anothers():
    alice = data_worker("alice", n=40)
    mine = new_id()
    alice.cancel("me", mine)
    for i in range(1, 3000):  # mallory floods the worker with Cancels of her own
        alice.cancel("mallory", i)
    with pytest.raises(errors.RemoteCancelledError, match="before it ran"):
        call(alice, long_fit(), msg_id=mine)


# -- fedmq worker's options -------------------------------------------------------------------------

def worker_args(*argv: str):
    import argparse

    from fedmq.service import add_worker_command
    parser = argparse.ArgumentParser()
    add_worker_command(parser.add_subparsers())
    return parser.parse_args(["worker", "--id", "w", "--url", "amqp://alice:pw@h/", *argv])


def test_fedmq_worker_limits_default_and_options():
    from fedmq.service import policy_from_args
    default = policy_from_args(worker_args())
    assert (default.max_frame_bytes, default.max_op_bytes, default.max_op_seconds) == \
        (512 * MIB, 1 << 30, 600.0)  # the op cap follows the quota
    assert default.max_op_bytes == default.max_bytes
    set_ = policy_from_args(worker_args("--max-frame-bytes", "1M", "--max-op-bytes", "64M",
                                        "--max-op-seconds", "2.5", "--max-bytes", "2G"))
    assert (set_.max_frame_bytes, set_.max_op_bytes, set_.max_op_seconds) == \
        (MIB, 64 * MIB, 2.5)
    off = policy_from_args(worker_args("--max-frame-bytes", "0", "--max-op-bytes", "0",
                                       "--max-op-seconds", "0"))
    assert (off.max_frame_bytes, off.max_op_bytes, off.max_op_seconds) == (None, None, None)
    assert "limits: max-frame-bytes 536870912, max-op-bytes 1073741824, max-op-seconds 600" \
        in default.describe()
    with pytest.raises(SystemExit):
        policy_from_args(worker_args("--max-op-seconds", "-1"))
