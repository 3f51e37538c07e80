"""Resource limits of a real `fedmq worker` process over RabbitMQ (issue 12, item 4): frames
over --max-frame-bytes, whole or chunked, are refused before they are read or assembled; a Fit
past --max-op-seconds stops; a Cancel is handled at once, not behind the Fit it stops; an op
past the quota is refused without running. Each is answered, dead-lettered when it is a
refusal, and the worker goes on serving."""
from __future__ import annotations

import asyncio
import time
import uuid

import pika
import pytest
import torch

import fedmq
from fedmq import errors, messages as m, serde
from fedmq.fl.connections import AMQPRoundConnection
from fedmq.fl.coordinator import initial_weights
from fedmq.fl.messages import Fit
from fedmq.ids import new_id
from fedmq.transport.amqp import DEAD_LETTER_QUEUE
from worker_procs import AMQP_URL, RawClient, WorkerProcesses, envelope

pytestmark = pytest.mark.amqp


@pytest.fixture
def procs(tmp_path):
    p = WorkerProcesses(tmp_path)
    yield p
    p.stop_all(delete_queues=True)


@pytest.fixture
def raw():
    client = RawClient()
    yield client
    client.close()


def test_a_frame_over_the_limit_is_refused_and_dead_lettered(procs, raw):
    procs.start("lim_frame", "--max-frame-bytes", "64K")
    body = envelope(m.ObjectMessage([m.StoredObject(1, torch.zeros(100_000))]))
    reply = raw.call("lim_frame", body, message_id="too-big")
    assert reply.error.code == "frame_too_large"
    assert "65536 bytes (--max-frame-bytes); it was not read" in reply.error.message
    assert raw.dead_lettered("too-big")["x-fedmq-error"].startswith("frame_too_large")
    assert raw.call("lim_frame", envelope(m.ObjectsCount())).value == 0


def test_a_chunked_frame_over_the_limit_is_refused_at_its_first_chunk(procs, raw):
    """The first of a declared 1000 chunks of 8 KiB is enough: the worker answers at once,
    holds nothing, and never waits for (or assembles) the rest."""
    procs.start("lim_chunks", "--max-frame-bytes", "1M")
    started = time.monotonic()
    reply = raw.call("lim_chunks", bytes(8192), message_id="chunk-0", headers={
        "x-fedmq-frame": "huge", "x-fedmq-chunk": 0, "x-fedmq-chunks": 1000})
    assert time.monotonic() - started < 5
    assert reply.error.code == "frame_too_large"
    assert "chunk count declares at least 8183809 bytes" in reply.error.message
    assert raw.dead_lettered("chunk-0")["x-fedmq-error"].startswith("frame_too_large")
    later = raw.call("lim_chunks", bytes(8192), message_id="chunk-1", headers={
        "x-fedmq-frame": "huge", "x-fedmq-chunk": 1, "x-fedmq-chunks": 1000})
    assert later.error.code == "frame_too_large"  # its later chunks too, at once
    assert raw.call("lim_chunks", envelope(m.ObjectsCount())).value == 0


FIT_CONFIG = {"batch_size": 32, "optimizer": "sgd", "optimizer_args": {"lr": 0.05},
              "loss": "nll", "seed": 7}


def fit(num_batches: int) -> Fit:
    return Fit(1, "seed-cnn", initial_weights("seed-cnn", seed=1),
               dict(FIT_CONFIG, num_batches=num_batches))


def test_a_fit_of_a_million_batches_stops_at_the_time_limit(procs):
    procs.start("lim_time", "--dataset", "mnist5k", "--labels", "0-3", "--max-op-seconds", "2")

    async def scenario():
        conn = await AMQPRoundConnection.connect(AMQP_URL)
        try:
            started = time.monotonic()
            with pytest.raises(errors.TimeLimitError, match="Fit: stopped .* 2 s per message"):
                await conn.arequest("lim_time", fit(1_000_000), timeout=60)
            took = time.monotonic() - started
            res = await conn.arequest("lim_time", fit(2), timeout=30)  # it keeps serving
            return took, res
        finally:
            await conn.aclose()

    took, res = asyncio.run(scenario())
    assert 2 <= took < 10
    assert res.status == "ok" and res.num_examples == 64
    assert "time_limit" in procs.log("lim_time") or "stopped" in procs.log("lim_time")


def test_cancel_is_handled_at_once_and_stops_the_running_fit(procs):
    procs.start("lim_cancel", "--dataset", "mnist5k", "--labels", "0-3")

    async def scenario():
        conn = await AMQPRoundConnection.connect(AMQP_URL)
        try:
            msg_id = new_id()
            running = asyncio.ensure_future(conn.arequest("lim_cancel", fit(1_000_000),
                                                          timeout=120, msg_id=msg_id))
            await asyncio.sleep(2.0)  # it trains
            assert not running.done()
            started = time.monotonic()
            assert await conn.arequest("lim_cancel", m.Cancel(msg_id), timeout=10) is True
            answered = time.monotonic() - started  # not behind the Fit
            with pytest.raises(errors.RemoteCancelledError, match="Fit: cancelled by its sender"):
                await asyncio.wait_for(running, 10)
            stopped = time.monotonic() - started
            # a Cancel that comes first refuses its message when it comes
            early = new_id()
            assert await conn.arequest("lim_cancel", m.Cancel(early), timeout=10) is False
            with pytest.raises(errors.RemoteCancelledError, match="before it ran"):
                await conn.arequest("lim_cancel", fit(2), timeout=30, msg_id=early)
            res = await conn.arequest("lim_cancel", fit(2), timeout=30)
            return answered, stopped, res
        finally:
            await conn.aclose()

    answered, stopped, res = asyncio.run(scenario())
    assert answered < 1.0 and stopped < 2.0
    assert res.status == "ok"
    assert "cancelled message" in procs.log("lim_cancel")


def test_an_op_past_the_quota_is_refused_without_running(procs, hook):
    procs.start("lim_op", "--owner", "the-data-owner", "--max-bytes", "64M")
    bob = fedmq.AMQPClientWorker(hook, id="lim_op", url=AMQP_URL)
    x = torch.ones(10).send(bob)
    started = time.monotonic()
    with pytest.raises(errors.QuotaExceededError, match="refused without running it"):
        x.repeat(10 ** 5, 10 ** 5).get()
    with pytest.raises(errors.QuotaExceededError, match="refused without running it"):
        v = torch.ones(10 ** 6).send(bob)
        torch.outer(v, v).get()
    assert time.monotonic() - started < 10
    assert torch.equal((x + 1).get(), torch.full((10,), 2.0))
