"""Federated rounds over RabbitMQ with real worker processes (`fedmq worker --dataset mnist5k
--labels ...`): same results as in-process, chunked model frames, a worker killed and
restarted mid-run, and a fit longer than the broker heartbeat. The test that lowers the
broker's max_message_size (a node-wide setting) does it on this run's private node."""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import pika
import pytest

from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection, encode_request
from fedmq.fl.coordinator import Coordinator, TrainConfig, initial_weights
from fedmq.fl.messages import Fit, FitRes
from fedmq.transport.amqp import chunk_messages

from fl_helpers import rounds_with_faults
from worker_procs import AMQP_URL, WorkerProcesses, queue_depth

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

TRAIN = {"fl-alice": "0-3", "fl-bob": "4-6"}
TESTING = "fl-testing"
CHUNK = 200_000  # the model's Fit frame (~1.7 MB) travels in 9 chunks, and so does FitRes


@pytest.fixture(scope="module")
def fl_workers(tmp_path_factory):
    procs = WorkerProcesses(tmp_path_factory.mktemp("fl-workers"))
    for worker_id, labels in TRAIN.items():
        procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels,
                    "--chunk-size", str(CHUNK), wait=False)
    procs.start(TESTING, "--dataset", "mnist5k", "--testing", wait=False)
    for worker_id in [*TRAIN, TESTING]:
        procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)
    yield procs
    procs.stop_all(delete_queues=True)


def config(**changes) -> TrainConfig:
    return TrainConfig(**(dict(rounds=2, batch_size=32, num_batches=4, lr=0.1, eval_every=1,
                               round_timeout=30, seed=5) | changes))


async def amqp_run(cfg: TrainConfig, lines: list, **kwargs):
    conn = await AMQPRoundConnection.connect(AMQP_URL, chunk_size=CHUNK)
    coord = Coordinator(conn, list(TRAIN), cfg, testing=TESTING, echo=lines.append, **kwargs)
    try:
        return await coord.run(), coord
    finally:
        await conn.aclose()


def dead_letters(routing_key: str) -> list[tuple[str, str]]:
    """(message type, x-death reason) of the dead letters for `routing_key`; left in place."""
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    found = []
    try:
        ch = conn.channel()
        while True:
            method, props, _ = ch.basic_get("fedmq.dead-letters", auto_ack=False)
            if method is None:
                break
            if method.routing_key == routing_key:
                death = ((props.headers or {}).get("x-death") or [{}])[0]
                found.append((props.type, death.get("reason")))
    finally:
        conn.close()  # unacknowledged: back in the queue
    return found


def test_rounds_over_rabbitmq_give_the_in_process_results_with_chunked_frames(fl_workers):
    frame = encode_request(Fit(1, "seed-cnn", initial_weights("seed-cnn", 5), {}))
    assert len(chunk_messages(frame, CHUNK)) > 5
    lines: list[str] = []
    watcher = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = watcher.channel()
    events = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(events, "fedmq.events", routing_key="#")
    try:
        history, coord = asyncio.run(amqp_run(config(), lines))
        seen = []
        while (got := channel.basic_get(events, auto_ack=True))[0] is not None:
            seen.append((got[0].routing_key, json.loads(got[2])))
    finally:
        watcher.close()
    keys = [key for key, _ in seen]
    assert keys.count("round.started") == 2 and keys.count("round.finished") == 2
    assert keys.count("fit.result") == 4 and keys.count("evaluate.result") == 6
    assert {body["worker"] for key, body in seen if key == "fit.result"} == set(TRAIN)
    assert all(r.status == "ok" and sorted(r.workers) == sorted(TRAIN) for r in history)
    assert any(line.startswith("Model update fl-alice: Percentage numbers 0-3:")
               for line in lines)
    assert sum(1 for key, _ in coord.events.events if key == "fit.result") == 4

    from fedmq.service import build_worker
    local = {w: build_worker(argparse.Namespace(id=w, dataset="mnist5k", labels=labels,
                                                testing=False)) for w, labels in TRAIN.items()}
    local[TESTING] = build_worker(argparse.Namespace(id=TESTING, dataset="mnist5k",
                                                     labels=None, testing=True))
    here = Coordinator(InProcessConnection(local), list(TRAIN), config(), testing=TESTING,
                       echo=lambda line: None)
    expected = asyncio.run(here.run())
    assert [r.correct for r in history] == [r.correct for r in expected]
    for got, want in zip(history, expected):
        assert got.loss == pytest.approx(want.loss, rel=1e-5)


