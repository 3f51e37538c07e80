"""The progress reporter (fedmq/fl/progress.py): a live rich bar on a terminal (forced here
with a Console writing to a StringIO), one plain line per round without one; stopped cleanly
when a run raises. In-process workers, no broker."""
from __future__ import annotations

import asyncio
import io
import re
import sys
import types

import pytest
from rich.console import Console

from fedmq.fl.async_coordinator import AsyncCoordinator, VersionRecord
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator, RoundRecord
from fedmq.fl.progress import ProgressReporter, status_text, wants_bar
from fedmq.fl.reporters import ConsoleReporter, Reporter
from fedmq.strategy import FedAsync

from test_coordinator import small_config, workers


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=140, color_system=None)


def round_record(r: int, accuracy: float | None = None, failed: dict | None = None):
    return RoundRecord(round=r, seconds=0.1, lr=0.1, status="ok", loss=1.0 / r,
                       workers={"alice": {}}, failed=failed or {}, accuracy=accuracy)


def test_the_bar_counts_rounds_and_shows_accuracy_loss_and_failures():
    console = terminal()
    fake = types.SimpleNamespace(unit="round", config=small_config(rounds=5))
    bar = ProgressReporter("bar", console).bind(fake)
    assert bar.live
    bar.on_prepare(None)
    bar.on_run_start()
    bar.on_round_start(1, ["alice", "bob"], 0.1)
    bar.on_round_end(round_record(1, accuracy=0.5))
    bar.on_round_start(2, ["alice", "bob"], 0.1)
    bar.on_fit_failure(2, "bob", "ConnectionError: gone")
    bar.on_round_end(round_record(2, failed={"bob": "ConnectionError: gone"}))
    bar.on_round_start(3, ["alice", "bob"], 0.1)  # bob missed the deadline: not reported alone
    bar.on_round_end(round_record(3, accuracy=0.9123, failed={"bob": "missed the deadline"}))
    bar.progress.refresh()
    out = console.file.getvalue()
    assert "3/5" in out and "rounds" in out and "ETA" in out
    assert "accuracy 91.23%" in out and "loss 0.3333" in out and "2 failed Fits" in out
    assert "\x1b[" in out  # drawn live (cursor movements)
    bar.on_run_end()
    assert bar.progress is None and "\x1b[?25h" in console.file.getvalue()  # cursor shown
    assert not hasattr(sys.stdout, "rich_proxied_file")  # print() no longer redirected


def test_the_async_bar_counts_updates_and_versions():
    console = terminal()
    fake = types.SimpleNamespace(unit="version", config=small_config(), max_updates=6,
                                 received=0)
    bar = ProgressReporter("bar", console).bind(fake)
    bar.on_prepare(None)
    bar.on_run_start()
    for worker in ("alice", "bob", "alice", "bob"):
        bar.on_fit_result(1, worker, {"loss": 0.5, "samples": 8})
    bar.on_fit_failure(2, "charlie", "TimeoutError", 1.0)
    bar.on_round_end(VersionRecord(version=2, time=0.0, seconds=1.0, loss=0.5, updates=[],
                                   staleness=[], counts={}, received=4, dropped=0, failures=1,
                                   accuracy=0.75))
    bar.progress.refresh()
    out = console.file.getvalue()
    bar.on_run_end()
    assert "4/6" in out and "updates" in out and "version 2" in out
    assert "accuracy 75.00%" in out and "1 failed Fit" in out


def test_auto_is_a_bar_on_a_terminal_only():
    assert wants_bar("auto", terminal())
    assert not wants_bar("auto", Console(file=io.StringIO()))
    assert not wants_bar("auto", Console(file=io.StringIO(), force_terminal=True,
                                         _environ={"TERM": "dumb"}))
    assert wants_bar("bar", Console(file=io.StringIO())) and not wants_bar("lines", terminal())
    with pytest.raises(ValueError, match="auto, bar, lines"):
        wants_bar("fancy", terminal())
    assert status_text(None, float("nan"), 0) == "0 failed Fits"


