"""The worker's one execution primitive (fedmq.execution.execute) and the messages that use it:
results bound under the caller's ids, failures recorded under every id as one ErrorInfo."""
from __future__ import annotations

import pytest
import torch

from fedmq import errors, messages as m
from fedmq.execution import PreviousOpFailed, error_info, execute, run_command
from fedmq.extensions import load_extensions
from fedmq.fl.messages import Fit
from fedmq.plans.messages import PlanRecord, RunPlan
from fedmq.smpc import local_steps
from fedmq.smpc.messages import LocalStep
from fedmq.store import FailedResult, ObjectStore
from fedmq.worker import Worker

load_extensions()  # every worker answers RunPlan, LocalStep, Fit


@pytest.fixture
def store():
    s = ObjectStore("bob")
    s.put(1, torch.tensor([1.0, -2.0, 3.0]))
    s.put(2, torch.tensor([[1.0, 5.0], [4.0, 2.0]]))
    return s


# -- binding ------------------------------------------------------------------------------------

def test_results_are_bound_under_the_callers_ids(store):
    value = execute(torch.add, (m.Ref(1), 1.0), None, [10], store, "bob")
    assert torch.equal(store.get(10), torch.tensor([2.0, -1.0, 4.0]))
    assert value is store.get(10)


def test_a_tuple_result_binds_its_leaves_in_order(store):
    execute(torch.max, (m.Ref(2),), {"dim": 0}, [11, 12], store, "bob")
    values, indices = torch.max(store.get(2), dim=0)
    assert torch.equal(store.get(11), values) and torch.equal(store.get(12), indices)


def test_an_allowlisted_op_runs_by_name(store):
    execute(None, (m.Ref(1),), None, [10], store, "bob", op="torch.neg")
    assert torch.equal(store.get(10), -store.get(1))


def test_a_none_id_is_an_alias_and_is_not_stored(store):
    before = len(store)
    x = store.get(1)
    execute(None, (m.Ref(1), 1.0), None, [None], store, "bob", op="Tensor.add_")
    assert len(store) == before
    assert torch.equal(x, torch.tensor([2.0, -1.0, 4.0]))  # changed in place, under its own id


def test_without_result_ids_the_value_is_returned_and_nothing_is_bound(store):
    before = len(store)
    value = execute(torch.sum, (m.Ref(1),), None, None, store, "bob")
    assert value.item() == 2.0 and len(store) == before


def test_split_binds_the_first_part_and_returns_the_second(store):
    opened = execute(lambda x: ((x * 2,), (x + 1,)), [m.Ref(1)], None, [10], store, "bob",
                     split=True)
    assert torch.equal(store.get(10), store.get(1) * 2)
    assert torch.equal(opened[0], store.get(1) + 1)


def test_grad_mode_is_the_callers(store):
    store.put(3, torch.ones(2, requires_grad=True))
    execute(torch.mul, (m.Ref(3), 2.0), None, [10], store, "bob", grad_enabled=False)
    execute(torch.mul, (m.Ref(3), 2.0), None, [11], store, "bob", grad_enabled=True)
    assert not store.get(10).requires_grad and store.get(11).requires_grad


# -- failures -------------------------------------------------------------------------------------

def _failures(store, ids):
    return [store.get(i) for i in ids]


def test_a_count_mismatch_fails_and_is_recorded(store):
    with pytest.raises(errors.RemoteExecutionError, match="the caller expected 2") as info:
        execute(None, (m.Ref(1),), None, [10, 11], store, "bob", op="torch.neg")
    failed = _failures(store, [10, 11])
    assert all(isinstance(f, FailedResult) for f in failed)
    assert failed[0].error is failed[1].error is info.value.info
    assert failed[0].error == m.ErrorInfo("execution_error", info.value.remote_message, "bob",
                                          "torch.neg")