def test_a_killed_worker_is_skipped_and_rejoins_after_a_restart(fl_workers, tmp_path):
    expired_before = dead_letters("fl-bob").count(("Fit", "expired"))

    records = asyncio.run(rounds_with_faults(
        AMQP_URL, list(TRAIN), TESTING, config(rounds=5, round_timeout=5, eval_every=0),
        tmp_path, {2: lambda: fl_workers.kill("fl-bob"),
                   4: lambda: fl_workers.start("fl-bob", "--dataset", "mnist5k", "--labels",
                                               TRAIN["fl-bob"], fresh=False)}, delay=None))
    assert sorted(records[0].workers) == ["fl-alice", "fl-bob"]
    for record in records[1:3]:  # bob is down: the round goes on with alice
        assert record.status == "ok" and list(record.workers) == ["fl-alice"]
        # found dead (nothing consumes its queue) within a second or two, not at the deadline
        assert list(record.failed) == ["fl-bob"]
        assert record.failed["fl-bob"].startswith("WorkerNotFoundError") and \
            "nothing consumes its queue 'fedmq.worker.fl-bob'" in record.failed["fl-bob"]
        assert record.wall < 8
    for record in records[3:]:  # restarted: back, and the stale Fits were not replayed
        assert sorted(record.workers) == ["fl-alice", "fl-bob"] and not record.failed
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 5 and '"fl-bob": "WorkerNotFoundError' in metrics[1]
    # round 2's Fit either was refused before publishing (the broker already knew bob's
    # consumer was gone) or was published and waited in its queue past the round, and the
    # broker expired it (dead-lettered as "expired"); round 3's was refused before publishing.
    # Either way the restarted bob never trained on a stale Fit: nothing of rounds 2-3 is left
    # in its queue.
    expired = dead_letters("fl-bob").count(("Fit", "expired")) - expired_before
    assert expired in (0, 1)
    assert queue_depth("fedmq.worker.fl-bob") == 0


def test_a_fit_longer_than_the_heartbeat_keeps_the_connection(fl_workers):
    fl_workers.start("fl-hb", "--dataset", "mnist5k", "--labels", "0-3",
                     "--url", AMQP_URL + "?heartbeat=1")

    async def fit_twice():
        conn = await AMQPRoundConnection.connect(AMQP_URL)
        weights = initial_weights("seed-cnn", 1)
        try:
            started = time.monotonic()
            long = await conn.arequest("fl-hb", Fit(1, "seed-cnn", weights, {
                "batch_size": 32, "num_batches": 1000, "optimizer_args": {"lr": 0.05}}),
                timeout=300)
            seconds = time.monotonic() - started
            short = await conn.arequest("fl-hb", Fit(2, "seed-cnn", weights, {
                "num_batches": 1}), timeout=60)
            return long, seconds, short
        finally:
            await conn.aclose()

    try:
        long, seconds, short = asyncio.run(fit_twice())
        log = fl_workers.log("fl-hb").lower()
    finally:
        fl_workers.stop("fl-hb")
    assert isinstance(long, FitRes) and long.num_examples == 1000 * 32
    assert seconds > 3  # beyond the 2 missed heartbeats (of 1 s) the broker tolerates
    assert short.status == "ok"
    assert "stuck" not in log and "reconnect" not in log and "connection lost" not in log


def _rabbitmqctl_eval(node, expression: str) -> str:
    result = node.ctl("eval", expression, timeout=60)
    assert result.returncode == 0, f"rabbitmqctl eval {expression}: {result.stderr}"
    return result.stdout.strip()


def _broker_max_message_size(node) -> int:
    import re
    found = re.search(r"\{ok,(\d+)\}", _rabbitmqctl_eval(
        node, "application:get_env(rabbit, max_message_size)."))
    return int(found.group(1)) if found else 128 * 1024 * 1024  # unset: RabbitMQ's default


def _set_broker_max_message_size(node, size: int) -> None:
    _rabbitmqctl_eval(node, f"application:set_env(rabbit, max_message_size, {size}).")


@pytest.fixture
def small_broker_limit(private_rabbitmq):
    """The private node's max_message_size lowered to 1 MB (below the seed CNN's 1.7 MB
    weights) for the channels opened during the test; restored afterwards. Not on the shared
    broker: the setting is node-wide and would break other runs' big messages."""
    node = private_rabbitmq
    before = _broker_max_message_size(node)
    _set_broker_max_message_size(node, 1_000_000)
    try:
        yield node, 1_000_000
    finally:
        _set_broker_max_message_size(node, before)


