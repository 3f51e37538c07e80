"""The allowlist audit (issue 12, item 5: no shared process state leaks; fedmq/ops/allowlist.py):
in-place writes seen however they are asked."""
from __future__ import annotations

import pytest
import torch

from fedmq import messages as m, ops, serde
from fedmq.extensions import load_extensions
from fedmq.policy import Policy
from fedmq.worker import Worker

load_extensions()


def _respond(worker, login, msg):
    env = m.Envelope(m.WIRE_VERSION, login, msg)
    return serde.decode(worker.respond(serde.decode(serde.encode(env)), login)[0])


def _ok(worker, login, msg):
    reply = _respond(worker, login, msg)
    assert reply.error is None, reply.error
    return reply.value


# -- writes however they are asked --------------------------------------------------------------

@pytest.fixture
def lab():
    """A worker whose owner holds private data; eve is a scientist there."""
    worker = Worker("bob", policy=Policy(owner="owner", grants={"scientist": {"eve"}},
                                         release="derived"))
    _ok(worker, "owner", m.ObjectMessage([m.StoredObject(1, torch.tensor([-1.0, 2.0]))]))
    _ok(worker, "owner", m.ObjectMessage([m.StoredObject(2, torch.randn(4, 3) * 10)]))
    _ok(worker, "eve", m.ObjectMessage([m.StoredObject(10, torch.tensor([1, 2]))]))
    _ok(worker, "eve", m.ObjectMessage([m.StoredObject(11, torch.ones(2))]))
    return worker


@pytest.mark.parametrize("op, args, kwargs", [
    ("F.relu", (m.Ref(1), True), {}),
    ("F.relu", (m.Ref(1),), {"inplace": 1}),
    ("F.relu", (), {"input": m.Ref(1), "inplace": True}),
    ("F.leaky_relu", (m.Ref(1), 0.1, True), {}),
    ("F.hardtanh", (m.Ref(1), -0.5, 0.5, True), {}),
    ("F.dropout", (m.Ref(1), 0.5, True, True), {}),
    ("torch.norm", (m.Ref(11), 2, 0, False, m.Ref(1)), {}),
    ("F.normalize", (m.Ref(11), 2.0, 0, 1e-12, m.Ref(1)), {}),
    ("F.embedding", (m.Ref(10), m.Ref(2), None, 1.0), {}),
    ("F.embedding", (m.Ref(10), m.Ref(2)), {"max_norm": 1.0}),
])
def test_in_place_writes_to_private_data_are_refused_before_they_run(lab, op, args, kwargs):
    before = [_ok(lab, "owner", m.GetRequest([i], delete=False))[0] for i in (1, 2)]
    reply = _respond(lab, "eve", m.Command(op, args, kwargs, [20]))
    assert reply.error.code == "access_denied"
    assert "would modify" in reply.error.message  # refused before running (not the backstop)
    after = [_ok(lab, "owner", m.GetRequest([i], delete=False))[0] for i in (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_written_sees_positional_and_truthy_arguments():
    x, w, i = torch.ones(2), torch.ones(4, 3), torch.tensor([1])
    assert ops.written("F.relu", (x, True), {}) == [x]
    assert ops.written("F.relu", (x, 0), {}) == []
    assert ops.written("F.relu", (x,), {"inplace": 1}) == [x]
    assert ops.written("F.relu", (), {"input": x, "inplace": True}) == [x]
    assert ops.written("F.embedding", (i, w), {}) == []
    assert ops.written("F.embedding", (i, w, None, 2.0), {}) == [w]
    assert ops.written("torch.norm", (x, 2, 0, False, w), {}) == [w]
    assert ops.written("torch.norm", (x, 2), {}) == []
