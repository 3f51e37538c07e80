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

The strategy is driven through Flower's interface (fedmq.strategy.base): `configure_fit` picks
the workers and their FitIns, `begin_fit`/`add` fold replies as they arrive (a result the
strategy rejects, with no examples or non-finite values, is logged and recorded as that
worker's failure), `aggregate_fit` makes the next model. What is printed, checkpointed, logged
as metrics and published as events is done by reporters (fedmq.fl.reporters) beside the loop;
the shared plumbing is fedmq.fl.base.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fedmq.engine import RequestEngine
from fedmq.fl.base import CANCEL_WAIT, CoordinatorBase, cancel_fit, wait_for_workers
from fedmq.fl.config import TrainConfig, initial_model, initial_weights
from fedmq.fl.messages import EvaluateRes, FitRes
from fedmq.fl.reporters import ConsoleReporter, Reporter, accuracy_line, bucket_line
from fedmq.fl.secure import PrivateRounds
from fedmq.ids import new_id
from fedmq.secagg.base import SecureAggregationError
from fedmq.strategy import (AsyncStrategy, EvaluateIns, FedAvg, FitIns, FitResult, RoundFailed, Strategy,
                            UpdateRejected, check_result, worker_seed)

log = logging.getLogger("fedmq.fl")
#: seconds the end of a run waits, at most, for the workers to confirm they freed what its
#: secure aggregation left them (SecAggEnd)
END_SESSION_WAIT = 2.0

__all__ = ["CANCEL_WAIT", "Coordinator", "RoundRecord", "TrainConfig", "accuracy_line",
           "bucket_line", "cancel_fit", "initial_model", "initial_weights", "wait_for_workers",
           "worker_seed"]


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
    #: differential privacy: epsilon spent so far, at the run's delta (None without DP)
    epsilon: float | None = None

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


class RunRefused(RuntimeError):
    """Every worker refused a round (AccessDeniedError: a role not granted, a model plan the
    data owner did not allow): later rounds would be refused alike. `reasons`: worker ->
    the refusal."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__("every worker refused the round: " + "; ".join(
            f"{w}: {r}" for w, r in reasons.items()))
        self.reasons = reasons


class RunFailed(RuntimeError):
    """`rounds` rounds in a row in which no worker trained (every fit failed): the run stops
    rather than spend its remaining rounds the same way. `reasons`: worker -> the last
    round's failure."""

    def __init__(self, rounds: int, reasons: dict[str, str]) -> None:
        super().__init__(f"{rounds} rounds in a row failed on every worker")
        self.rounds = rounds
        self.reasons = reasons


def refusals(record: Any) -> dict[str, str]:
    """The refusals of a round in which no worker trained and each failure was a refusal
    (else {})."""
    failed = {w: r for w, r in record.failed.items() if w != "*"}
    if record.workers or not failed or \
            not all(r.startswith("AccessDeniedError") for r in failed.values()):
        return {}
    return failed


class Coordinator(CoordinatorBase):
    unit = "round"

    def __init__(self, connection: RequestEngine, workers: list[str], config: TrainConfig, *,
                 testing: str | None = None, strategy: Strategy | None = None,
                 run_dir: str | pathlib.Path | None = None,
                 echo: Callable[[str], None] | None = None,
                 reporters: Iterable[Reporter] | None = None,
                 extra_reporters: Iterable[Reporter] = (), overwrite: bool = False,
                 max_failed_rounds: int | None = None, progress: str = "auto",
                 privacy: PrivateRounds | None = None) -> None:
        if isinstance(strategy, AsyncStrategy):
            raise TypeError(f"{type(strategy).__name__} runs without rounds: use "
                            f"fedmq.fl.async_coordinator.AsyncCoordinator")
        self.lr = config.lr
        super().__init__(connection, workers, config, testing=testing,
                         strategy=strategy or FedAvg(), run_dir=run_dir, echo=echo,
                         reporters=reporters, extra_reporters=extra_reporters,
                         overwrite=overwrite, progress=progress)
        self.history: list[RoundRecord] = []
        #: secure aggregation and differential privacy (fedmq.fl.secure), None for neither
        self.privacy = privacy
        if privacy is not None:
            privacy.check_strategy(self.strategy)
        #: stop with RunFailed after this many rounds in a row with no worker trained
        self.max_failed_rounds = max_failed_rounds

    def console_reporter(self) -> Reporter:
        return ConsoleReporter()

    def plot_if(self, record: RoundRecord) -> bool:
        return self.config.is_eval_round(record.round)

    def checkpoint_state(self, record: RoundRecord) -> dict:
        return {"round": record.round, "lr": self.lr, "lr0": self.config.lr,
                "weights": self.weights,
                "strategy": self.strategy.state_dict(), "seed": self.config.seed,
                "model": self.config.model,
                "privacy": self.privacy.state_dict() if self.privacy is not None else {}}

    # -- the run ----------------------------------------------------------------------------
    async def run(self, resume: bool = False, until: int | None = None) -> list[RoundRecord]:
        """Rounds from 1 (or after the last checkpoint with `resume`) to `config.rounds`
        (or `until`, to stop early as an interrupted run would)."""
        start = self.prepare(resume)
        last = self.config.rounds if until is None else min(until, self.config.rounds)
        refused: dict[str, str] = {}
        failed_in_a_row = 0
        try:
            with self.running():
                for round in range(start, last + 1):
                    record = await self.run_round(round)
                    self.end_round(record)
                    refused = refusals(record)
                    if refused:  # the workers will refuse every round alike: say why once
                        break
                    failed_in_a_row = 0 if record.workers else failed_in_a_row + 1
                    if self.max_failed_rounds and failed_in_a_row >= self.max_failed_rounds:
                        break
        finally:  # ended, failed or cancelled: the workers free what the secure rounds left
            if self.privacy is not None:
                await asyncio.shield(self.privacy.end_session(
                    self.secure_request, time.time() + min(END_SESSION_WAIT,
                                                           self.config.round_timeout)))
        if refused:
            raise RunRefused(refused)
        if self.max_failed_rounds and failed_in_a_row >= self.max_failed_rounds:
            raise RunFailed(failed_in_a_row, dict(self.history[-1].failed))
        return self.history

    def prepare(self, resume: bool = False) -> int:
        """Set up the global model (initial, or from the checkpoint); the first round to run."""
        state = self.load_checkpoint(resume)
        self.start_model(state)
        self.lr = float(state["lr"]) if state is not None else self.config.lr
        if state is not None and self.privacy is not None:
            self.privacy.load_state_dict(state.get("privacy") or {})
        if state is not None and state.get("lr0") and state["lr0"] != self.config.lr:
            # resumed with another --lr: the same schedule from the new initial rate
            self.lr *= self.config.lr / float(state["lr0"])
        if self.privacy is not None:  # ValueError: DP cannot cover this model
            self.privacy.check_model(self.weights, self.trainable)
        self.report("on_prepare", state["round"] if state is not None else None)
        return state["round"] + 1 if state is not None else 1

    def end_round(self, record: RoundRecord) -> None:
        """Decay the learning rate; then the reporters write the checkpoint, the metrics line
        and the plot."""
        cfg = self.config
        self.history.append(record)
        self.lr = max(cfg.lr_decay * self.lr, cfg.lr_floor * cfg.lr)
        self.report("on_round_closed", record)

    async def run_round(self, round: int) -> RoundRecord:
        cfg = self.config
        started = time.monotonic()
        evaluate_now = cfg.is_eval_round(round) and self.testing is not None
        failed: dict[str, str] = {}
        global_weights = self.weights
        try:
            todo = self.strategy.configure_fit(round, global_weights, self.workers,
                                               cfg.fit_config(self.lr), seed=cfg.seed)
        except RoundFailed as exc:
            todo = []
            failed["*"] = str(exc)
        chosen = [worker_id for worker_id, _ in todo]
        self.report("on_round_start", round, chosen, self.lr)
        results = self.strategy.begin_fit(round, global_weights)
        deadline = time.time() + cfg.round_timeout
        update_evals: dict[str, asyncio.Task] = {}
        fit_seconds: dict[str, float] = {}
        cancels: list[asyncio.Task] = []  # Cancels of Fits the round gave up on
        privacy = self.privacy
        secure = privacy is not None and privacy.secure
        protected: dict[str, FitRes] = {}  # secure rounds: each worker's protected update
        central_dp = privacy is not None and privacy.central and not secure
        clipped: dict[str, FitResult] = {}  # central DP: each worker's clipped result
        fit_metrics: dict[str, dict] = {}
        if privacy is not None and todo:
            entries: dict[str, dict] = {}
            if secure:
                try:
                    # the set-up stages may take a quarter of the round: a worker that hangs
                    # there drops out, and the others still have the time to train
                    entries = await privacy.begin(round, chosen, self.secure_request,
                                                  time.time() + cfg.round_timeout / 4,
                                                  global_weights)
                except SecureAggregationError as exc:
                    failed["*"] = str(exc)
                    todo = []
                for worker_id in chosen:
                    if worker_id not in entries:
                        failed[worker_id] = ("dropped out of the secure aggregation set-up"
                                             if todo else "not asked: the secure aggregation "
                                                          "set-up failed")
                todo = [(w, ins) for w, ins in todo if w in entries]
            todo = [(w, privacy.fit_ins(ins, entries.get(w), len(chosen))) for w, ins in todo]

        async def fit_one(worker_id: str, ins: FitIns) -> None:
            msg_id = new_id()  # what a Cancel names, if the deadline passes
            try:
                res = await self.request_with_model(
                    worker_id,
                    lambda model: self.fit_instructions(round, worker_id, ins, deadline, model),
                    timeout=max(deadline - time.time(), 0.001), expiration=cfg.round_timeout,
                    msg_id=msg_id)
                if not isinstance(res, FitRes):
                    raise TypeError(f"expected FitRes, got {type(res).__name__}")
                if res.round != round:  # a late reply to an older round
                    raise ValueError(f"reply for round {res.round} discarded")
                if res.status != "ok":
                    raise ValueError(f"worker skipped the round ({res.status})")
                fit_metrics[worker_id] = res.metrics if isinstance(res.metrics, dict) else {}
                result = FitResult(worker_id, res.weights, res.num_examples, res.loss,
                                   round, res.metrics)
                if secure:  # its update is protected: only the sum will be known
                    n = res.num_examples  # FedAvg's weight, in the clear
                    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                        raise UpdateRejected(f"update from {worker_id}: num_examples must "
                                             f"be a positive int, got {n!r}")
                    protected[worker_id] = res
                    try:  # the method may start unmasking the settled workers now
                        privacy.masked(round, worker_id, res, self.secure_request, deadline)
                    except Exception:  # noqa: BLE001 - end_round judges the update
                        log.exception("round %d: early secure aggregation step for %s failed",
                                      round, worker_id)
                elif central_dp:  # clipped now, averaged with the noise once all are in
                    check_result(global_weights, result)
                    clipped[worker_id] = privacy.clip_result(global_weights, result,
                                                             self.trainable)
                else:
                    results.add(result)
                fit_seconds[worker_id] = float(res.metrics.get("fit_seconds", float("nan")))
            except asyncio.CancelledError:
                failed.setdefault(worker_id, "missed the round deadline")
                cancels.append(cancel_fit(self.connection, worker_id, msg_id))
                raise
            except (asyncio.TimeoutError, TimeoutError):
                failed[worker_id] = "missed the round deadline"
                cancels.append(cancel_fit(self.connection, worker_id, msg_id))
            except UpdateRejected as exc:
                failed[worker_id] = f"{type(exc).__name__}: {exc}"
                log.warning("round %d: the update of %s is dropped: %s", round, worker_id, exc)
            except Exception as exc:
                failed[worker_id] = f"{type(exc).__name__}: {exc}"
            else:
                self.report("on_fit_result", round, worker_id,
                            {"loss": res.loss, "samples": res.num_examples})
                if evaluate_now and cfg.evaluate_updates and not secure:
                    update_evals[worker_id] = asyncio.ensure_future(
                        self.evaluate(round, res.weights))
                return
            self.report("on_fit_failure", round, worker_id, failed[worker_id], None)

        if todo:
            try:
                fits = asyncio.gather(*(fit_one(w, ins) for w, ins in todo))
                # a run cancelled (Ctrl-C) mid-round: wait_for leaves the gather's
                # CancelledError unretrieved, which asyncio would log as an error
                fits.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.wait_for(fits, timeout=cfg.round_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                pass
            except BaseException:  # the run is cancelled: the method's early steps stop too
                if secure:
                    privacy.abandon(round)
                raise
        if cancels:  # sent before the round goes on (the replies are not waited for long)
            await asyncio.wait(cancels, timeout=CANCEL_WAIT)
        if secure and not protected:  # nothing to unmask
            privacy.abandon(round)
        if secure and protected:
            await self.unmask(round, global_weights, protected, results, failed, deadline,
                              len(chosen))
        if clipped:  # DP-FedAvg: the noised mean over the sampled workers, as one result
            try:
                results.add_mean(privacy.dp_mean(global_weights, clipped, len(chosen),
                                                 self.trainable),
                                 {w: r.loss for w, r in clipped.items()},
                                 {w: int(r.num_examples) for w, r in clipped.items()})
            except UpdateRejected as exc:
                failed["*"] = f"{type(exc).__name__}: {exc}"
        for worker_id in chosen:
            if worker_id not in results.losses and worker_id not in failed:
                failed[worker_id] = "missed the round deadline"
        status = "ok"
        try:
            self.weights = self.strategy.aggregate_fit(round, results, failed)
        except RoundFailed as exc:
            status = "failed"
            log.warning("%s; the global model is unchanged", exc)
        workers = {w: {"loss": results.losses[w], "samples": results.samples[w],
                       "fit_seconds": fit_seconds.get(w)}
                   for w in chosen if w in results.losses}
        samples = sum(w["samples"] for w in workers.values())
        # sample-weighted mean in the sampling order (not arrival order): reproducible
        loss = (sum(w["loss"] * w["samples"] for w in workers.values()) / samples
                if samples else float("nan"))
        record = RoundRecord(round=round, seconds=0.0, lr=self.lr, status=status, loss=loss,
                             workers=workers, failed=failed)
        if privacy is not None:  # what this round spent (the sampled workers took part)
            record.epsilon = privacy.account(
                len(chosen), len(self.workers),
                {w: fit_metrics.get(w, {}) for w in chosen if w in results.losses})
        if evaluate_now:
            await self.report_evaluations(round, chosen, update_evals, record)
        record.seconds = time.monotonic() - started
        record.time = time.time()
        self.report("on_round_end", record)
        return record

    async def secure_request(self, worker_id: str, message: Any, timeout: float) -> Any:
        """One request of a secure-aggregation stage (fedmq.secagg.base.Request)."""
        timeout = max(float(timeout), 0.001)
        return await self.connection.arequest(worker_id, message, timeout=timeout,
                                              expiration=timeout)

    async def unmask(self, round: int, global_weights: dict, protected: dict[str, FitRes],
                     results: Any, failed: dict[str, str], deadline: float,
                     sampled: int) -> None:
        """A secure round's last stages: the contributors' mean folded into `results` (one
        result, FitAggregate.add_mean); a worker whose update could not be counted, or the
        whole round ("*"), recorded in `failed`."""
        try:
            mean, contributors = await self.privacy.finish(
                round, global_weights, protected, self.secure_request,
                max(deadline, time.time() + self.config.round_timeout / 4), sampled)
            results.add_mean(mean, {w: protected[w].loss for w in contributors},
                             {w: int(protected[w].num_examples) for w in contributors})
        except (SecureAggregationError, UpdateRejected) as exc:
            failed["*"] = f"{type(exc).__name__}: {exc}"
            log.warning("round %d: secure aggregation failed: %s", round, exc)
            for worker_id in protected:  # they answered in time: the round could not count them
                failed[worker_id] = "its update could not be unmasked (the secure aggregation " \
                                    "failed)"
            return
        for worker_id in protected:
            if worker_id not in contributors:
                failed[worker_id] = "its update could not be unmasked"

    async def evaluate(self, round: int, weights: dict) -> EvaluateRes | Exception:
        """The testing worker's evaluation of `weights` (an exception is returned)."""
        try:
            return await self.request_evaluate(
                self.testing, round, EvaluateIns(weights, self.evaluate_config()))
        except Exception as exc:
            return exc

    async def report_evaluations(self, round: int, chosen: list[str],
                                 update_evals: dict[str, asyncio.Task],
                                 record: RoundRecord) -> None:
        """Each update's evaluation, then the federated model's (into `record`)."""
        self.report("on_evaluate_start", round)
        for worker_id in chosen:
            if worker_id in update_evals:
                self.report("on_evaluate", round, f"Model update {worker_id}",
                            await update_evals[worker_id])
        await self.evaluate_global(round, record)

    def progress_line(self, record: RoundRecord, sampled: int) -> str:
        return ConsoleReporter().bind(self).progress_line(record, sampled)
