"""A run as the dashboard shows it, folded from `fedmq.events` messages and queue samples.

    state = RunState()
    state.apply(routing_key, body, received)   # one event; False when it was ignored
    state.set_queues(rows) / state.set_queue_error(text) / state.set_amqp_status(text)
    state.as_json()                            # what GET /api/state answers

Events are untrusted input (anyone who may publish on `fedmq.events` can send anything): a
body that is not a JSON object, an unknown routing key, or a field of the wrong type is
ignored (counted in `ignored`, logged at debug level), never raised. Strings are kept as
text (cut to MAX_TEXT characters); escaping them is the page's job. Times are Unix seconds,
accuracies fractions in [0, 1]. The steps are rounds, or versions for asynchronous runs.

Standard library only (no aio-pika, no torch): testable without a broker or a browser.
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedmq.cli_options import clean

log = logging.getLogger("fedmq.dashboard")

# the routing keys of fedmq/fl/events.py (not imported: this module stays dependency-free)
ROUND_STARTED = "round.started"
FIT_RESULT = "fit.result"
FIT_FAILED = "fit.failed"
FIT_DROPPED = "fit.dropped"
EVALUATE_RESULT = "evaluate.result"
ROUND_FINISHED = "round.finished"
VERSION_APPLIED = "version.applied"

#: longest string kept from an event (worker ids, reasons, run names), in characters
MAX_TEXT = 200
#: most workers tracked (an id flood cannot grow the state without bound)
MAX_WORKERS = 1000
#: most steps kept for the curves
MAX_POINTS = 5000
#: most recent events kept for the page's log
RECENT = 50
#: evaluate.result `model` names (see _evaluate_result)
GLOBAL_MODEL = "Federated model"
UPDATE_MODEL = "Model update "
SERVER_MODEL = "server"
DEAD_LETTER_QUEUE = "fedmq.dead-letters"
WORKER_QUEUE_PREFIX = "fedmq.worker."


def _text(value: Any) -> str | None:
    """A string of an event as the page may show it: non-printable characters (escape
    sequences, bidi overrides that would reorder what is shown, zero-width ones) as visible
    \\xNN / \\uNNNN escapes, cut to MAX_TEXT; None for anything not a string."""
    if not isinstance(value, str):
        return None
    return clean(value, MAX_TEXT)


def _int(value: Any, minimum: int = 0) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fraction(value: Any) -> float | None:
    value = _float(value)
    return value if value is not None and 0.0 <= value <= 1.0 else None


def accuracy_of(body: dict[str, Any]) -> float | None:
    """`accuracy` (a fraction) if the body has a valid one, else `correct / total`."""
    accuracy = _fraction(body.get("accuracy"))
    if accuracy is None:
        correct, total = _int(body.get("correct")), _int(body.get("total"), 1)
        if correct is not None and total is not None and correct <= total:
            accuracy = correct / total
    return accuracy


@dataclass
class WorkerState:
    """One worker's last Fit, as the events told it."""

    id: str
    #: "ok", "failed" or "dropped" (async: an update too stale), None before any Fit
    last_fit: str | None = None
    #: the step of that Fit, and when it was reported (Unix time)
    step: int | None = None
    time: float | None = None
    samples: int | None = None
    loss: float | None = None
    #: seconds the worker trained, when reported
    fit_seconds: float | None = None
    #: test accuracy of the worker's last update alone (a fraction), when evaluated
    accuracy: float | None = None
    reason: str | None = None
    fits_ok: int = 0
    fits_failed: int = 0
    #: from the queue sample: consumers of fedmq.worker.<id> (None: not sampled yet)
    consumers: int | None = None
    queue_depth: int | None = None


@dataclass
class Point:
    """One step of the curves: the mean training loss, and the test accuracy and loss when
    the step was evaluated."""

    step: int
    loss: float | None = None
    accuracy: float | None = None
    test_loss: float | None = None
    status: str | None = None


