"""The worker service over the real broker: bad input is answered and dead-lettered, crashes
lose nothing acknowledged, big payloads are chunked, shutdown is clean."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import urllib.parse
import uuid

import pika
import pytest
import torch

import fedmq
from fedmq import messages as m, serde
from fedmq.transport.amqp import DEAD_LETTER_QUEUE
from worker_procs import (AMQP_URL, RawClient, WorkerProcesses, consumer_count, envelope,
                          purge)

pytestmark = pytest.mark.amqp


@pytest.fixture
def procs(tmp_path):
    p = WorkerProcesses(tmp_path)
    yield p
    p.stop_all(delete_queues=True)


def test_service_logs_its_start(procs):
    procs.start("svc_log")
    line = next(line for line in procs.log("svc_log").splitlines() if "consuming" in line)
    assert "svc_log" in line and "fedmq.worker.svc_log" in line and "127.0.0.1:5672" in line


def test_call_without_a_worker_fails_at_once_clearly(hook):
    nobody = fedmq.AMQPClientWorker(hook, id=f"nobody-{uuid.uuid4().hex[:6]}", url=AMQP_URL,
                                    timeout=60.0)
    started = time.monotonic()
    with pytest.raises(fedmq.WorkerNotFoundError) as info:
        nobody.objects_count()
    assert time.monotonic() - started < 2
    assert nobody.id in str(info.value) and "ObjectsCount" in str(info.value)
    assert f"fedmq worker --id {nobody.id}" in str(info.value)  # says how to start it


@pytest.mark.parametrize("name,body,message_type", [
    ("garbage", b"\x00\x01 this is not a frame", "Envelope"),  # the sender's AMQP type
    ("pickle", pickle.dumps({"evil": "payload"}), "Envelope"),
    ("not allowlisted", envelope(m.Command("os.system", ("echo pwned",), {}, [], reply=True)),
     "Command"),  # decoded: what it really is
    ("truncated", envelope(m.ObjectsCount())[:-3], "Envelope"),
])
def test_bad_messages_get_an_error_reply_and_are_dead_lettered(procs, name, body,
                                                               message_type):
    procs.start("svc_bad")
    raw = RawClient()
    try:
        msg_id = uuid.uuid4().hex
        reply = raw.call("svc_bad", body, message_id=msg_id)
        assert isinstance(reply, m.Reply) and reply.error is not None
        assert reply.error.code in ("serde_error", "op_not_allowed")
        headers = raw.dead_lettered(msg_id)
        assert headers is not None, "the failed message did not reach fedmq.dead-letters"
        assert headers["x-fedmq-error"].startswith(reply.error.code)  # it explains itself
        assert headers["x-fedmq-worker"] == "svc_bad"
        assert headers["x-fedmq-message-type"] == message_type
        # a call travels transient; its copy is persistent (it outlives a broker restart)
        assert raw.dead_letter_modes[msg_id] == 2
        # ... and the worker answers the next request
        assert raw.call("svc_bad", envelope(m.ObjectsCount())).value == 0
    finally:
        raw.close()


def assert_all_settled(queue: str, timeout: float = 20) -> None:
    """Wait until `queue` has no unacknowledged message (the management API's counts lag a few
    seconds); fail if some stay."""
    deadline = time.monotonic() + timeout
    while unacked(queue) != 0:
        assert time.monotonic() < deadline, f"messages left unacked in {queue}"
        time.sleep(0.5)


def unacked(queue: str) -> int:
    from fedmq.management import api_get
    from broker_vhost import vhost_of
    vhost = urllib.parse.quote(vhost_of(AMQP_URL), safe="")
    # the management API fills in a new queue's counts a few seconds after it appears
    return api_get(f"queues/{vhost}/{urllib.parse.quote(queue, safe='')}").get(
        "messages_unacknowledged", -1)


@pytest.mark.slow
def test_wrongly_typed_fields_and_bad_chunks_are_answered_and_settled_beyond_the_prefetch(procs):
    """More poison than the prefetch window (64): each is answered with an error and
    dead-lettered with its reason, none stays unacked, and the worker goes on serving."""
    procs.start("svc_poison", "--prefetch", "8")
    raw = RawClient()
    frame = envelope(m.ObjectsCount())
    poison = [  # (body, headers)
        (bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "t", m.ObjectsCount(), 0, 5))), None),
        (bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "t", m.Batch(5), 0, []))), None),
        (bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "t", m.GetRequest("x"), 0, []))), None),
        (frame, {"x-fedmq-frame": "f1", "x-fedmq-chunk": "zero", "x-fedmq-chunks": 2}),
        (frame, {"x-fedmq-frame": "f2", "x-fedmq-chunk": 0, "x-fedmq-chunks": -3}),
        (frame, {"x-fedmq-frame": "f3", "x-fedmq-chunk": 5, "x-fedmq-chunks": 2}),
        (frame, {"x-fedmq-frame": 17, "x-fedmq-chunk": 0, "x-fedmq-chunks": 2}),
        (frame, {"x-fedmq-chunk": 0, "x-fedmq-chunks": 2}),
    ]
    try:
        for round_ in range(10):  # 80 poison messages, prefetch 8
            for i, (body, headers) in enumerate(poison):
                msg_id = f"poison-{round_}-{i}"
                reply = raw.call("svc_poison", body, message_id=msg_id, timeout=10,
                                 headers=headers)
                assert reply.error is not None, (i, reply)
                if round_ == 0:
                    why = raw.dead_lettered(msg_id)
                    assert why is not None and why["x-fedmq-error"], i
        assert raw.call("svc_poison", envelope(m.ObjectsCount())).value == 0
        assert_all_settled("fedmq.worker.svc_poison")
    finally:
        raw.close()


@pytest.mark.slow
def test_a_chunk_announced_twice_or_with_another_count_gives_up_its_frame(procs):
    procs.start("svc_chunks")
    raw = RawClient()
    try:
        part = b"x" * 10
        corr = uuid.uuid4().hex  # first chunk of 3: waits for the rest
        raw.ch.basic_publish("fedmq.commands", "svc_chunks", part, pika.BasicProperties(
            user_id="guest", reply_to="amq.rabbitmq.reply-to", correlation_id=corr, message_id="c0",
            headers={"x-fedmq-frame": "dup", "x-fedmq-chunk": 0, "x-fedmq-chunks": 3}))
        reply = raw.call("svc_chunks", part, message_id="c1", headers={
            "x-fedmq-frame": "dup", "x-fedmq-chunk": 1, "x-fedmq-chunks": 4})
        assert reply.error.code == "chunk_error" and "3 chunks" in reply.error.message
        for msg_id in ("c0", "c1"):  # both chunks of the frame, with the reason
            assert "chunk_error" in raw.dead_lettered(msg_id)["x-fedmq-error"]
        assert raw.call("svc_chunks", envelope(m.ObjectsCount())).value == 0
    finally:
        raw.close()


def test_redelivered_message_is_not_run_twice(procs):
    procs.start("svc_dedup")
    raw = RawClient()
    try:
        raw.call("svc_dedup", envelope(m.ObjectMessage([m.StoredObject(7, torch.zeros(2))])))
        inc = envelope(m.Command("Tensor.add_", (m.Ref(7), 1), {}, [None]))
        raw.call("svc_dedup", inc, message_id="same-id")
        raw.call("svc_dedup", inc, message_id="same-id")  # as a redelivery after a crash
        value = raw.call("svc_dedup", envelope(m.GetRequest([7], delete=False))).value[0]
        assert value.tolist() == [1.0, 1.0]
        assert "already handled" in procs.log("svc_dedup")
    finally:
        raw.close()


@pytest.mark.slow
def test_killed_worker_runs_the_unacked_command_once_after_restart(procs, hook):
    procs.start("svc_crash", "--log-level", "debug")
    raw = RawClient()
    try:
        # A self-contained batch that takes seconds: store a tensor, then many big matmuls.
        n = 1200
        work = [m.ObjectMessage([m.StoredObject(1, torch.ones(n, n) / n)])]
        work += [m.Command("torch.mm", (m.Ref(1), m.Ref(1)), {}, [2])] * 80
        work += [m.Command("Tensor.sum", (m.Ref(2),), {}, [3])]
        msg_id = uuid.uuid4().hex
        corr = uuid.uuid4().hex
        raw.ch.basic_publish("fedmq.commands", "svc_crash", envelope(m.Batch(work)),
                             pika.BasicProperties(user_id="guest", reply_to="amq.rabbitmq.reply-to",
                                                  correlation_id=corr, message_id=msg_id))
        deadline = time.monotonic() + 30
        while f"handling message {msg_id}" not in procs.log("svc_crash"):
            assert time.monotonic() < deadline, "the worker never started the batch"
            time.sleep(0.02)
        procs.kill("svc_crash")  # inside the batch: the message is unacked
        assert f"handled message {msg_id}" not in procs.log("svc_crash")
        procs.start("svc_crash", "--log-level", "debug", fresh=False)  # the batch is redelivered
        deadline = time.monotonic() + 120
        while corr not in raw.replies and time.monotonic() < deadline:
            raw.conn.process_data_events(time_limit=0.2)
        assert corr in raw.replies, "the caller never got an answer"
        assert serde.decode(raw.replies[corr]).error is None
        result = raw.call("svc_crash", envelope(m.GetRequest([3]))).value[0]
        assert result.item() == pytest.approx(n, rel=1e-3)
        assert procs.log("svc_crash").count(f"handled message {msg_id}") == 1
    finally:
        raw.close()


@pytest.mark.slow
def test_after_a_restart_a_lost_object_raises_worker_restarted(procs, hook):
    """Replies carry the worker's incarnation: once it changes, an object the worker no longer
    has is reported as lost in the restart, not as the client's own mistake."""
    procs.start("svc_reborn")
    bob = fedmq.AMQPClientWorker(hook, id="svc_reborn", url=AMQP_URL, timeout=30)
    x = torch.tensor([1.0, 2.0]).send(bob)
    assert (x + 1).get().tolist() == [2.0, 3.0]
    before = bob.incarnation
    assert before is not None and bob.restarted is None
    procs.kill("svc_reborn")
    procs.start("svc_reborn", fresh=False)
    with pytest.raises(fedmq.WorkerRestartedError, match="svc_reborn.*restarted") as info:
        (x * 2).get()
    assert isinstance(info.value, fedmq.ObjectNotFoundError)  # what callers caught before
    assert bob.restarted == (before, bob.incarnation) and bob.incarnation != before
    y = torch.tensor([5.0]).send(bob)  # the worker itself works
    assert (y + 1).get().tolist() == [6.0]
    fresh = fedmq.AMQPClientWorker(fedmq.TorchHook(torch), id="svc_reborn", url=AMQP_URL)
    with pytest.raises(fedmq.ObjectNotFoundError) as plain:  # a client that saw no restart
        fresh.call(m.GetRequest([12345]))
    assert not isinstance(plain.value, fedmq.WorkerRestartedError)
    fresh.network.context.close()


