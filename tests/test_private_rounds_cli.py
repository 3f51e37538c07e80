"""`fedmq train` with the privacy options of issue 16, end to end (`python -m fedmq.cli train`
subprocesses, in-process workers, MNIST 5k, 3 rounds of 2 batches, evaluated every round):
secure aggregation (SecAgg+, additive sharing among in-process aggregators) gives the plain
run's model and accuracy; central and local differential privacy report per round the epsilon
of the library's accountant, in metrics.jsonl, the progress line and the plot; a resumed DP run
continues the count; the refusals; over RabbitMQ, why `--launch` refuses additive sharing with
one broker user for every service."""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib

import pytest

from cli_run import one_line, run_fedmq

SMALL = ("--rounds", "3", "--batches", "2", "--eval-every", "1", "--progress", "lines")
#: the seed's partitions of the default --workers
LABELS = {"alice": "0-3", "bob": "4-6", "charlie": "7-9"}
BATCH_SIZE = 32  # fedmq train's default --batch-size
#: what secure aggregation's fixed-point encoding may change in 3 rounds of the seed CNN
TOLERANCE = 1e-5


def train(runs: pathlib.Path, name: str, *options: str, rounds: str | None = None):
    """(the finished process, metrics.jsonl's records, the run folder) of `fedmq train`."""
    argv = list(SMALL)
    if rounds is not None:
        argv[1] = rounds
    result = run_fedmq("train", *argv, "--runs-dir", str(runs), "--name", name, *options,
                       timeout=600)
    run_dir = runs / name
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] \
        if metrics.exists() else []
    return result, records, run_dir


def final_weights(run_dir: pathlib.Path) -> dict:
    from fedmq.fl import checkpoint
    return checkpoint.load(run_dir)["weights"]


def max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def plain(runs):
    result, records, run_dir = train(runs, "plain")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3
    assert all(r["epsilon"] is None for r in records)
    return records, final_weights(run_dir)


@pytest.fixture(scope="module")
def central(runs):
    result, records, run_dir = train(runs, "central", "--dp", "central",
                                     "--noise-multiplier", "1.0", "--max-grad-norm", "1.0")
    return result, records, run_dir


def accuracies(records: list[dict]) -> list[float]:
    return [100 * r["accuracy"] for r in records]


# -- secure aggregation: the plain run's model ------------------------------------------------

def test_secaggplus_through_the_cli_equals_the_plain_run(runs, plain):
    plain_records, plain_weights = plain
    result, records, run_dir = train(runs, "secagg", "--secure-aggregation", "secagg+")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3
    assert all(set(r["workers"]) == set(LABELS) for r in records)
    for secure, reference in zip(accuracies(records), accuracies(plain_records)):
        assert secure == pytest.approx(reference, abs=0.5)
    assert max_diff(final_weights(run_dir), plain_weights) < TOLERANCE


def test_additive_in_process_equals_the_plain_run(runs, plain):
    """The aggregators are in-process workers holding no data; each training worker reaches
    them as itself (so they hold one share per worker) and grants them `worker`."""
    plain_records, plain_weights = plain
    result, records, run_dir = train(runs, "additive", "--secure-aggregation",
                                     "additive:agg1,agg2")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3, records[0]["failed"]
    assert all(set(r["workers"]) == set(LABELS) for r in records)
    for secure, reference in zip(accuracies(records), accuracies(plain_records)):
        assert secure == pytest.approx(reference, abs=0.5)
    assert max_diff(final_weights(run_dir), plain_weights) < TOLERANCE


def test_in_process_aggregators_hold_one_share_per_training_worker():
    """What the CLI builds: every training worker's shares reach the aggregators under its
    own principal (its id), and only the aggregators are its peers."""
    from fedmq.fl.cli import in_process_workers
    from fedmq.principals import LOCAL

    built = in_process_workers({"alice": "0-3", "bob": "4-6"}, "mnist5k", None,
                               ["agg1", "agg2"])
    assert set(built) == {"alice", "bob", "agg1", "agg2"}
    for a in ("agg1", "agg2"):
        assert len(built[a].store) == 0  # no data
        assert built[a].policy.allows("coordinator", LOCAL)
        assert not built[a].policy.allows("coordinator", "alice")
    for w in ("alice", "bob"):
        policy = built[w].policy
        assert policy.allows("worker", "agg1") and policy.allows("worker", "agg2")
        assert not policy.allows("worker", "bob" if w == "alice" else "alice")
        network = built[w].network
        assert network.context.transport.principal == w
        assert network.client("agg1").engine.transport.workers["agg1"] is built["agg1"]


# -- differential privacy: epsilon is the accountant's -----------------------------------------

