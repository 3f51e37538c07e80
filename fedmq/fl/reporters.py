"""What a run reports, beside the coordinator's loop: the seed's printed lines, checkpoints,
metrics.jsonl and its plot, events. The coordinator calls each hook on every reporter in
order (`CoordinatorBase.report`); a step is a round (synchronous) or a version (asynchronous).

    on_prepare(resumed_after)            set-up done; resumed_after: the checkpoint's step, or None
    on_run_start() / on_run_end()        around `run`
    on_run_abort(error)                  `run` stopped by an exception (Ctrl-C: CancelledError or
                                         KeyboardInterrupt), instead of on_run_end; release
                                         what the reporter holds (a live display)
    on_round_start(step, workers, lr)    the workers that got a Fit
    on_fit_result(step, worker, update)  an accepted update: {"loss", "samples", ...}
    on_fit_failure(step, worker, reason, retry_in)   a failed or dropped Fit (retry_in: async)
    on_update_dropped(step, worker, update)          async: too stale for the strategy
    on_evaluate_start(step) / on_evaluate(step, name, EvaluateRes | Exception)
    on_server_evaluate(step, loss, metrics)          the strategy's server-side evaluation
    on_round_end(record)                 the step's record is complete
    on_round_closed(record)              the coordinator moved on (lr decayed): checkpoint time
    on_record_updated(record)            a written record changed (async: the last evaluation)

`bind(coordinator)` gives each reporter the coordinator (its config, echo, state).
"""
from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Callable

from fedmq.fl import checkpoint, events as ev
from fedmq.fl.messages import EvaluateRes
from fedmq.fl.metrics import PLOT, MetricsLog, plot

log = logging.getLogger("fedmq.fl")


def bucket_line(name: str, res: EvaluateRes, buckets: list) -> str:
    total = sum(res.prediction_hist) or 1
    parts = []
    for lo, hi in buckets:
        share = sum(res.prediction_hist[lo:hi + 1]) / total
        label = f"{lo}-{hi}" if lo != hi else f"{lo}"
        parts.append(f"{label}: {100 * share:.0f}%")
    return f"{name}: Percentage numbers {', '.join(parts)}"


def epsilon_text(record: Any) -> str:
    """", ε=1.23" for a record with an `epsilon` (differential privacy: spent so far at the
    run's delta; "ε=inf" without noise), "" without one."""
    epsilon = getattr(record, "epsilon", None)
    return "" if epsilon is None else f", ε={epsilon:.2f}"


def accuracy_line(name: str, res: EvaluateRes) -> str:
    return (f"{name}: Average loss: {res.loss:.4f}, Accuracy: {res.correct}/{res.num_examples} "
            f"({100 * res.accuracy:.2f}%)")


class Reporter:
    """Every hook does nothing; subclasses override the ones they need."""
    coordinator: Any = None

    def bind(self, coordinator: Any) -> "Reporter":
        self.coordinator = coordinator
        return self

    def on_prepare(self, resumed_after: int | None) -> None: ...
    def on_run_start(self) -> None: ...
    def on_run_end(self) -> None: ...
    def on_run_abort(self, error: BaseException) -> None: ...
    def on_round_start(self, step: int, workers: list[str], lr: float) -> None: ...
    def on_fit_result(self, step: int, worker: str, update: dict) -> None: ...
    def on_fit_failure(self, step: int, worker: str, reason: str,
                       retry_in: float | None = None) -> None: ...
    def on_update_dropped(self, step: int, worker: str, update: dict) -> None: ...
    def on_evaluate_start(self, step: int) -> None: ...
    def on_evaluate(self, step: int, name: str, result: EvaluateRes | Exception) -> None: ...
    def on_server_evaluate(self, step: int, loss: float, metrics: dict) -> None: ...
    def on_round_end(self, record: Any) -> None: ...
    def on_round_closed(self, record: Any) -> None: ...
    def on_record_updated(self, record: Any) -> None: ...


