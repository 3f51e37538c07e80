"""What the synchronous (`fedmq.fl.coordinator`) and asynchronous
(`fedmq.fl.async_coordinator`) drivers share: the connection, the workers, the run's
settings and folder, the global model and how it is built, the strategy, the reporters
(fedmq.fl.reporters: printed lines, checkpoint, metrics, events), evaluation on the testing
worker, waiting for the workers, and cancelling a Fit given up on.

The wire messages are built in one place each: `fit_instructions` makes every `Fit`,
`evaluate_message` every `Evaluate`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from typing import Any, Callable, Iterable, Iterator

from fedmq.engine import RequestEngine
from fedmq.fl import checkpoint, events as ev
from fedmq.fl.config import TrainConfig, initial_model
from fedmq.fl.datasets import ask_datasets, holding_lines
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit
from fedmq.fl.metrics import METRICS
from fedmq.fl.progress import ProgressReporter
from fedmq.fl.reporters import CheckpointReporter, EventReporter, MetricsReporter, Reporter
from fedmq.fl.runs import RunFolderError
from fedmq.messages import Cancel, WorkerStats
from fedmq.fl.model_source import ModelSource
from fedmq.strategy import EvaluateIns, EvaluateResult, FitIns, Strategy

log = logging.getLogger("fedmq.fl")

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
                           echo: Callable[[str], None], interval: float = 2.0,
                           report_every: float = 2.0) -> list[str]:
    """Ping every worker until it answers or `timeout` (seconds) passes; returns the ids that
    did not answer. Over RabbitMQ a message published before the worker declared its queue is
    lost, so a coordinator started together with its workers waits for them first.
    `interval`: seconds each ping waits for its answer. Every `report_every` seconds while
    some have not answered, `echo` says which ("waiting for alice, bob to answer (4 s of
    120 s)"); at the end, those that never did and why."""
    started = time.monotonic()
    deadline = started + timeout
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

    tasks = {w: asyncio.ensure_future(ping(w)) for w in ids}
    try:
        while True:
            pending = [t for t in tasks.values() if not t.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=report_every)
            waiting = [w for w, t in tasks.items() if not t.done()]
            if waiting:
                echo(f"waiting for {', '.join(waiting)} to answer "
                     f"({time.monotonic() - started:.0f} s of {timeout:.0f} s)")
    finally:  # cancelled (Ctrl-C): no ping left behind
        for task in tasks.values():
            task.cancel()
    missing = [w for w, t in tasks.items() if not t.result()]
    if missing:
        echo(f"Workers not answering after {timeout:.0f} s: " +
             "; ".join(f"{w} ({why.get(w, 'no answer')})" for w in missing))
    return missing


def evaluate_result(worker_id: str, res: EvaluateRes) -> EvaluateResult:
    """A testing worker's EvaluateRes as the strategy's EvaluateResult."""
    return EvaluateResult(worker_id, res.loss, res.num_examples, {"correct": res.correct})