@dataclass
class RunState:
    """Everything the page shows. Mutate it only through the methods."""

    unit: str = "round"
    run: str | None = None
    #: the latest step started (or finished), and the run's total when the events say it
    current: int | None = None
    total: int | None = None
    #: steps that finished (a round.finished or version.applied arrived)
    finished: int = 0
    status: str = "waiting"  # waiting (no event yet), running, finished
    lr: float | None = None
    accuracy: float | None = None
    workers: dict[str, WorkerState] = field(default_factory=dict)
    points: dict[int, Point] = field(default_factory=dict)
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    events: int = 0
    ignored: int = 0
    last_event: float | None = None
    queues: list[dict[str, Any]] = field(default_factory=list)
    queues_time: float | None = None
    queue_error: str | None = None
    dead_letters: int | None = None
    amqp_status: str = "connecting"

    # -- events ----------------------------------------------------------------------------
    def apply(self, routing_key: str, body: Any, received: float) -> bool:
        """Fold one event in; False (counted in `ignored`) when it is not one the dashboard
        understands: an unknown key, a body that is not an object, a missing step or worker. `body` is the decoded JSON (None when it was not JSON);
        `received` the Unix time it arrived, used when the body has no `time`."""
        handler = _HANDLERS.get(routing_key)
        if handler is None or not isinstance(body, dict):
            return self._ignore(routing_key, "unknown routing key" if handler is None
                                else "body is not a JSON object")
        unit = "version" if "version" in body and "round" not in body else "round"
        step = _int(body.get(unit), 0)
        if step is None:
            return self._ignore(routing_key, f"no integer {unit!r}")
        when = _float(body.get("time"))  # when it happened, if the event says
        when = when if when is not None and when > 0 else received
        try:
            applied = handler(self, body, step, when)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a malformed part
            return self._ignore(routing_key, f"malformed: {exc}")
        if not applied:
            return self._ignore(routing_key, "missing or malformed fields")
        self.unit = unit
        self.events += 1
        self.last_event = received
        if self.status == "waiting":
            self.status = "running"
        self.recent.appendleft(_summary(routing_key, body, step, when))
        return True

    def _ignore(self, routing_key: str, why: str) -> bool:
        self.ignored += 1
        log.debug("dashboard: event %r ignored: %s", routing_key[:MAX_TEXT], why)
        return False

    def begin_run(self) -> None:
        """Forget the previous run's rounds, curves and workers (a new run on the vhost); the
        event counters, the recent events and the queue samples stay."""
        self.current = self.total = self.lr = self.accuracy = self.run = None
        self.finished = 0
        self.status = "running"
        self.workers = {}
        self.points = {}

    def _advance(self, step: int, body: dict[str, Any], starting: bool = False) -> None:
        run = _text(body.get("run"))
        if (run and self.run and run != self.run) or \
                (starting and step == 1 and self.current is not None):
            self.begin_run()  # another run's events, or round 1 again: a new run
        if self.current is None or step > self.current:
            self.current = step
        if run:
            self.run = run
        total = _int(body.get("rounds" if "round" in body else "versions"), 1)
        if total is not None:
            self.total = total

    def _worker(self, worker_id: Any) -> WorkerState | None:
        worker_id = _worker_id(worker_id)
        if worker_id is None:
            return None
        worker = self.workers.get(worker_id)
        if worker is None:
            if len(self.workers) >= MAX_WORKERS:
                return None
            worker = self.workers[worker_id] = WorkerState(worker_id)
        return worker

    def _point(self, step: int) -> Point:
        point = self.points.get(step)
        if point is None:
            point = self.points[step] = Point(step)
            if len(self.points) > MAX_POINTS:
                del self.points[min(self.points)]
        return point

    def _fit_ok(self, worker_id: Any, step: int, body: dict[str, Any], time: float) -> bool:
        worker = self._worker(worker_id)
        if worker is None:
            return False
        if worker.step == step and worker.last_fit == "ok":  # fit.result, then the record
            worker.time = worker.time or time
        else:
            worker.fits_ok += 1
            worker.time = time
        worker.last_fit, worker.step, worker.reason = "ok", step, None
        samples = _int(body.get("samples"))
        worker.samples = samples if samples is not None else worker.samples
        loss = _float(body.get("loss"))
        worker.loss = loss if loss is not None else worker.loss
        fit_seconds = _float(body.get("fit_seconds"))
        worker.fit_seconds = fit_seconds if fit_seconds is not None else worker.fit_seconds
        return True

    def _fit_failed(self, worker_id: Any, step: int, reason: Any, time: float,
                    outcome: str = "failed") -> bool:
        worker = self._worker(worker_id)
        if worker is None:
            return False
        if not (worker.step == step and worker.last_fit == outcome):
            worker.fits_failed += 1
            worker.time = time
        worker.last_fit, worker.step = outcome, step
        worker.reason = None if reason is None else _text(str(reason))
        return True

    def _finish(self, step: int, body: dict[str, Any]) -> None:
        self._advance(step, body)
        self.finished += 1
        point = self._point(step)
        loss = _float(body.get("loss"))
        point.loss = loss if loss is not None else point.loss
        accuracy = accuracy_of(body)
        if accuracy is not None:
            point.accuracy = self.accuracy = accuracy
        test_loss = _float(body.get("test_loss"))
        point.test_loss = test_loss if test_loss is not None else point.test_loss
        point.status = _text(body.get("status")) or point.status
        if self.total is not None and step >= self.total:
            self.status = "finished"

    # -- queues (management API samples) ------------------------------------------------
    def set_queues(self, rows: list[Any], time: float) -> None:
        """The fedmq.* queues as last sampled (management.QueueRow objects or dicts with the
        same fields); worker rows get their queue's consumers and depth."""
        self.queues = [row if isinstance(row, dict) else asdict(row) for row in rows]
        self.queues_time = time
        self.queue_error = None
        by_name = {row["name"]: row for row in self.queues}
        dead = by_name.get(DEAD_LETTER_QUEUE)
        self.dead_letters = (dead["messages_ready"] + dead["messages_unacknowledged"]
                             if dead else 0)
        for worker in self.workers.values():
            row = by_name.get(WORKER_QUEUE_PREFIX + worker.id)
            worker.consumers = row["consumers"] if row else None
            worker.queue_depth = row["messages_ready"] if row else None

    def set_queue_error(self, text: str) -> None:
        """The management API could not be read (the last numbers are kept, marked stale)."""
        self.queue_error = text

    def set_amqp_status(self, text: str) -> None:
        """The event subscription's state, a person's sentence ("following", "lost ...")."""
        self.amqp_status = text

    # -- out -------------------------------------------------------------------------------
    def as_json(self) -> dict[str, Any]:
        """The state as JSON-ready data (what /api/state answers)."""
        return {
            "unit": self.unit, "run": self.run, "current": self.current, "total": self.total,
            "finished": self.finished, "status": self.status, "lr": self.lr,
            "accuracy": self.accuracy,
            "workers": [asdict(w) for _, w in sorted(self.workers.items())],
            "points": [asdict(p) for _, p in sorted(self.points.items())],
            "recent": list(self.recent), "events": self.events, "ignored": self.ignored,
            "last_event": self.last_event, "queues": self.queues,
            "queues_time": self.queues_time, "queue_error": self.queue_error,
            "dead_letters": self.dead_letters, "amqp_status": self.amqp_status,
        }


