"""Federated round time: the seed §14 round (3 workers x 10 batches of 32, seed CNN, FedAvg)
in-process and over RabbitMQ with worker processes, measured in the same run.

Per transport: the median and p90 of the round time over `--rounds` rounds without evaluation,
and the overhead per round against the workers' own training time (`fit_seconds` of the slowest
worker of each round, from the round records): what the coordinator, serde and the broker add.
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

WORKERS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}


async def measure(connection, rounds: int) -> tuple[list[float], list[float]]:
    config = TrainConfig(rounds=rounds, eval_every=0, round_timeout=120)
    coordinator = Coordinator(connection, list(WORKERS), config, echo=lambda line: None)
    try:
        history = await coordinator.run()
    finally:
        await connection.close()
    return ([r.seconds for r in history],
            [max(w["fit_seconds"] for w in r.workers.values()) for r in history])


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
