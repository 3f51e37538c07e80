"""`fedmq train --model file.py:Class` (issue 14): a user's model, with BatchNorm and Dropout,
defined in a file of the user's (not in fedmq.models), trained in rounds by worker services
that have none of its code: the model travels as a plan, sent once per worker and then named
by its digest. The run over RabbitMQ equals the in-process run."""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import textwrap

import pytest

from fedmq.fl.config import TrainConfig
from fedmq.fl.connections import AMQPRoundConnection, InProcessConnection
from fedmq.fl.coordinator import Coordinator
from fedmq.strategy import FedAvg

NET = textwrap.dedent("""
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        input_shape = (1, 28, 28)

        def __init__(self, width=32, p=0.25):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, 1)
            self.bn = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(p)
            self.fc1 = nn.Linear(8 * 13 * 13, width)
            self.fc2 = nn.Linear(width, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
            x = self.drop(F.relu(self.fc1(x.flatten(1))))
            return F.log_softmax(self.fc2(x), dim=1)
""")
TRAIN = {"um-alice": "0-4", "um-bob": "5-9"}
TESTING = "um-testing"


def _config(path) -> TrainConfig:
    return TrainConfig(rounds=3, model=f"{path}:Net", model_args=["width=48"], batch_size=32,
                       num_batches=5, lr=0.1, eval_every=1, round_timeout=60, seed=3)


