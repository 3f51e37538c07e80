"""What `fedmq train` says before round 1: the launched worker services' progress
(fedmq/fl/launch.py), the workers that have not answered yet (fedmq/fl/base.py
wait_for_workers), and each worker's per-label counts where its policy shares them
(WorkerStats(datasets=True), fedmq/dataset_info.py, fedmq/fl/datasets.py): in-process, and
over RabbitMQ with real `fedmq worker` processes."""
from __future__ import annotations

import asyncio
import sys

import pytest
import torch

from fedmq.dataset_info import describe_datasets, label_counts
from fedmq.fl.base import wait_for_workers
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator
from fedmq.fl.datasets import holding_lines
from fedmq.fl.launch import WorkerLauncher, startup_phase, waiting_line
from fedmq.ids import new_id
from fedmq.messages import WorkerStats
from fedmq.policy import Policy
from fedmq.worker import Worker

from test_coordinator import small_config, workers


def test_a_worker_that_never_answers_is_named_every_few_seconds():
    lines: list[str] = []
    conn = InProcessConnection(workers())
    missing = asyncio.run(wait_for_workers(conn, ["alice", "ghost"], timeout=2.0, echo=lines.append,
                                           interval=0.3, report_every=0.5))
    assert missing == ["ghost"]
    waiting = [line for line in lines if line.startswith("waiting for")]
    assert len(waiting) >= 3 and all(line.startswith("waiting for ghost to answer (")
                                     for line in waiting)  # alice answered at once
    assert lines[-1].startswith("Workers not answering after 2 s: ghost (")


def test_workers_that_answer_at_once_are_waited_for_silently():
    lines: list[str] = []
    assert asyncio.run(wait_for_workers(InProcessConnection(workers()), ["alice", "bob"],
                                        timeout=5, echo=lines.append)) == []
    assert lines == []


def test_launched_services_are_followed_until_they_consume(tmp_path):
    assert startup_phase("", ["a"]) == "starting"
    assert startup_phase("INFO worker a holds 10 mnist5k train samples", ["a"]) == "data loaded"
    assert startup_phase("fedmq worker a: consuming x\nfedmq worker b: consuming y",
                         ["a", "b"]) == "consuming"
    assert waiting_line(["alice", "bob"], ["charlie"], 6.2) == \
        "waiting for alice, bob (consuming: charlie) ... 6 s"
    # a stand-in for `fedmq worker`: loads its data, then consumes after a second
    launcher = WorkerLauncher("amqp://unused", tmp_path)
    script = ("import time; print('worker slow holds 10 samples'); time.sleep(1.2); "
              "print('fedmq worker slow: consuming fedmq.worker.slow'); time.sleep(30)")
    launcher._spawn("slow", ["slow"], [sys.executable, "-c", script])
    launcher._spawn("quick", ["quick"], [sys.executable, "-c",
                                         "import time; print('fedmq worker quick: consuming q');"
                                         " time.sleep(30)"])
    lines: list[str] = []
    try:
        launcher.wait_consuming(timeout=20, echo=lines.append, report_every=0.3)
    finally:
        launcher.stop_all()
    assert any(line.startswith("worker service slow: data loaded (") for line in lines)
    assert any(line.startswith("worker service slow: consuming (") for line in lines)
    assert any(line.startswith("worker service quick: consuming (") for line in lines)
    assert any(line.startswith("waiting for slow (consuming: quick) ... ") for line in lines)


def test_label_counts_of_integer_targets_only():
    assert label_counts(torch.tensor([0, 2, 2, 3])) == [1, 0, 2, 1]
    assert label_counts(torch.tensor([0.5, 1.0])) is None  # regression targets
    assert label_counts(torch.tensor([-1, 2])) is None
    assert label_counts(torch.tensor([1 << 20])) is None  # ids, not classes
    assert label_counts(torch.zeros(0, dtype=torch.int64)) == []


def test_label_count_lines():
    answer = {"datasets": [
        {"tags": ["#mnist5k", "#target", "#train"], "samples": 1960,
         "label_counts": [490, 510, 480, 480], "description": "alice's"},
        {"tags": ["#mnist5k", "#target", "#test"], "samples": 10, "label_counts": [10],
         "description": None}]}
    assert holding_lines("alice", answer, "mnist5k") == \
        ["alice: 1 960 train samples, labels 0:490 1:510 2:480 3:480"]
    assert holding_lines("alice", answer, "other", "test") == \
        ["alice: 10 test samples, labels 0:10"]
    assert holding_lines("alice", {"datasets": None}, "mnist5k") == \
        ["alice: label counts not published"]
    assert holding_lines("alice", {"datasets": []}, "mnist5k") == \
        ["alice: holds no train data for mnist5k"]
    assert holding_lines("alice", {"message_count": 1}, "k") == \
        ["alice: no dataset description (the worker does not give one)"]
    assert holding_lines("alice", TimeoutError("no reply"), "k") == \
        ["alice: no dataset description (TimeoutError: no reply)"]


