"""The federated-rounds coordinator (seed §14: PySyft's asyncio websocket FL demo, on fedmq).

Each round:
  1. the strategy samples workers (rng derived from (seed, round), so a resumed run samples
     the same) and builds the Fit config; learning rate `lr = max(0.98 * lr, 0.01 * lr0)`
     after every round, as in the seed;
  2. a `Fit` goes to every sampled worker at once; replies are gathered with `asyncio.gather`
     under the round deadline and folded into the strategy's running aggregate as they arrive
     (FedAvg: one weighted sum, O(model) memory);
  3. a worker that fails or misses the deadline is recorded, and its Fit is cancelled (a
     `Cancel` naming the Fit's msg_id: the worker stops training at its next batch, or drops
     the Fit if it has not started it); the round aggregates whoever answered if at least
     `min_fit_workers` did (the strategy's rule), otherwise the global model stays as it was; a
     reply for another round is discarded;
  4. every `eval_every` rounds (rounds 1, 11, 21, ... and the last, like the seed) the
     testing worker evaluates each update and the new global model, and the seed's lines are
     printed; then the checkpoint, the metrics line and the events are written.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from fedmq.engine import RequestEngine
from fedmq.fl import checkpoint, events as ev
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.fl.metrics import PLOT, MetricsLog, plot
from fedmq.ids import new_id
from fedmq.messages import Cancel, WorkerStats
from fedmq.models import MODELS
from fedmq.strategy import FedAvg, FitResult, RoundFailed, Strategy

log = logging.getLogger("fedmq.fl")


@dataclass
class TrainConfig:
    """A run's settings (the seed §14 defaults: 40 rounds, batch 32, 10 batches, lr 0.1)."""
    rounds: int = 40
    model: str = "seed-cnn"
    dataset: str | None = None
    batch_size: int = 32
    num_batches: int | None = 10
    epochs: int | None = None
    lr: float = 0.1
    lr_decay: float = 0.98
    lr_floor: float = 0.01  # of the initial lr
    optimizer: str = "sgd"
    optimizer_args: dict = field(default_factory=dict)
    loss: str = "nll"
    eval_every: int = 10
    eval_batch_size: int = 128
    evaluate_updates: bool = True
    round_timeout: float = 120.0
    seed: int = 1
    buckets: list = field(default_factory=lambda: [(0, 3), (4, 6), (7, 9)])

    def fit_config(self, lr: float) -> dict:
        """What a `Fit` tells the worker (before the strategy adds its own keys)."""
        config = {"batch_size": self.batch_size, "optimizer": self.optimizer, "loss": self.loss,
                  "optimizer_args": {**self.optimizer_args, "lr": lr}}
        if self.epochs:
            config["epochs"] = self.epochs
        else:
            config["num_batches"] = self.num_batches
        if self.dataset:
            config["dataset"] = self.dataset
        return config

    def is_eval_round(self, round: int) -> bool:
        """Rounds 1, 1 + every, 1 + 2 every, ... and the last (the seed: 1, 11, 21, 31, 40);
        never when `eval_every` is 0."""
        every = self.eval_every
        if every <= 0:
            return False
        return round % every == 1 % every or round == self.rounds


@dataclass
class RoundRecord:
    round: int
    seconds: float  # how long the round took
    lr: float
    status: str  # "ok" or "failed" (the global model did not change)
    loss: float
    workers: dict  # id -> {"loss", "samples", "fit_seconds" (the worker's training time)}
    failed: dict  # id -> reason
    accuracy: float | None = None
    test_loss: float | None = None
    correct: int | None = None
    total: int | None = None
    time: float = 0.0  # Unix time the round ended

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def worker_seed(seed: int, round: int, worker_id: str) -> int:
    """The shuffling seed of `worker_id` in `round` (stable across processes and runs)."""
    return zlib.crc32(f"{seed}:{round}:{worker_id}".encode()) & 0x7FFFFFFF


def initial_weights(model: str, seed: int) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = MODELS[model]()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def bucket_line(name: str, res: EvaluateRes, buckets: list) -> str:
    total = sum(res.prediction_hist) or 1
    parts = []
    for lo, hi in buckets:
        share = sum(res.prediction_hist[lo:hi + 1]) / total
        label = f"{lo}-{hi}" if lo != hi else f"{lo}"
        parts.append(f"{label}: {100 * share:.0f}%")
    return f"{name}: Percentage numbers {', '.join(parts)}"


