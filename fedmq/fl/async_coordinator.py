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

The strategy is driven through Flower's interface with versions for rounds
(fedmq.strategy.asynchronous): `configure_fit` for the worker's next Fit, `on_update` =
`begin_fit` + `add` + `aggregate_fit` for each reply (a rejected result, with no examples or
non-finite values, is a failed Fit: logged, counted, retried). Printed lines, checkpoints,
metrics and events are reporters (fedmq.fl.reporters); the shared plumbing is fedmq.fl.base.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from fedmq.engine import RequestEngine
from fedmq.fl.base import CoordinatorBase, cancel_fit
from fedmq.fl.config import TrainConfig
from fedmq.fl.events import UPDATE_DROPPED, VERSION_APPLIED
from fedmq.fl.messages import EvaluateRes, FitRes
from fedmq.fl.reporters import AsyncConsoleReporter, Reporter
from fedmq.ids import new_id
from fedmq.strategy import AsyncStrategy, EvaluateIns, FedBuff, FitResult

log = logging.getLogger("fedmq.fl")

__all__ = ["MODE", "UPDATE_DROPPED", "VERSION_APPLIED", "AsyncCoordinator", "VersionRecord"]

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


class AsyncCoordinator(CoordinatorBase):
    unit = "version"

    def __init__(self, connection: RequestEngine, workers: list[str], config: TrainConfig, *,
                 testing: str | None = None, strategy: AsyncStrategy | None = None,
                 run_dir: str | pathlib.Path | None = None,
                 echo: Callable[[str], None] | None = None, max_updates: int = 100,
                 max_versions: int | None = None, eval_every: int | None = None,
                 retry_backoff: float = 1.0, max_backoff: float = 30.0,
                 reporters: Iterable[Reporter] | None = None,
                 extra_reporters: Iterable[Reporter] = (), overwrite: bool = False,
                 progress: str = "auto") -> None:
        if max_updates < 1:
            raise ValueError(f"max_updates must be at least 1, got {max_updates}")
        if max_versions is not None and max_versions < 1:
            raise ValueError(f"max_versions must be at least 1, got {max_versions}")
        if strategy is not None and not isinstance(strategy, AsyncStrategy):
            raise TypeError(f"the asynchronous coordinator needs an AsyncStrategy (FedAsync, "
                            f"FedBuff), got {type(strategy).__name__}")
        self.max_updates = max_updates
        self.max_versions = max_versions
        self.eval_every = config.eval_every if eval_every is None else eval_every
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        super().__init__(connection, workers, config, testing=testing,
                         strategy=strategy or FedBuff(buffer_size=len(workers)),
                         run_dir=run_dir, echo=echo, reporters=reporters,
                         extra_reporters=extra_reporters, overwrite=overwrite,
                         progress=progress)
        self.history: list[VersionRecord] = []
        self.version = 0
        self.counts: dict[str, int] = {}
        self.failures: dict[str, int] = {}  # failed Fits per worker (whole run)
        self.started = time.monotonic()
        self._pending: list[dict] = []  # updates buffered for the next version
        self._streak: dict[str, int] = {}  # consecutive failures per worker
        self._evaluated = -1

    def console_reporter(self) -> Reporter:
        return AsyncConsoleReporter()

    def checkpoint_state(self, record: VersionRecord) -> dict:
        return {"mode": MODE, "round": self.version, "version": self.version,
                "weights": self.weights, "strategy": self.strategy.state_dict(),
                "counts": dict(self.counts), "failures": dict(self.failures),
                "seed": self.config.seed, "model": self.config.model}

    # -- set-up and resume ----------------------------------------------------------------
    @property
    def received(self) -> int:
        return sum(self.counts.values())

    def prepare(self, resume: bool = False) -> None:
        """The initial global model (version 0), or the checkpoint's with `resume`."""
        self.counts = {w: 0 for w in self.workers}
        self.failures = {w: 0 for w in self.workers}
        self._pending, self._streak = [], {}
        state = self.load_checkpoint(resume)
        if state is not None:
            if state.get("mode") != MODE:
                raise ValueError(f"the checkpoint in {self.run_dir} is not of an asynchronous "
                                 f"run")
            self.version = int(state["version"])
            self.counts.update({str(k): int(v) for k, v in state.get("counts", {}).items()})
            self.failures.update({str(k): int(v) for k, v in state.get("failures", {}).items()})
        else:
            self.version = 0
        self.start_model(state, version=self.version)
        self.report("on_prepare", self.version if state is not None else None)

    # -- the run --------------------------------------------------------------------------
    def _done(self) -> bool:
        return self.received >= self.max_updates or (
            self.max_versions is not None and self.version >= self.max_versions)

    async def run(self, resume: bool = False) -> list[VersionRecord]:
        """Train until `max_updates` updates have been received in total (a resumed run
        counts those before the checkpoint) or `max_versions` versions exist; the records of
        the versions applied by this call."""
        self.prepare(resume)
        self.started = time.monotonic()
        with self.running():
            await self._run_fits()
            if self.testing is not None and self._evaluated != self.version and self.history \
                    and self.eval_every > 0:
                await self._evaluate_final()
        return self.history

    async def _run_fits(self) -> None:
        """Keep a Fit in flight on every worker until `_done()`."""
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

    def lr_at(self, version: int) -> float:
        """The synchronous schedule with versions for rounds."""
        cfg = self.config
        return max(cfg.lr * cfg.lr_decay ** version, cfg.lr_floor * cfg.lr)

    async def _fit(self, worker: str, delay: float) -> tuple[_Sent, FitRes]:
        """After `delay` s, send `worker` the current model; its reply and what was sent."""
        if delay > 0:
            await asyncio.sleep(delay)
        sent = _Sent(worker, self.version, self.weights)
        timeout = self.config.round_timeout
        ((_, ins),) = self.strategy.configure_fit(
            sent.version, sent.weights, [worker], self.config.fit_config(self.lr_at(sent.version)),
            seed=self.config.seed)
        deadline = time.time() + timeout
        msg_id = new_id()  # what a Cancel names, if it times out
        try:
            res = await self.request_with_model(
                worker, lambda model: self.fit_instructions(sent.version, worker, ins, deadline,
                                                            model),
                timeout=timeout, expiration=timeout, msg_id=msg_id)
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
            self.report("on_fit_failure", self.version, worker, reason, backoff)
            return backoff
        self._streak[worker] = 0
        self.counts[worker] += 1
        update = {"started_from": sent.version, "staleness": staleness,
                  "loss": res.loss, "samples": res.num_examples}
        self.report("on_fit_result", version, worker, update)
        if self.strategy.dropped > dropped_before:
            self.report("on_update_dropped", version, worker, update)
        else:
            self._pending.append({"worker": worker, **update})
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
            seconds=time.monotonic() - self.started, loss=loss, updates=updates,
            staleness=[u["staleness"] for u in updates], counts=dict(self.counts),
            received=self.received, dropped=self.strategy.dropped,
            failures=sum(self.failures.values()))
        if self._is_eval_version(self.version):
            await self._evaluate_into(record)
        self.history.append(record)
        self.report("on_round_end", record)
        self.report("on_round_closed", record)

    # -- evaluation -----------------------------------------------------------------------
    async def evaluate(self, weights: dict, version: int = 0) -> EvaluateRes:
        """The testing worker's evaluation of `weights` (raises on failure)."""
        return await self.request_evaluate(self.testing, version,
                                           EvaluateIns(weights, self.evaluate_config()))

    async def _evaluate_into(self, record: VersionRecord) -> None:
        self.report("on_evaluate_start", record.version)
        self._evaluated = record.version
        await self.evaluate_global(record.version, record)

    async def _evaluate_final(self) -> None:
        """The last version was applied before the last update arrived: evaluate it now and
        complete its metrics line."""
        record = self.history[-1]
        if record.version != self.version:
            return
        await self._evaluate_into(record)
        if record.accuracy is not None:
            self.report("on_record_updated", record)

    def progress_line(self, record: VersionRecord) -> str:
        return AsyncConsoleReporter().bind(self).progress_line(record)
