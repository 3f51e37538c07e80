"""Reporters (fedmq/fl/reporters.py): the hooks both coordinators call, in order, and the
seed's lines the console reporter prints; in-process workers, no broker."""
from __future__ import annotations

import asyncio
import json
import types

import pytest

from fedmq.fl.async_coordinator import AsyncCoordinator, VersionRecord
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator, RoundRecord
from fedmq.fl.messages import EvaluateRes
from fedmq.fl.reporters import (AsyncConsoleReporter, ConsoleReporter, MetricsReporter,
                                Reporter)
from fedmq.strategy import FedAsync, FedAvg, Strategy

from test_coordinator import Broken, small_config, workers


class Recorder(Reporter):
    """Every hook call, as (hook, step or record id)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda *args: self.calls.append((name, *args))
        return super().__getattribute__(name)


def test_the_round_loop_calls_every_hook_in_order(tmp_path):
    recorder = Recorder()
    coord = Coordinator(InProcessConnection(workers(charlie=Broken())),
                        ["alice", "bob", "charlie"], small_config(rounds=2, eval_every=2),
                        testing="testing", echo=lambda line: None, run_dir=tmp_path,
                        extra_reporters=[recorder])
    history = asyncio.run(coord.run())
    names = [c[0] for c in recorder.calls]
    assert names[:3] == ["on_prepare", "on_run_start", "on_round_start"]
    assert recorder.calls[0] == ("on_prepare", None)
    assert recorder.calls[2] == ("on_round_start", 1, ["alice", "bob", "charlie"], 0.05)
    first = names.index("on_round_end")
    assert sorted(c[2] for c in recorder.calls[:first] if c[0] == "on_fit_result") == \
        ["alice", "bob"]
    (failure,) = [c for c in recorder.calls if c[0] == "on_fit_failure" and c[1] == 1]
    assert failure[2] == "charlie" and "worker process died" in failure[3]
    # round 1 is evaluated: the updates, then the federated model, before the round ends
    evaluated = [c[2] for c in recorder.calls[:first] if c[0] == "on_evaluate"]
    assert evaluated == ["Model update alice", "Model update bob", "Federated model"]
    assert isinstance(recorder.calls[names.index("on_evaluate")][3], EvaluateRes)
    ends = [c for c in recorder.calls if c[0] in ("on_round_end", "on_round_closed")]
    assert [(c[0], c[1]) for c in ends] == [("on_round_end", history[0]),
                                            ("on_round_closed", history[0]),
                                            ("on_round_end", history[1]),
                                            ("on_round_closed", history[1])]
    assert names[-1] == "on_run_end"
    # the default reporters ran beside it
    assert (tmp_path / "checkpoint.fedmq").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_reporters_replace_the_defaults():
    lines: list[str] = []
    coord = Coordinator(InProcessConnection(workers()), ["alice"],
                        small_config(rounds=1, eval_every=0), echo=lines.append, reporters=[])
    asyncio.run(coord.run())
    assert lines == [] and coord.events.events == []  # no console, no events
    assert coord.history[0].status == "ok"


def test_console_lines_are_the_seeds():
    config = small_config(rounds=40)
    lines: list[str] = []
    fake = types.SimpleNamespace(config=config, echo=lines.append, run_dir=None)
    console = ConsoleReporter().bind(fake)
    console.on_round_start(11, ["alice", "bob", "charlie"], 0.08)
    console.on_evaluate_start(11)
    res = EvaluateRes(11, "testing", 0.51234, 57, 60, [30, 0, 0, 0, 15, 0, 0, 9, 6, 0],
                      [6] * 10)
    console.on_evaluate(11, "Federated model", res)
    console.on_evaluate(11, "Model update bob", TimeoutError("no reply"))
    record = RoundRecord(round=11, seconds=0.25, lr=0.08, status="ok", loss=0.7,
                         workers={"alice": {}, "bob": {}}, failed={"charlie": "down"},
                         accuracy=0.95)
    console.on_round_end(record)
    assert lines == [
        "Training round 11/40",
        "Evaluating models",
        "Federated model: Percentage numbers 0-3: 50%, 4-6: 25%, 7-9: 25%",
        "Federated model: Average loss: 0.5123, Accuracy: 57/60 (95.00%)",
        "Model update bob: evaluation failed: TimeoutError: no reply",
        "[#####               ] round 11/40 ok: 2/3 workers, train loss 0.7000, lr 0.0800, "
        "0.25 s, accuracy 95.00%; failed: charlie (down)",
    ]


def test_async_console_and_metrics_reporters(tmp_path):
    lines: list[str] = []
    fake = types.SimpleNamespace(config=small_config(), echo=lines.append, run_dir=tmp_path,
                                 max_updates=12)
    console = AsyncConsoleReporter().bind(fake)
    metrics = MetricsReporter(tmp_path, x="version").bind(fake)
    metrics.on_prepare(None)
    records = [VersionRecord(version=v, time=0.0, seconds=0.5 * v, loss=1.0 / v, updates=[{}],
                             staleness=[v - 1], counts={}, received=2 * v, dropped=0,
                             failures=0) for v in (1, 2, 3)]
    for record in records:
        console.on_round_end(record)
        metrics.on_round_closed(record)
    console.on_fit_failure(3, "charlie", "ConnectionError: gone", 0.4)
    assert lines == ["version 1: 1 updates (staleness 0), train loss 1.0000, 2/12 received, "
                     "0 dropped, 0.50 s",
                     "version 2: 1 updates (staleness 1), train loss 0.5000, 4/12 received, "
                     "0 dropped, 1.00 s",
                     "version 3: 1 updates (staleness 2), train loss 0.3333, 6/12 received, "
                     "0 dropped, 1.50 s",
                     "charlie: Fit failed (ConnectionError: gone); retrying in 0.4 s"]
    records[-1].accuracy = 0.5  # evaluated after the fact: the last line is rewritten
    metrics.on_record_updated(records[-1])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in rows] == [1, 2, 3] and rows[-1]["accuracy"] == 0.5
    metrics.on_prepare(2)  # resumed after version 2: later lines go
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["version"] for r in rows] == [1, 2]
    metrics.on_prepare(None)  # a fresh run starts anew
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_async_loop_reports_through_the_same_hooks():
    recorder = Recorder()
    coord = AsyncCoordinator(InProcessConnection(workers()), ["alice", "bob"],
                             small_config(eval_every=0), strategy=FedAsync(),
                             echo=lambda line: None, max_updates=3,
                             extra_reporters=[recorder])
    history = asyncio.run(coord.run())
    names = [c[0] for c in recorder.calls]
    assert names[:2] == ["on_prepare", "on_run_start"] and names[-1] == "on_run_end"
    assert names.count("on_fit_result") == 3
    assert [c[1] for c in recorder.calls if c[0] == "on_round_closed"] == history
    assert {c[0] for c in recorder.calls} >= {"on_round_end", "on_round_closed"}


def test_a_round_coordinator_refuses_an_async_strategy():
    with pytest.raises(TypeError, match="AsyncCoordinator"):
        Coordinator(InProcessConnection(workers()), ["alice"], small_config(),
                    strategy=FedAsync())
    assert isinstance(FedAsync(), Strategy) and isinstance(FedAvg(), Strategy)
