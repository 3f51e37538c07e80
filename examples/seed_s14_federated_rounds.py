"""Seed §14 (PySyft 0.2.4's websocket federated-learning demo), on fedmq.

alice holds MNIST 5k digits 0-3, bob 4-6, charlie 7-9 and `testing` the test set; 40 rounds of
10 local batches of 32 with SGD at lr 0.1 (decayed 0.98 per round), FedAvg, evaluation on rounds
1, 11, 21, 31 and 40 with the seed's output lines.

    python examples/seed_s14_federated_rounds.py                   # in-process workers
    python examples/seed_s14_federated_rounds.py --workers alice,bob   # the seed's run (~69%)
    python examples/seed_s14_federated_rounds.py --url amqp://guest:guest@127.0.0.1:5672/
        # workers already running: fedmq worker --id alice --dataset mnist5k --labels 0-3 ...

The same as `fedmq train`; this file shows the library calls the command makes. Its results go
to runs/seed-s14-example-<dataset>/ (the next free name when an earlier run is there:
fedmq.fl.runs.open_run_dir never writes over a run, not even `make demo`'s).
"""
import argparse
import asyncio

from fedmq.fl.cli import in_process_workers, parse_workers
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig
from fedmq.fl.runs import open_run_dir
from fedmq.strategy import FedAvg


async def main(args: argparse.Namespace) -> None:
    workers = parse_workers(args.workers)
    if args.url:
        connection = await AMQPRoundConnection.connect(args.url)
    else:
        connection = InProcessConnection(in_process_workers(workers, args.dataset, "testing"))
    config = TrainConfig(rounds=args.rounds, batch_size=32, num_batches=10, lr=0.1,
                         eval_every=10, seed=1)
    run_dir = open_run_dir("runs", f"seed-s14-example-{args.dataset}")
    coordinator = Coordinator(connection, list(workers), config, testing="testing",
                              strategy=FedAvg(), run_dir=run_dir)
    try:
        if args.url:
            await coordinator.wait_for_workers(60)
        await coordinator.run()
    finally:
        await connection.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--workers", default="alice:0-3,bob:4-6,charlie:7-9")
    parser.add_argument("--rounds", type=int, default=40)
    asyncio.run(main(parser.parse_args()))
