"""`fedmq train`: the seed §14 federated run (also `services/coordinator.py`).

    fedmq train                                  # in-process workers, no broker needed
    fedmq train --url amqp://... --launch        # starts the worker services, then trains
    fedmq train --url amqp://... --workers alice,bob,charlie --testing testing
                                                 # workers already running (compose.yaml)
Workers are `id` or `id:labels` (`alice:0-3`); labels only matter for workers this command
builds (in-process, or `--launch`); without them alice/bob/charlie get the seed's 0-3/4-6/7-9.
The run folder `runs/<name>/` gets metrics.jsonl, metrics.png and checkpoint.fedmq;
`--resume` continues after the last checkpoint with the same results.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import sys
import time

from fedmq.extensions import load_extensions
from fedmq.fl.async_coordinator import AsyncCoordinator
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.errors import OpNotAllowedError
from fedmq.fl.model_source import ModelSource
from fedmq.plans import module_plan
from fedmq.fl.coordinator import RunRefused
from fedmq.fl.coordinator import Coordinator, TrainConfig
from fedmq.fl.launch import WorkerLauncher, thread_env
from fedmq.service import build_worker
from fedmq.strategy import AsyncStrategy, registry as strategy_registry

SEED_LABELS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}
DEFAULT_WORKERS = "alice:0-3,bob:4-6,charlie:7-9"


def parse_workers(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        worker_id, _, labels = item.partition(":")
        out[worker_id] = labels or SEED_LABELS.get(worker_id)
    if not out:
        raise argparse.ArgumentTypeError("--workers lists no worker")
    return out


def parse_buckets(text: str) -> list[tuple[int, int]]:
    buckets = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        buckets.append((int(lo), int(hi or lo)))
    return buckets


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def make_strategy(name: str, pairs: list[str]):
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--strategy-arg expects key=value, got {pair!r}")
        kwargs[key.replace("-", "_")] = _value(value)
    try:
        return strategy_registry.make_strategy(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--strategy {name}: {exc}") from exc


def config_from(args: argparse.Namespace) -> TrainConfig:
    optimizer_args = {}
    if args.momentum:
        optimizer_args["momentum"] = args.momentum
    return TrainConfig(
        rounds=args.rounds, model=args.model, dataset=args.dataset, batch_size=args.batch_size,
        num_batches=args.batches, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
        optimizer_args=optimizer_args, eval_every=args.eval_every,
        round_timeout=args.round_timeout, seed=args.seed, buckets=parse_buckets(args.buckets),
        loss=args.loss, model_args=list(args.model_arg), input_shape=args.input_shape,
        input_dtype=args.input_dtype, testing_dataset=args.testing_dataset)


def in_process_workers(workers: dict, dataset: str, testing: str | None) -> dict:
    load_extensions()
    built = {w: build_worker(argparse.Namespace(id=w, dataset=dataset, labels=labels,
                                                testing=False))
             for w, labels in workers.items()}
    if testing:
        built[testing] = build_worker(argparse.Namespace(id=testing, dataset=dataset,
                                                         labels=None, testing=True))
    return built


async def train(args: argparse.Namespace) -> int:
    workers = parse_workers(args.workers)
    testing = args.testing or None
    run_dir = pathlib.Path(args.runs_dir) / (args.name or f"seed-s14-{args.dataset}")
    try:  # the model first: a mistake in it is one line, before any connection or data
        source = ModelSource(args.model, seed=args.seed, batch_size=args.batch_size,
                             model_args=args.model_arg, input_shape=args.input_shape,
                             input_dtype=args.input_dtype)
    except (ValueError, OpNotAllowedError) as exc:
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        print(f"fedmq train: {text.splitlines()[0] if text else type(exc).__name__}",
              file=sys.stderr)
        return 2
    if source.user is not None:  # what a data owner reviews and allows
        print(f"model plan {source.user.digest} ({module_plan.describe(source.user.plan, 300)})"
              f"; workers under --release none run it once their owner allows it: fedmq "
              f"worker --allow-model {source.user.digest}", flush=True)
    if args.url:
        connection = await AMQPRoundConnection.connect(args.url, chunk_size=args.chunk_size)
    else:
        connection = InProcessConnection(in_process_workers(workers, args.dataset, testing))
    strategy = make_strategy(args.strategy, args.strategy_arg)
    if isinstance(strategy, AsyncStrategy):  # fedasync, fedbuff: no rounds
        coordinator = AsyncCoordinator(connection, list(workers), config_from(args),
                                       testing=testing, strategy=strategy, run_dir=run_dir,
                                       max_updates=args.max_updates or args.rounds * len(workers),
                                       progress=args.progress)
    else:
        coordinator = Coordinator(connection, list(workers), config_from(args), testing=testing,
                                  strategy=strategy, run_dir=run_dir, progress=args.progress)
    try:
        if args.url:
            missing = await coordinator.wait_for_workers(args.wait_workers)
            if missing:  # refuse, rather than run rounds that can only fail for them
                print(f"fedmq train: no worker answers as {', '.join(missing)} on "
                      f"{connection.transport.describe()} after {args.wait_workers:.0f} s; "
                      f"start them (`fedmq worker --id {missing[0]} ...`) or leave them out "
                      f"of --workers/--testing", file=sys.stderr)
                return 2
        await coordinator.announce_datasets()
        try:
            history = await coordinator.run(resume=args.resume)
        except RunRefused as exc:
            print("fedmq train: every worker refused the round; stopping:", file=sys.stderr)
            for worker, reason in exc.reasons.items():
                print(f"  {worker}: {reason}", file=sys.stderr)
            return 2
    finally:
        await connection.aclose()
    coordinator.write_plot()
    last = next((r for r in reversed(history) if r.accuracy is not None), None)
    if last is not None:
        step = (f"{last.round} rounds" if hasattr(last, "round")
                else f"{last.version} versions ({last.received} updates)")
        print(f"Final accuracy: {100 * last.accuracy:.2f}% after {step}; "
              f"metrics in {run_dir}/")
    if history and all(getattr(r, "status", "ok") != "ok" for r in history):
        print("fedmq train: every round failed (see the log and metrics above)",
              file=sys.stderr)
        return 1
    return 0


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launcher = None
    if args.launch:
        if not args.url:
            raise SystemExit("--launch needs --url (the broker the workers consume from)")
        run_dir = pathlib.Path(args.runs_dir) / (args.name or f"seed-s14-{args.dataset}")
        workers = parse_workers(args.workers)
        launcher = WorkerLauncher(args.url, run_dir / "logs", env=thread_env(len(workers)))
        for worker_id, labels in workers.items():
            launcher.start(worker_id, args.dataset, labels)
        if args.testing:
            launcher.start(args.testing, args.dataset, testing=True)
        print(f"Started worker services {', '.join(launcher.procs)} (logs in {run_dir}/logs)")
    try:
        if launcher is not None:
            def say(line: str) -> None:
                print(f"{time.strftime('%H:%M:%S')} - {line}", flush=True)
            launcher.wait_consuming(echo=say)
            launcher.supervise(say)
        return asyncio.run(train(args))
    finally:
        if launcher is not None:
            launcher.stop_all()


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run federated rounds (seed §14)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None,
                   help="broker URL; without it the workers run in this process")
    p.add_argument("--launch", action="store_true",
                   help="start the worker services (fedmq worker subprocesses) for the run")
    p.add_argument("--dataset", default="mnist5k",
                   help="the key the workers serve their data under: mnist5k or fashion-mnist "
                        "(built in), or the --key of `fedmq worker --data` (default "
                        "%(default)s)")
    p.add_argument("--testing-dataset", default=None, metavar="KEY",
                   help="the key of the testing worker's data when it differs from "
                        "--dataset (e.g. mnist_testing)")
    p.add_argument("--workers", default=DEFAULT_WORKERS, help="id[:labels],... (%(default)s)")
    p.add_argument("--testing", default="testing", help="worker holding the test set ('' for none)")
    p.add_argument("--model", default="seed-cnn",
                   help="a built-in model (seed-cnn, mnist-logreg) or your own: "
                        "module:Class or path/to/file.py:Class, traced here into a plan "
                        "(workers run no model code) (default %(default)s)")
    p.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword argument of your model class (repeatable)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one sample's shape, to trace your model (default: the class's "
                        "input_shape attribute)")
    p.add_argument("--input-dtype", default="float32", choices=["float32", "int64"],
                   help="dtype of the model's input (int64: token ids) (default %(default)s)")
    p.add_argument("--loss", default="nll", choices=["nll", "cross_entropy"],
                   help="nll for models ending in log_softmax, cross_entropy for logits "
                        "(default %(default)s)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=10, help="local batches per round")
    p.add_argument("--epochs", type=int, default=None, help="local epochs per round instead")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"])
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--round-timeout", type=float, default=120.0, help="per-round deadline (s)")
    p.add_argument("--wait-workers", type=float, default=120.0,
                   help="seconds to wait for every worker to answer before round 1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--strategy", default="fedavg",
                   help="fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, "
                        "fedtrimmedavg, krum; fedasync or fedbuff run without rounds")
    p.add_argument("--max-updates", type=int, default=None,
                   help="fedasync/fedbuff: stop after this many worker updates "
                        "(default rounds x workers)")
    p.add_argument("--strategy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option, e.g. min_fit_workers=2 (repeatable)")
    p.add_argument("--buckets", default="0-3,4-6,7-9",
                   help="label groups of the 'Percentage numbers' lines")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--name", default=None, help="run folder name (default seed-s14-<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue after the last checkpoint")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="frames above this many bytes travel in chunks (default 64 MiB)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "lines"],
                   help="a live progress bar (bar), one plain line per round (lines), or bar "
                        "when stdout is a terminal (auto) (default %(default)s)")
    p.set_defaults(func=run_train)
