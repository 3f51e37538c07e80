"""Remote failures come back as fedmq exceptions carrying the worker's message; misuse is
caught before sending; the worker keeps serving through all of it."""
from __future__ import annotations

import pickle

import pytest
import torch

import fedmq
from fedmq import messages as m, serde


def test_shape_mismatch_raises_remote_error_and_worker_keeps_serving(bob):
    x = torch.ones(3).send(bob)
    y = torch.ones(4).send(bob)
    with pytest.raises(fedmq.RemoteExecutionError) as info:
        x + y
    assert info.value.worker == "bob" and "size" in str(info.value)
    assert (x + x).get().tolist() == [2.0, 2.0, 2.0]


def test_wrong_dtype_raises(bob):
    a = torch.ones(2, 2).send(bob)
    b = torch.ones(2, 2, dtype=torch.int64).send(bob)
    with pytest.raises(fedmq.RemoteExecutionError, match="(?i)dtype|type"):
        torch.mm(a, b).get()  # raised where the op ran or, if it was pipelined, at this sync
    assert (a + 1).get().tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_data_dependent_error_surfaces_at_next_sync_point(bob):
    x = torch.arange(4.0).send(bob)
    idx = torch.tensor([7]).send(bob)
    with pytest.raises(fedmq.RemoteExecutionError, match="(?i)index"):
        x[idx].get()
    assert x.get().tolist() == [0.0, 1.0, 2.0, 3.0]


def test_pointer_used_after_get(bob):
    x = torch.ones(2).send(bob)
    x.get()
    with pytest.raises(fedmq.PointerError, match="already used by .get"):
        x + 1


def test_object_deleted_remotely(bob):
    x = torch.ones(2).send(bob)
    bob.clear_objects()
    with pytest.raises(fedmq.ObjectNotFoundError, match="not on worker 'bob'"):
        x.get()


def test_op_not_on_allowlist_is_refused_before_sending(bob):
    x = torch.randn(3, 3).send(bob)
    before = bob.message_count
    with pytest.raises(fedmq.OpNotAllowedError, match="allowlist"):
        torch.linalg.svd(x)
    assert bob.message_count == before


def test_local_tensor_is_never_moved_implicitly(bob):
    x = torch.ones(2).send(bob)
    with pytest.raises(fedmq.PointerError, match="send it to the worker first"):
        x + torch.ones(2)


def test_pointers_on_two_workers(bob, alice):
    with pytest.raises(fedmq.PointerError, match="different workers"):
        torch.ones(2).send(bob) + torch.ones(2).send(alice)


def _send_raw(worker, message):  # in-process only: looks inside the worker
    frame = serde.encode(m.Envelope(m.WIRE_VERSION, "mallory", message))
    return serde.decode(worker.worker.handle_frame(frame))


def test_worker_refuses_non_allowlisted_op_name_from_the_wire(vbob):
    bob = vbob
    x = torch.ones(2).send(bob)
    reply = _send_raw(bob, m.Command("os.system", ("echo pwned",), {}, [1]))
    assert reply.error.code == "op_not_allowed" and "os.system" in reply.error.message
    reply = _send_raw(bob, m.Command("Tensor.__reduce_ex__", (m.Ref(x.id_at_location), 2), {},
                                     []))
    assert reply.error.code == "op_not_allowed"
    assert (x * 2).get().tolist() == [2.0, 2.0]


class _Boom:
    triggered = []

    def __reduce__(self):
        return (_Boom.triggered.append, ("unpickled!",))


@pytest.mark.parametrize("frame", [
    b"", b"garbage", b"FMQ1" + b"\xff" * 40, pickle.dumps(_Boom()),
    serde.encode(m.Envelope(m.WIRE_VERSION, "x", m.ObjectsCount()))[:-1] + b"\xc1",
    serde.encode(m.Envelope(99, "x", m.ObjectsCount())),
    serde.encode(["not", "an", "envelope"]),
])
def test_worker_answers_garbage_with_an_error_and_keeps_serving(vbob, frame):
    bob = vbob
    reply = serde.decode(bob.worker.handle_frame(frame))
    assert isinstance(reply, m.Reply) and reply.error is not None
    assert reply.error.code == "serde_error"
    assert _Boom.triggered == []
    assert (torch.ones(1).send(bob) + 1).get().tolist() == [2.0]


def test_unknown_id_in_command(vbob):
    bob = vbob
    reply = _send_raw(bob, m.Command("torch.add", (m.Ref(12345), m.Ref(12345)), {}, [1]))
    assert reply.error.code == "object_not_found"
    # the failed result is recorded: using it reports the original failure
    reply = _send_raw(bob, m.GetRequest([1]))
    assert reply.error.code == "object_not_found" and "earlier op failed" in reply.error.message
