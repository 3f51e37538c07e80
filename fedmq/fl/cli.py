"""`fedmq train`: the seed §14 federated run (also `services/coordinator.py`).

    fedmq train                                  # in-process workers, no broker needed
    fedmq train --url amqp://... --launch        # starts the worker services, then trains
    fedmq train --url amqp://... --workers alice,bob,charlie --testing testing
                                                 # workers already running (compose.yaml)
Workers are `id` or `id:labels` (`alice:0-3`); labels only matter for workers this command
builds (in-process, or `--launch`); without them alice/bob/charlie get the seed's 0-3/4-6/7-9.
The run folder `runs/<name>/` gets run.json (options and versions), metrics.jsonl,
metrics.png and checkpoint.fedmq; a new run never writes over an earlier one (it takes the
next free name, or `--overwrite`); `--resume` continues after the last checkpoint with the
same results, and refuses options that change them unless `--allow-changes`.

Exit codes: 0 the run finished; 1 no round succeeded, or more fits failed than
`--max-failed-fits` allows, or every evaluation failed; 2 a mistake in the options or the
broker refused/could not be reached (one line saying which); 130 interrupted (Ctrl-C; the
line says how to continue).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time

from fedmq.cli_options import UsageError as CliUsageError, check_amqp_url, check_worker_id
from fedmq.fl import runs
from fedmq.fl.validation import SettingError, check_config

DEFAULT_URL_ENV = "FEDMQ_URL"
#: the built-in datasets a worker this command builds can serve (fedmq.data.vision.LOADERS)
BUILT_IN_DATASETS = ("fashion-mnist", "mnist5k")
BUILT_IN_LABELS = 10
DEFAULT_BATCHES = 10


class UsageError(ValueError):
    """A mistake in the options: one line, exit 2."""


SEED_LABELS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}
DEFAULT_WORKERS = "alice:0-3,bob:4-6,charlie:7-9"


def parse_workers(text: str) -> dict[str, str | None]:
    """"alice:0-3,bob" -> {"alice": "0-3", "bob": "4-6"}. UsageError for an empty list, a
    repeated or malformed id, or labels that are not a range of 0-9 (e.g. 3-1, 12)."""
    from fedmq.data.partition import parse_labels  # numpy only

    out: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        worker_id, _, labels = item.partition(":")
        try:
            check_worker_id(worker_id, "--workers")
        except CliUsageError as exc:
            raise UsageError(str(exc)) from None
        if worker_id in out:
            raise UsageError(f"--workers names {worker_id} twice")
        if labels:
            try:
                numbers = parse_labels(labels)
            except ValueError as exc:
                raise UsageError(f"--workers {item}: {exc}") from None
            wrong = [n for n in numbers if not 0 <= n < BUILT_IN_LABELS]
            if wrong:
                raise UsageError(f"--workers {item}: the built-in datasets have labels "
                                 f"0-{BUILT_IN_LABELS - 1}, not {wrong[0]}")
        out[worker_id] = labels or SEED_LABELS.get(worker_id)
    if not out:
        raise UsageError("--workers lists no worker")
    return out


def parse_buckets(text: str) -> list[tuple[int, int]]:
    """"0-3,4-6,7-9" -> [(0, 3), (4, 6), (7, 9)]; UsageError for anything else."""
    buckets = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            bucket = (int(lo), int(hi or lo))
        except ValueError:
            raise UsageError(f"--buckets: {part!r} is not a label range such as 0-3") from None
        if not 0 <= bucket[0] <= bucket[1]:
            raise UsageError(f"--buckets: {part!r} is not a label range lo-hi with "
                             f"0 <= lo <= hi")
        buckets.append(bucket)
    return buckets


def _value(text: str):
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if not math.isfinite(value):
            raise UsageError(f"--strategy-arg values are finite numbers, got {text!r}")
        return value
    return {"true": True, "false": False}.get(text.lower(), text)


def make_strategy(name: str, pairs: list[str]):
    """The strategy `name` with `--strategy-arg key=value` options; UsageError otherwise."""
    from fedmq.strategy import registry as strategy_registry

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--strategy-arg expects key=value, got {pair!r}")
        kwargs[key.replace("-", "_")] = _value(value)
    try:
        return strategy_registry.make_strategy(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--strategy {name}: {exc}") from None


def config_from(args: argparse.Namespace):
    """The run's TrainConfig (fedmq.fl.config) from the options."""
    from fedmq.fl.coordinator import TrainConfig

    try:
        return TrainConfig(**config_fields(args))
    except SettingError as exc:
        raise UsageError(str(exc)) from None


