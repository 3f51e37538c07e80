"""Fuzzing what a worker receives: every message type, valid frames with bytes flipped, cut
short, or with one field replaced by a value of the wrong type. Whatever arrives, the worker
answers with a Reply (an error says why, and the failure has a reason for the dead-letter
copy), never raises, and keeps serving."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from fedmq import messages as m, serde
from fedmq.engine import RequestEngine
from fedmq.extensions import load_extensions
from fedmq.worker import Worker

load_extensions()  # extension messages (Fit, Evaluate, plans, SMPC) decode and have handlers

from fedmq.fl.messages import Evaluate, Fit  # noqa: E402


def valid_messages() -> list:
    t = torch.ones(2, 3)
    return [
        m.ObjectMessage([m.StoredObject(11, t, ["#x"], "a tensor")]),
        m.GetRequest([1], delete=False),
        m.DeleteObjects([5]),
        m.Command("Tensor.add", (m.Ref(1), 1.5), {}, [12], reply=True),
        m.Command("torch.matmul", (m.Ref(1), m.Ref(2)), {}, [13]),
        m.ForwardObjects([1], "nobody", keep=True),
        m.ObjectsCount(),
        m.SearchRequest(["#x"]),
        m.ClearObjects(),
        m.Batch([m.Command("Tensor.mul", (m.Ref(1), 2), {}, [14]), m.GetRequest([14])],
                reply_last=True),
        m.ListObjects(),
        m.WorkerStats(),
        Fit(1, "seed-cnn", {}, {"batch_size": 4, "num_batches": 1}),
        Evaluate(1, "seed-cnn", {}, {}),
    ]


MESSAGES = valid_messages()


def fresh_worker() -> Worker:
    worker = Worker("fuzz")
    worker.store.put(1, torch.ones(2, 3))
    worker.store.put(2, torch.ones(3, 2))
    return worker


WORKER = fresh_worker()
WRONG = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=20),
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just(torch.zeros(2)), st.just(m.Ref(1)), st.just(m.ObjectsCount()),
    st.just((1, "a")), st.just(slice(1, 2)),
)


def check_answered(frame: bytes) -> None:
    reply, failed = WORKER.handle_frame_checked(frame)
    decoded = serde.decode(reply)
    assert isinstance(decoded, m.Reply)
    assert decoded.incarnation == WORKER.incarnation
    if decoded.error is not None:
        assert isinstance(failed, str) and failed
    # and the worker still serves
    ok = serde.decode(WORKER.handle_frame(RequestEngine.encode(m.WorkerStats(), sender="t")))
    assert ok.error is None


def frame_of(message) -> bytes:
    return bytes(RequestEngine.encode(message, sender="fuzzer"))


@pytest.mark.parametrize("message", MESSAGES, ids=lambda msg: type(msg).__name__)
def test_every_valid_message_is_answered(message):
    check_answered(frame_of(message))


WITH_FIELDS = [i for i, msg in enumerate(MESSAGES) if dataclasses.fields(msg)]


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(WITH_FIELDS), st.data())
def test_a_field_of_the_wrong_type_is_answered_never_raised(index, data):
    message = copy.copy(MESSAGES[index])
    fields = [f.name for f in dataclasses.fields(message)]
    name = data.draw(st.sampled_from(fields))
    object.__setattr__(message, name, data.draw(WRONG))  # bypass any __post_init__ check
    try:
        frame = frame_of(message)
    except serde.SerdeError:
        return  # not even encodable: it cannot be sent
    check_answered(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(range(len(MESSAGES))), st.data())
def test_flipped_or_cut_bytes_are_answered_never_raised(index, data):
    frame = bytearray(frame_of(MESSAGES[index]))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        frame = frame[:data.draw(st.integers(0, len(frame)))]
    check_answered(bytes(frame))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(range(len(MESSAGES))), WRONG, WRONG)
def test_an_envelope_with_wrong_fields_is_answered(index, sender, release):
    frame = bytes(serde.encode(m.Envelope(m.WIRE_VERSION, sender, MESSAGES[index], 0, release)))
    check_answered(frame)