def check_plot(run_dir: pathlib.Path, records: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedmq.fl.metrics import figure

    assert (run_dir / "metrics.png").stat().st_size > 0
    fig = figure(records)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert "Privacy budget spent (epsilon)" in titles
        assert "Accuracy against epsilon" in titles
        eps_ax = fig.axes[titles.index("Privacy budget spent (epsilon)")]
        ys = list(eps_ax.lines[0].get_ydata())
        assert ys == pytest.approx([r["epsilon"] for r in records], rel=1e-12)
    finally:
        plt.close(fig)


def epsilon_lines(stdout: str) -> list[float]:
    return [float(line.split("ε=")[1].split()[0].rstrip(","))
            for line in stdout.splitlines() if " ok: " in line and "ε=" in line]


def test_central_dp_epsilon_is_the_accountants_every_round(central):
    from fedmq.privacy.accountant import CentralAccountant

    result, records, run_dir = central
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3
    reference = CentralAccountant(1.0, 1e-5)
    expected = []
    for record in records:
        reference.step(1.0)  # every worker sampled every round
        expected.append(reference.epsilon())
    assert [r["epsilon"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert expected[0] < expected[1] < expected[2]
    assert epsilon_lines(result.stdout) == pytest.approx(expected, abs=0.006)  # "ε=4.73"
    check_plot(run_dir, records)


def test_local_dp_epsilon_is_the_largest_of_the_workers_accountants(runs):
    from fedmq.data.partition import parse_labels
    from fedmq.data.worker_data import partition_tensors
    from fedmq.privacy.accountant import LocalAccountants

    result, records, run_dir = train(runs, "local", "--dp", "local", "--noise-multiplier",
                                     "1.0", "--max-grad-norm", "1.0")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3, records[0]["failed"]
    examples = {w: len(partition_tensors("mnist5k", parse_labels(labels))[1])
                for w, labels in LABELS.items()}
    reference = LocalAccountants(1.0, 1e-5)
    expected = []
    for record in records:
        for worker in record["workers"]:
            reference.step(worker, BATCH_SIZE / examples[worker], 2)
        expected.append(reference.max_epsilon())
    assert [r["epsilon"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert epsilon_lines(result.stdout) == pytest.approx(expected, abs=0.006)
    check_plot(run_dir, records)


def test_secaggplus_with_central_dp_distributes_the_noise(runs, central):
    result, records, run_dir = train(runs, "secagg-dp", "--secure-aggregation", "secagg+",
                                     "--dp", "central", "--noise-multiplier", "1.0",
                                     "--max-grad-norm", "1.0")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in records] == ["ok"] * 3
    # the same accounting as the central run (every worker sampled every round)
    assert [r["epsilon"] for r in records] == pytest.approx(
        [r["epsilon"] for r in central[1]], rel=1e-12)
    assert len(epsilon_lines(result.stdout)) == 3


def test_resumed_dp_run_continues_the_epsilon_count(runs, central):
    """The accountant's state is in the checkpoint: rounds 3 and 4 of a run stopped after
    round 2 spend what an uninterrupted run spends."""
    dp = ("--dp", "central", "--noise-multiplier", "1.0", "--max-grad-norm", "1.0")
    first, records, run_dir = train(runs, "resumed", *dp, rounds="2")
    assert first.returncode == 0, first.stderr
    assert len(records) == 2
    again, records, run_dir = train(runs, "resumed", *dp, "--resume", rounds="4")
    assert again.returncode == 0, again.stderr
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    from fedmq.privacy.accountant import CentralAccountant
    reference = CentralAccountant(1.0, 1e-5)
    expected = []
    for _ in range(4):
        reference.step(1.0)
        expected.append(reference.epsilon())
    assert [r["epsilon"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert [r["epsilon"] for r in records[:3]] == pytest.approx(
        [r["epsilon"] for r in central[1]], rel=1e-12)
    assert epsilon_lines(again.stdout) == pytest.approx(expected[2:], abs=0.006)


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options, names", [
    (["--secure-aggregation", "additive:alice,agg2"], "--secure-aggregation"),
    (["--secure-aggregation", "additive:agg1,testing"], "--secure-aggregation"),
    (["--sa-threshold", "2"], "--sa-threshold"),
    (["--secure-aggregation", "additive:agg1,agg2", "--sa-threshold", "2"], "--sa-threshold"),
    (["--noise-multiplier", "1.0"], "--noise-multiplier"),
    (["--max-grad-norm", "1.0"], "--max-grad-norm"),
    (["--dp-delta", "1e-6"], "--dp-delta"),
    (["--strategy", "fedmedian", "--secure-aggregation", "secagg+"], "--strategy fedmedian"),
    (["--strategy", "fedbuff", "--dp", "central"], "--strategy fedbuff"),
    (["--strategy", "fedasync", "--secure-aggregation", "secagg+"], "--strategy fedasync"),
    (["--dp", "central", "--dp-delta", "2"], "--dp"),
    (["--dp", "central", "--noise-multiplier", "-1"], "--dp"),
    (["--secure-aggregation", "foo"], "--secure-aggregation"),
    (["--secure-aggregation", "additive:onlyone"], "--secure-aggregation"),
    # found by review: an empty method (a script's empty variable) ran unprotected rounds
    (["--secure-aggregation", ""], "--secure-aggregation"),
    # found by review: a threshold that suits the run's workers but not the round's sample
    (["--secure-aggregation", "secagg+", "--sa-threshold", "3", "--strategy-arg",
      "fraction_fit=0.5"], "--sa-threshold"),
    (["--dp", "local", "--model", "fedmq.models:SeedCNN", "--input-shape", "1,28,28"],
     "--dp local"),
    (["--url", "amqp://guest:guest@127.0.0.1:5672/", "--launch", "--secure-aggregation",
      "additive:agg1,agg2"], "--secure-aggregation additive with --launch"),
])
def test_refusals_name_the_option(tmp_path, options, names):
    result = run_fedmq("train", "--runs-dir", str(tmp_path), *options, timeout=120)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = one_line(result)
    assert line.startswith("fedmq train: ") and names in line, line
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_help_lists_the_privacy_options_with_their_defaults():
    result = run_fedmq("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "privacy (issue 16" in text
    text = text[text.index("privacy (issue 16"):]  # the group, past the usage line
    for option, default in (("--secure-aggregation METHOD", "default: none"),
                            ("--sa-threshold T", "default: the smallest strict majority"),
                            ("--sa-neighbours K", "default: all of them up to 8 workers, "
                                                  "then 2*ceil(log2 n)+2"),
                            ("--dp {central,local}", "default: none"),
                            ("--noise-multiplier Z", "default 1.0"),
                            ("--max-grad-norm C", "default 1.0"),
                            ("--dp-delta DELTA", "default 1e-5"),
                            ("--dp-accountant {rdp,prv}", "default: rdp")):
        assert option in text
        after = text[text.index(option):]
        assert default in after[:400], (option, after[:400])


# -- over RabbitMQ with one broker user for every service --------------------------------------

@pytest.mark.amqp
def test_launched_services_sharing_guest_cannot_aggregate_additively(tmp_path):
    """Why `--launch` refuses additive sharing: services launched with the coordinator's
    --url (here guest) are one principal, and an aggregator keeps one share per principal, so
    only the first training worker's shares are taken and the round fails."""
    import os

    from fedmq.fl.cli import launch_services
    from fedmq.fl.connections import AMQPRoundConnection
    from fedmq.fl.coordinator import Coordinator, TrainConfig
    from fedmq.fl.launch import WorkerLauncher, thread_env
    from fedmq.fl.secure import make_private_rounds

    url = os.environ["FEDMQ_AMQP_URL"]
    # ids of their own: the session's shared services already serve alice, bob, ...
    ids = {"lg-alice": "0-3", "lg-bob": "4-6", "lg-charlie": "7-9"}
    args = argparse.Namespace(secure_aggregation="additive:lg-agg1,lg-agg2",
                              dataset="mnist5k", testing="")
    launcher = WorkerLauncher(url, tmp_path / "logs", env=thread_env(1, 1))
    try:
        launch_services(launcher, args, ids)
        assert set(launcher.procs) == {"lg-agg1", "lg-agg2", *ids}
        assert "--dataset" not in launcher.args["lg-agg1"]
        assert launcher.args["lg-alice"][-2:] == ["--grant=worker:lg-agg1",
                                                  "--grant=worker:lg-agg2"]
        launcher.wait_consuming(timeout=180)

        async def one_round():
            conn = await AMQPRoundConnection.connect(url)
            try:
                cfg = TrainConfig(rounds=1, model="mnist-logreg", batch_size=8, num_batches=1,
                                  eval_every=0, round_timeout=60, seed=1)
                coord = Coordinator(conn, list(ids), cfg, echo=lambda line: None,
                                    privacy=make_private_rounds("additive",
                                                                ["lg-agg1", "lg-agg2"]))
                return await coord.run()
            finally:
                await conn.aclose()

        history = asyncio.run(one_round())
    finally:
        launcher.stop_all()
    record = history[0]
    assert record.status == "failed"
    reasons = " ".join(record.failed.values())
    assert "from 'guest'" in reasons and "is held already" in reasons, record.failed
    assert len(record.workers) == 0

