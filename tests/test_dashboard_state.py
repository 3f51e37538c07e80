"""fedmq.dashboard.state: events in, the page's state out; bad events are ignored, never
raised (no broker, no browser)."""
from __future__ import annotations

import json

import pytest

from fedmq.dashboard.state import MAX_TEXT, MAX_WORKERS, RunState
from fedmq.management import QueueRow

T = 1_700_000_000.0


def fold(*events) -> RunState:
    state = RunState()
    for i, (key, body) in enumerate(events):
        state.apply(key, body, T + i)
    return state


def a_round(step: int, total: int = 3, accuracy: float | None = 0.5):
    """The events of one synchronous round, as the EventReporter emits them."""
    return [
        ("round.started", {"round": step, "workers": ["alice", "bob"], "lr": 0.1,
                           "run": "seed-s14-mnist5k", "rounds": total}),
        ("fit.result", {"round": step, "worker": "alice", "loss": 1.5 / step, "samples": 64,
                        "fit_seconds": 0.25}),
        ("fit.failed", {"round": step, "worker": "bob", "reason": "ReplyTimeout: no reply"}),
        ("evaluate.result", {"round": step, "model": "Model update alice", "loss": 1.2,
                             "correct": 30, "total": 100, "accuracy": 0.3}),
        ("evaluate.result", {"round": step, "model": "Federated model", "loss": 0.9,
                             "correct": 50, "total": 100, "accuracy": 0.5,
                             "prediction_hist": [1, 2]}),
        ("round.finished", {"round": step, "seconds": 1.0, "lr": 0.1, "status": "ok",
                            "loss": 1.5 / step, "workers": {"alice": {
                                "loss": 1.5 / step, "samples": 64, "fit_seconds": 0.25}},
                            "failed": {"bob": "ReplyTimeout: no reply"},
                            "accuracy": accuracy, "test_loss": 0.9, "correct": 50,
                            "total": 100, "time": T, "run": "seed-s14-mnist5k",
                            "rounds": total}),
    ]


def test_rounds_fold_into_progress_curves_and_workers():
    state = fold(*a_round(1), *a_round(2, accuracy=0.75))
    out = state.as_json()
    assert (out["unit"], out["run"], out["current"], out["total"]) == \
        ("round", "seed-s14-mnist5k", 2, 3)
    assert out["status"] == "running" and out["finished"] == 2 and out["accuracy"] == 0.75
    assert [(p["step"], p["accuracy"], p["loss"]) for p in out["points"]] == \
        [(1, 0.5, 1.5), (2, 0.75, 0.75)]
    workers = {w["id"]: w for w in out["workers"]}
    assert set(workers) == {"alice", "bob"}
    alice, bob = workers["alice"], workers["bob"]
    # fit.result and the round's record describe one Fit: counted once per round
    assert (alice["last_fit"], alice["step"], alice["fits_ok"], alice["samples"]) == \
        ("ok", 2, 2, 64)
    assert alice["loss"] == 0.75 and alice["fit_seconds"] == 0.25 and alice["time"] == T + 7
    assert alice["accuracy"] == 0.3
    assert (bob["last_fit"], bob["fits_failed"], bob["reason"]) == \
        ("failed", 2, "ReplyTimeout: no reply")
    assert out["recent"][0]["kind"] == "round.finished" and len(out["recent"]) == 12
    json.dumps(out)  # what /api/state sends


def test_last_round_finishes_the_run_and_a_new_run_restarts_it():
    state = fold(*a_round(1, total=2), *a_round(2, total=2))
    assert state.status == "finished" and state.current == 2
    state.apply("round.started", {"round": 1, "rounds": 2, "workers": []}, T + 20)
    assert state.status == "running"


def test_a_new_run_forgets_the_previous_runs_rounds_curves_and_workers():
    """Found by review: run B's page showed run A's round 3 of B's 2, A's accuracy point and
    A's worker bob. A new run name, or round 1 again, starts the page afresh."""
    state = fold(*a_round(1), *a_round(2), *a_round(3))
    events = state.events
    b_round = [(key, {**body, "run": "B", "rounds": 2,
                      **({"workers": ["alice"]} if key == "round.started" else {}),
                      **({"failed": {}} if key == "round.finished" else {})})
               for key, body in a_round(1, total=2) if key != "fit.failed"]
    for i, (key, body) in enumerate(b_round):
        state.apply(key, body, T + 100 + i)
    out = state.as_json()
    assert (out["run"], out["current"], out["total"]) == ("B", 1, 2)
    assert [p["step"] for p in out["points"]] == [1]
    assert {w["id"] for w in out["workers"]} == {"alice"}
    assert {w["id"]: w["fits_ok"] for w in out["workers"]} == {"alice": 1}
    assert state.events == events + len(b_round)  # the counters go on
    # the same name from round 1 again (--overwrite) is a new run too; a resume is not
    state.apply("round.started", {"round": 2, "rounds": 2, "run": "B", "workers": []}, T + 200)
    assert state.current == 2 and len(state.points) == 1
    state.apply("round.started", {"round": 1, "rounds": 2, "run": "B", "workers": []}, T + 300)
    assert state.current == 1 and not state.points and not state.workers