# -- one function per routing key: (state, body, step, received) -> applied? --------------

def _round_started(state: RunState, body: dict, step: int, received: float) -> bool:
    state._advance(step, body, starting=True)
    lr = _float(body.get("lr"))
    state.lr = lr if lr is not None else state.lr
    if state.status == "finished" and (state.total is None or step < state.total):
        state.status = "running"  # a new run (or a resumed one) on the same vhost
    workers = body.get("workers")
    for worker_id in workers if isinstance(workers, list) else []:
        state._worker(worker_id)
    return True


def _worker_id(value: Any) -> str | None:
    """A worker id an event may name (a non-empty string; "*" is the whole round)."""
    text = _text(value)
    return text if text and text != "*" else None


def _fit_result(state: RunState, body: dict, step: int, received: float) -> bool:
    if _worker_id(body.get("worker")) is None:
        return False
    state._advance(step, body)
    return state._fit_ok(body["worker"], step, body, received)


def _fit_failed(state: RunState, body: dict, step: int, received: float) -> bool:
    if _worker_id(body.get("worker")) is None:
        return False
    state._advance(step, body)
    return state._fit_failed(body["worker"], step, body.get("reason"), received)


def _fit_dropped(state: RunState, body: dict, step: int, received: float) -> bool:
    if _worker_id(body.get("worker")) is None:
        return False
    state._advance(step, body)
    return state._fit_failed(body["worker"], step, "too stale", received, "dropped")


