"""A live progress bar for a federated run (rich.progress), as a reporter
(fedmq.fl.reporters): steps done / total (rounds; for the asynchronous coordinator updates
received / `max_updates`, with the current version), elapsed time and ETA, the last accuracy
and training loss, epsilon (under differential privacy) and the failed Fits so far.

Modes (`fedmq train --progress`):
    bar    a live bar at the bottom of the terminal; the console reporter's lines (the seed's
           "Training round r/R", "Percentage numbers ...", "Average loss ...") print above it
    lines  no bar: the console reporter's plain progress line per round (logs, CI, pipes)
    auto   bar when stdout is a terminal (not TERM=dumb), lines otherwise
While the bar is live, stdout, stderr and the root logger's stream handlers write above it;
it is stopped (cursor shown again, streams restored) at the end of the run and when the run
stops with an exception, Ctrl-C included (`on_run_abort`).
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from fedmq.fl.reporters import Reporter

MODES = ("auto", "bar", "lines")


def wants_bar(mode: str, console: Any) -> bool:
    """Whether `mode` (one of MODES) shows a live bar on the rich `console`.
    ValueError for another mode."""
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return bool(console.is_terminal and not console.is_dumb_terminal)
    return mode == "bar"


def status_text(accuracy: float | None, loss: float | None, failed: int,
                epsilon: float | None = None) -> str:
    """The bar's right-hand text: "accuracy 91.20% · ε=1.23 · loss 0.2345 · 1 failed Fit"
    (ε: differential privacy's epsilon spent so far, when the run has one)."""
    parts = []
    if accuracy is not None:
        parts.append(f"accuracy {100 * accuracy:.2f}%")
    if epsilon is not None:
        parts.append(f"ε={epsilon:.2f}")
    if loss is not None and loss == loss:  # not NaN (a round nobody trained in)
        parts.append(f"loss {loss:.4f}")
    parts.append(f"{failed} failed Fit{'' if failed == 1 else 's'}")
    return " · ".join(parts)


class ProgressReporter(Reporter):
    """The live bar of `mode` (see the module's docstring) on `console` (a rich Console;
    default: stdout's). `live` says whether this reporter shows a bar; when it does not, it
    does nothing (the console reporter prints one line per step)."""

    def __init__(self, mode: str = "auto", console: Any = None) -> None:
        from rich.console import Console  # rich only for a run that reports

        self.console = console if console is not None else Console()
        self.live = wants_bar(mode, self.console)
        self.progress: Any = None
        self.task: Any = None
        self.accuracy: float | None = None
        self.loss: float | None = None
        self.failed = 0  # failed Fits in this run
        self.epsilon: float | None = None  # differential privacy: spent so far
        self._step_failed: set[str] = set()  # workers whose Fit failed in the current round
        self._start_at = 0
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []

    # -- what the bar counts ----------------------------------------------------------------
    @property
    def asynchronous(self) -> bool:
        return getattr(self.coordinator, "unit", "round") == "version"

    def total(self) -> int:
        c = self.coordinator
        return int(c.max_updates if self.asynchronous else c.config.rounds)

    def on_prepare(self, resumed_after: int | None) -> None:
        if self.asynchronous:
            self._start_at = int(self.coordinator.received)
        else:
            self._start_at = resumed_after or 0

    # -- start and stop -------------------------------------------------------------------
    def on_run_start(self) -> None:
        if not self.live or self.progress is not None:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.table import Column

        unit = "updates" if self.asynchronous else "rounds"
        def fixed(width: int) -> dict:  # never squeezed: a narrow terminal cuts the status
            return {"table_column": Column(no_wrap=True, min_width=width, max_width=width)}
        self.progress = Progress(
            TextColumn("{task.description}", markup=False,
                       table_column=Column(no_wrap=True, min_width=7)),
            BarColumn(bar_width=20, **fixed(20)),
            MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=5)),
            TextColumn(unit, **fixed(len(unit))), TimeElapsedColumn(**fixed(7)),
            TextColumn("ETA", **fixed(3)), TimeRemainingColumn(**fixed(7)),
            TextColumn("{task.fields[status]}", markup=False,  # a narrow terminal cuts this
                       table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=self.console, speed_estimate_period=3600.0, redirect_stdout=True,
            redirect_stderr=True)
        self.task = self.progress.add_task("version 0" if self.asynchronous else "round 1",
                                           total=self.total(), completed=self._start_at,
                                           status=self.status())
        stderr = sys.stderr
        self.progress.start()
        if sys.stderr is not stderr:  # rich redirected it: log records go above the bar too
            for handler in logging.getLogger().handlers:
                if type(handler) is logging.StreamHandler and handler.stream is stderr:
                    self._handlers.append((handler, handler.setStream(sys.stderr)))

    def stop(self) -> None:
        """Stop the live display (idempotent): the bar stays as last drawn, the cursor and
        the streams are restored."""
        if self.progress is None:
            return
        progress, self.progress = self.progress, None
        try:
            progress.stop()
        finally:
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._handlers.clear()

    def on_run_end(self) -> None:
        self.update()
        self.stop()

    def on_run_abort(self, error: BaseException) -> None:
        self.stop()

    # -- updates --------------------------------------------------------------------------
    def status(self) -> str:
        return status_text(self.accuracy, self.loss, self.failed, self.epsilon)

    def update(self, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, status=self.status(), **fields)

    def on_round_start(self, step: int, workers: list[str], lr: float) -> None:
        self._step_failed = set()
        self.update(description=f"round {step}")

    def on_fit_result(self, step: int, worker: str, update: dict) -> None:
        if self.asynchronous:
            self.update(advance=1)

    def on_fit_failure(self, step: int, worker: str, reason: str,
                       retry_in: float | None = None) -> None:
        self.failed += 1
        self._step_failed.add(worker)
        self.update()

    def on_round_end(self, record: Any) -> None:
        failed = getattr(record, "failed", None)
        if isinstance(failed, dict):  # a round: failures not reported one by one (deadline)
            self.failed += len(set(failed) - {"*"} - self._step_failed)
            self._step_failed = set()
        self.loss = record.loss
        if getattr(record, "epsilon", None) is not None:
            self.epsilon = record.epsilon
        if record.accuracy is not None:
            self.accuracy = record.accuracy
        if self.asynchronous:
            self.update(description=f"version {record.version}")
        else:
            self.update(completed=record.round)

    def on_record_updated(self, record: Any) -> None:
        if record.accuracy is not None:
            self.accuracy = record.accuracy
            self.update()