def accuracy_line(name: str, res: EvaluateRes) -> str:
    return (f"{name}: Average loss: {res.loss:.4f}, Accuracy: {res.correct}/{res.num_examples} "
            f"({100 * res.accuracy:.2f}%)")


_CANCELS: set[asyncio.Task] = set()  # Cancels under way (a task needs a reference)
#: seconds a round waits for the answers to its Cancels before it goes on
CANCEL_WAIT = 0.5


def cancel_fit(connection: RequestEngine, worker_id: str, msg_id: int,
               timeout: float = 5.0) -> asyncio.Task:
    """Send `Cancel(msg_id)` to `worker_id` for the Fit sent with that msg_id, which the
    coordinator gave up on (its deadline passed), in a task of its own (nothing waits for it):
    the worker stops training for nothing at its next batch, or drops the Fit if it has not
    started it, and serves the next round. The outcome is logged; errors are not raised."""
    async def cancel() -> None:
        try:
            running = await connection.arequest(worker_id, Cancel(msg_id), timeout=timeout,
                                                expiration=timeout)
            log.info("cancelled the Fit on %s (%s)", worker_id,
                     "it stops at its next batch" if running else "it was not running")
        except Exception as exc:  # noqa: BLE001 - the worker may be gone: nothing to stop
            log.info("could not cancel the Fit on %s: %s: %s", worker_id, type(exc).__name__,
                     exc)

    task = asyncio.ensure_future(cancel())
    _CANCELS.add(task)
    task.add_done_callback(_CANCELS.discard)
    return task


async def wait_for_workers(connection: RequestEngine, ids: list[str], timeout: float,
                           echo: Callable[[str], None], interval: float = 2.0) -> list[str]:
    """Ping every worker until it answers or `timeout` passes; returns the ids that did not
    answer. Over RabbitMQ a message published before the worker declared its queue is lost, so
    a coordinator started together with its workers waits for them first."""
    deadline = time.monotonic() + timeout
    why: dict[str, str] = {}

    async def ping(worker_id: str) -> bool:
        while time.monotonic() < deadline:
            try:
                await connection.arequest(worker_id, WorkerStats(), timeout=interval,
                                         expiration=interval)
                return True
            except Exception as exc:  # not started yet, or busy: ask again
                why[worker_id] = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
        return False

    answered = await asyncio.gather(*(ping(w) for w in ids))
    missing = [w for w, ok in zip(ids, answered) if not ok]
    if missing:
        echo(f"Workers not answering after {timeout:.0f} s: " +
             "; ".join(f"{w} ({why.get(w, 'no answer')})" for w in missing))
    return missing