def _evaluate_result(state: RunState, body: dict, step: int, received: float) -> bool:
    """The coordinator names what it evaluated (fedmq/fl/base.py, coordinator.py): "Federated
    model" (the global model on the testing worker: the run's accuracy), "Federated model on
    <worker>" (one of several testing workers: the record aggregates them), "Model update
    <worker>" (that worker's update alone: its row), "server" (the strategy's own)."""
    accuracy = accuracy_of(body)
    loss = _float(body.get("loss"))
    model = _text(body.get("model")) or ""
    if accuracy is None and loss is None:
        return False
    if model.startswith(UPDATE_MODEL):
        worker = state._worker(model[len(UPDATE_MODEL):])
        if worker is None:
            return False
        state._advance(step, body)
        worker.accuracy = accuracy
        return True
    state._advance(step, body)
    point = state._point(step)
    if model == GLOBAL_MODEL or (model == SERVER_MODEL and point.accuracy is None):
        if accuracy is not None:
            point.accuracy = state.accuracy = accuracy
        if loss is not None:
            point.test_loss = loss
    return True


def _round_finished(state: RunState, body: dict, step: int, received: float) -> bool:
    workers, failed = body.get("workers"), body.get("failed")
    if workers is not None and not isinstance(workers, dict):
        return False
    state._finish(step, body)
    for worker_id, update in (workers or {}).items():
        if isinstance(update, dict):
            state._fit_ok(worker_id, step, update, received)
    for worker_id, reason in (failed if isinstance(failed, dict) else {}).items():
        state._fit_failed(worker_id, step, reason, received)
    lr = _float(body.get("lr"))
    state.lr = lr if lr is not None else state.lr
    return True


def _version_applied(state: RunState, body: dict, step: int, received: float) -> bool:
    updates = body.get("updates")
    if updates is not None and not isinstance(updates, list):
        return False
    state._finish(step, body)
    for update in updates or []:
        if isinstance(update, dict):
            state._fit_ok(update.get("worker"), step, update, received)
    return True


_HANDLERS = {
    ROUND_STARTED: _round_started, FIT_RESULT: _fit_result, FIT_FAILED: _fit_failed,
    FIT_DROPPED: _fit_dropped, EVALUATE_RESULT: _evaluate_result,
    ROUND_FINISHED: _round_finished, VERSION_APPLIED: _version_applied,
}


def _summary(routing_key: str, body: dict[str, Any], step: int, received: float) -> dict:
    """A short record of an event for the page's log (strings cut, numbers checked)."""
    return {"time": received, "kind": routing_key, "step": step,
            "worker": _text(body.get("worker")) or _text(body.get("model")),
            "loss": _float(body.get("loss")), "accuracy": accuracy_of(body),
            "reason": _text(body.get("reason")) if body.get("reason") is not None else None}
