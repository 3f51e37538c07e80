"""Asynchronous FL (FedAsync / FedBuff) with the AsyncCoordinator: in-process workers holding
slices of mnist5k (alice 0-3, bob 4-6, charlie 7-9, like the seed), a slow worker, a broken
worker, resume; and a short run over RabbitMQ with real worker processes."""
from __future__ import annotations

import asyncio
import functools
import json
import time

import pytest
import torch

from fedmq.fl import checkpoint
from fedmq.fl.async_coordinator import AsyncCoordinator
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.coordinator import TrainConfig
from fedmq.ids import new_id
from fedmq.strategy import FedAsync, FedBuff
from fedmq.worker import Worker

import fl_helpers  # noqa: F401  (loads the Fit / Evaluate handlers)
from test_coordinator import Broken, Poisoned, Slow

LABELS = {"alice": [0, 1, 2, 3], "bob": [4, 5, 6], "charlie": [7, 8, 9]}


@functools.lru_cache(maxsize=None)
def _slice(labels: tuple | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fedmq.data.worker_data import partition_tensors
    images, targets = partition_tensors("mnist5k", list(labels) if labels else None,
                                        testing=labels is None)
    return images[:n].clone(), targets[:n].clone()


def mnist_worker(worker_id: str, labels=None, n: int = 240) -> Worker:
    """A worker holding the first n mnist5k samples of its labels (the test set if None)."""
    images, targets = _slice(tuple(labels) if labels else None, n)
    split = "#train" if labels else "#test"
    worker = Worker(worker_id)
    worker.store.put(new_id(), images, ("#mnist5k", "#data", split))
    worker.store.put(new_id(), targets, ("#mnist5k", "#target", split))
    return worker


def workers(**extra):
    ws = {w: mnist_worker(w, labels) for w, labels in LABELS.items()}
    ws["testing"] = mnist_worker("testing", n=300)
    ws.update(extra)
    return ws


def config(**changes) -> TrainConfig:
    base = dict(batch_size=32, num_batches=5, lr=0.1, eval_every=4, round_timeout=30, seed=3,
                eval_batch_size=150)
    return TrainConfig(**(base | changes))


def make(ws, lines=None, ids=tuple(LABELS), **kwargs) -> AsyncCoordinator:
    echo = lines.append if lines is not None else (lambda line: None)
    return AsyncCoordinator(InProcessConnection(ws), list(ids), kwargs.pop("cfg", config()),
                            testing="testing", echo=echo, **kwargs)


def run(coordinator: AsyncCoordinator, **kwargs):
    async def go():
        try:
            return await coordinator.run(**kwargs)
        finally:
            await coordinator.connection.aclose()
    return asyncio.run(go())


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]


