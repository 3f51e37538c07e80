"""Federated round time: the seed §14 round (3 workers x 10 batches of 32, seed CNN, FedAvg)
in-process and over RabbitMQ with worker processes, measured in the same run.

Per transport: the median and p90 of the round time over `--rounds` rounds without evaluation,
and the overhead per round against the workers' own training time (FitRes `fit_seconds`, the
slowest worker of each round): what the coordinator, serde and the broker add.
Run: python benchmarks/rounds.py [--url amqp://...] [--rounds 20]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

from fedmq.fl.cli import in_process_workers
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig
from fedmq.fl.launch import WorkerLauncher
from fedmq.strategy import FedAvg, FitResult

WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}


class Timed(FedAvg):
    """FedAvg that remembers the slowest worker's training time of each round."""

    def __init__(self) -> None:
        super().__init__()
        self.fit_seconds: list[float] = []

    def begin_round(self, round, global_weights):
        agg = super().begin_round(round, global_weights)
        add, slowest = agg.add, [0.0]

        def timed_add(result: FitResult) -> None:
            slowest[0] = max(slowest[0], result.metrics.get("fit_seconds", 0.0))
            add(result)
        agg.add = timed_add
        self.fit_seconds.append(0.0)
        agg._slowest = slowest
        self._current = slowest
        return agg

    def finish_round(self, round, global_weights, aggregation, failures=0):
        self.fit_seconds[-1] = self._current[0]
        return super().finish_round(round, global_weights, aggregation, failures)


async def measure(connection, rounds: int) -> tuple[list[float], list[float]]:
    strategy = Timed()
    config = TrainConfig(rounds=rounds, eval_every=0, round_timeout=120)
    coordinator = Coordinator(connection, list(WORKERS), config, strategy=strategy,
                              echo=lambda line: None)
    try:
        history = await coordinator.run()
    finally:
        await connection.close()
    return [r.seconds for r in history], strategy.fit_seconds


def report(name: str, seconds: list[float], fit: list[float]) -> None:
    seconds, fit = seconds[1:], fit[1:]  # round 1 warms up
    overhead = [s - f for s, f in zip(seconds, fit)]
    p90 = sorted(seconds)[int(0.9 * (len(seconds) - 1))]
    print(f"{name:>10}: round median {statistics.median(seconds) * 1e3:7.1f} ms, p90 "
          f"{p90 * 1e3:7.1f} ms; slowest worker's fit {statistics.median(fit) * 1e3:7.1f} ms; "
          f"overhead {statistics.median(overhead) * 1e3:6.1f} ms/round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None, help="also measure over this broker")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    local = InProcessConnection(in_process_workers(WORKERS, "mnist5k", None))
    report("in-process", *asyncio.run(measure(local, args.rounds)))
    if not args.url:
        return
    with tempfile.TemporaryDirectory() as logs:
        launcher = WorkerLauncher(args.url, logs)
        try:
            for worker_id, labels in WORKERS.items():
                launcher.start(worker_id, "mnist5k", labels)
            launcher.wait_consuming()

            async def over_amqp():
                conn = await AMQPRoundConnection.connect(args.url)
                return await measure(conn, args.rounds)
            time.sleep(0.5)
            report("rabbitmq", *asyncio.run(over_amqp()))
        finally:
            launcher.stop_all()


if __name__ == "__main__":
    main()