def test_a_failure_is_recorded_under_every_id_with_one_error_info(store):
    with pytest.raises(errors.RemoteExecutionError) as info:
        execute(None, (m.Ref(1), m.Ref(2)), None, [10, None, 11], store, "bob", op="torch.add")
    err = info.value.info
    assert isinstance(info.value.__cause__, RuntimeError)  # the op's own error, chained
    assert err.code == "execution_error" and err.op == "torch.add" and err.worker == "bob"
    assert err.message.startswith("RuntimeError: ") and "size of tensor" in err.message
    assert [f.error for f in _failures(store, [10, 11])] == [err, err]
    assert _failures(store, [10])[0].error is _failures(store, [11])[0].error
    assert None not in store


@pytest.mark.parametrize("call, code, cls", [
    (dict(fn=None, args=(m.Ref(1),), op="os.system"), "op_not_allowed", errors.RemoteOpNotAllowed),
    (dict(fn=torch.neg, args=(m.Ref(999),)), "object_not_found", errors.ObjectNotFoundError),
    (dict(fn=torch.neg, args=(m.Ref(1, "grad"),)), "object_not_found",
     errors.ObjectNotFoundError),
    (dict(fn=torch.neg, args=("not a tensor",)), "execution_error", errors.RemoteExecutionError),
])
def test_every_kind_of_failure_gets_its_code(store, call, code, cls):
    with pytest.raises(cls) as info:
        execute(call["fn"], call["args"], None, [10], store, "bob", op=call.get("op"))
    assert info.value.info.code == code
    assert store.get(10).error is info.value.info


def test_a_later_use_of_a_failed_id_raises_the_original_error(store):
    with pytest.raises(errors.RemoteExecutionError) as first:
        execute(None, (m.Ref(1), m.Ref(2)), None, [10], store, "bob", op="torch.add")
    original = first.value.info
    with pytest.raises(PreviousOpFailed) as later:
        execute(None, (m.Ref(10),), None, [11], store, "bob", op="torch.neg")
    assert later.value.remote_message == f"an earlier op failed: {original.message}"
    assert later.value.op == "torch.add"
    # ... and what depends on that fails in turn, naming the same original error
    with pytest.raises(PreviousOpFailed, match="size of tensor"):
        execute(None, (m.Ref(11),), None, [12], store, "bob", op="torch.neg")


def test_error_info_is_the_one_conversion():
    remote = errors.ObjectNotFoundError("gone", worker="alice", op="get")
    assert error_info(remote, "bob", "torch.add") == m.ErrorInfo("object_not_found", "gone",
                                                                 "bob", "get")
    refused = errors.OpNotAllowedError("op 'x' is not on fedmq's allowlist")
    assert error_info(refused, "bob", "x") == m.ErrorInfo(
        "op_not_allowed", "op 'x' is not on fedmq's allowlist", "bob", "x")
    assert error_info(ValueError("bad"), "bob") == m.ErrorInfo("execution_error",
                                                               "ValueError: bad", "bob", None)


def test_run_command_replies_with_pointer_refs_and_records_nothing(store):
    refs = run_command(m.Command("torch.max", (m.Ref(2),), {"dim": 1}, [], reply=True), store,
                       "bob")
    assert [type(r) for r in refs] == [m.PointerRef, m.PointerRef]
    assert torch.equal(store.get(refs[0].id_at_location), store.get(2).max(dim=1).values)
    with pytest.raises(errors.RemoteExecutionError):
        run_command(m.Command("torch.neg", ("x",), {}, [], reply=True), store, "bob")


# -- every message that does work goes through it ------------------------------------------------

def _get_error(worker, obj_id):
    reply = worker.handle_message(m.GetRequest([obj_id]))
    assert reply.error is not None
    return reply.error