def config_fields(args: argparse.Namespace) -> dict:
    optimizer_args = {}
    if args.momentum:
        optimizer_args["momentum"] = args.momentum
    batches = args.batches if args.batches is not None or args.epochs else DEFAULT_BATCHES
    return dict(
        rounds=args.rounds, model=args.model, dataset=args.dataset, batch_size=args.batch_size,
        num_batches=batches, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
        optimizer_args=optimizer_args, eval_every=args.eval_every,
        round_timeout=args.round_timeout, seed=args.seed, buckets=parse_buckets(args.buckets),
        loss=args.loss, model_args=list(args.model_arg), input_shape=args.input_shape,
        input_dtype=args.input_dtype, testing_dataset=args.testing_dataset)


def check_url(url: str) -> str:
    """`url` when it is an amqp(s):// broker URL with a host and a valid port
    (fedmq.cli_options.check_amqp_url, as every command checks it); UsageError naming --url
    (and $FEDMQ_URL when it came from there) otherwise."""
    try:
        return check_amqp_url(url)
    except CliUsageError as exc:
        raise UsageError(str(exc)) from None


def check_args(args: argparse.Namespace) -> dict[str, str | None]:
    """Every option checked before anything slow (no torch, no broker); the workers parsed.
    Raises UsageError naming the option."""
    if args.url is not None:
        check_url(args.url)
    if args.launch and not args.url:
        raise UsageError("--launch needs --url (the broker the workers consume from)")
    workers = parse_workers(args.workers)
    if args.testing and args.testing in workers:
        raise UsageError(f"--testing {args.testing} is also in --workers")
    if args.testing:
        try:
            check_worker_id(args.testing, "--testing")
        except CliUsageError as exc:
            raise UsageError(str(exc)) from None
    if (not args.url or args.launch) and args.dataset not in BUILT_IN_DATASETS:
        where = "--launch" if args.launch else "without --url"
        raise UsageError(f"--dataset {args.dataset!r}: workers this command starts ({where}) "
                         f"serve {' or '.join(BUILT_IN_DATASETS)}; serve your own files with "
                         f"`fedmq worker --data ... --key {args.dataset}` and give --url")
    if args.dataset in BUILT_IN_DATASETS:
        for lo, hi in parse_buckets(args.buckets):
            if hi >= BUILT_IN_LABELS:
                raise UsageError(f"--buckets {args.buckets}: {args.dataset} has labels "
                                 f"0-{BUILT_IN_LABELS - 1}, not {hi}")
    try:
        check_config(config_fields(args))
    except SettingError as exc:
        raise UsageError(str(exc)) from None
    for option, value, low in (("--wait-workers", args.wait_workers, 0),
                               ("--max-updates", args.max_updates, 1),
                               ("--chunk-size", args.chunk_size, 4096)):
        if value is not None and not (value >= low and math.isfinite(value)):
            raise UsageError(f"{option} must be a finite number of at least {low}, got "
                             f"{value}")
    if args.epochs is not None and args.batches is not None:
        raise UsageError("give --epochs (whole passes over the data) or --batches (local "
                         "batches per round), not both")
    if args.max_updates is not None and args.strategy not in ("fedasync", "fedbuff"):
        raise UsageError(f"--max-updates counts the updates of fedasync/fedbuff runs; "
                         f"--strategy {args.strategy} runs --rounds")
    user_model = ":" in args.model
    for option, given in (("--model-arg", args.model_arg), ("--input-shape", args.input_shape)):
        if given and not user_model:
            raise UsageError(f"{option} is for your own model (--model module:Class or "
                             f"file.py:Class); the built-in {args.model!r} takes none")
    if args.input_shape is not None:
        dims = args.input_shape.replace("x", ",").split(",")
        if not all(d.strip().isdigit() and int(d) > 0 for d in dims):
            raise UsageError(f"--input-shape is one sample's shape such as 1,28,28, got "
                             f"{args.input_shape!r}")
    if args.name is not None and not args.name.strip():
        raise UsageError("--name is empty; give a folder name or leave it out")
    if not 0 <= args.max_failed_fits <= 1:
        raise UsageError(f"--max-failed-fits is a fraction from 0 to 1, got "
                         f"{args.max_failed_fits}")
    if args.stop_after_failed_rounds < 0:
        raise UsageError(f"--stop-after-failed-rounds must be at least 0 (0: never stop), got "
                         f"{args.stop_after_failed_rounds}")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: give one")
    check_privacy_args(args, workers)
    return workers


