"""Asynchronous federated learning over fedmq's workers: no rounds, every worker always has one
`Fit` in flight, and each reply is folded into the global model as soon as it arrives.

Protocols (the strategies are in fedmq/strategy/asynchronous.py):
- FedAsync (Xie et al., 2019, "Asynchronous Federated Optimization"): every update is mixed in.
- FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
  K staleness-weighted updates are buffered, then applied as one step (the default, K = the
  number of workers, so one version holds as many updates as a synchronous round).

The loop (one asyncio task per in-flight Fit, gathered with `asyncio.wait(FIRST_COMPLETED)`):
  1. every worker gets `Fit(round=<current version>, weights=<current global model>)`;
  2. when a `FitRes` comes back, `FitResult(round=<the version that worker started from>)` goes
     to `strategy.on_update`; staleness = current version − that version. When the strategy
     returns new weights they become version + 1 (a metrics line, a checkpoint, events, and
     every `eval_every` versions an evaluation on the testing worker with the seed's lines);
  3. that worker immediately gets a new Fit with the latest model. A slow worker never holds
     up a fast one: the fast one simply contributes more (staler-weighted) updates;
  4. a Fit that fails, is skipped ("expired") or misses its per-Fit timeout
     (`config.round_timeout`, also the AMQP message expiration and the Fit deadline) is logged
     and retried after a back-off (`retry_backoff`, doubled per consecutive failure, at most
     `max_backoff`); a Fit that missed its timeout is cancelled on the worker (`Cancel`);
  5. the run stops after `max_updates` received updates (dropped ones count) or `max_versions`
     versions, whichever comes first; replies still in flight are then ignored.

Learning rate: the synchronous schedule with versions for rounds: a Fit sent at version v uses
`max(config.lr * config.lr_decay ** v, config.lr_floor * config.lr)` (with FedBuff's default
buffer of one update per worker, a version is about a round's worth of updates). Shuffling seed
of a Fit: `worker_seed(config.seed, version, worker)`; when the same worker starts again from
the same version (FedBuff still buffering) the k-th repeat uses worker id `"<worker>/<k>"`, so
it does not redo identical batches.

Checkpoint (fedmq.fl.checkpoint, serde, no pickle) after every version: weights, version,
`strategy.state_dict()`, counters; `run(resume=True)` continues the version count from it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fedmq.fl import checkpoint, events as ev
from fedmq.engine import RequestEngine
from fedmq.fl.coordinator import (TrainConfig, accuracy_line, bucket_line, cancel_fit,
                                  initial_weights, worker_seed, wait_for_workers)
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.fl.metrics import PLOT, MetricsLog, plot
from fedmq.ids import new_id
from fedmq.models import MODELS
from fedmq.strategy import AsyncStrategy, FedBuff, FitResult

log = logging.getLogger("fedmq.fl")

VERSION_APPLIED = "version.applied"  # event: a new global model version
UPDATE_DROPPED = "fit.dropped"  # event: an update the strategy dropped (too stale)
MODE = "async"  # marks an asynchronous run's checkpoint


@dataclass
class VersionRecord:
    """One applied global-model version (one line of metrics.jsonl)."""
    version: int
    time: float  # Unix time the version was applied
    seconds: float  # since the start of this run (process)
    loss: float  # sample-weighted mean training loss of the updates in it
    updates: list  # [{"worker", "started_from", "staleness", "loss", "samples"}]
    staleness: list  # staleness of each update in it
    counts: dict  # worker -> updates received from it so far (whole run)
    received: int
    dropped: int
    failures: int
    accuracy: float | None = None
    test_loss: float | None = None
    correct: int | None = None
    total: int | None = None

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class _Sent:
    worker: str
    version: int
    weights: dict = field(repr=False)


class AsyncCoordinator:
    def __init__(self, connection: RequestEngine, workers: list[str], config: TrainConfig, *,
                 testing: str | None = None, strategy: AsyncStrategy | None = None,
                 run_dir: str | pathlib.Path | None = None,
                 echo: Callable[[str], None] | None = None, max_updates: int = 100,
                 max_versions: int | None = None, eval_every: int | None = None,
                 retry_backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        if not workers:
            raise ValueError("a federated run needs at least one worker")
        if len(set(workers)) != len(workers):
            raise ValueError(f"duplicate worker ids in {workers}")
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r} (known: {sorted(MODELS)})")
        if max_updates < 1:
            raise ValueError(f"max_updates must be at least 1, got {max_updates}")
        if max_versions is not None and max_versions < 1:
            raise ValueError(f"max_versions must be at least 1, got {max_versions}")
        if strategy is not None and not isinstance(strategy, AsyncStrategy):
            raise TypeError(f"the asynchronous coordinator needs an AsyncStrategy (FedAsync, "
                            f"FedBuff), got {type(strategy).__name__}")
        self.connection = connection
        self.workers = list(workers)
        self.config = config
        self.testing = testing
        self.strategy = strategy or FedBuff(buffer_size=len(self.workers))
        self.run_dir = pathlib.Path(run_dir) if run_dir is not None else None
        self.echo = echo or (lambda line: print(f"{time.strftime('%H:%M:%S')} - {line}",
                                                flush=True))
        self.max_updates = max_updates
        self.max_versions = max_versions
        self.eval_every = config.eval_every if eval_every is None else eval_every
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.events = getattr(connection, "events", None) or ev.EventLog()
        self.history: list[VersionRecord] = []
        self.weights: dict = {}
        self.version = 0
        self.counts: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # failed Fits per worker (whole run)
        self._pending: list[dict] = []  # updates buffered for the next version
        self._repeats: dict[tuple[str, int], int] = {}
        self._streak: dict[str, int] = {}  # consecutive failures per worker
        self._metrics: MetricsLog | None = None
        self._evaluated = -1

    # -- set-up and resume ----------------------------------------------------------------
    @property
    def received(self) -> int:
        return sum(self.counts.values())

    def prepare(self, resume: bool = False) -> None:
        """The initial global model (version 0), or the checkpoint's with `resume`."""
        cfg = self.config
        self._metrics = MetricsLog.in_run_dir(self.run_dir)
        self.counts = {w: 0 for w in self.workers}
        self.failures = {w: 0 for w in self.workers}
        self._pending, self._streak, self._repeats = [], {}, {}
        state = (checkpoint.load_run(self.run_dir, cfg.model, cfg.seed)
                 if resume and self.run_dir is not None else None)
        if state is not None:
            if state.get("mode") != MODE:
                raise ValueError(f"the checkpoint in {self.run_dir} is not of an asynchronous "
                                 f"run")
            self.weights = state["weights"]
            self.version = int(state["version"])
            self.strategy.load_state_dict(state.get("strategy") or {})
            self.counts.update({str(k): int(v) for k, v in state.get("counts", {}).items()})
            self.failures.update({str(k): int(v) for k, v in state.get("failures", {}).items()})
            self._truncate_metrics(self.version)
            self.echo(f"Resuming after version {self.version} ({self.received} updates) from "
                      f"{self.run_dir / checkpoint.FILENAME}")
            return
        self.weights = initial_weights(cfg.model, cfg.seed)
        self.version = 0
        self.strategy.initialize(self.weights, version=0)
        if self._metrics is not None and self._metrics.path.exists():
            self._metrics.path.unlink()

    def _truncate_metrics(self, last_version: int) -> None:
        if self._metrics is None:
            return
        kept = [r for r in self._metrics.read() if r["version"] <= last_version]
        self._metrics.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    # -- the run --------------------------------------------------------------------------
    def _done(self) -> bool:
        return self.received >= self.max_updates or (
            self.max_versions is not None and self.version >= self.max_versions)

    async def run(self, resume: bool = False) -> list[VersionRecord]:
        """Train until `max_updates` updates have been received in total (a resumed run
        counts those before the checkpoint) or `max_versions` versions exist; the records of
        the versions applied by this call."""
        self.prepare(resume)
        self._started = time.monotonic()
        self.echo(f"Asynchronous training with {self.strategy!r} on {', '.join(self.workers)}: "
                  f"up to {self.max_updates} updates")
        tasks: dict[asyncio.Task, str] = {}
        for worker in self.workers:
            tasks[asyncio.ensure_future(self._fit(worker, 0.0))] = worker
        try:
            while tasks and not self._done():
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: self.workers.index(tasks[t])):
                    worker = tasks.pop(task)
                    delay = await self._handle(worker, task)
                    if self._done():
                        break
                    tasks[asyncio.ensure_future(self._fit(worker, delay))] = worker
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.testing is not None and self._evaluated != self.version and self.history \
                and self.eval_every > 0:
            await self._evaluate_final()
        self.write_plot()
        self.echo(f"Finished: version {self.version}, {self.received} updates received "
                  f"({self.strategy.dropped} dropped as too stale, "
                  f"{sum(self.failures.values())} failed Fits), "
                  f"{time.monotonic() - self._started:.2f} s")
        return self.history

    def _fit_config(self, worker: str, version: int) -> dict[str, Any]:
        cfg = self.config
        base = cfg.fit_config(max(cfg.lr * cfg.lr_decay ** version, cfg.lr_floor * cfg.lr))
        repeat = self._repeats.get((worker, version), 0)
        self._repeats[(worker, version)] = repeat + 1
        name = worker if repeat == 0 else f"{worker}/{repeat}"
        return dict(self.strategy.fit_config(version, base),
                    seed=worker_seed(cfg.seed, version, name))

    async def _fit(self, worker: str, delay: float) -> tuple[_Sent, FitRes]:
        """After `delay` s, send `worker` the current model; its reply and what was sent."""
        if delay > 0:
            await asyncio.sleep(delay)
        sent = _Sent(worker, self.version, self.weights)
        timeout = self.config.round_timeout
        msg = Fit(sent.version, self.config.model, sent.weights,
                  self._fit_config(worker, sent.version), time.time() + timeout)
        msg_id = new_id()  # what a Cancel names, if it times out
        try:
            res = await self.connection.arequest(worker, msg, timeout=timeout,
                                                expiration=timeout, msg_id=msg_id)
        except (asyncio.TimeoutError, TimeoutError):
            cancel_fit(self.connection, worker, msg_id)
            raise TimeoutError(f"no reply within {timeout:g} s") from None
        return sent, res

    async def _handle(self, worker: str, task: asyncio.Task) -> float:
        """Fold one finished Fit into the global model; the back-off before the next Fit."""
        try:
            sent, res = task.result()
            if not isinstance(res, FitRes):
                raise TypeError(f"expected FitRes, got {type(res).__name__}")
            if res.status != "ok":
                raise ValueError(f"worker skipped the Fit ({res.status})")
            if res.round != sent.version:
                raise ValueError(f"reply for version {res.round} discarded "
                                 f"(sent version {sent.version})")
            result = FitResult(worker, res.weights, res.num_examples, res.loss, sent.version,
                               res.metrics)
            version = self.version
            staleness = version - sent.version
            dropped_before = self.strategy.dropped
            new = self.strategy.on_update(self.weights, version, result)
        except Exception as exc:
            self.failures[worker] += 1
            reason = f"{type(exc).__name__}: {exc}"
            run = self._consecutive_failures(worker)
            backoff = min(self.retry_backoff * 2 ** (run - 1), self.max_backoff)
            log.warning("Fit on %s failed (%s); retrying in %.1f s", worker, reason, backoff)
            self.echo(f"{worker}: Fit failed ({reason}); retrying in {backoff:.1f} s")
            self.events.emit(ev.FIT_FAILED, {"version": self.version, "worker": worker,
                                             "reason": reason, "retry_in": backoff})
            return backoff
        self._streak[worker] = 0
        self.counts[worker] += 1
        update = {"worker": worker, "started_from": sent.version, "staleness": staleness,
                  "loss": res.loss, "samples": res.num_examples}
        self.events.emit(ev.FIT_RESULT, {"version": version, **update})
        if self.strategy.dropped > dropped_before:
            self.events.emit(UPDATE_DROPPED, {"version": version, **update})
        else:
            self._pending.append(update)
        if new is not None:
            self.weights = new
            self.version = version + 1
            await self._end_version()
        return 0.0

    def _consecutive_failures(self, worker: str) -> int:
        self._streak[worker] = self._streak.get(worker, 0) + 1
        return self._streak[worker]

    def _is_eval_version(self, version: int) -> bool:
        every = self.eval_every
        if every <= 0 or self.testing is None:
            return False
        return version % every == 1 % every or self._done()

    async def _end_version(self) -> None:
        updates, self._pending = self._pending, []
        samples = sum(u["samples"] for u in updates)
        loss = (sum(u["loss"] * u["samples"] for u in updates) / samples
                if samples else float("nan"))
        record = VersionRecord(
            version=self.version, time=time.time(),
            seconds=time.monotonic() - self._started, loss=loss, updates=updates,
            staleness=[u["staleness"] for u in updates], counts=dict(self.counts),
            received=self.received, dropped=self.strategy.dropped,
            failures=sum(self.failures.values()))
        self._repeats = {k: n for k, n in self._repeats.items() if k[1] >= self.version - 1}
        if self._is_eval_version(self.version):
            await self._evaluate_into(record)
        self.history.append(record)
        self.events.emit(VERSION_APPLIED, record.as_json())
        self.echo(self.progress_line(record))
        if self.run_dir is not None:
            cfg = self.config
            checkpoint.save(self.run_dir, {
                "mode": MODE, "round": self.version, "version": self.version,
                "weights": self.weights, "strategy": self.strategy.state_dict(),
                "counts": dict(self.counts), "failures": dict(self.failures),
                "seed": cfg.seed, "model": cfg.model})
            self._metrics.append(record.as_json())
            if record.accuracy is not None:
                self.write_plot()

    # -- evaluation, output ---------------------------------------------------------------
    async def evaluate(self, weights: dict, version: int = 0) -> EvaluateRes:
        """The testing worker's evaluation of `weights` (raises on failure)."""
        cfg = self.config
        config = {"batch_size": cfg.eval_batch_size, "loss": cfg.loss, "split": "test"}
        if cfg.dataset:
            config["dataset"] = cfg.dataset
        res = await self.connection.arequest(
            self.testing, Evaluate(version, cfg.model, weights, config),
            timeout=cfg.round_timeout, expiration=cfg.round_timeout)
        if not isinstance(res, EvaluateRes):
            raise TypeError(f"expected EvaluateRes, got {type(res).__name__}")
        return res

    async def _evaluate_into(self, record: VersionRecord) -> None:
        name = "Federated model"
        self.echo(f"Evaluating models (version {record.version})")
        self._evaluated = record.version
        try:
            res = await self.evaluate(self.weights, record.version)
        except Exception as exc:
            self.echo(f"{name}: evaluation failed: {type(exc).__name__}: {exc}")
            return
        self.echo(bucket_line(name, res, self.config.buckets))
        self.echo(accuracy_line(name, res))
        self.events.emit(ev.EVALUATE_RESULT, {
            "version": record.version, "model": name, "loss": res.loss,
            "correct": res.correct, "total": res.num_examples,
            "prediction_hist": res.prediction_hist})
        record.accuracy, record.test_loss = res.accuracy, res.loss
        record.correct, record.total = res.correct, res.num_examples

    async def _evaluate_final(self) -> None:
        """The last version was applied before the last update arrived: evaluate it now and
        complete its metrics line."""
        record = self.history[-1]
        if record.version != self.version:
            return
        await self._evaluate_into(record)
        if self._metrics is not None and record.accuracy is not None:
            rows = self._metrics.read()
            if rows and rows[-1]["version"] == record.version:
                rows[-1] = json.loads(json.dumps(record.as_json()))
                self._metrics.path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    async def wait_for_workers(self, timeout: float, interval: float = 2.0) -> list[str]:
        ids = self.workers + ([self.testing] if self.testing else [])
        return await wait_for_workers(self.connection, ids, timeout, self.echo, interval)

    def write_plot(self) -> pathlib.Path | None:
        """metrics.png: accuracy and loss per global-model version."""
        if self.run_dir is None or self._metrics is None:
            return None
        try:
            rows = self._metrics.read()
            return plot(rows, self.run_dir / PLOT, x="version") if rows else None
        except Exception as exc:  # a missing matplotlib must not stop training
            log.warning("no plot: %s", exc)
            return None

    def progress_line(self, record: VersionRecord) -> str:
        line = (f"version {record.version}: {len(record.updates)} updates (staleness "
                f"{','.join(map(str, record.staleness))}), train loss {record.loss:.4f}, "
                f"{record.received}/{self.max_updates} received, {record.dropped} dropped, "
                f"{record.seconds:.2f} s")
        if record.accuracy is not None:
            line += f", accuracy {100 * record.accuracy:.2f}%"
        return line
