"""The coordinator on in-process workers: rounds, deadlines, min_fit_workers, late replies,
resume, metrics and plot files, events."""
from __future__ import annotations

import asyncio
import json
import time

import re

import pytest
import torch

from fedmq import messages as m, serde
from fedmq.fl import checkpoint
from fedmq.fl.connections import InProcessConnection
from fedmq.fl.coordinator import Coordinator, TrainConfig
from fedmq.fl.messages import FitRes
from fedmq.strategy import FedAvg

from fl_helpers import data_worker


def small_config(**changes) -> TrainConfig:
    base = dict(rounds=3, batch_size=8, num_batches=2, lr=0.05, eval_every=2, round_timeout=30,
                seed=3, eval_batch_size=64)
    return TrainConfig(**(base | changes))


def workers(**extra):
    ws = {"alice": data_worker("alice", n=48, labels=range(0, 4), seed=1),
          "bob": data_worker("bob", n=48, labels=range(4, 7), seed=2),
          "charlie": data_worker("charlie", n=48, labels=range(7, 10), seed=3),
          "testing": data_worker("testing", n=60, split="test", seed=4)}
    ws.update(extra)
    return ws


class Slow:
    """A worker that takes `delay` seconds before handling each message."""

    def __init__(self, worker, delay: float) -> None:
        self.worker, self.delay, self.id = worker, delay, worker.id

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        time.sleep(self.delay)
        return self.worker.handle_frame(frame, login)


class Stale:
    """A worker that answers every Fit with a reply for round 0 (a late reply)."""

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        msg = serde.decode(frame).message
        return serde.encode(m.Reply(value=FitRes(0, "stale", msg.weights, 10, 0.1)))


class Poisoned:
    """A worker whose update is unusable: it trained on no examples (`empty`), or its weights
    hold NaN."""

    def __init__(self, worker_id: str, empty: bool = False) -> None:
        self.id, self.empty = worker_id, empty

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        msg = serde.decode(frame).message
        weights = {k: v.clone() for k, v in msg.weights.items()}
        if not self.empty:
            name = next(k for k, v in weights.items() if v.is_floating_point())
            weights[name].view(-1)[0] = float("nan")
        return serde.encode(m.Reply(value=FitRes(msg.round, self.id, weights,
                                                 0 if self.empty else 10, 0.1)))


class Broken:
    """A worker that cannot answer at all (its reply is not a frame)."""

    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        raise ConnectionError("worker process died")


def run(coordinator: Coordinator, **kwargs):
    return asyncio.run(coordinator.run(**kwargs))


def make(ws, ids, config, lines=None, **kwargs) -> Coordinator:
    echo = lines.append if lines is not None else (lambda line: None)
    return Coordinator(InProcessConnection(ws), ids, config, testing="testing", echo=echo,
                       **kwargs)


