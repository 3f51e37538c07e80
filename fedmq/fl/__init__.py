"""Federated rounds (seed §14, PySyft's websocket FL demo) on fedmq's one message engine.

    messages.py     Fit / FitRes / Evaluate / EvaluateRes wire records (codes 100-109)
    training.py     the worker side: local SGD on the worker's own data, evaluation
    hooks.py        registers the Fit/Evaluate handlers with every Worker
    secure_fit.py   the worker side of a private round: its update encoded and protected
    secure.py       the coordinator side: secure aggregation (fedmq.secagg) and differential
                    privacy (fedmq.privacy) in a round, the accountant's epsilon
    connections.py  how the coordinator reaches workers: in-process or RabbitMQ (aio-pika)
    config.py       TrainConfig (a run's settings) and the initial model
    reporters.py    printed lines, checkpoints, metrics/plot, events: hooks beside the loops
    progress.py     the live progress bar (rich) of a run on a terminal, as a reporter
    datasets.py     what each worker holds (samples, per-label counts), said at a run's start
    base.py         what both loops share: workers, strategy, reporters, the one place each Fit
                    and Evaluate is built, evaluation, waiting for workers, Cancel
    coordinator.py  the asyncio round loop: sample, Fit, aggregate as replies arrive, evaluate
    async_coordinator.py  no rounds: FedAsync / FedBuff, every worker always has a Fit in flight
    checkpoint.py   per-round checkpoints in fedmq's serde format (no pickle)
    metrics.py      metrics.jsonl and the plot of a run (accuracy, losses, failed Fits, epsilon)
    events.py       round events on the `fedmq.events` topic exchange
    launch.py       worker service processes for a run over RabbitMQ
    cli.py          `fedmq train`
"""
