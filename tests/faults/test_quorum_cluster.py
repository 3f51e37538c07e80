"""Worker queues as quorum queues (`fedmq worker --queue-type quorum`) on a local 3-node RabbitMQ
cluster, the test's own processes on spare ports: the node that leads every worker queue stops
in the middle of a federated round, and that round and the ones after it complete with every
worker, nothing lost (quorum queues replicate each message to a majority before the publisher's
confirm, and elect a new leader among the nodes left)."""
from __future__ import annotations

import asyncio

import aio_pika
import pytest

from fedmq.fl.coordinator import TrainConfig
from fedmq.transport.amqp import queue_name, worker_queue_arguments
from fl_helpers import rounds_with_faults
from worker_procs import WorkerProcesses

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

TRAIN = {"q-alice": "0-4", "q-bob": "5-9"}
TESTING = "q-testing"


async def declare_quorum_queues(url: str, worker_ids: list[str]) -> None:
    """Declare the worker queues through the node at `url`: a quorum queue is led by the node
    of the client that declares it."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for worker_id in worker_ids:
            await channel.declare_queue(queue_name(worker_id), durable=True,
                                        arguments=worker_queue_arguments("quorum"))


def leaders(node, worker_ids: list[str]) -> dict[str, str]:
    """queue name -> the node leading it, as `rabbitmqctl list_queues` on `node` reports."""
    listed = node.ctl("list_queues", "name", "leader", "--no-table-headers", "--quiet")
    assert listed.returncode == 0, listed.stderr
    names = {queue_name(w) for w in worker_ids}
    rows = [line.split() for line in listed.stdout.splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 2 and row[0] in names}


def test_rounds_complete_when_the_node_leading_the_worker_queues_stops(tmp_path):
    from private_rabbitmq import start_cluster_or_skip

    cluster = start_cluster_or_skip(3)
    leader, serving, coordinating = cluster.nodes
    workers = [*TRAIN, TESTING]
    procs = WorkerProcesses(tmp_path / "logs", url=serving.amqp_url)
    (tmp_path / "logs").mkdir()
    try:
        asyncio.run(declare_quorum_queues(leader.amqp_url, workers))
        assert set(leaders(serving, workers).values()) == {leader.node}
        for worker_id, labels in TRAIN.items():
            procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels,
                        "--queue-type", "quorum", wait=False)
        procs.start(TESTING, "--dataset", "mnist5k", "--testing", "--queue-type", "quorum",
                    wait=False)
        for worker_id in workers:
            procs.wait_consuming(worker_id, procs.procs[worker_id], timeout=120)
        cfg = TrainConfig(rounds=6, batch_size=32, num_batches=6, lr=0.1, eval_every=6,
                          round_timeout=60, seed=5)

        records = asyncio.run(rounds_with_faults(coordinating.amqp_url, list(TRAIN), TESTING,
                                                 cfg, tmp_path / "run", {3: leader.halt}))
        summary = [(r.round, r.status, sorted(r.workers), r.failed) for r in records]
        for record in records:  # the round the node stopped in as well: nothing was lost
            assert record.status == "ok" and sorted(record.workers) == sorted(TRAIN) and \
                not record.failed, summary
        assert records[-1].accuracy is not None and records[-1].accuracy > 0.6, summary
        moved = leaders(serving, workers)
        assert moved and leader.node not in moved.values(), moved  # led by the nodes left
        for worker_id in workers:
            assert procs.procs[worker_id].poll() is None, procs.log(worker_id)[-2000:]
    finally:
        procs.stop_all()
        cluster.stop()