def test_a_failed_command_is_recorded_and_reported_by_the_worker():
    worker = Worker("bob")
    worker.store.put(1, torch.ones(3))
    reply = worker.handle_message(m.Command("torch.dot", (m.Ref(1), m.Ref(1)), {}, [5, 6]))
    assert reply.error.code == "execution_error" and "the caller expected 2" in reply.error.message
    for rid in (5, 6):
        err = _get_error(worker, rid)
        assert err.code == "execution_error"
        assert err.message == f"an earlier op failed: {reply.error.message}"


def test_a_failed_plan_is_recorded_under_its_result_ids():
    worker = Worker("bob")
    record = PlanRecord(100, "dot", [1, 2], [], [], [
        m.Command("torch.dot", (m.Ref(1), m.Ref(2)), {}, [3])], m.Ref(3))
    worker.store.put(100, record)
    worker.store.put(7, torch.ones(2))
    worker.store.put(8, torch.ones(3))
    reply = worker.handle_message(RunPlan(100, (m.Ref(7), m.Ref(8)), [9]))
    assert reply.error.code == "execution_error"
    assert "plan 'dot', op 0 (torch.dot)" in reply.error.message
    assert _get_error(worker, 9).message == f"an earlier op failed: {reply.error.message}"
    ok = worker.handle_message(RunPlan(100, (m.Ref(7), m.Ref(7)), [10]))
    assert ok.error is None and worker.store.get(10).item() == 2.0
    bad = worker.handle_message(RunPlan(7, (m.Ref(7), m.Ref(7)), [11]))  # not a plan
    assert "not a plan" in bad.error.message and "not a plan" in _get_error(worker, 11).message


def test_a_failed_smpc_step_is_recorded_under_its_result_ids(monkeypatch):
    worker = Worker("bob")
    reply = worker.handle_message(LocalStep("os.system", ["true"], [21]))
    assert reply.error.code == "execution_error" and "unknown SMPC step" in reply.error.message
    assert "unknown SMPC step" in _get_error(worker, 21).message
    worker.store.put(1, torch.tensor([5, 7]))
    worker.store.put(2, torch.tensor([1, 1]))
    monkeypatch.setitem(local_steps.STEPS, "test_keep_two", lambda x, r: ((x - r, x + r), (x,)))
    reply = worker.handle_message(LocalStep("test_keep_two", [m.Ref(1), m.Ref(2)], [22]))
    assert reply.error.op == "test_keep_two" and "the caller expected 1" in reply.error.message
    reply = worker.handle_message(LocalStep("test_keep_two", [m.Ref(1), m.Ref(2)], [23, 24]))
    assert reply.error is None and reply.value[0].tolist() == [5, 7]
    assert worker.store.get(23).tolist() == [4, 6] and worker.store.get(24).tolist() == [6, 8]


def test_fit_errors_come_back_as_the_one_error_info():
    worker = Worker("bob")
    reply = worker.handle_message(Fit(1, "no-such-net", {}, {}))
    assert reply.error.code == "execution_error" and reply.error.worker == "bob"
    assert "holds 0" in reply.error.message  # no data: the first check that fails


def test_handlers_outside_execute_still_answer_with_error_info():
    class Custom:  # not a wire type: only Worker.handle_message sees it
        pass

    worker = Worker("bob")
    worker.register(Custom, lambda session, msg: 1 / 0)
    reply = worker.handle_message(Custom())
    assert reply.error == m.ErrorInfo("execution_error", "ZeroDivisionError: division by zero",
                                      "bob", None)


def test_a_chain_of_failed_ops_says_the_first_error_once():
    worker = Worker("bob")
    worker.store.put(1, torch.ones(3))
    first = worker.handle_message(m.Command("torch.dot", (m.Ref(1), m.Ref(1)), {}, [5, 6]))
    for i in range(7, 12):  # each op uses the failed result of the one before
        worker.handle_message(m.Command("Tensor.add", (m.Ref(i - 1), 1), {}, [i]))
    message = _get_error(worker, 11).message
    assert message == f"an earlier op failed: {first.error.message}"
    assert message.count("an earlier op failed") == 1