def _second_worker(procs, worker_id: str, *extra: str) -> subprocess.Popen:
    log = open(procs.log_dir / f"{worker_id}-second.log", "a")
    return subprocess.Popen([sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id,
                             "--url", AMQP_URL, *extra], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.slow
def test_a_second_worker_with_a_served_id_exits_with_a_clear_error(procs, hook):
    procs.start("svc_once")
    second = _second_worker(procs, "svc_once")
    assert second.wait(60) == 2
    text = (procs.log_dir / "svc_once-second.log").read_text()
    assert "another process already consumes fedmq.worker.svc_once" in text and "--standby" in \
        text and "Traceback" not in text
    bob = fedmq.AMQPClientWorker(hook, id="svc_once", url=AMQP_URL, timeout=30)
    x = torch.arange(3.0).send(bob)
    for i in range(10):  # every command reaches the one worker that holds x
        assert (x + i).get().tolist() == [i, i + 1.0, i + 2.0]


@pytest.mark.slow
def test_a_standby_worker_takes_over_when_the_active_one_dies(procs, hook):
    procs.start("svc_pair")
    standby = _second_worker(procs, "svc_pair", "--standby")
    log = procs.log_dir / "svc_pair-second.log"
    try:
        deadline = time.monotonic() + 60
        while "standing by" not in (log.read_text() if log.exists() else ""):
            assert standby.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the standby never started"
            time.sleep(0.1)
        bob = fedmq.AMQPClientWorker(hook, id="svc_pair", url=AMQP_URL, timeout=30)
        x = torch.arange(3.0).send(bob)
        for i in range(10):  # the standby takes none of the active worker's commands
            assert (x + i).get().tolist() == [i, i + 1.0, i + 2.0]
        assert "active now" not in log.read_text()
        procs.kill("svc_pair")
        started = time.monotonic()
        y = torch.tensor([7.0]).send(bob)
        assert (y * 2).get().tolist() == [14.0]  # answered by the standby, now active
        assert time.monotonic() - started < 15
        assert "active now" in log.read_text()
        with pytest.raises(fedmq.WorkerRestartedError):  # x was on the worker that died
            x.get()
    finally:
        standby.terminate()
        standby.wait(30)


def test_payload_above_the_broker_limit_is_chunked(worker_processes, hook):
    bob = fedmq.AMQPClientWorker(hook, id="bob", url=AMQP_URL, timeout=120)
    big = torch.arange(36 * 1024 * 1024, dtype=torch.float32)  # 144 MiB > 128 MiB default limit
    ptr = big.send(bob)
    doubled = (ptr * 2).get()
    assert doubled.shape == big.shape and doubled[-1].item() == 2 * big[-1].item()
    assert torch.equal(doubled, big * 2)


def test_sigterm_stops_cleanly(procs):
    procs.start("svc_term")
    assert procs.stop("svc_term") == 0
    assert "stopped" in procs.log("svc_term")


@pytest.mark.slow
def test_one_process_hosts_several_ids_each_on_its_own_queue(procs):
    ids = ["svc_multi_a", "svc_multi_b", "svc_multi_c"]
    for worker_id in ids[1:]:
        purge(f"fedmq.worker.{worker_id}")
        procs.started.add(worker_id)  # their queues are deleted at the end too
    procs.start(ids[0], "--id", ids[1], "--ids", ids[2], wait=False)
    deadline = time.monotonic() + 60
    while not all(consumer_count(f"fedmq.worker.{w}") == 1 for w in ids):
        assert procs.procs[ids[0]].poll() is None, procs.log(ids[0])[-2000:]
        assert time.monotonic() < deadline, f"not every id consumes: {procs.log(ids[0])}"
        time.sleep(0.2)
    raw = RawClient()
    try:
        raw.call(ids[1], envelope(m.ObjectMessage([m.StoredObject(5, torch.ones(3))])))
        # each id is its own worker: only svc_multi_b holds the tensor
        assert [raw.call(w, envelope(m.ObjectsCount())).value for w in ids] == [0, 1, 0]
        assert raw.call(ids[1], envelope(m.GetRequest([5]))).value[0].tolist() == [1.0] * 3
    finally:
        raw.close()
    assert procs.stop(ids[0]) == 0  # one SIGTERM stops every id
    log = procs.log(ids[0])
    assert all(f"fedmq worker {w}: stopped" in log for w in ids), log[-2000:]
    assert all(consumer_count(f"fedmq.worker.{w}") == 0 for w in ids)


@pytest.mark.slow
def test_hosted_ids_hold_disjoint_iid_parts_of_the_partition(procs):
    ids = ["svc_iid_a", "svc_iid_b", "svc_iid_c"]
    for worker_id in ids[1:]:
        purge(f"fedmq.worker.{worker_id}")
        procs.started.add(worker_id)
    procs.start(ids[0], "--ids", ",".join(ids[1:]), "--dataset", "mnist5k", "--labels", "0-3",
                "--iid-parts", "4", "--first-part", "1", wait=False)
    deadline = time.monotonic() + 120
    while not all(f"fedmq worker {w}: consuming" in procs.log(ids[0]) for w in ids):
        assert procs.procs[ids[0]].poll() is None, procs.log(ids[0])[-2000:]
        assert time.monotonic() < deadline, procs.log(ids[0])[-2000:]
        time.sleep(0.2)
    raw = RawClient()
    try:
        held = {}
        for w in ids:
            objects = raw.call(w, envelope(m.ListObjects()), timeout=60).value.values()
            images = next(t for t in objects if t.dim() == 4)
            targets = next(t for t in objects if t.dim() == 1)
            assert len(images) == len(targets)
            held[w] = (images, targets)
    finally:
        raw.close()
    sizes = [len(t) for _, t in held.values()]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) > 100
    assert all(set(t.unique().tolist()) <= {0, 1, 2, 3} for _, t in held.values())
    rows = torch.cat([i.flatten(1) for i, _ in held.values()])
    assert len(torch.unique(rows, dim=0)) == len(rows), "two ids hold the same sample"