@pytest.mark.slow
def test_async_run_learns_prints_seed_lines_and_writes_metrics_plot_checkpoint(tmp_path):
    lines: list[str] = []
    coord = make(workers(), lines, strategy=FedBuff(buffer_size=3, max_staleness=4),
                 max_updates=24, run_dir=tmp_path)
    initial = asyncio.run(_evaluate_initial(coord))
    history = run(coord)
    assert coord.received == 24 and coord.version == len(history) >= 7
    assert [r.version for r in history] == list(range(1, coord.version + 1))
    assert all(len(r.updates) <= 3 for r in history)
    buffered = coord.strategy.buffered
    assert sum(len(r.updates) for r in history) + buffered + coord.strategy.dropped == 24
    final = history[-1]
    assert final.accuracy is not None and final.accuracy > initial.accuracy + 0.2
    assert any(line.startswith("Federated model: Percentage numbers 0-3: ") for line in lines)
    fed = [line for line in lines if line.startswith("Federated model: Average loss: ")]
    assert fed[-1].endswith(f"Accuracy: {final.correct}/300 ({100 * final.accuracy:.2f}%)")
    rows = metrics(tmp_path)
    assert [r["version"] for r in rows] == [r.version for r in history]
    assert set(rows[0]) >= {"version", "time", "staleness", "counts", "accuracy", "updates"}
    assert rows[0]["accuracy"] is not None  # version 1 is evaluated, then every 4th
    assert rows[-1]["accuracy"] == pytest.approx(final.accuracy)
    assert sum(rows[-1]["counts"].values()) <= 24
    png = (tmp_path / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    state = checkpoint.load(tmp_path)
    assert state["version"] == coord.version and state["mode"] == "async"
    assert all(torch.equal(state["weights"][k], v) for k, v in coord.weights.items())
    keys = [key for key, _ in coord.events.events]
    assert keys.count("fit.result") == 24 and keys.count("version.applied") == coord.version
    assert "evaluate.result" in keys


async def _evaluate_initial(coord: AsyncCoordinator):
    coord.prepare()
    return await coord.evaluate(coord.weights)


def test_stale_updates_are_weighted_and_fedbuffs_max_staleness_drops_are_counted():
    """FedBuff K=1 makes a version per update, so the two other in-flight updates of each
    version come back 1 and 2 versions stale; max_staleness=1 drops the ones at 2."""
    strategy = FedBuff(buffer_size=1, max_staleness=1)
    coord = make(workers(), strategy=strategy, max_updates=12, eval_every=0)
    history = run(coord)
    staleness = [s for r in history for s in r.staleness]
    assert max(staleness) == 1 and staleness.count(1) >= 2
    assert strategy.dropped >= 1 and history[-1].dropped <= strategy.dropped
    assert strategy.received == 12 == strategy.applied + strategy.dropped
    dropped = [body for key, body in coord.events.events if key == "fit.dropped"]
    assert len(dropped) == strategy.dropped and all(b["staleness"] > 1 for b in dropped)


def test_a_slow_worker_does_not_hold_up_the_fast_ones():
    """charlie takes 1 s per Fit: a synchronous run would need 8 rounds, >= 8 s, for 24
    updates; here alice and bob keep training and contribute most of the updates."""
    ws = workers(charlie=Slow(mnist_worker("charlie", LABELS["charlie"]), delay=1.0))
    coord = make(ws, strategy=FedAsync(alpha=0.5), max_updates=24, eval_every=0)
    started = time.monotonic()
    history = run(coord)
    seconds = time.monotonic() - started
    counts = history[-1].counts
    assert coord.received == 24 and coord.version == 24  # FedAsync: a version per update
    assert counts["alice"] >= 3 * max(counts["charlie"], 1)
    assert counts["bob"] >= 3 * max(counts["charlie"], 1)
    assert seconds < 4.0, seconds


def test_a_failing_worker_is_retried_with_backoff_and_does_not_stop_the_run():
    lines: list[str] = []
    # alice and bob take 0.15 s a Fit, so the run lasts past charlie's first retries
    slow = {w: Slow(mnist_worker(w, LABELS[w]), delay=0.15) for w in ("alice", "bob")}
    coord = make(workers(charlie=Broken(), **slow), lines, strategy=FedBuff(buffer_size=2),
                 max_updates=8, eval_every=0, retry_backoff=0.2, max_backoff=0.4)
    history = run(coord)
    assert coord.received == 8 and coord.counts["charlie"] == 0
    assert coord.failures["charlie"] >= 2  # retried
    assert history[-1].failures == coord.failures["charlie"]
    assert any(line.startswith("charlie: Fit failed (ConnectionError: worker process died)")
               for line in lines)
    failed = [body for key, body in coord.events.events if key == "fit.failed"]
    assert failed and all(b["worker"] == "charlie" for b in failed)
    assert failed[-1]["retry_in"] == pytest.approx(0.4)  # doubled, capped


def test_empty_and_non_finite_updates_are_failed_fits():
    lines: list[str] = []
    coord = make(workers(bob=Poisoned("bob"), charlie=Poisoned("charlie", empty=True)), lines,
                 strategy=FedAsync(), max_updates=4, eval_every=0, retry_backoff=0.05,
                 max_backoff=0.1)
    run(coord)
    assert coord.counts == {"alice": 4, "bob": 0, "charlie": 0}
    assert coord.failures["bob"] >= 1 and coord.failures["charlie"] >= 1
    assert coord.strategy.received == 4  # rejected results never reach the strategy's count
    assert all(torch.isfinite(v).all() for v in coord.weights.values() if v.is_floating_point())
    reasons = {b["worker"]: b["reason"] for k, b in coord.events.events if k == "fit.failed"}
    assert "holds NaN or infinite values" in reasons["bob"]
    assert reasons["charlie"].startswith("UpdateRejected: update from charlie: num_examples is 0")
    assert any(line.startswith("charlie: Fit failed (UpdateRejected: ") for line in lines)


def test_a_fit_that_times_out_is_retried():
    """bob's Fits take 1.5 s, over the 0.6 s per-Fit timeout: each one fails and is retried,
    while alice and charlie (0.1 s + training per Fit: the run lasts over 1 s) go on."""
    ws = workers(**{w: Slow(mnist_worker(w, LABELS[w]), delay=delay)
                    for w, delay in (("alice", 0.1), ("bob", 1.5), ("charlie", 0.1))})
    lines: list[str] = []
    coord = make(ws, lines, cfg=config(round_timeout=0.6, num_batches=2), strategy=FedAsync(),
                 max_updates=20, eval_every=0, retry_backoff=0.1)
    run(coord)
    assert coord.received == 20 and coord.counts["bob"] == 0 and coord.failures["bob"] >= 1
    assert "bob: Fit failed (TimeoutError: no reply within 0.6 s); retrying in 0.1 s" in lines


def test_resume_continues_the_version_count(tmp_path):
    first = make(workers(), strategy=FedBuff(buffer_size=2, max_staleness=3), max_updates=6,
                 run_dir=tmp_path, eval_every=0)
    run(first)
    stopped_at = first.version
    assert checkpoint.load(tmp_path)["version"] == stopped_at >= 2
    lines: list[str] = []
    strategy = FedBuff(buffer_size=2, max_staleness=3)
    resumed = make(workers(), lines, strategy=strategy, max_updates=12, run_dir=tmp_path,
                   eval_every=0)
    history = run(resumed, resume=True)
    assert lines[0].startswith(f"Resuming after version {stopped_at}")
    assert history[0].version == stopped_at + 1
    assert resumed.received == 12  # counts restored: only the missing updates were trained
    # the strategy carried its counters (and FedBuff its model history) across
    assert strategy.received == 12
    rows = metrics(tmp_path)
    assert [r["version"] for r in rows] == list(range(1, resumed.version + 1))


def test_resume_refuses_a_synchronous_runs_checkpoint(tmp_path):
    checkpoint.save(tmp_path, {"round": 3, "weights": {}, "seed": 3, "model": "seed-cnn"})
    with pytest.raises(ValueError, match="not of an asynchronous run"):
        make(workers(), run_dir=tmp_path).prepare(resume=True)


def test_a_round_strategy_is_refused():
    from fedmq.strategy import FedAvg
    with pytest.raises(TypeError, match="AsyncStrategy"):
        make(workers(), strategy=FedAvg())


# -- over RabbitMQ, real worker processes ---------------------------------------------------
AMQP_TRAIN = {"fla-alice": "0-3", "fla-bob": "4-6", "fla-charlie": "7-9"}
AMQP_TESTING = "fla-testing"


@pytest.fixture(scope="module")
def async_workers(tmp_path_factory):
    from worker_procs import WorkerProcesses
    procs = WorkerProcesses(tmp_path_factory.mktemp("async-workers"))
    for worker_id, labels in AMQP_TRAIN.items():
        procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels, wait=False)
    procs.start(AMQP_TESTING, "--dataset", "mnist5k", "--testing", wait=False)
    for worker_id in [*AMQP_TRAIN, AMQP_TESTING]:
        procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)
    yield procs
    procs.stop_all(delete_queues=True)