class ConsoleReporter(Reporter):
    """The seed's lines for rounds, through the coordinator's `echo`: "Training round r/R",
    "Evaluating models", per model "Percentage numbers ..." and "Average loss ...", and a
    progress line per round (with "ε=..." under differential privacy) unless `progress_lines` is False (a live progress bar shows it:
    fedmq.fl.progress)."""

    def __init__(self, progress_lines: bool = True) -> None:
        self.sampled = 0
        self.progress_lines = progress_lines

    def echo(self, line: str) -> None:
        self.coordinator.echo(line)

    def on_prepare(self, resumed_after: int | None) -> None:
        if resumed_after is not None:
            self.echo(f"Resuming after round {resumed_after} from "
                      f"{self.coordinator.run_dir / checkpoint.FILENAME}")

    def on_round_start(self, step: int, workers: list[str], lr: float) -> None:
        self.sampled = len(workers)
        self.echo(f"Training round {step}/{self.coordinator.config.rounds}")

    def on_evaluate_start(self, step: int) -> None:
        self.echo("Evaluating models")

    def on_evaluate(self, step: int, name: str, result: EvaluateRes | Exception) -> None:
        if isinstance(result, Exception):
            self.echo(f"{name}: evaluation failed: {type(result).__name__}: {result}")
            return
        self.echo(bucket_line(name, result, self.coordinator.config.buckets))
        self.echo(accuracy_line(name, result))

    def on_server_evaluate(self, step: int, loss: float, metrics: dict) -> None:
        shown = ", ".join(f"{k} {v}" for k, v in metrics.items())
        self.echo(f"Server-side evaluation: loss {loss:.4f}" + (f", {shown}" if shown else ""))

    def on_round_end(self, record: Any) -> None:
        if self.progress_lines:
            self.echo(self.progress_line(record, self.sampled))

    def progress_line(self, record: Any, sampled: int) -> str:
        rounds = self.coordinator.config.rounds
        done = len(record.workers)
        bar = "#" * (20 * record.round // rounds)
        line = (f"[{bar:<20}] round {record.round}/{rounds} {record.status}: "
                f"{done}/{sampled} workers, train loss {record.loss:.4f}, "
                f"lr {record.lr:.4f}, {record.seconds:.2f} s")
        if record.accuracy is not None:
            line += f", accuracy {100 * record.accuracy:.2f}%"
        line += epsilon_text(record)
        if record.failed:
            line += "; failed: " + ", ".join(f"{w} ({why})" for w, why in record.failed.items())
        return line


class AsyncConsoleReporter(ConsoleReporter):
    """The asynchronous run's lines: its start, failed Fits with their back-off, "Evaluating
    models (version v)", the seed's evaluation lines, a progress line per version, the end."""

    def on_prepare(self, resumed_after: int | None) -> None:
        if resumed_after is not None:
            c = self.coordinator
            self.echo(f"Resuming after version {resumed_after} ({c.received} updates) from "
                      f"{c.run_dir / checkpoint.FILENAME}")

    def on_run_start(self) -> None:
        c = self.coordinator
        self.echo(f"Asynchronous training with {c.strategy!r} on {', '.join(c.workers)}: "
                  f"up to {c.max_updates} updates")

    def on_run_end(self) -> None:
        c = self.coordinator
        self.echo(f"Finished: version {c.version}, {c.received} updates received "
                  f"({c.strategy.dropped} dropped as too stale, "
                  f"{sum(c.failures.values())} failed Fits), "
                  f"{time.monotonic() - c.started:.2f} s")

    def on_round_start(self, step: int, workers: list[str], lr: float) -> None:
        pass

    def on_fit_failure(self, step: int, worker: str, reason: str,
                       retry_in: float | None = None) -> None:
        self.echo(f"{worker}: Fit failed ({reason}); retrying in {retry_in:.1f} s")

    def on_evaluate_start(self, step: int) -> None:
        self.echo(f"Evaluating models (version {step})")

    def progress_line(self, record: Any, sampled: int = 0) -> str:
        line = (f"version {record.version}: {len(record.updates)} updates (staleness "
                f"{','.join(map(str, record.staleness))}), train loss {record.loss:.4f}, "
                f"{record.received}/{self.coordinator.max_updates} received, "
                f"{record.dropped} dropped, {record.seconds:.2f} s")
        if record.accuracy is not None:
            line += f", accuracy {100 * record.accuracy:.2f}%"
        return line + epsilon_text(record)


class EventReporter(Reporter):
    """Round events on `events` (an EventLog; over RabbitMQ the `fedmq.events` exchange):
    round.started, fit.result, fit.failed, fit.dropped, evaluate.result, and round.finished
    (rounds) or version.applied (versions) with the record. Bodies name the step `unit`, and
    carry `time` (Unix seconds, when emitted). round.started and round.finished also carry
    `run` (the run folder's name, when the run has one) and the run's total steps as `rounds`
    (or `versions`, when the asynchronous run has a limit); evaluate.result carries
    `accuracy` (correct / total, a fraction) beside correct and total."""

    def __init__(self, events: ev.EventLog, unit: str = "round") -> None:
        self.events, self.unit = events, unit

    def emit(self, key: str, body: dict) -> None:
        """Emit `body` under routing key `key`, stamped with the time (unless it has one)."""
        body.setdefault("time", time.time())
        self.events.emit(key, body)

    def run_fields(self) -> dict:
        """`run` and the total steps, as far as the bound coordinator knows them."""
        fields: dict = {}
        coordinator = self.coordinator
        run_dir = getattr(coordinator, "run_dir", None)
        if run_dir is not None:
            fields["run"] = pathlib.Path(run_dir).name
        if self.unit == "round":
            total = getattr(getattr(coordinator, "config", None), "rounds", None)
        else:
            total = getattr(coordinator, "max_versions", None)
        if isinstance(total, int):
            fields[f"{self.unit}s"] = total
        return fields

    def on_round_start(self, step: int, workers: list[str], lr: float) -> None:
        self.emit(ev.ROUND_STARTED, {self.unit: step, "workers": workers, "lr": lr,
                                     **self.run_fields()})

    def on_fit_result(self, step: int, worker: str, update: dict) -> None:
        self.emit(ev.FIT_RESULT, {self.unit: step, "worker": worker, **update})

    def on_fit_failure(self, step: int, worker: str, reason: str,
                       retry_in: float | None = None) -> None:
        body = {self.unit: step, "worker": worker, "reason": reason}
        if retry_in is not None:
            body["retry_in"] = retry_in
        self.emit(ev.FIT_FAILED, body)

    def on_update_dropped(self, step: int, worker: str, update: dict) -> None:
        self.emit(ev.UPDATE_DROPPED, {self.unit: step, "worker": worker, **update})

    def on_evaluate(self, step: int, name: str, result: EvaluateRes | Exception) -> None:
        if isinstance(result, Exception):
            return
        self.emit(ev.EVALUATE_RESULT, {
            self.unit: step, "model": name, "loss": result.loss, "correct": result.correct,
            "total": result.num_examples, "accuracy": result.accuracy,
            "prediction_hist": result.prediction_hist})

    def on_server_evaluate(self, step: int, loss: float, metrics: dict) -> None:
        self.emit(ev.EVALUATE_RESULT, {self.unit: step, "model": "server", "loss": loss,
                                       **metrics})

    def on_round_end(self, record: Any) -> None:
        key = ev.ROUND_FINISHED if self.unit == "round" else ev.VERSION_APPLIED
        self.emit(key, {**record.as_json(), **self.run_fields()})


class CheckpointReporter(Reporter):
    """`run_dir/checkpoint.fedmq` after every step: `state(record)` (fedmq.fl.checkpoint)."""

    def __init__(self, run_dir: str | pathlib.Path, state: Callable[[Any], dict]) -> None:
        self.run_dir, self.state = pathlib.Path(run_dir), state

    def on_round_closed(self, record: Any) -> None:
        checkpoint.save(self.run_dir, self.state(record))


class MetricsReporter(Reporter):
    """`run_dir/metrics.jsonl` (a line per step, `record.as_json()`) and `metrics.png` (when
    `plot_if(record)`, and at the end of the run). A fresh run starts the file anew; a resumed
    one keeps the lines up to the checkpoint's step. `x`: the step's key, "round" or
    "version"."""

    def __init__(self, run_dir: str | pathlib.Path, x: str = "round",
                 plot_if: Callable[[Any], bool] = lambda record: record.accuracy is not None
                 ) -> None:
        self.run_dir, self.x, self.plot_if = pathlib.Path(run_dir), x, plot_if
        self.log = MetricsLog(self.run_dir)

    def on_prepare(self, resumed_after: int | None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resumed_after is None:
            if self.log.path.exists():
                self.log.path.unlink()
        else:
            self.log.rewrite([r for r in self.log.read() if r[self.x] <= resumed_after])

    def on_round_closed(self, record: Any) -> None:
        self.log.append(record.as_json())
        if self.plot_if(record):
            self.write_plot()

    def on_record_updated(self, record: Any) -> None:
        rows = self.log.read()
        if rows and rows[-1][self.x] == getattr(record, self.x):
            rows[-1] = record.as_json()
            self.log.rewrite(rows)

    def on_run_end(self) -> None:
        self.write_plot()

    def write_plot(self) -> pathlib.Path | None:
        try:
            rows = self.log.read()
            return plot(rows, self.run_dir / PLOT, x=self.x, title=self.run_dir.name) \
                if rows else None
        except Exception as exc:  # a missing matplotlib must not stop training
            log.warning("no plot: %s", exc)
            return None