class CoordinatorBase:
    """Shared state and plumbing of a federated run. Subclasses run the loop and say what a
    step is (`unit`: "round" or "version"), what their console prints (`console_reporter`),
    what a checkpoint holds (`checkpoint_state`) and when the plot is redrawn (`plot_if`).

    `reporters`: None for the defaults (console, progress bar, events, and with a `run_dir`
    checkpoint and metrics); `extra_reporters` are added after them. `progress`: the default
    progress reporter's mode, "auto", "bar" or "lines" (fedmq.fl.progress; ValueError for
    another)."""
    unit = "round"

    def __init__(self, connection: RequestEngine, workers: list[str], config: TrainConfig, *,
                 testing: str | None, strategy: Strategy,
                 run_dir: str | pathlib.Path | None = None,
                 echo: Callable[[str], None] | None = None,
                 reporters: Iterable[Reporter] | None = None,
                 extra_reporters: Iterable[Reporter] = (), overwrite: bool = False,
                 progress: str = "auto") -> None:
        if not workers:
            raise ValueError("a federated run needs at least one worker")
        #: the model Fit / Evaluate name: built-in, or a user's as a plan (ValueError if unknown)
        self.model_source = ModelSource(config.model, seed=config.seed,
                                        batch_size=config.batch_size,
                                        model_args=config.model_args,
                                        input_shape=config.input_shape,
                                        input_dtype=config.input_dtype)
        self.connection = connection
        self.workers = list(workers)
        self.config = config
        self.testing = testing
        self.strategy = strategy
        self.run_dir = pathlib.Path(run_dir) if run_dir is not None else None
        #: a fresh run may replace an earlier run's metrics and checkpoint in `run_dir`
        self.overwrite = overwrite
        self.echo = echo or (lambda line: print(f"{time.strftime('%H:%M:%S')} - {line}",
                                                flush=True))
        self.events = getattr(connection, "events", None) or ev.EventLog()
        self.history: list = []
        self.weights: dict = {}
        self.trainable: set[str] | None = None
        self.progress = progress
        chosen = self.default_reporters() if reporters is None else list(reporters)
        self.reporters: list[Reporter] = [r.bind(self) for r in [*chosen, *extra_reporters]]

    # -- reporters ---------------------------------------------------------------------------
    def console_reporter(self) -> Reporter:
        raise NotImplementedError

    def checkpoint_state(self, record: Any) -> dict:
        raise NotImplementedError

    def plot_if(self, record: Any) -> bool:
        return record.accuracy is not None

    def default_reporters(self) -> list[Reporter]:
        console, progress = self.console_reporter(), ProgressReporter(self.progress)
        console.progress_lines = not progress.live  # the bar shows what the line would say
        reporters = [console, progress, EventReporter(self.events, self.unit)]
        if self.run_dir is not None:
            reporters += [CheckpointReporter(self.run_dir, self.checkpoint_state),
                          MetricsReporter(self.run_dir, self.unit, self.plot_if)]
        return reporters

    def report(self, hook: str, *args: Any) -> None:
        """Call `hook(*args)` on every reporter, in order."""
        for reporter in self.reporters:
            getattr(reporter, hook)(*args)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """`on_run_start`, the body, then `on_run_end`; when the body raises (Ctrl-C
        included) `on_run_abort(error)` instead, and the error goes on."""
        self.report("on_run_start")
        try:
            yield
        except BaseException as exc:
            self.report("on_run_abort", exc)
            raise
        self.report("on_run_end")

    def write_plot(self) -> pathlib.Path | None:
        """metrics.png from metrics.jsonl (None without a run folder or a metrics reporter)."""
        for reporter in self.reporters:
            if isinstance(reporter, MetricsReporter):
                return reporter.write_plot()
        return None

    # -- the model ---------------------------------------------------------------------------
    def initial_model(self) -> tuple[dict, set[str]]:
        """The initial global model and the names of its trainable parameters."""
        if self.model_source.user is not None:
            return self.model_source.initial_weights(), self.model_source.trainable
        return initial_model(self.config.model, self.config.seed)

    def load_checkpoint(self, resume: bool) -> dict | None:
        """The run folder's checkpoint when resuming (ValueError if it is another run's).

        Raises fedmq.fl.runs.RunFolderError (a ValueError): `resume` and the folder has no
        checkpoint; a fresh run (not `resume`, not `overwrite`) into a folder holding an
        earlier run's metrics or checkpoint (`fedmq.fl.runs.open_run_dir` picks a free one)."""
        if self.run_dir is None:
            return None
        earlier = [f for f in (checkpoint.FILENAME, METRICS) if (self.run_dir / f).exists()]
        if not resume:
            if earlier and not self.overwrite:
                raise RunFolderError(
                    f"{self.run_dir} holds an earlier run ({', '.join(earlier)}): resume it, "
                    f"replace it (overwrite=True), or choose another folder "
                    f"(fedmq.fl.runs.open_run_dir)")
            return None
        state = checkpoint.load_run(self.run_dir, self.config.model, self.config.seed)
        if state is None:
            raise RunFolderError(f"{self.run_dir} has no checkpoint ({checkpoint.FILENAME}) "
                                 f"to resume")
        return state

    def start_model(self, state: dict | None, **initialize: Any) -> None:
        """The global model from the checkpoint `state` (strategy state restored) or fresh;
        the strategy is told the trainable parameters either way."""
        weights, self.trainable = self.initial_model()
        if state is not None:
            weights = state["weights"]
        self.weights = self.strategy.initialize_parameters(weights, self.trainable,
                                                           **initialize)
        if state is not None:
            self.strategy.load_state_dict(state.get("strategy") or {})

    # -- messages: each built here and nowhere else --------------------------------------------
    def fit_instructions(self, round: int, worker_id: str, ins: FitIns, deadline: float,
                         model: Any = None) -> Fit:
        """The `Fit` that tells `worker_id` to train from `ins` (round/version `round`);
        `model` is the model field (default: what the model source sends that worker)."""
        if model is None:
            model = self.model_source.field(worker_id)
        return Fit(round, model, ins.parameters, ins.config, deadline)

    async def request_with_model(self, worker_id: str, make: Callable[[Any], Any],
                                 **options: Any) -> Any:
        """`connection.arequest(worker_id, make(model_field), **options)`, sending a model
        plan again once if the worker no longer holds it (it restarted)."""
        return await self.model_source.request(
            worker_id, make, lambda msg: self.connection.arequest(worker_id, msg, **options))

    def evaluate_config(self) -> dict:
        cfg = self.config
        config = {"batch_size": cfg.eval_batch_size, "loss": cfg.loss, "split": "test"}
        if cfg.testing_dataset or cfg.dataset:
            config["dataset"] = cfg.testing_dataset or cfg.dataset
        return config

    def evaluate_message(self, round: int, ins: EvaluateIns, model: Any = None) -> Evaluate:
        """The `Evaluate` of `ins.parameters` for round/version `round`."""
        if model is None:
            model = self.model_source.field(self.testing)
        return Evaluate(round, model, ins.parameters, ins.config)

    # -- evaluation ----------------------------------------------------------------------------
    async def request_evaluate(self, worker_id: str, round: int,
                               ins: EvaluateIns) -> EvaluateRes:
        """`worker_id`'s evaluation (raises on failure)."""
        timeout = self.config.round_timeout
        res = await self.request_with_model(
            worker_id, lambda model: self.evaluate_message(round, ins, model),
            timeout=timeout, expiration=timeout)
        if not isinstance(res, EvaluateRes):
            raise TypeError(f"expected EvaluateRes, got {type(res).__name__}")
        return res

    async def evaluate_global(self, round: int, record: Any,
                              name: str = "Federated model") -> None:
        """The global model's evaluation: on the workers `strategy.configure_evaluate` picks
        (of the testing worker), each one reported, their `aggregate_evaluate` into `record`
        (accuracy, test_loss, correct, total); then the strategy's server-side `evaluate`."""
        todo = self.strategy.configure_evaluate(round, self.weights,
                                                [self.testing] if self.testing else [],
                                                self.evaluate_config())
        answers = await asyncio.gather(*(self.request_evaluate(w, round, ins)
                                         for w, ins in todo), return_exceptions=True)
        results, failures = [], {}
        for (worker, _), res in zip(todo, answers):
            label = name if len(todo) == 1 else f"{name} on {worker}"
            if isinstance(res, BaseException) and not isinstance(res, Exception):
                raise res
            self.report("on_evaluate", round, label, res)
            if isinstance(res, Exception):
                failures[worker] = f"{type(res).__name__}: {res}"
            else:
                results.append((worker, evaluate_result(worker, res)))
        loss, metrics = self.strategy.aggregate_evaluate(round, results, failures)
        if loss is not None and "accuracy" in metrics:
            record.accuracy, record.test_loss = metrics["accuracy"], loss
            record.correct, record.total = metrics["correct"], metrics["total"]
        server = self.strategy.evaluate(round, self.weights)
        if server is not None:
            self.report("on_server_evaluate", round, *server)

    async def wait_for_workers(self, timeout: float, interval: float = 2.0) -> list[str]:
        """See `wait_for_workers`: the data workers and the testing worker."""
        ids = self.workers + ([self.testing] if self.testing else [])
        return await wait_for_workers(self.connection, ids, timeout, self.echo, interval)

    async def announce_datasets(self, timeout: float = 10.0) -> dict[str, Any]:
        """Say through `echo` what each worker holds for this run: one line per worker
        (fedmq.fl.datasets: samples and per-label counts of the train split of
        `config.dataset`, the testing worker's test split), or "label counts not published"
        where its policy keeps them. Never raises for a worker: a failed request is said in
        its line. Returns worker -> its reply (or the exception)."""
        ids = self.workers + ([self.testing] if self.testing else [])
        answers = await ask_datasets(self.connection, ids, timeout)
        cfg = self.config
        for worker, answer in answers.items():
            testing = worker == self.testing
            for line in holding_lines(worker, answer,
                                      (cfg.testing_dataset or cfg.dataset) if testing
                                      else cfg.dataset, "test" if testing else "train"):
                self.echo(line)
        return answers