@pytest.mark.slow
@pytest.mark.amqp
def test_async_run_over_rabbitmq_with_worker_processes(async_workers, tmp_path):
    from worker_procs import AMQP_URL
    lines: list[str] = []

    async def go():
        conn = await AMQPRoundConnection.connect(AMQP_URL)
        coord = AsyncCoordinator(conn, list(AMQP_TRAIN),
                                 config(batch_size=32, num_batches=4, lr=0.1, eval_every=3),
                                 testing=AMQP_TESTING, echo=lines.append,
                                 strategy=FedBuff(buffer_size=3, max_staleness=3),
                                 max_updates=12, run_dir=tmp_path)
        try:
            coord.prepare()
            initial = await coord.evaluate(coord.weights)
            return await coord.run(), coord, initial
        finally:
            await conn.aclose()

    history, coord, initial = asyncio.run(go())
    assert coord.received == 12 and coord.version == len(history) >= 3
    assert set(history[-1].counts) == set(AMQP_TRAIN)
    assert all(n >= 1 for n in history[-1].counts.values())
    assert history[-1].accuracy > initial.accuracy
    assert history[-1].total == 1000
    assert any(line.startswith("Federated model: Average loss: ") for line in lines)
    assert [r["version"] for r in metrics(tmp_path)] == [r.version for r in history]
    keys = [key for key, _ in coord.events.events]
    assert keys.count("fit.result") == 12