def parse_secure_aggregation(text: str | None) -> tuple[str | None, list[str]]:
    """(method, aggregators) from --secure-aggregation: "secagg+", "additive:agg1,agg2[,...]"
    or None (the option not given); UsageError otherwise, an empty text included (a script
    passing an empty variable must not get an unprotected run)."""
    if text is None:
        return None, []
    method, _, rest = text.partition(":")
    if method == "secagg+" and not rest:
        return method, []
    if method == "additive":
        aggregators = [a.strip() for a in rest.split(",") if a.strip()]
        if not 2 <= len(aggregators) <= 5 or len(set(aggregators)) != len(aggregators):
            raise UsageError(f"--secure-aggregation additive:AGG1,AGG2[,...] names 2 to 5 "
                             f"distinct aggregator workers, got {text!r}")
        for a in aggregators:
            try:
                check_worker_id(a, "--secure-aggregation")
            except CliUsageError as exc:
                raise UsageError(str(exc)) from None
        return method, aggregators
    raise UsageError(f"--secure-aggregation is secagg+ or additive:AGG1,AGG2[,...], got "
                     f"{text!r}")


def check_privacy_args(args: argparse.Namespace, workers: dict) -> None:
    """--secure-aggregation, --sa-*, --dp and its numbers (UsageError naming the option)."""
    method, aggregators = parse_secure_aggregation(args.secure_aggregation)
    clash = [a for a in aggregators if a in workers or a == args.testing]
    if clash:
        raise UsageError(f"--secure-aggregation: aggregator {clash[0]} is also a training or "
                         f"the testing worker; aggregators hold no data of the run")
    if method == "additive" and args.launch:
        # every launched service logs in as the --url's user: one principal, and an aggregator
        # keeps one share per principal (fedmq.secagg.additive), so it would refuse the second
        # worker's share (tests/test_private_rounds_cli.py shows it over RabbitMQ)
        raise UsageError("--secure-aggregation additive with --launch: the launched services "
                         "would all log in as the --url's user, and an aggregator keeps one "
                         "share per broker user; give each service its own broker user "
                         "(fedmq broker add-user), start them with `fedmq worker` (training "
                         "workers with --grant worker:AGG for each aggregator) and run "
                         "without --launch")
    sa_options = (("--sa-threshold", args.sa_threshold), ("--sa-neighbours", args.sa_neighbours))
    for option, value in sa_options:
        if value is not None and method != "secagg+":
            raise UsageError(f"{option} is for --secure-aggregation secagg+")
    n = len(workers)
    if args.sa_threshold is not None and not 2 <= args.sa_threshold <= n:
        raise UsageError(f"--sa-threshold must be from 2 to the number of workers ({n}), got "
                         f"{args.sa_threshold}")
    if args.sa_neighbours is not None and not 1 <= args.sa_neighbours <= max(n - 1, 1):
        raise UsageError(f"--sa-neighbours must be from 1 to {max(n - 1, 1)}, got "
                         f"{args.sa_neighbours}")
    if method and n < 2:
        raise UsageError("--secure-aggregation needs at least 2 workers (with one, the sum is "
                         "its update)")
    if method and args.strategy in ("fedasync", "fedbuff"):
        raise UsageError(f"--secure-aggregation sums a round's updates; --strategy "
                         f"{args.strategy} has no rounds")
    if args.dp is not None and args.strategy in ("fedasync", "fedbuff"):
        raise UsageError(f"--dp accounts rounds; --strategy {args.strategy} has no rounds")
    if args.dp is None:
        for option, value in (("--noise-multiplier", args.noise_multiplier),
                              ("--max-grad-norm", args.max_grad_norm),
                              ("--dp-delta", args.dp_delta)):
            if value is not None:
                raise UsageError(f"{option} is for a --dp run (--dp central or --dp local)")
        return
    try:
        dp_config(args)
    except ValueError as exc:
        raise UsageError(f"--dp: {exc}") from None


def dp_config(args: argparse.Namespace):
    """The run's DPConfig (fedmq.privacy.config) or None; ValueError for a bad value."""
    if args.dp is None:
        return None
    from fedmq.privacy.config import DPConfig

    return DPConfig(mode=args.dp, noise_multiplier=(1.0 if args.noise_multiplier is None
                                                    else args.noise_multiplier),
                    max_grad_norm=1.0 if args.max_grad_norm is None else args.max_grad_norm,
                    delta=1e-5 if args.dp_delta is None else args.dp_delta,
                    accountant=args.dp_accountant)