def test_lines_mode_prints_one_plain_line_per_round(capsys):
    coord = Coordinator(InProcessConnection(workers()), ["alice", "bob"],
                        small_config(rounds=3, eval_every=2), testing="testing",
                        progress="lines")
    asyncio.run(coord.run())
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    progress = [line for line in out.splitlines() if "] round " in line]
    assert [line.split("] round ")[1][:3] for line in progress] == ["1/3", "2/3", "3/3"]
    assert out.count("Training round") == 3 and "Average loss" in out


def test_the_bar_replaces_the_progress_lines_and_keeps_the_seeds_lines():
    console = terminal()
    coord = Coordinator(InProcessConnection(workers()), ["alice", "bob"],
                        small_config(rounds=2, eval_every=2), testing="testing",
                        reporters=[ConsoleReporter(progress_lines=False),
                                   ProgressReporter("bar", console)])
    asyncio.run(coord.run())
    out = console.file.getvalue()  # print() went through the bar's console while it was live
    assert "Training round 1/2" in out and "Federated model: Average loss" in out
    assert "2/2" in out and "] round " not in out
    assert not hasattr(sys.stdout, "rich_proxied_file")


class Interrupt(Reporter):
    """Raises `error` when round `at` ends (as Ctrl-C would, between two awaits)."""

    def __init__(self, at: int, error: BaseException) -> None:
        self.at, self.error = at, error

    def on_round_end(self, record) -> None:
        if record.round == self.at:
            raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("boom")])
def test_the_bar_stops_cleanly_when_the_run_raises(error):
    console = terminal()
    bar = ProgressReporter("bar", console)
    stdout, stderr = sys.stdout, sys.stderr
    coord = Coordinator(InProcessConnection(workers()), ["alice"],
                        small_config(rounds=3, eval_every=0), echo=lambda line: None,
                        reporters=[bar, Interrupt(2, error)])
    with pytest.raises(type(error)):
        asyncio.run(coord.run())
    assert bar.progress is None
    assert sys.stdout is stdout and sys.stderr is stderr  # redirections undone
    assert "\x1b[?25h" in console.file.getvalue()  # the cursor is shown again


def test_the_async_coordinator_stops_the_bar_when_it_raises():
    console = terminal()
    bar = ProgressReporter("bar", console)

    class Fail(Reporter):
        def on_fit_result(self, step, worker, update):
            raise RuntimeError("boom")

    coord = AsyncCoordinator(InProcessConnection(workers()), ["alice"],
                             small_config(eval_every=0), strategy=FedAsync(),
                             echo=lambda line: None, max_updates=3, reporters=[bar, Fail()])
    with pytest.raises(RuntimeError):
        asyncio.run(coord.run())
    assert bar.progress is None and "\x1b[?25h" in console.file.getvalue()


def test_log_records_print_above_the_bar_and_the_handler_is_restored():
    import logging

    console = terminal()
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        fake = types.SimpleNamespace(unit="round", config=small_config(rounds=2))
        bar = ProgressReporter("bar", console).bind(fake)
        bar.on_prepare(None)
        bar.on_run_start()
        logging.getLogger("fedmq.fl").warning("a worker is slow")
        bar.on_run_abort(KeyboardInterrupt())
        assert handler.stream is sys.stderr
    finally:
        root.removeHandler(handler)
    assert "a worker is slow" in console.file.getvalue()


def test_a_narrow_terminal_cuts_the_status_never_the_counts_or_times():
    """Found by review: at 80 columns the times were squeezed to '0:…'."""
    console = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    fake = types.SimpleNamespace(unit="round", config=small_config(rounds=40))
    bar = ProgressReporter("bar", console).bind(fake)
    bar.on_prepare(None)
    bar.on_run_start()
    bar.on_round_start(1, ["alice"], 0.1)
    bar.on_round_end(round_record(1, accuracy=0.5))
    bar.progress.refresh()
    line = [ln for ln in console.file.getvalue().replace("\r", "\n").splitlines() if "ETA" in ln][-1]
    assert "1/40" in line and ("━" in line or "╸" in line)
    assert re.search(r"\d:\d\d:\d\d ETA (\d:\d\d:\d\d|-:--:--)", line), line
    bar.on_run_end()