def worker_under(policy: Policy, worker_id: str = "alice") -> Worker:
    worker = Worker(worker_id, policy=policy)
    worker.store.put(new_id(), torch.zeros(5, 2), ("#synth", "#data", "#train"))
    worker.store.put(new_id(), torch.tensor([0, 1, 1, 3, 3]), ("#synth", "#target", "#train"),
                     "synth train set held by alice")
    return worker


def test_in_process_workers_tell_their_label_counts():
    lines: list[str] = []
    coord = Coordinator(InProcessConnection(workers()), ["alice", "bob"],
                        small_config(dataset="synth"), testing="testing", echo=lines.append)
    answers = asyncio.run(coord.announce_datasets())
    assert [line.split(":")[0] for line in lines] == ["alice", "bob", "testing"]
    assert lines[0].startswith("alice: 48 train samples, labels 0:")
    assert " 4:" not in lines[0] and lines[1].startswith("bob: 48 train samples, labels 4:")
    assert lines[2].startswith("testing: 60 test samples, labels 0:")
    (alice,) = answers["alice"]["datasets"]
    assert sum(alice["label_counts"]) == 48 and "#synth" in alice["tags"]


def test_the_policy_decides_who_sees_label_counts():
    me = "me"  # the in-process connection's principal (fedmq.principals.LOCAL)
    cases = {
        "closed": Policy(owner="owner", release="none"),  # no role for "me"
        "scientist": Policy(owner="owner", grants={"scientist": {me}}, release="none"),
        "coordinator": Policy(owner="owner", grants={"coordinator": {me}}, release="none"),
        "derived": Policy(owner="owner", grants={"scientist": {me}}, release="derived"),
    }
    conn = InProcessConnection({name: worker_under(p, name) for name, p in cases.items()})
    seen = {name: asyncio.run(conn.arequest(name, WorkerStats(datasets=True)))["datasets"]
            for name in cases}
    assert seen["closed"] is None and seen["scientist"] is None
    assert seen["coordinator"][0]["label_counts"] == [1, 2, 0, 2]
    assert seen["derived"][0]["samples"] == 5
    # a plain WorkerStats (the coordinator's ping) is unchanged
    assert set(asyncio.run(conn.arequest("closed", WorkerStats()))) == {"message_count",
                                                                          "objects"}
    lines: list[str] = []
    coord = Coordinator(conn, ["closed", "coordinator"], small_config(dataset="synth"),
                        echo=lines.append)
    asyncio.run(coord.announce_datasets())
    assert lines == ["closed: label counts not published",
                     "coordinator: 5 train samples, labels 0:1 1:2 3:2"]


def test_describe_datasets_lists_targets_only():
    worker = worker_under(Policy.open())
    (d,) = describe_datasets(worker.store.items_with_entries())
    assert d == {"tags": ["#synth", "#target", "#train"], "samples": 5,
                 "label_counts": [1, 2, 0, 2], "description": "synth train set held by alice"}


@pytest.mark.amqp
@pytest.mark.slow
def test_label_counts_and_waiting_over_rabbitmq(tmp_path):
    from fedmq.fl.connections import AMQPRoundConnection
    from fedmq.transport.amqp import login_of
    from worker_procs import AMQP_URL, WorkerProcesses

    me = login_of(AMQP_URL)
    procs = WorkerProcesses(tmp_path)
    started = {"lc-alice": ["--labels", "0-3"],  # the coordinator's login owns the data
               "lc-closed": ["--labels", "4-6", "--owner", "someone-else"],
               "lc-granted": ["--labels", "7-9", "--owner", "someone-else",
                              "--grant", f"coordinator:{me}"]}
    try:
        for worker_id, extra in started.items():
            procs.start(worker_id, "--dataset", "mnist5k", *extra, wait=False)
        for worker_id in started:
            procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)

        async def main():
            conn = await AMQPRoundConnection.connect(AMQP_URL)
            lines: list[str] = []
            try:
                coord = Coordinator(conn, list(started), small_config(dataset="mnist5k"),
                                    testing=None, echo=lines.append)
                await coord.announce_datasets()
                missing = await wait_for_workers(conn, ["lc-alice", "lc-ghost"], timeout=3.0,
                                                 echo=lines.append, interval=0.5,
                                                 report_every=1.0)
            finally:
                await conn.aclose()
            return lines, missing

        lines, missing = asyncio.run(main())
    finally:
        procs.stop_all(delete_queues=True)
    assert lines[0].startswith("lc-alice: ") and "train samples, labels 0:" in lines[0]
    assert " 4:" not in lines[0]
    assert lines[1] == "lc-closed: label counts not published"
    assert lines[2].startswith("lc-granted: ") and "labels 7:" in lines[2]
    assert missing == ["lc-ghost"]
    assert sum(line.startswith("waiting for lc-ghost to answer") for line in lines) >= 2