def make_privacy(args: argparse.Namespace, workers: dict):
    """The run's fedmq.fl.secure.PrivateRounds, or None for a plain run."""
    from fedmq.fl.secure import make_private_rounds

    method, aggregators = parse_secure_aggregation(args.secure_aggregation)
    return make_private_rounds(method, aggregators, threshold=args.sa_threshold,
                               neighbours=args.sa_neighbours, seed=args.seed,
                               dp=dp_config(args))


def in_process_workers(workers: dict, dataset: str, testing: str | None,
                       aggregators: list[str] | tuple = ()) -> dict:
    """Workers in this process, each holding its labels' partition of `dataset`, and the
    `aggregators` of `--secure-aggregation additive:...` holding no data (aggregator_workers)."""
    from fedmq.extensions import load_extensions
    from fedmq.service import build_worker

    load_extensions()
    built = {w: build_worker(argparse.Namespace(id=w, dataset=dataset, labels=labels,
                                                testing=False))
             for w, labels in workers.items()}
    if testing:
        built[testing] = build_worker(argparse.Namespace(id=testing, dataset=dataset,
                                                         labels=None, testing=True))
    if aggregators:
        built.update(aggregator_workers([built[w] for w in workers], list(aggregators)))
    return built


def aggregator_workers(trainers: list, aggregators: list[str]) -> dict:
    """In-process additive-sharing aggregators (fedmq.secagg.additive) for the Worker objects
    `trainers`: each aggregator holds no data and grants `coordinator` only to this process's
    coordinator (fedmq.principals.LOCAL, the in-process connection's principal); each trainer
    grants `worker` to the aggregators only (its policy otherwise the in-process open one) and
    gets a network of its own that reaches them as itself (principal: its id), as each
    `fedmq worker` service has a broker login of its own, so an aggregator keeps one share per
    training worker; each aggregator grants the trainers `worker` (it takes shares from them
    only). Returns {aggregator id: Worker}."""
    import dataclasses

    from fedmq.client import WorkerClient
    from fedmq.context import Context
    from fedmq.policy import Policy
    from fedmq.principals import LOCAL
    from fedmq.worker import Worker

    built = {a: Worker(a, policy=Policy(owner=a, grants={
        "coordinator": {LOCAL}, "worker": {trainer.id for trainer in trainers}},
        release="none")) for a in aggregators}
    for trainer in trainers:
        trainer.policy = dataclasses.replace(
            trainer.policy, grants={**trainer.policy.grants, "worker": frozenset(aggregators)})
        context = Context(sender=trainer.id, principal=trainer.id)
        for a, worker in built.items():
            context.transport.add(worker)
            context.network.add(WorkerClient(a, context.engine, context.network))
        trainer.network = context.network
    return built


def run_options(args: argparse.Namespace) -> dict:
    """The options a run records in run.json (and compares when resumed), as they take
    effect: --workers with each worker's labels, --batches with its default."""
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command")
               and not k.startswith("_")}
    options["workers"] = ",".join(f"{w}:{labels}" if labels else w
                                  for w, labels in parse_workers(args.workers).items())
    options["batches"] = config_fields(args)["num_batches"]
    dp = dp_config(args) if getattr(args, "dp", None) else None
    if dp is not None:  # the defaults a DP run took, so spelling them out on resume agrees
        options.update(noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                       dp_delta=dp.delta)
    return options


def open_run(args: argparse.Namespace) -> pathlib.Path:
    """The run folder (fedmq.fl.runs.open_run_dir), run.json written; UsageError when the
    folder cannot be used (resume without checkpoint, options changed)."""
    name = args.name or f"seed-s14-{args.dataset}"
    try:
        run_dir = runs.open_run_dir(args.runs_dir, name, resume=args.resume,
                                    overwrite=args.overwrite,
                                    echo=lambda line: print(line, flush=True))
    except runs.RunFolderError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--runs-dir {args.runs_dir}: {exc.strerror or exc}") from None
    options = run_options(args)
    if args.resume:
        done = runs.last_step(run_dir)
        if done is not None and args.rounds <= done and args.strategy not in ("fedasync",
                                                                              "fedbuff"):
            raise UsageError(f"--rounds {args.rounds}: the run in {run_dir} already finished "
                             f"round {done}; give more --rounds to continue it")
        record = runs.read_record(run_dir)
        recorded = (record or {}).get("options")
        if recorded is None and (run_dir / runs.RUN_FILE).exists() and not args.allow_changes:
            raise UsageError(f"--resume: {run_dir / runs.RUN_FILE} cannot be read, so the "
                             f"options cannot be compared; give --allow-changes to resume "
                             f"with these")
        if recorded is None:
            print(f"{run_dir} has no readable {runs.RUN_FILE}: its options are not compared",
                  flush=True)
        else:
            changed = runs.changed_options(recorded, options)
            if changed and not args.allow_changes:
                lines = "; ".join(f"--{k.replace('_', '-')} {old!r} -> {new!r}"
                                  for k, old, new in changed)
                raise UsageError(f"--resume: options differ from the run in {run_dir}: "
                                 f"{lines}; give the recorded ones, or --allow-changes")
    runs.write_record(run_dir, runs.record(options), resumed=args.resume)
    return run_dir


