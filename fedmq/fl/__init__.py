"""Federated rounds (seed §14, PySyft's websocket FL demo) on fedmq's one message engine.

    messages.py     Fit / FitRes / Evaluate / EvaluateRes wire records (codes 100-109)
    training.py     the worker side: local SGD on the worker's own data, evaluation
    hooks.py        registers the Fit/Evaluate handlers with every Worker
    connections.py  how the coordinator reaches workers: in-process or RabbitMQ (aio-pika)
    config.py       TrainConfig (a run's settings) and the initial model
    reporters.py    printed lines, checkpoints, metrics/plot, events: hooks beside the loops
    base.py         what both loops share: workers, strategy, reporters, the one place each Fit
                    and Evaluate is built, evaluation, waiting for workers, Cancel
    coordinator.py  the asyncio round loop: sample, Fit, aggregate as replies arrive, evaluate
    async_coordinator.py  no rounds: FedAsync / FedBuff, every worker always has a Fit in flight
    checkpoint.py   per-round checkpoints in fedmq's serde format (no pickle)
    metrics.py      metrics.jsonl and the accuracy/loss plot of a run
    events.py       round events on the `fedmq.events` topic exchange
    launch.py       worker service processes for a run over RabbitMQ
    cli.py          `fedmq train`
"""
