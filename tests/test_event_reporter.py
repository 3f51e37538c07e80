"""The events reporter (fedmq/fl/reporters.py EventReporter) gives what watching a run needs:
the run's name and total rounds, times, accuracies; folded by the dashboard's RunState into
the numbers the coordinator printed. In-process workers, no broker."""
from __future__ import annotations

import asyncio

from fedmq.dashboard.state import RunState
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator

from test_coordinator import Broken, small_config, workers


def test_events_carry_the_run_and_fold_into_the_printed_numbers(tmp_path):
    lines: list[str] = []
    coord = Coordinator(InProcessConnection(workers(charlie=Broken())),
                        ["alice", "bob", "charlie"], small_config(rounds=2, eval_every=1),
                        testing="testing", echo=lines.append, run_dir=tmp_path / "my-run")
    history = asyncio.run(coord.run())
    events = coord.events.events
    started = [body for key, body in events if key == "round.started"]
    assert [(b["round"], b["rounds"], b["run"]) for b in started] == \
        [(1, 2, "my-run"), (2, 2, "my-run")]
    assert all(isinstance(body["time"], float) for _, body in events)
    finished = [body for key, body in events if key == "round.finished"]
    assert finished[-1]["time"] == history[-1].time  # the record's own time is kept
    assert finished[-1]["rounds"] == 2 and finished[-1]["run"] == "my-run"
    evaluated = [body for key, body in events if key == "evaluate.result"]
    assert all(b["accuracy"] == b["correct"] / b["total"] for b in evaluated)

    state = RunState()
    for key, body in events:
        assert state.apply(key, body, 0.0), (key, body)
    out = state.as_json()
    assert (out["run"], out["current"], out["total"], out["status"]) == \
        ("my-run", 2, 2, "finished")
    printed = [line for line in lines if line.startswith("Federated model: Average loss")]
    assert printed[-1].endswith(f"({100 * out['accuracy']:.2f}%)")
    assert out["accuracy"] == history[-1].accuracy
    workers_ = {w["id"]: w for w in out["workers"]}
    assert workers_["alice"]["last_fit"] == "ok" and workers_["alice"]["fits_ok"] == 2
    assert workers_["charlie"]["last_fit"] == "failed" and workers_["charlie"]["reason"]