def failure_summary(history: list, max_failed: float) -> str | None:
    """Why a finished run counts as failed (exit 1), or None: no round succeeded, more
    than `max_failed` of the fits failed, or a worker failed every fit it was given (two or
    more: a worker without the data, say)."""
    if not history:
        return None
    if all(getattr(r, "status", "ok") != "ok" for r in history):
        return "no round succeeded"
    if hasattr(history[0], "failed"):
        fits = sum(len(r.workers) + len(r.failed) for r in history)
        failed = sum(len(r.failed) for r in history)
        if fits and failed / fits > max_failed:
            return (f"{failed} of {fits} fits failed ({100 * failed / fits:.0f}%, more than "
                    f"--max-failed-fits {max_failed:g})")
        given: dict[str, int] = {}
        lost: dict[str, str] = {}
        for r in history:
            for worker in r.workers:
                given[worker] = given.get(worker, 0) + 1
            for worker, reason in r.failed.items():
                if worker != "*":
                    given[worker] = given.get(worker, 0) + 1
                    lost.setdefault(worker, reason)
        never = [w for w, n in given.items() if n >= 2 and w in lost and
                 not any(w in r.workers for r in history)]
        if never:
            w = never[0]
            return (f"worker {w} failed every one of its {given[w]} fits (first: {lost[w]})"
                    + (f"; also {', '.join(never[1:])}" if len(never) > 1 else ""))
    return None


def prepare(args: argparse.Namespace, workers: dict[str, str | None]) -> tuple:
    """(model source, strategy, TrainConfig): the model traced, the strategy made; UsageError
    for a mistake in them (before any folder, connection or data)."""
    from fedmq.errors import OpNotAllowedError
    from fedmq.fl.model_source import ModelSource

    try:
        source = ModelSource(args.model, seed=args.seed, batch_size=args.batch_size,
                             model_args=args.model_arg, input_shape=args.input_shape,
                             input_dtype=args.input_dtype)
    except (ValueError, OpNotAllowedError) as exc:
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        raise UsageError(text.splitlines()[0] if text else type(exc).__name__) from None
    strategy = make_strategy(args.strategy, args.strategy_arg)
    wanted = getattr(strategy, "min_fit_workers", None)
    if isinstance(wanted, int) and wanted > len(workers):
        raise UsageError(f"--strategy-arg min_fit_workers={wanted}: the run has "
                         f"{len(workers)} worker{'s' * (len(workers) != 1)} (--workers)")
    privacy = make_privacy(args, workers)
    if privacy is not None:
        try:
            privacy.check_strategy(strategy)
        except ValueError as exc:
            raise UsageError(f"--strategy {args.strategy}: {exc}") from None
    check = getattr(privacy.aggregator if privacy is not None else None, "check_threshold", None)
    if check is not None:  # SecAgg+: t a strict majority of each worker's k+1 share holders
        import random

        try:  # as many workers as the strategy samples each round
            sampled = len(strategy.sample(list(workers), 1, random.Random(0)))
        except Exception:  # noqa: BLE001 - the strategy says why when the run starts
            sampled = len(workers)
        try:
            check(sampled)
        except ValueError as exc:
            raise UsageError(f"--sa-threshold: {exc}"
                             + (f" ({sampled} sampled per round)"
                                if sampled != len(workers) else "")) from None
    if privacy is not None and privacy.dp is not None:
        if privacy.dp.mode == "local" and source.user is not None:
            raise UsageError(f"--dp local trains each worker with Opacus, which needs the "
                             f"model's modules; --model {args.model} runs on the workers as a "
                             f"model plan (an op list): use --dp central")
        from fedmq.fl.config import initial_model
        weights, trainable = ((source.initial_weights(), source.trainable)
                              if source.user is not None
                              else initial_model(args.model, args.seed))
        try:
            privacy.check_model(weights, set(trainable))
        except ValueError as exc:
            raise UsageError(f"--model {args.model}: {exc}") from None
    return source, strategy, config_from(args), privacy