def test_rounds_print_the_seed_lines_and_write_metrics_plot_checkpoint(tmp_path):
    lines: list[str] = []
    coord = make(workers(), ["alice", "bob", "charlie"], small_config(), lines,
                 run_dir=tmp_path / "run")
    history = run(coord)
    assert [r.round for r in history] == [1, 2, 3]
    assert all(r.status == "ok" and not r.failed for r in history)
    assert all(r.workers[w]["samples"] == 16 for r in history for w in ("alice", "bob"))
    # evaluation on rounds 1 and 3 (every 2, and the last), in the seed's format
    assert [r.accuracy is not None for r in history] == [True, False, True]
    assert lines.count("Evaluating models") == 2
    assert any(line.startswith("Model update alice: Percentage numbers 0-3: ")
               and line.endswith("%") for line in lines)
    fed = [line for line in lines if line.startswith("Federated model: Average loss: ")]
    assert len(fed) == 2 and fed[-1].endswith(f"Accuracy: {history[-1].correct}/60 "
                                              f"({100 * history[-1].accuracy:.2f}%)")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
               if x]
    assert [r["round"] for r in records] == [1, 2, 3]
    assert set(records[0]) >= {"round", "time", "seconds", "loss", "accuracy", "workers",
                               "failed"}
    assert records[0]["workers"]["bob"]["samples"] == 16
    assert records[0]["workers"]["bob"]["fit_seconds"] > 0
    png = (tmp_path / "run" / "metrics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    state = checkpoint.load(tmp_path / "run")
    assert state["round"] == 3
    assert all(torch.equal(state["weights"][k], v) for k, v in coord.weights.items())
    # learning-rate decay: lr = max(0.98 lr, 0.01 lr0)
    assert [r.lr for r in history] == pytest.approx([0.05, 0.049, 0.04802])
    keys = [key for key, _ in coord.events.events]
    assert keys[:1] == ["round.started"] and "fit.result" in keys
    assert keys.count("round.finished") == 3 and "evaluate.result" in keys


def test_lr_decay_stops_at_one_percent_of_the_initial_lr():
    coord = make(workers(), ["alice"], small_config(rounds=1, lr_decay=0.1, eval_every=0))
    coord.prepare()
    for expected in (0.005, 0.0005, 0.0005):
        coord.end_round(asyncio.run(coord.run_round(1)))
        assert coord.lr == pytest.approx(expected)


def test_federated_training_learns():
    coord = make(workers(), ["alice", "bob", "charlie"],
                 small_config(rounds=6, num_batches=4, lr=0.1, eval_every=10))
    history = run(coord)
    assert history[0].accuracy < 0.5 < history[-1].accuracy


def test_a_worker_that_misses_the_deadline_does_not_hang_the_round():
    ws = workers(bob=Slow(data_worker("bob", n=48), delay=3.0))
    coord = make(ws, ["alice", "bob", "charlie"], small_config(rounds=1, round_timeout=1.2,
                                                                eval_every=0))
    started = time.monotonic()
    (record,) = run(coord)
    assert time.monotonic() - started < 2.8
    assert record.status == "ok"
    assert sorted(record.workers) == ["alice", "charlie"]
    assert record.failed == {"bob": "missed the round deadline"}


def test_too_few_answers_fail_the_round_and_keep_the_model():
    ws = workers(bob=Slow(data_worker("bob", n=48), delay=3.0), charlie=Broken())
    coord = make(ws, ["alice", "bob", "charlie"], small_config(rounds=1, round_timeout=1.0,
                                                                eval_every=0),
                 strategy=FedAvg(min_fit_workers=2))
    coord.prepare()
    before = {k: v.clone() for k, v in coord.weights.items()}
    record = asyncio.run(coord.run_round(1))
    assert record.status == "failed"
    assert set(record.failed) == {"bob", "charlie"}
    assert "ConnectionError: worker process died" in record.failed["charlie"]
    assert all(torch.equal(before[k], coord.weights[k]) for k in before)


def test_min_fit_workers_met_the_round_aggregates_whoever_answered():
    ws = workers(charlie=Broken())
    coord = make(ws, ["alice", "bob", "charlie"], small_config(rounds=1, eval_every=0),
                 strategy=FedAvg(min_fit_workers=2))
    coord.prepare()
    before = {k: v.clone() for k, v in coord.weights.items()}
    record = asyncio.run(coord.run_round(1))
    assert record.status == "ok" and sorted(record.workers) == ["alice", "bob"]
    assert any(not torch.equal(before[k], coord.weights[k]) for k in before)


def test_a_reply_for_another_round_is_discarded():
    coord = make(workers(stale=Stale()), ["alice", "stale"],
                 small_config(rounds=1, eval_every=0))
    (record,) = run(coord)
    assert list(record.workers) == ["alice"]
    assert "round 0 discarded" in record.failed["stale"]


def test_a_late_worker_rejoins_the_next_round():
    """bob misses round 1's deadline; his stale Fit is skipped (deadline passed), and he
    answers round 2 in time."""
    slow = Slow(data_worker("bob", n=48), delay=1.5)
    coord = make(workers(bob=slow), ["alice", "bob"], small_config(rounds=2, round_timeout=1.0,
                                                                    eval_every=0))
    coord.prepare()
    first = asyncio.run(coord.run_round(1))
    assert "bob" in first.failed
    slow.delay = 0.0
    time.sleep(1.0)  # bob finishes round 1's message (which he skips: its deadline passed)
    second = asyncio.run(coord.run_round(2))
    assert sorted(second.workers) == ["alice", "bob"] and not second.failed


@pytest.mark.slow
def test_resume_continues_with_the_same_results(tmp_path):
    config = small_config(rounds=4)
    straight = make(workers(), ["alice", "bob", "charlie"], config, run_dir=tmp_path / "a")
    run(straight)
    interrupted = make(workers(), ["alice", "bob", "charlie"], config, run_dir=tmp_path / "b")
    run(interrupted, until=2)
    assert checkpoint.load(tmp_path / "b")["round"] == 2
    lines: list[str] = []
    resumed = make(workers(), ["alice", "bob", "charlie"], config, lines,
                   run_dir=tmp_path / "b")
    history = run(resumed, resume=True)
    assert lines[0].startswith("Resuming after round 2")
    assert [r.round for r in history] == [3, 4]
    assert all(torch.equal(straight.weights[k], resumed.weights[k]) for k in straight.weights)

    def comparable(path):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for r in rows:  # timings differ from run to run
            for w in r["workers"].values():
                del w["fit_seconds"]
        return [{k: v for k, v in r.items() if k not in ("seconds", "time")} for r in rows]
    assert comparable(tmp_path / "b" / "metrics.jsonl") == \
        comparable(tmp_path / "a" / "metrics.jsonl")


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    run(make(workers(), ["alice"], small_config(rounds=1), run_dir=tmp_path))
    other = make(workers(), ["alice"], small_config(rounds=2, seed=99), run_dir=tmp_path)
    with pytest.raises(ValueError, match="seed 3"):
        run(other, resume=True)


def test_sampling_uses_a_per_round_rng():
    coord = make(workers(), ["alice", "bob", "charlie"],
                 small_config(rounds=4, eval_every=0), strategy=FedAvg(fraction_fit=0.3))
    first = [sorted(r.workers) for r in run(coord)]
    again = make(workers(), ["alice", "bob", "charlie"],
                 small_config(rounds=4, eval_every=0), strategy=FedAvg(fraction_fit=0.3))
    assert all(len(w) == 1 for w in first) and len({w[0] for w in first}) > 1
    assert [sorted(r.workers) for r in run(again)] == first


def test_evaluation_rounds_are_the_seeds():
    config = TrainConfig(rounds=40, eval_every=10)
    assert [r for r in range(1, 41) if config.is_eval_round(r)] == [1, 11, 21, 31, 40]
    assert not any(TrainConfig(rounds=5, eval_every=0).is_eval_round(r) for r in range(1, 6))


def test_compose_and_makefile_commands_parse_with_fedmq_train():
    import pathlib
    import re
    import shlex

    from fedmq.cli import build_parser

    root = pathlib.Path(__file__).resolve().parent.parent
    text = (root / "compose.yaml").read_text()
    block = text[text.index("  coordinator:"):]
    command = re.search(r"command: (\[.*?\])", block, re.S).group(1)
    args = json.loads(command)
    parsed = build_parser().parse_args(args)
    assert parsed.command == "train" and parsed.workers == "alice,bob,charlie"
    assert parsed.testing == "testing" and parsed.url.startswith("amqp://")
    makefile = (root / "Makefile").read_text().replace("\\\n", " ")
    demo = shlex.split(re.search(r"^DEMO_ARGS \?= (.*)$", makefile, re.M).group(1))
    parsed = build_parser().parse_args(["train", *demo])
    assert (parsed.rounds, parsed.batch_size, parsed.batches, parsed.lr, parsed.eval_every) == \
        (40, 32, 10, 0.1, 10)


@pytest.mark.parametrize("strategy, extra, lines", [
    ("fedadam", ["--strategy-arg", "eta=0.01"], 2),       # two rounds -> two metrics lines
    ("fedbuff", ["--strategy-arg", "buffer_size=2", "--max-updates", "4"], 2),  # 4 updates / 2
])
def test_fedmq_train_runs_any_registered_strategy(tmp_path, strategy, extra, lines):
    from fedmq.cli import main
    argv = ["train", "--dataset", "mnist5k", "--workers", "alice:0-3,bob:4-6", "--testing", "",
            "--rounds", "2", "--batches", "1", "--batch-size", "8", "--eval-every", "0",
            "--runs-dir", str(tmp_path), "--name", strategy, "--strategy", strategy, *extra]
    assert main(argv) == 0
    records = (tmp_path / strategy / "metrics.jsonl").read_text().splitlines()
    assert len(records) == lines


def test_fedmq_train_names_the_valid_strategies_when_given_another(tmp_path, capsys):
    from fedmq.cli import main
    assert main(["train", "--dataset", "mnist5k", "--runs-dir", str(tmp_path),
                 "--strategy", "sgd"]) == 2
    err = capsys.readouterr().err
    assert re.search("fedavg.*krum", err) and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before any run folder is made


def test_empty_and_non_finite_updates_are_dropped_as_failures(caplog):
    ws = workers(bob=Poisoned("bob"), charlie=Poisoned("charlie", empty=True))
    lines: list[str] = []
    coord = make(ws, ["alice", "bob", "charlie"], small_config(rounds=1, eval_every=0), lines)
    coord.prepare()
    before = {k: v.clone() for k, v in coord.weights.items()}
    with caplog.at_level("WARNING", logger="fedmq.fl"):
        record = asyncio.run(coord.run_round(1))
    assert record.status == "ok" and list(record.workers) == ["alice"]
    assert "holds NaN or infinite values" in record.failed["bob"]
    assert record.failed["charlie"].startswith("UpdateRejected: update from charlie: "
                                               "num_examples is 0")
    assert all(torch.isfinite(v).all() for v in coord.weights.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], coord.weights[k]) for k in before)  # alice's update
    failed = {b["worker"]: b["reason"] for k, b in coord.events.events if k == "fit.failed"}
    assert failed == record.failed
    assert "dropped" in caplog.text and "num_examples is 0" in caplog.text
    # the workers fail in whichever order their replies come
    assert "; failed: " in lines[-1]
    assert f"bob ({record.failed['bob']})" in lines[-1]
    assert f"charlie ({record.failed['charlie']})" in lines[-1]