def test_evaluate_result_without_a_record_gives_the_accuracy():
    state = fold(("evaluate.result", {"version": 4, "model": "Federated model", "loss": 0.3,
                                      "correct": 9, "total": 10}),
                 ("evaluate.result", {"version": 4, "model": "Model update w1", "loss": 0.1,
                                      "correct": 10, "total": 10}),
                 ("evaluate.result", {"version": 4, "model": "server", "loss": 0.2,
                                      "accuracy": 0.99}))
    assert state.unit == "version" and state.accuracy == 0.9
    assert state.workers["w1"].accuracy == 1.0
    assert state.as_json()["points"] == [{"step": 4, "loss": None, "accuracy": 0.9,
                                          "test_loss": 0.3, "status": None}]


def test_asynchronous_versions():
    state = fold(("fit.result", {"version": 0, "worker": "w1", "loss": 2.0, "samples": 32}),
                 ("fit.dropped", {"version": 1, "worker": "w2", "staleness": 9}),
                 ("version.applied", {"version": 1, "time": T, "seconds": 2.0, "loss": 1.0,
                                      "updates": [{"worker": "w1", "loss": 1.0, "samples": 32,
                                                   "staleness": 0, "started_from": 0}],
                                      "staleness": [0], "counts": {"w1": 1}, "received": 2,
                                      "dropped": 1, "failures": 0, "accuracy": None,
                                      "versions": 5}))
    assert (state.unit, state.current, state.total, state.finished) == ("version", 1, 5, 1)
    assert state.workers["w2"].last_fit == "dropped" and state.workers["w1"].fits_ok == 2


@pytest.mark.parametrize("key, body", [
    ("round.started", None),                                   # not JSON
    ("round.started", ["round", 1]),                           # JSON, not an object
    ("round.started", {}),                                     # no step
    ("round.started", {"round": "1"}),                         # step of the wrong type
    ("round.started", {"round": True}),
    ("round.started", {"round": -1}),
    ("round.started", {"round": 1.0, "workers": "abc"}),
    ("fit.result", {"round": 1}),                              # no worker
    ("fit.result", {"round": 1, "worker": 7}),
    ("fit.result", {"round": 1, "worker": "*"}),
    ("fit.failed", {"round": 1, "worker": ""}),
    ("evaluate.result", {"round": 1, "model": "t"}),           # neither loss nor accuracy
    ("evaluate.result", {"round": 1, "accuracy": 7.0, "loss": "x"}),
    ("round.finished", {"round": 1, "workers": ["alice"]}),    # workers not a dict
    ("version.applied", {"version": 1, "updates": {"w": 1}}),
    ("shutdown.now", {"round": 1}),                            # unknown routing key
    ("", {"round": 1}),
])
def test_bad_or_unknown_events_are_ignored(key, body):
    state = fold(*a_round(1))
    before = state.as_json()
    assert state.apply(key, body, T + 99) is False
    after = state.as_json()
    assert after.pop("ignored") == before.pop("ignored") + 1
    assert after == before


def test_bad_fields_inside_a_good_event_are_skipped():
    state = fold(("round.started", {"round": 1, "workers": ["ok", 5, None, "x" * 10_000],
                                    "lr": float("nan"), "rounds": "many"}),
                 ("fit.result", {"round": 1, "worker": "ok", "loss": float("inf"),
                                 "samples": -3}),
                 ("round.finished", {"round": 1, "workers": {"ok": "not a dict"},
                                     "failed": ["x"], "accuracy": 1.5, "loss": None}))
    assert state.lr is None and state.total is None and state.accuracy is None
    assert set(state.workers) == {"ok", "x" * (MAX_TEXT - 1) + "…"}
    assert state.workers["ok"].loss is None and state.workers["ok"].samples is None
    json.dumps(state.as_json(), allow_nan=False)


def test_untrusted_text_is_kept_as_text():
    evil = "<img src=x onerror=alert(1)>\x1b[31m\u202eevil"
    state = fold(("fit.failed", {"round": 1, "worker": evil, "reason": evil}))
    out = state.as_json()
    shown = "<img src=x onerror=alert(1)>\\x1b[31m\\u202eevil"  # the page sets it as text
    assert out["workers"][0]["id"] == shown and out["workers"][0]["reason"] == shown


def test_worker_flood_is_bounded():
    state = RunState()
    for i in range(MAX_WORKERS + 50):
        state.apply("fit.result", {"round": 1, "worker": f"w{i}"}, T)
    assert len(state.workers) == MAX_WORKERS and state.ignored == 50


def test_queue_samples_give_depths_consumers_and_dead_letters():
    state = fold(*a_round(1))
    state.set_queues([QueueRow("fedmq.dead-letters", 3, 1, 0, 0.0, 0.0),
                      QueueRow("fedmq.worker.alice", 2, 1, 1, 4.0, 4.0)], T + 50)
    out = state.as_json()
    assert out["dead_letters"] == 4 and out["queues_time"] == T + 50
    workers = {w["id"]: w for w in out["workers"]}
    assert (workers["alice"]["consumers"], workers["alice"]["queue_depth"]) == (1, 2)
    assert workers["bob"]["consumers"] is None  # no queue: never served
    state.set_queue_error("cannot reach the API")
    out = state.as_json()
    assert out["queue_error"] == "cannot reach the API" and len(out["queues"]) == 2