async def train(args: argparse.Namespace, workers: dict[str, str | None],
                run_dir: pathlib.Path, prepared: tuple) -> int:
    from fedmq.fl.async_coordinator import AsyncCoordinator
    from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
    from fedmq.fl.coordinator import Coordinator, RunFailed, RunRefused
    from fedmq.plans import module_plan
    from fedmq.strategy import AsyncStrategy

    source, strategy, config, privacy = prepared
    testing = args.testing or None
    if source.user is not None:  # what a data owner reviews and allows
        print(f"model plan {source.user.digest} ({module_plan.describe(source.user.plan, 300)})"
              f"; workers under --release none run it once their owner allows it: fedmq "
              f"worker --allow-model {source.user.digest}", flush=True)
    if args.url:
        connection = await AMQPRoundConnection.connect(args.url, chunk_size=args.chunk_size)
    else:
        try:
            _, aggregators = parse_secure_aggregation(args.secure_aggregation)
            connection = InProcessConnection(in_process_workers(workers, args.dataset,
                                                                testing, aggregators))
        except ValueError as exc:  # a dataset or labels the data cannot serve
            raise UsageError(str(exc)) from None
    if isinstance(strategy, AsyncStrategy):  # fedasync, fedbuff: no rounds
        coordinator = AsyncCoordinator(connection, list(workers), config,
                                       testing=testing, strategy=strategy, run_dir=run_dir,
                                       max_updates=args.max_updates or args.rounds * len(workers),
                                       overwrite=args.overwrite,
                                       progress=args.progress)
    else:
        coordinator = Coordinator(connection, list(workers), config, testing=testing,
                                  strategy=strategy, run_dir=run_dir, overwrite=args.overwrite,
                                  max_failed_rounds=args.stop_after_failed_rounds or None,
                                  progress=args.progress, privacy=privacy)
    args._coordinator = coordinator  # what an interrupt reports
    if privacy is not None:
        print(f"Private rounds: {privacy.describe(len(workers))}", flush=True)
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
        except RunFailed as exc:
            print(f"fedmq train: {exc}; stopping. Last reasons:", file=sys.stderr)
            for worker, reason in exc.reasons.items():
                print(f"  {worker}: {reason}", file=sys.stderr)
            return 1
    finally:
        await connection.aclose()
        coordinator.write_plot()
    last = next((r for r in reversed(history) if r.accuracy is not None), None)
    if last is not None:
        step = (f"{last.round} rounds" if hasattr(last, "round")
                else f"{last.version} versions ({last.received} updates)")
        print(f"Final accuracy: {100 * last.accuracy:.2f}% after {step}; "
              f"metrics in {run_dir}/")
    elif history:
        end = history[-1]
        step = (f"{end.round} rounds" if hasattr(end, "round")
                else f"{end.version} versions ({end.received} updates)")
        print(f"Finished after {step} (no evaluation); metrics in {run_dir}/")
    failed = failure_summary(history, args.max_failed_fits)
    if failed is None and testing and config.eval_every and last is None and history:
        failed = f"every evaluation on {testing} failed"
    if failed:
        print(f"fedmq train: the run failed: {failed} (see the log and {run_dir}/"
              f"metrics.jsonl)", file=sys.stderr)
        return 1
    return 0


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        workers = check_args(args)
        prepared = prepare(args, workers)
        run_dir = open_run(args)
    except UsageError as exc:
        print(f"fedmq train: {exc}", file=sys.stderr)
        return 2
    launcher = None
    code = None
    terminated: list[int] = []
    previous = _stop_on_sigterm(terminated)
    try:
        if args.launch:
            from fedmq.fl.launch import WorkerLauncher, thread_env

            launcher = WorkerLauncher(args.url, run_dir / "logs", env=thread_env(len(workers)))
            launch_services(launcher, args, workers)
            print(f"Started worker services {', '.join(launcher.procs)} (logs in "
                  f"{run_dir}/logs)", flush=True)
            def say(line: str) -> None:
                print(f"{time.strftime('%H:%M:%S')} - {line}", flush=True)
            launcher.wait_consuming(echo=say)
            launcher.supervise(say)
        code = asyncio.run(train(args, workers, run_dir, prepared))
        return code
    except UsageError as exc:
        print(f"fedmq train: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfedmq train: {interrupted_line(args, run_dir)}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as exc:  # noqa: BLE001 - broker problems: one line, not a traceback
        from fedmq.errors import TransportError
        if not isinstance(exc, TransportError):
            raise
        print(f"fedmq train: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if launcher is not None:
            launcher.stop_all()
        if not args.resume and code is None or code == 2:
            runs.release(run_dir)  # stopped before its first round: the name is free again


def _stop_on_sigterm(terminated: list) -> object | None:
    """SIGTERM (docker stop, systemd, kill) stops a run as Ctrl-C does: the round in flight is
    cancelled, the SecAgg+ session ended, and the resume line printed (exit 143). Returns the
    handler it replaced (None off the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum: int, frame: object) -> None:
        terminated.append(signum)
        interrupt = signal.getsignal(signal.SIGINT)  # asyncio.run's own while a run is on
        if callable(interrupt):
            interrupt(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job): stop all the same
            raise KeyboardInterrupt
    return signal.signal(signal.SIGTERM, on_sigterm)


def launch_services(launcher, args: argparse.Namespace, workers: dict) -> None:
    """Start the run's worker services with `launcher` (fedmq.fl.launch.WorkerLauncher): the
    training workers with their labels, the testing worker, and the aggregators of
    `--secure-aggregation additive:...` holding no data, each training worker granting every
    aggregator `worker` (its shares go to peers only, fedmq.secagg.additive)."""
    _, aggregators = parse_secure_aggregation(args.secure_aggregation)
    for a in aggregators:
        launcher.start(a, None, grants=[f"worker:{w}" for w in workers])
    grants = [f"worker:{a}" for a in aggregators]
    for worker_id, labels in workers.items():
        launcher.start(worker_id, args.dataset, labels, grants=grants)
    if args.testing:
        launcher.start(args.testing, args.dataset, testing=True)


def interrupted_line(args: argparse.Namespace, run_dir: pathlib.Path) -> str:
    """"interrupted after round N; continue with: fedmq train ... --resume"."""
    coordinator = getattr(args, "_coordinator", None)
    history = getattr(coordinator, "history", None) or []
    unit = getattr(coordinator, "unit", "round")
    done = getattr(history[-1], unit, None) if history else None
    if done is None:
        return f"interrupted before the first {unit} ended; nothing to resume in {run_dir}"
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")] \
        if sys.argv[1:2] == ["train"] else ["train"]
    argv = [runs.redact_url(a) if "://" in a else a for a in argv]
    if "--name" not in argv and not any(a.startswith("--name=") for a in argv):
        argv += ["--name", run_dir.name]
    elif run_dir.name != (args.name or ""):
        argv = _replace_name(argv, run_dir.name)
    return (f"interrupted after {unit} {done}; continue with: fedmq {' '.join(argv)} "
            f"--resume")


def _replace_name(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            out.append(name)
            skip = False
        elif a == "--name":
            out.append(a)
            skip = True
        elif a.startswith("--name="):
            out.append(f"--name={name}")
        else:
            out.append(a)
    return out


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run federated rounds (seed §14)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get(DEFAULT_URL_ENV) or None,
                   help="AMQP broker URL, amqp://user:password@host:5672/vhost; without it the "
                        "workers run in this process (default $FEDMQ_URL, else in-process)")
    p.add_argument("--launch", action="store_true",
                   help="start the worker services (fedmq worker subprocesses) for the run")
    p.add_argument("--dataset", default="mnist5k",
                   help="the key the workers serve their data under: mnist5k or fashion-mnist "
                        "(built in), or the --key of `fedmq worker --data` (default "
                        "%(default)s)")
    p.add_argument("--testing-dataset", default=None, metavar="KEY",
                   help="the key of the testing worker's data when it differs from "
                        "--dataset, e.g. mnist_testing (default: --dataset)")
    p.add_argument("--workers", default=DEFAULT_WORKERS,
                   help="id[:labels],... (default %(default)s)")
    p.add_argument("--testing", default="testing",
                   help="worker holding the test set, '' for none (default %(default)s)")
    p.add_argument("--model", default="seed-cnn",
                   help="a built-in model (seed-cnn, mnist-logreg) or your own: "
                        "module:Class or path/to/file.py:Class, traced here into a plan "
                        "(workers run no model code) (default %(default)s)")
    p.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword argument of your model class (repeatable; default: none)")
    p.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one sample's shape, to trace your model (default: the class's "
                        "input_shape attribute)")
    p.add_argument("--input-dtype", default="float32", choices=["float32", "int64"],
                   help="dtype of the model's input (int64: token ids) (default %(default)s)")
    p.add_argument("--loss", default="nll", choices=["nll", "cross_entropy"],
                   help="nll for models ending in log_softmax, cross_entropy for logits "
                        "(default %(default)s)")
    p.add_argument("--rounds", type=int, default=40,
                   help="federated rounds, at least 1 (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="samples per local batch (default %(default)s)")
    p.add_argument("--batches", type=int, default=None,
                   help=f"local batches per round, at least 1 (default {DEFAULT_BATCHES}, "
                        f"unless --epochs)")
    p.add_argument("--epochs", type=int, default=None,
                   help="local epochs per round instead of --batches (default: unset)")
    p.add_argument("--lr", type=float, default=0.1,
                   help="learning rate, above 0 (default %(default)s)")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                   help="the workers' local optimizer (default %(default)s)")
    p.add_argument("--momentum", type=float, default=0.0,
                   help="SGD momentum, in [0, 1) (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=10,
                   help="evaluate on the testing worker every N rounds and after the last; "
                        "0 never (default %(default)s)")
    p.add_argument("--round-timeout", type=float, default=120.0,
                   help="per-round deadline in seconds (default %(default)s)")
    p.add_argument("--wait-workers", type=float, default=120.0,
                   help="seconds to wait for every worker to answer before round 1 "
                        "(default %(default)s)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the initial model and the sampling (default %(default)s)")
    p.add_argument("--strategy", default="fedavg",
                   help="fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, "
                        "fedtrimmedavg, krum; fedasync or fedbuff run without rounds "
                        "(default %(default)s)")
    p.add_argument("--max-updates", type=int, default=None,
                   help="fedasync/fedbuff: stop after this many worker updates "
                        "(default rounds x workers)")
    p.add_argument("--strategy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option, e.g. min_fit_workers=2 (repeatable; default: the "
                        "strategy's own)")
    p.add_argument("--buckets", default="0-3,4-6,7-9",
                   help="label groups of the 'Percentage numbers' lines (default %(default)s)")
    p.add_argument("--runs-dir", default="runs",
                   help="folder holding the run folders (default %(default)s)")
    p.add_argument("--name", default=None,
                   help="run folder name; if it holds an earlier run, the next free name-N is "
                        "used (default seed-s14-<dataset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run --name after its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in --name instead of taking a new name")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept options that differ from the recorded run's")
    p.add_argument("--max-failed-fits", type=float, default=0.5, metavar="FRACTION",
                   help="exit 1 when more than this fraction of the fits failed "
                        "(default %(default)s)")
    p.add_argument("--stop-after-failed-rounds", type=int, default=3, metavar="N",
                   help="stop (exit 1) after N rounds in a row in which every fit failed; "
                        "0 never (default %(default)s)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="frames above this many bytes travel in chunks (default 64 MiB)")
    g = p.add_argument_group("privacy (issue 16: secure aggregation, differential privacy)")
    g.add_argument("--secure-aggregation", default=None, metavar="METHOD",
                   help="the coordinator learns only the round's sum: secagg+ (SecAgg+, Bell "
                        "et al. 2020) or additive:AGG1,AGG2[,...] (additive shares summed by "
                        "aggregator workers, the seed's §10 way); default: none")
    g.add_argument("--sa-threshold", type=int, default=None, metavar="T",
                   help="secagg+: shares needed to unmask a worker (default: the smallest "
                        "strict majority of its k+1 share holders, the lowest allowed); a "
                        "round is unmasked while t of each neighbourhood remain")
    g.add_argument("--sa-neighbours", type=int, default=None, metavar="K",
                   help="secagg+: neighbours per worker (default: all of them up to 8 "
                        "workers, then 2*ceil(log2 n)+2 rounded up to even, at most n-1)")
    g.add_argument("--dp", default=None, choices=["central", "local"],
                   help="differential privacy: central (DP-FedAvg: clipped updates, Gaussian "
                        "noise on the aggregate; distributed among the workers with "
                        "--secure-aggregation) or local (DP-SGD on each worker, Opacus); "
                        "default: none")
    g.add_argument("--noise-multiplier", type=float, default=None, metavar="Z",
                   help="--dp: noise std / clipping norm (default 1.0)")
    g.add_argument("--max-grad-norm", type=float, default=None, metavar="C",
                   help="--dp: L2 clipping norm of an update (central) or a per-sample "
                        "gradient (local) (default 1.0)")
    g.add_argument("--dp-delta", type=float, default=None, metavar="DELTA",
                   help="--dp: the delta epsilon is reported at (default 1e-5)")
    g.add_argument("--dp-accountant", default="rdp", choices=["rdp", "prv"],
                   help="--dp: Opacus' accountant (default: %(default)s)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"],
                   help="(default %(default)s)")
    p.add_argument("--progress", default="auto", choices=["auto", "bar", "lines"],
                   help="a live progress bar (bar), one plain line per round (lines), or bar "
                        "when stdout is a terminal (auto) (default %(default)s)")
    p.set_defaults(func=run_train)
