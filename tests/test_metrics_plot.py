"""metrics.png (fedmq/fl/metrics.py): what is drawn, checked as data (`plot_series`): the
training, per-worker and test losses, the steps where Fits failed with their number, the
epsilon panel only when records carry an `epsilon`; and the file, titled with the run's name,
written by a real run. In-process workers, no broker."""
from __future__ import annotations

import asyncio
import json

from PIL import Image

from fedmq.fl.async_coordinator import AsyncCoordinator
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator
from fedmq.fl.metrics import PLOT, failures_at, plot, plot_series, worker_losses
from fedmq.strategy import FedAsync

from test_coordinator import Broken, small_config, workers


def rounds(epsilon: bool = False) -> list[dict]:
    out = []
    for r in range(1, 5):
        failed = {"charlie": "missed the round deadline"} if r in (2, 3) else {}
        if r == 3:
            failed["bob"] = "ConnectionError: gone"
        ws = {w: {"loss": 1.0 / r + i, "samples": 8} for i, w in enumerate(("alice", "bob",
                                                                           "charlie"))
              if w not in failed}
        rec = {"round": r, "status": "ok", "loss": 1.0 / r, "workers": ws, "failed": failed,
               "accuracy": 0.5 if r in (1, 4) else None, "test_loss": 0.9 if r in (1, 4) else None}
        if epsilon:
            rec["epsilon"] = 0.25 * r
        out.append(rec)
    return out


def test_the_plotted_series_of_rounds():
    series = plot_series(rounds())
    assert series["loss"] == ([1, 2, 3, 4], [1.0, 0.5, 1 / 3, 0.25])
    assert series["accuracy"] == ([1, 4], [50.0, 50.0])
    assert series["test_loss"] == ([1, 4], [0.9, 0.9])
    assert series["failed"] == [(2, 1), (3, 2)]
    assert series["workers"]["charlie"] == ([1, 4], [3.0, 2.25])
    assert series["workers"]["alice"][0] == [1, 2, 3, 4]
    assert series["epsilon"] is None
    assert plot_series(rounds(epsilon=True))["epsilon"] == ([1, 2, 3, 4], [0.25, 0.5, 0.75, 1.0])


def test_a_round_that_failed_as_a_whole_is_marked():
    record = {"round": 1, "status": "failed", "loss": None, "workers": {},
              "failed": {"*": "not enough workers"}}
    assert failures_at(record, None) == 0
    assert plot_series([record])["failed"] == [(1, 0)]


def test_the_plotted_series_of_versions():
    versions = [{"version": v, "loss": 1.0, "failures": f, "accuracy": None,
                 "updates": [{"worker": "alice", "loss": 0.5}, {"worker": "alice", "loss": 1.5},
                             {"worker": "bob", "loss": 2.0}]}
                for v, f in ((1, 0), (2, 2), (3, 2), (4, 3))]
    series = plot_series(versions, x="version")
    assert series["failed"] == [(2, 2), (4, 1)]  # the running count's growth
    assert series["workers"] == {"alice": ([1, 2, 3, 4], [1.0] * 4),
                                 "bob": ([1, 2, 3, 4], [2.0] * 4)}
    assert worker_losses({"workers": {"a": {"loss": 0.1}, "b": {}}}) == {"a": 0.1}


def test_the_png_is_titled_with_the_run_name(tmp_path):
    path = plot(rounds(epsilon=True), tmp_path / "m.png", title="my-run")
    with Image.open(path) as image:
        assert image.info.get("Title") == "my-run"
        wide = image.size[0]
    with Image.open(plot(rounds(), tmp_path / "n.png", title="t")) as image:
        assert image.size[0] < wide  # no epsilon panel without epsilon


def test_a_run_writes_its_plot_with_failed_rounds(tmp_path):
    run_dir = tmp_path / "failing-run"
    coord = Coordinator(InProcessConnection(workers(charlie=Broken())),
                        ["alice", "bob", "charlie"], small_config(rounds=2, eval_every=2),
                        testing="testing", echo=lambda line: None, run_dir=run_dir,
                        progress="lines")
    asyncio.run(coord.run())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]) >= {"round", "time", "loss", "accuracy", "workers", "failed"}
    with Image.open(run_dir / PLOT) as image:
        assert image.info["Title"] == "failing-run"
    series = plot_series(rows)
    assert series["failed"] == [(1, 1), (2, 1)]
    assert set(series["workers"]) == {"alice", "bob"}


def test_an_async_run_writes_its_plot(tmp_path):
    run_dir = tmp_path / "async-run"
    coord = AsyncCoordinator(InProcessConnection(workers(charlie=Broken())),
                             ["alice", "charlie"], small_config(eval_every=2),
                             strategy=FedAsync(), testing="testing", echo=lambda line: None,
                             max_updates=3, retry_backoff=0.05, run_dir=run_dir)
    asyncio.run(coord.run())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with Image.open(run_dir / PLOT) as image:
        assert image.info["Title"] == "async-run"
    series = plot_series(rows, x="version")
    assert sum(n for _, n in series["failed"]) == rows[-1]["failures"] > 0
    assert set(series["workers"]) == {"alice"}