def test_a_users_model_file_trains_in_process(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "train", "--model",
                           f"{path}:Net", "--model-arg", "width=48", "--rounds", "2",
                           "--eval-every", "1", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Final accuracy" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "fedmq.cli", "train", "--model",
                          f"{path}:Nope", "--rounds", "1", "--runs-dir", str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "has no Nope" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.amqp
@pytest.mark.slow
def test_a_users_model_over_rabbitmq_equals_the_in_process_run(tmp_path):
    from worker_procs import AMQP_URL, WorkerProcesses
    from fedmq.service import build_worker
    path = tmp_path / "net.py"
    path.write_text(NET)
    procs = WorkerProcesses(tmp_path)
    try:
        for worker_id, labels in TRAIN.items():
            procs.start(worker_id, "--dataset", "mnist5k", "--labels", labels, wait=False)
        procs.start(TESTING, "--dataset", "mnist5k", "--testing", wait=False)
        for worker_id, proc in procs.procs.items():
            procs.wait_consuming(worker_id, proc, timeout=120)

        async def run():
            conn = await AMQPRoundConnection.connect(AMQP_URL)
            coord = Coordinator(conn, list(TRAIN), _config(path), testing=TESTING,
                                strategy=FedAvg(), echo=lambda line: None)
            try:
                history = await coord.run()
                # a worker that lost the plan (restarted) gets it again by itself
                procs.stop("um-alice")
                procs.start("um-alice", "--dataset", "mnist5k", "--labels", TRAIN["um-alice"],
                            fresh=False)
                coord.config.rounds = 4
                history.append(await coord.run_round(4))
                return history
            finally:
                await conn.aclose()
        history = asyncio.run(run())
    finally:
        procs.stop_all(delete_queues=True)
    local = {w: build_worker(argparse.Namespace(id=w, dataset="mnist5k", labels=labels,
                                                testing=False)) for w, labels in TRAIN.items()}
    local[TESTING] = build_worker(argparse.Namespace(id=TESTING, dataset="mnist5k",
                                                     labels=None, testing=True))
    expected = asyncio.run(Coordinator(InProcessConnection(local), list(TRAIN), _config(path),
                                       testing=TESTING, strategy=FedAvg(),
                                       echo=lambda line: None).run())
    assert [r.status for r in history] == ["ok"] * 4, [r.failed for r in history]
    assert [r.correct for r in history[:3]] == [r.correct for r in expected]
    assert history[2].accuracy > 0.5


def test_a_failing_user_model_is_one_line_exit_2(tmp_path):
    """Found by review: any failure of the user's code (not only a TypeError) and a wrong
    --input-shape are one line and exit 2, before any connection; so is sys.exit in it."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "bad.py").write_text(textwrap.dedent("""
        import sys
        import torch.nn as nn

        class Raises(nn.Module):
            def __init__(self):
                raise RuntimeError("no GPU here")

        if "EXIT" in __import__("os").environ:
            sys.exit(0)
    """))
    cases = [([f"{tmp_path / 'bad.py'}:Raises"], {}, "no GPU here"),
             ([f"{tmp_path / 'net.py'}:Net", "--input-shape", "1,28"], {}, "check --input-shape"),
             ([f"{tmp_path / 'net.py'}:Net", "--input-shape", "100000,100000,100000"], {},
              "would be over"),
             ([f"{tmp_path / 'bad.py'}:Raises"], {"EXIT": "1"}, "SystemExit")]
    import os
    for argv, env, words in cases:
        done = subprocess.run([sys.executable, "-m", "fedmq.cli", "train", "--model", *argv,
                               "--rounds", "1", "--runs-dir", str(tmp_path / "runs")],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **env))
        assert done.returncode == 2, (argv, done.stderr[-1500:])
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, \
            done.stderr


def test_a_run_every_worker_refuses_stops_after_its_first_round(tmp_path):
    """Found by the third review: workers that do not allow the model plan refused every
    round alike, 40 times; the run stops after the first, with each worker's reason once."""
    from fedmq.fl.coordinator import RunRefused
    from fedmq.policy import Policy
    from fedmq.service import build_worker
    path = tmp_path / "net.py"
    path.write_text(NET)
    workers = {}
    for w, labels in {**TRAIN, TESTING: None}.items():
        workers[w] = build_worker(argparse.Namespace(id=w, dataset="mnist5k", labels=labels,
                                                     testing=labels is None))
        workers[w].store.policy = Policy(owner="the-owner", release="none",
                                         grants={"coordinator": {"me"}})
    coord = Coordinator(InProcessConnection(workers), list(TRAIN), _config(path),
                        testing=TESTING, strategy=FedAvg(), echo=lambda line: None)
    with pytest.raises(RunRefused) as info:
        asyncio.run(coord.run())
    assert sorted(info.value.reasons) == sorted(TRAIN) and len(coord.history) == 1
    digest = coord.model_source.user.digest
    assert all(f"--allow-model {digest}" in r for r in info.value.reasons.values())
    for w in workers.values():  # allowed: the same run trains
        w.store.policy = Policy(owner="the-owner", release="none",
                                grants={"coordinator": {"me"}}, models={digest})
    coord = Coordinator(InProcessConnection(workers), list(TRAIN), _config(path),
                        testing=TESTING, strategy=FedAvg(), echo=lambda line: None)
    assert all(r.status == "ok" and not r.failed for r in asyncio.run(coord.run()))


def test_allow_model_values_and_plan_names_are_checked():
    from fedmq.plans import module_plan
    from fedmq.policy import Policy
    for bad in ("sha256:" + "z" * 64, "sha256:" + "A" * 64, "sha256:abc", "foo"):
        with pytest.raises(ValueError, match="allow-model"):
            Policy(release="none", models={bad})
    Policy(release="none", models={"sha256:" + "a" * 64, "any"})
    import torch
    rec = module_plan.model_plan(torch.nn.Linear(3, 2), torch.zeros(2, 3))
    for name in ("Net\n2026-11-30 INFO fedmq: owner approved", "x" * 201, ""):
        with pytest.raises(ValueError, match="printable"):
            module_plan.validate(module_plan.ModelPlanRecord(
                name, rec.train, rec.eval, rec.state_names, rec.state_shapes,
                rec.state_dtypes, rec.parameters, rec.batch_size, rec.batch_generic))
    assert "F.linear" in module_plan.describe(rec) and "weight* [2, 3]" in \
        module_plan.describe(rec)