def test_model_payloads_above_the_broker_limit_are_chunked_both_ways(small_broker_limit,
                                                                    tmp_path):
    node, limit = small_broker_limit
    procs = WorkerProcesses(tmp_path, url=node.amqp_url)
    ids = {"fl-big-alice": "0-3", "fl-big-bob": "4-6"}
    try:  # workers started under the lowered limit; their FitRes replies are chunked too
        for worker_id, labels in ids.items():
            procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels,
                        "--chunk-size", str(limit // 2), wait=False)
        for worker_id in ids:
            procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)

        async def rounds(chunk_size: int):
            conn = await AMQPRoundConnection.connect(node.amqp_url, chunk_size=chunk_size)
            coord = Coordinator(conn, list(ids), config(eval_every=0, round_timeout=15),
                                echo=lambda line: None)
            try:
                return await coord.run()
            finally:
                await conn.aclose()

        history = asyncio.run(rounds(limit // 2))
        assert all(r.status == "ok" and sorted(r.workers) == sorted(ids) for r in history)
        # the control: the same 1.7 MB Fit in one message is refused by the broker
        refused = asyncio.run(rounds(4 * limit))
        assert all(r.status == "failed" for r in refused)
    finally:
        procs.stop_all(delete_queues=True)


def test_fedmq_train_refuses_workers_that_do_not_exist(tmp_path, capsys):
    from fedmq.cli import main
    started = time.monotonic()
    code = main(["train", "--url", AMQP_URL, "--dataset", "mnist5k", "--workers",
                 "ghost-a:0-4,ghost-b:5-9", "--testing", "", "--rounds", "1",
                 "--wait-workers", "2", "--runs-dir", str(tmp_path)])
    assert code == 2 and time.monotonic() - started < 15
    err = capsys.readouterr()
    assert "no worker answers as ghost-a, ghost-b" in err.err
    assert "WorkerNotFoundError" in err.out and "fedmq.worker.ghost-a" in err.out
    assert not (tmp_path / "seed-s14-mnist5k" / "metrics.jsonl").exists()


def test_a_run_survives_a_broker_restart_mid_round(tmp_path):
    """The broker restarts during round 3 of 8 (its own node, so no one else is disturbed):
    that round may fail, the workers and the coordinator reconnect, later rounds train, and
    the run ends at the accuracy of a run without the restart."""
    from private_rabbitmq import start_or_skip

    node = start_or_skip()
    procs = WorkerProcesses(tmp_path / "logs", url=node.amqp_url)
    (tmp_path / "logs").mkdir()
    try:
        for worker_id, labels in TRAIN.items():
            procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels, wait=False)
        procs.start(TESTING, "--dataset", "mnist5k", "--testing", wait=False)
        for worker_id in [*TRAIN, TESTING]:
            procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)
        cfg = config(rounds=8, num_batches=6, eval_every=8, round_timeout=20)
        records = asyncio.run(rounds_with_faults(node.amqp_url, list(TRAIN), TESTING, cfg,
                                                 tmp_path / "run", {3: node.restart},
                                                 wait_after_failure=True))
        assert [r.status for r in records[:2]] == ["ok", "ok"]
        assert all(r.status == "ok" and sorted(r.workers) == sorted(TRAIN)
                   for r in records[4:]), [(r.round, r.status, r.failed) for r in records]
        assert records[-1].accuracy is not None and records[-1].accuracy > 0.6
    finally:
        procs.stop_all()
        node.stop()


def test_a_run_goes_on_when_a_standby_worker_takes_over(fl_workers, tmp_path):
    """A hot standby for fl-bob (`--standby`, the queue's single active consumer) waits while
    fl-bob serves; fl-bob is SIGKILLed after round 2, the standby becomes active, and the next
    rounds train with it."""
    import os
    import subprocess
    import sys

    log = open(tmp_path / "standby.log", "a")
    standby = subprocess.Popen(
        [sys.executable, "-m", "fedmq.cli", "worker", "--id", "fl-bob", "--url", AMQP_URL,
         "--dataset", "mnist5k", "--labels", TRAIN["fl-bob"], "--standby"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while "standing by" not in (tmp_path / "standby.log").read_text():
            assert standby.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)

        async def scenario():
            conn = await AMQPRoundConnection.connect(AMQP_URL)
            coord = Coordinator(conn, list(TRAIN), config(rounds=5, eval_every=5,
                                                          round_timeout=20),
                                testing=TESTING, echo=lambda line: None, run_dir=tmp_path)
            records = []
            try:
                coord.prepare()
                for round in range(1, 6):
                    if round == 3:
                        await asyncio.to_thread(fl_workers.kill, "fl-bob")
                    record = await coord.run_round(round)
                    coord.end_round(record)
                    records.append(record)
            finally:
                await conn.aclose()
            return records

        records = asyncio.run(scenario())
        assert all(sorted(r.workers) == sorted(TRAIN) for r in records[:2])
        assert all(r.status == "ok" for r in records)
        # the standby answers from round 3 or 4 on (round 3's Fit may go to the dead one)
        assert all(sorted(r.workers) == sorted(TRAIN) for r in records[3:]), \
            [(r.round, r.workers, r.failed) for r in records]
        assert "active now" in (tmp_path / "standby.log").read_text()
        assert records[-1].accuracy is not None
    finally:
        standby.terminate()
        standby.wait(30)
        fl_workers.start("fl-bob", "--dataset", "mnist5k", "--labels", TRAIN["fl-bob"],
                         "--chunk-size", str(CHUNK), fresh=False)