@pytest.mark.slow
def test_a_frame_with_missing_chunks_is_given_up_and_the_sender_told(procs):
    procs.start("svc_chunks", "--chunk-timeout", "1")
    raw = RawClient()
    try:
        corr, msg_id = uuid.uuid4().hex, uuid.uuid4().hex
        raw.ch.basic_publish("fedmq.commands", "svc_chunks", b"first half", pika.BasicProperties(
            user_id="guest", reply_to="amq.rabbitmq.reply-to", correlation_id=corr,
            message_id=msg_id,
            headers={"x-fedmq-frame": "half", "x-fedmq-chunk": 0, "x-fedmq-chunks": 2}))
        deadline = time.monotonic() + 20
        while corr not in raw.replies and time.monotonic() < deadline:
            raw.conn.process_data_events(time_limit=0.1)
        reply = serde.decode(raw.replies.pop(corr))
        assert reply.error is not None and "incomplete" in reply.error.message
        assert raw.dead_lettered(msg_id), "the orphan chunk was not dead-lettered"
        assert raw.call("svc_chunks", envelope(m.ObjectsCount())).value == 0  # still serving
    finally:
        raw.close()
    assert "incomplete after" in procs.log("svc_chunks")


def test_messages_without_user_id_are_refused_before_any_chunk_is_kept(procs):
    """Found by review: chunks without a user_id were assembled before the refusal, each under a
    made-up reply_to as its 'sender', until every partial-frame slot of the worker was taken
    and legitimate chunked frames were refused for --chunk-timeout."""
    procs.start("svc_noid")
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        ch = conn.channel()
        for i in range(300):
            ch.basic_publish("fedmq.commands", "svc_noid", b"x", pika.BasicProperties(
                reply_to=f"fake-{i}", message_id=f"noid-{i}", headers={
                    "x-fedmq-frame": uuid.uuid4().hex, "x-fedmq-chunk": 0,
                    "x-fedmq-chunks": 2}))
    finally:
        conn.close()
    hook = fedmq.TorchHook(torch)
    try:
        worker = fedmq.AMQPClientWorker(hook, id="svc_noid", url=AMQP_URL, chunk_size=4096,
                                        timeout=30)
        x = torch.arange(5000.).send(worker)  # 20 000 bytes: 5 chunks
        assert torch.equal(x.get(), torch.arange(5000.))
    finally:
        hook.context.close()
    assert "refused message noid-299: it carries no AMQP user_id" in procs.log("svc_noid")