class Coordinator:
    def __init__(self, connection: RequestEngine, workers: list[str], config: TrainConfig, *,
                 testing: str | None = None, strategy: Strategy | None = None,
                 run_dir: str | pathlib.Path | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        if not workers:
            raise ValueError("a federated run needs at least one worker")
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r} (known: {sorted(MODELS)})")
        self.connection = connection
        self.workers = list(workers)
        self.config = config
        self.testing = testing
        self.strategy = strategy or FedAvg()
        self.run_dir = pathlib.Path(run_dir) if run_dir is not None else None
        self.echo = echo or (lambda line: print(f"{time.strftime('%H:%M:%S')} - {line}",
                                                flush=True))
        self.events = getattr(connection, "events", None) or ev.EventLog()
        self.history: list[RoundRecord] = []
        self.weights: dict = {}
        self.lr = config.lr

    # -- the run ----------------------------------------------------------------------------
    async def wait_for_workers(self, timeout: float, interval: float = 2.0) -> list[str]:
        """See `wait_for_workers`: the data workers and the testing worker."""
        ids = self.workers + ([self.testing] if self.testing else [])
        return await wait_for_workers(self.connection, ids, timeout, self.echo, interval)

    async def run(self, resume: bool = False, until: int | None = None) -> list[RoundRecord]:
        """Rounds from 1 (or after the last checkpoint with `resume`) to `config.rounds`
        (or `until`, to stop early as an interrupted run would)."""
        start = self.prepare(resume)
        last = self.config.rounds if until is None else min(until, self.config.rounds)
        for round in range(start, last + 1):
            record = await self.run_round(round)
            self.end_round(record)
        return self.history

    def prepare(self, resume: bool = False) -> int:
        """Set up the global model (initial, or from the checkpoint); the first round to run."""
        cfg = self.config
        self._metrics = MetricsLog.in_run_dir(self.run_dir)
        state = (checkpoint.load_run(self.run_dir, cfg.model, cfg.seed)
                 if resume and self.run_dir is not None else None)
        if state is not None:
            self.weights = state["weights"]
            self.lr = float(state["lr"])
            self.strategy.load_state_dict(state.get("strategy") or {})
            self._metrics.truncate(state["round"])
            self.echo(f"Resuming after round {state['round']} from "
                      f"{self.run_dir / checkpoint.FILENAME}")
            return state["round"] + 1
        self.weights = initial_weights(cfg.model, cfg.seed)
        self.lr = cfg.lr
        self.strategy.initialize(self.weights)
        if self._metrics is not None and self._metrics.path.exists():
            self._metrics.path.unlink()
        return 1

    def end_round(self, record: RoundRecord) -> None:
        """Decay the learning rate; write the checkpoint, the metrics line and the plot."""
        cfg = self.config
        self.history.append(record)
        self.lr = max(cfg.lr_decay * self.lr, cfg.lr_floor * cfg.lr)
        if self.run_dir is None:
            return
        checkpoint.save(self.run_dir, {"round": record.round, "lr": self.lr,
                                       "weights": self.weights,
                                       "strategy": self.strategy.state_dict(),
                                       "seed": cfg.seed, "model": cfg.model})
        self._metrics.append(record.as_json())
        if cfg.is_eval_round(record.round):
            self.write_plot()

    def write_plot(self) -> pathlib.Path | None:
        if self.run_dir is None:
            return None
        try:
            return plot(MetricsLog(self.run_dir).read(), self.run_dir / PLOT)
        except Exception as exc:  # a missing matplotlib must not stop training
            log.warning("no plot: %s", exc)
            return None

    async def run_round(self, round: int) -> RoundRecord:
        cfg = self.config
        started = time.monotonic()
        rng = random.Random(f"{cfg.seed}:{round}")
        self.echo(f"Training round {round}/{cfg.rounds}")
        evaluate_now = cfg.is_eval_round(round) and self.testing is not None
        failed: dict[str, str] = {}
        try:
            chosen = self.strategy.sample(self.workers, round, rng)
        except RoundFailed as exc:
            chosen = []
            failed["*"] = str(exc)
        self.events.emit(ev.ROUND_STARTED, {"round": round, "workers": chosen, "lr": self.lr})
        fit_config = self.strategy.fit_config(round, cfg.fit_config(self.lr))
        global_weights = self.weights
        aggregation = self.strategy.begin_round(round, global_weights)
        deadline = time.time() + cfg.round_timeout
        update_evals: dict[str, asyncio.Task] = {}
        fit_seconds: dict[str, float] = {}
        cancels: list[asyncio.Task] = []  # Cancels of Fits the round gave up on

        async def fit_one(worker_id: str) -> None:
            config = dict(fit_config, seed=worker_seed(cfg.seed, round, worker_id))
            msg_id = new_id()  # what a Cancel names, if the deadline passes
            try:
                res = await self.connection.arequest(
                    worker_id, Fit(round, cfg.model, global_weights, config, deadline),
                    timeout=max(deadline - time.time(), 0.001), expiration=cfg.round_timeout,
                    msg_id=msg_id)
                if not isinstance(res, FitRes):
                    raise TypeError(f"expected FitRes, got {type(res).__name__}")
                if res.round != round:  # a late reply to an older round
                    raise ValueError(f"reply for round {res.round} discarded")
                if res.status != "ok":
                    raise ValueError(f"worker skipped the round ({res.status})")
                aggregation.add(FitResult(worker_id, res.weights, res.num_examples, res.loss,
                                          round, res.metrics))
                fit_seconds[worker_id] = float(res.metrics.get("fit_seconds", float("nan")))
            except asyncio.CancelledError:
                failed.setdefault(worker_id, "missed the round deadline")
                cancels.append(cancel_fit(self.connection, worker_id, msg_id))
                raise
            except (asyncio.TimeoutError, TimeoutError):
                failed[worker_id] = "missed the round deadline"
                cancels.append(cancel_fit(self.connection, worker_id, msg_id))
            except Exception as exc:
                failed[worker_id] = f"{type(exc).__name__}: {exc}"
            else:
                self.events.emit(ev.FIT_RESULT, {"round": round, "worker": worker_id,
                                                 "loss": res.loss,
                                                 "samples": res.num_examples})
                if evaluate_now and cfg.evaluate_updates:
                    update_evals[worker_id] = asyncio.ensure_future(
                        self.evaluate(round, res.weights))
                return
            self.events.emit(ev.FIT_FAILED, {"round": round, "worker": worker_id,
                                             "reason": failed[worker_id]})

        if chosen:
            try:
                await asyncio.wait_for(asyncio.gather(*(fit_one(w) for w in chosen)),
                                       timeout=cfg.round_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        if cancels:  # sent before the round goes on (the replies are not waited for long)
            await asyncio.wait(cancels, timeout=CANCEL_WAIT)
        for worker_id in chosen:
            if worker_id not in aggregation.losses and worker_id not in failed:
                failed[worker_id] = "missed the round deadline"
        status = "ok"
        try:
            self.weights = self.strategy.finish_round(round, global_weights, aggregation,
                                                      failures=len(failed))
        except RoundFailed as exc:
            status = "failed"
            log.warning("%s; the global model is unchanged", exc)
        workers = {w: {"loss": aggregation.losses[w], "samples": aggregation.samples[w],
                       "fit_seconds": fit_seconds.get(w)}
                   for w in chosen if w in aggregation.losses}
        samples = sum(w["samples"] for w in workers.values())
        # sample-weighted mean in the sampling order (not arrival order): reproducible
        loss = (sum(w["loss"] * w["samples"] for w in workers.values()) / samples
                if samples else float("nan"))
        record = RoundRecord(round=round, seconds=0.0, lr=self.lr, status=status, loss=loss,
                             workers=workers, failed=failed)
        if evaluate_now:
            await self.report_evaluations(round, chosen, update_evals, record)
        record.seconds = time.monotonic() - started
        record.time = time.time()
        self.events.emit(ev.ROUND_FINISHED, record.as_json())
        self.echo(self.progress_line(record, len(chosen)))
        return record

    async def evaluate(self, round: int, weights: dict) -> EvaluateRes | Exception:
        cfg = self.config
        config = {"batch_size": cfg.eval_batch_size, "loss": cfg.loss, "split": "test"}
        if cfg.dataset:
            config["dataset"] = cfg.dataset
        try:
            res = await self.connection.arequest(
                self.testing, Evaluate(round, cfg.model, weights, config),
                timeout=cfg.round_timeout, expiration=cfg.round_timeout)
            if not isinstance(res, EvaluateRes):
                raise TypeError(f"expected EvaluateRes, got {type(res).__name__}")
            return res
        except Exception as exc:
            return exc

    async def report_evaluations(self, round: int, chosen: list[str],
                                 update_evals: dict[str, asyncio.Task],
                                 record: RoundRecord) -> None:
        self.echo("Evaluating models")
        results = [(f"Model update {w}", await update_evals[w])
                   for w in chosen if w in update_evals]
        results.append(("Federated model", await self.evaluate(round, self.weights)))
        for name, res in results:
            if isinstance(res, Exception):
                self.echo(f"{name}: evaluation failed: {type(res).__name__}: {res}")
                continue
            self.echo(bucket_line(name, res, self.config.buckets))
            self.echo(accuracy_line(name, res))
            self.events.emit(ev.EVALUATE_RESULT, {
                "round": round, "model": name, "loss": res.loss, "correct": res.correct,
                "total": res.num_examples, "prediction_hist": res.prediction_hist})
        final = results[-1][1]
        if isinstance(final, EvaluateRes):
            record.accuracy = final.accuracy
            record.test_loss = final.loss
            record.correct = final.correct
            record.total = final.num_examples

    def progress_line(self, record: RoundRecord, sampled: int) -> str:
        done = len(record.workers)
        bar = "#" * (20 * record.round // self.config.rounds)
        line = (f"[{bar:<20}] round {record.round}/{self.config.rounds} {record.status}: "
                f"{done}/{sampled} workers, train loss {record.loss:.4f}, "
                f"lr {record.lr:.4f}, {record.seconds:.2f} s")
        if record.accuracy is not None:
            line += f", accuracy {100 * record.accuracy:.2f}%"
        if record.failed:
            line += "; failed: " + ", ".join(f"{w} ({why})" for w, why in record.failed.items())
        return line
