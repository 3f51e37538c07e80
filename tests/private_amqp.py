"""Helpers for the private-round tests over RabbitMQ (tests/test_private_rounds_amqp.py,
tests/test_secagg_additive.py, tests/test_secaggplus.py): rounds of the real coordinator on
AMQPRoundConnection, the reply frames it receives, and additive aggregation's services (2
aggregators and 3 trainers, each its own broker user, tests/role_users.py).

Imports tests/worker_procs.py (which reads FEDMQ_AMQP_URL) inside functions only."""
from __future__ import annotations

import asyncio
import copy

from fedmq.fl.connections import AMQPRoundConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig

#: the seed's partitions of mnist5k
LABELS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}


def config(**changes) -> TrainConfig:
    """A quick round config: mnist-logreg, 4 batches of 32, no evaluation."""
    return TrainConfig(**(dict(rounds=3, batch_size=32, num_batches=4, lr=0.1, eval_every=0,
                               round_timeout=30, seed=5, model="mnist-logreg") | changes))


def max_diff(a: dict, b: dict) -> float:
    """The largest element-wise difference between two state dicts of the same entries."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


async def run_rounds(cfg: TrainConfig, workers: list[str], privacy=None, *, url: str | None = None,
                     before: dict | None = None, received: list | None = None):
    """`cfg.rounds` rounds over RabbitMQ at `url` (default: the run's vhost as guest);
    `before[r]` (blocking) runs in a thread before round r. With `received`, every reply frame
    the coordinator's engine is delivered is appended to it (bytes). (the round records, the
    global weights after each round, the coordinator)."""
    from worker_procs import AMQP_URL

    conn = await AMQPRoundConnection.connect(url or AMQP_URL)
    if received is not None:  # the engine's receive path: every reply, as it arrives
        deliver = conn.deliver

        def keep(correlation_id, frame):
            received.append(bytes(frame))
            deliver(correlation_id, frame)
        conn.deliver = keep
    coord = Coordinator(conn, list(workers), cfg, echo=lambda line: None, privacy=privacy)
    records, weights = [], []
    try:
        coord.prepare()
        for round in range(1, cfg.rounds + 1):
            if before and round in before:
                await asyncio.to_thread(before[round])
            record = await coord.run_round(round)
            coord.end_round(record)
            records.append(record)
            weights.append(copy.deepcopy(coord.weights))
    finally:
        await conn.aclose()
    return records, weights, coord


def rounds(*args, **kwargs):
    return asyncio.run(run_rounds(*args, **kwargs))


def summary(records) -> list:
    return [(r.round, r.status, sorted(r.workers), dict(r.failed)) for r in records]


class AdditiveServices:
    """Aggregators agg1, agg2 (no data) and trainers alice/bob/charlie (mnist5k, the seed's
    labels, granting `worker` to both aggregators) as real `fedmq worker` processes, each
    logged in as its own broker user; a coordinator user granted `coordinator` by all."""

    AGGS = ("agg1", "agg2")

    def __init__(self, role_users, log_dir, prefix: str) -> None:
        from worker_procs import WorkerProcesses

        self.users = {who: role_users.add(f"{prefix}-{who}", "worker")
                      for who in (*LABELS, *self.AGGS)}
        self.coord, _, self.coord_url = role_users.add(f"{prefix}-coord", "coordinator")
        self.ids = {who: user[0] for who, user in self.users.items()}
        self.procs = WorkerProcesses(log_dir)

    @property
    def trainers(self) -> list[str]:
        return [self.ids[w] for w in LABELS]

    @property
    def aggregators(self) -> list[str]:
        return [self.ids[a] for a in self.AGGS]

    def start(self, who: str, wait: bool = True, fresh: bool = True) -> None:
        worker_id, _, url = self.users[who]
        extra = ["--url", url, "--grant", f"coordinator:{self.coord}"]
        if who in LABELS:
            extra += ["--dataset", "mnist5k", "--labels", LABELS[who],
                      *(f"--grant=worker:{self.ids[a]}" for a in self.AGGS)]
        else:  # an aggregator takes shares from the trainers only
            extra += [f"--grant=worker:{self.ids[t]}" for t in LABELS]
        self.procs.start(worker_id, *extra, wait=wait, fresh=fresh)

    def start_all(self) -> None:
        for who in self.users:
            self.start(who, wait=False)
        for who in self.users:
            self.procs.wait_consuming(self.ids[who], self.procs.procs[self.ids[who]],
                                      timeout=120)

    def kill(self, who: str) -> None:
        self.procs.kill(self.ids[who])

    def logs(self) -> dict:
        return {who: self.procs.log(self.ids[who])[-2000:] for who in self.ids}

    def stop_all(self) -> None:
        self.procs.stop_all(delete_queues=True)
