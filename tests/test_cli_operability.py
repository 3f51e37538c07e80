"""`fedmq` as a person meets it (issue: operable by people): every mistake one line and exit
2 before any slow work, broker problems one line within seconds, failed runs exit 1, Ctrl-C
exits 130 saying how to resume, run folders never overwritten, `--resume` checked against
run.json, `fedmq --help` without torch, `python -m fedmq`, unknown worker keywords refused,
`ptr.numpy()` explained."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.worker_procs import AMQP_URL, WorkerProcesses

FAST = ["--rounds", "2", "--batches", "2", "--eval-every", "1", "--batch-size", "16"]


def fedmq(*argv: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmq", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


# -- fedmq --help, python -m fedmq --------------------------------------------------------------

def test_help_answers_without_importing_torch():
    code = ("import sys, time; t = time.perf_counter(); from fedmq.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('SECONDS', time.perf_counter() - t, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    seconds, torch_loaded = out.split("SECONDS")[1].split()
    assert torch_loaded == "False"
    assert float(seconds) < 1.0
    for command in ("worker", "train", "queues", "broker"):
        assert command in out


def test_python_dash_m_fedmq_is_the_fedmq_command():
    done = fedmq("--version")
    assert done.returncode == 0 and done.stdout.startswith("fedmq ")
    done = fedmq("nosuchcommand")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_every_train_option_shows_help_and_default():
    out = fedmq("train", "--help").stdout.split("\noptions:", 1)[1]
    for option in ("--rounds", "--batches", "--lr", "--eval-every", "--runs-dir", "--name",
                   "--max-failed-fits", "--stop-after-failed-rounds", "--url"):
        block = out.split(f"\n  {option} ", 1)[1].split("\n  --", 1)[0]
        assert "default" in block, option


# -- mistakes: one line, exit 2, nothing made ---------------------------------------------------

MISTAKES = [
    (["--batches", "0"], "--batches"),
    (["--rounds", "-1"], "--rounds"),
    (["--lr", "-5"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--momentum", "1.5"], "--momentum"),
    (["--eval-every", "-2"], "--eval-every"),
    (["--round-timeout", "0"], "--round-timeout"),
    (["--workers", "alice:3-1"], "--workers"),
    (["--workers", "alice:12-15"], "--workers"),
    (["--workers", "alice,alice"], "--workers"),
    (["--workers", ""], "--workers"),
    (["--testing", "alice"], "--testing"),
    (["--dataset", "mnist"], "--dataset"),
    (["--model", "resnet9000"], "resnet9000"),
    (["--strategy", "nope"], "--strategy"),
    (["--strategy-arg", "x"], "--strategy-arg"),
    (["--buckets", "3-1"], "--buckets"),
    (["--buckets", "a-b"], "--buckets"),
    (["--url", "127.0.0.1:5672"], "--url"),
    (["--url", "http://127.0.0.1:15672"], "--management-url"),
    (["--launch"], "--launch"),
    (["--name", "../elsewhere"], "--name"),
    (["--resume"], "--resume"),
    (["--resume", "--overwrite"], "--overwrite"),
    (["--max-failed-fits", "2"], "--max-failed-fits"),
    # found by review (a tester not told how it was made)
    (["--url", "amqp://guest:S3CRET@127.0.0.1:notaport/"], "--url"),
    (["--url", "amqp://guest:guest@127.0.0.1:99999/"], "--url"),
    (["--url", "amqp://guest:guest@[::1/"], "--url"),
    (["--url", "amqp://guest:S3CRET@/"], "names no broker host"),
    (["--url", "amqp://"], "names no broker host"),
    (["--url", "amqp://.../"], "not a host name"),
    (["--epochs", "1", "--batches", "3"], "--epochs"),
    (["--max-updates", "5"], "--max-updates"),
    (["--model-arg", "x=1"], "--model-arg"),
    (["--input-shape", "a,b"], "--input-shape"),
    (["--wait-workers", "inf"], "--wait-workers"),
    (["--name", ""], "--name"),
    (["--name", "x" * 300], "--name"),
    (["--buckets", "0-3,4-20"], "--buckets"),
    (["--strategy", "fedadam", "--strategy-arg", "eta=nan"], "--strategy-arg"),
    (["--strategy-arg", "min_fit_workers=99"], "min_fit_workers"),
    (["--workers", "a b"], "--workers"),
    (["--testing", ".."], "--testing"),
]


@pytest.mark.parametrize("argv,named", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_and_exit_2_before_anything_is_made(tmp_path, capsys, argv,
                                                                    named):
    from fedmq.cli import main
    started = time.monotonic()
    code = main(["train", "--runs-dir", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fedmq train: ") and named in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 10
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert "S3CRET" not in err


def test_an_option_argparse_rejects_is_exit_2(capsys):
    from fedmq.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["train", "--rounds", "many"])
    assert stop.value.code == 2 and "--rounds" in capsys.readouterr().err


def test_settings_are_checked_in_the_library_too():
    from fedmq.fl.config import TrainConfig
    with pytest.raises(ValueError, match="--lr must be above 0"):
        TrainConfig(lr=-5)
    with pytest.raises(ValueError, match="--batches"):
        TrainConfig(num_batches=0)
    TrainConfig(num_batches=None, epochs=1)  # epochs instead of batches
    TrainConfig(eval_every=0)  # never evaluate


# -- broker problems: one line, within seconds -------------------------------------------------

def _vhost_url(vhost: str) -> str:
    base, _, _ = AMQP_URL.rpartition("/")
    return f"{base}/{vhost}"


@pytest.mark.amqp
@pytest.mark.parametrize("url,says", [
    ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost-here", "vhost"),
    ("amqp://guest:not-the-password@127.0.0.1:5672/", "user name or password"),
    ("amqp://guest:guest@127.0.0.1:1/", "cannot connect"),
    ("amqp://guest:guest@no-such-host.invalid:5672/", "cannot connect"),
], ids=["unknown vhost", "bad password", "broker down", "unknown host"])
def test_broker_problems_are_one_line_within_seconds(tmp_path, url, says):
    started = time.monotonic()
    done = fedmq("train", "--url", url, "--runs-dir", str(tmp_path), *FAST, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "not-the-password" not in done.stderr + done.stdout
    assert time.monotonic() - started < 15


# -- run folders ------------------------------------------------------------------------------

def test_a_second_run_takes_a_new_folder_and_resume_is_checked(tmp_path):
    runs = tmp_path / "runs"
    first = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST)
    assert first.returncode == 0, first.stderr
    metrics = (runs / "demo" / "metrics.jsonl").read_text()
    record = json.loads((runs / "demo" / "run.json").read_text())
    assert record["options"]["batches"] == 2 and record["versions"]["torch"]
    assert record["versions"]["fedmq"]

    second = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST)
    assert second.returncode == 0, second.stderr
    assert "demo-2" in second.stdout
    assert (runs / "demo" / "metrics.jsonl").read_text() == metrics  # untouched
    assert (runs / "demo-2" / "metrics.jsonl").exists()

    changed = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST, "--lr", "0.3",
                    "--rounds", "3", "--resume")
    assert changed.returncode == 2
    assert "--lr 0.1 -> 0.3" in changed.stderr and "--allow-changes" in changed.stderr
    assert (runs / "demo" / "metrics.jsonl").read_text() == metrics

    resumed = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST, "--rounds", "3",
                    "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming after round 2" in resumed.stdout
    rounds = [json.loads(line)["round"]
              for line in (runs / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]
    assert len(json.loads((runs / "demo" / "run.json").read_text())["resumed"]) == 1

    allowed = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST, "--rounds", "4",
                    "--lr", "0.05", "--resume", "--allow-changes")
    assert allowed.returncode == 0, allowed.stderr

    replaced = fedmq("train", "--runs-dir", str(runs), "--name", "demo", *FAST, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    rounds = [json.loads(line)["round"]
              for line in (runs / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
    assert not (runs / "demo-3").exists()


def test_the_library_refuses_to_write_over_an_earlier_run(tmp_path):
    import asyncio

    from fedmq.fl.coordinator import Coordinator, TrainConfig
    from fedmq.fl.runs import RunFolderError
    from tests.fl_helpers import data_worker
    from fedmq.fl.connections import InProcessConnection

    (tmp_path / "metrics.jsonl").write_text('{"round": 1}\n')
    conn = InProcessConnection({"alice": data_worker("alice", n=16, labels=range(4), seed=1)})
    config = TrainConfig(rounds=1, batch_size=8, num_batches=1, eval_every=0)
    with pytest.raises(RunFolderError, match="earlier run"):
        asyncio.run(Coordinator(conn, ["alice"], config, run_dir=tmp_path).run())
    with pytest.raises(RunFolderError, match="no checkpoint"):
        asyncio.run(Coordinator(conn, ["alice"], config, run_dir=tmp_path).run(resume=True))
    history = asyncio.run(Coordinator(conn, ["alice"], config, run_dir=tmp_path,
                                      overwrite=True).run())
    assert len(history) == 1


def test_run_json_never_holds_the_broker_password():
    from fedmq.fl import runs
    rec = runs.record({"url": "amqp://bob:s3cret@host:5672/v"},
                      ["fedmq", "train", "--url", "amqp://bob:s3cret@host:5672/v"])
    assert "s3cret" not in json.dumps(rec)
    assert rec["options"]["url"] == "amqp://bob@host:5672/v"


# -- failed runs exit 1 -----------------------------------------------------------------------

def test_failure_summary_counts_failed_fits():
    from fedmq.fl.cli import failure_summary
    from fedmq.fl.coordinator import RoundRecord

    def rec(r, ok, failed):
        return RoundRecord(round=r, seconds=1, lr=0.1, status="ok" if ok else "failed",
                           loss=1.0, workers={w: {} for w in ok}, failed=failed)
    one_bad = [rec(r, ["bob", "charlie"], {"alice": "no data"}) for r in range(1, 5)]
    assert "4 of 12 fits failed" in failure_summary(one_bad, 0.2)
    assert failure_summary(one_bad, 0.5) == ("worker alice failed every one of its 4 fits "
                                             "(first: no data)")
    flaky = [rec(1, ["alice", "bob"], {}), *one_bad[1:]]
    assert failure_summary(flaky, 0.5) is None  # alice trained once: a flaky worker, not broken
    assert failure_summary([rec(1, [], {"a": "x"})], 0.5) == "no round succeeded"


@pytest.mark.amqp
def test_a_run_whose_rounds_all_fail_stops_early_and_exits_1(tmp_path):
    """A worker service that does not hold --dataset fails every fit: three rounds in a row
    and the run stops with exit 1 (not 40 rounds and exit 0)."""
    procs = WorkerProcesses(tmp_path)
    try:
        procs.start("nodata-a")
        started = time.monotonic()
        done = fedmq("train", "--url", AMQP_URL, "--workers", "nodata-a", "--testing", "",
                     "--dataset", "mnist5k", "--rounds", "40", "--runs-dir", str(tmp_path),
                     "--round-timeout", "20", timeout=240)
    finally:
        procs.stop_all(delete_queues=True)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr
    assert "3 rounds in a row failed on every worker" in done.stderr
    assert "nodata-a" in done.stderr
    assert time.monotonic() - started < 120


@pytest.mark.amqp
def test_a_worker_refuses_labels_its_dataset_lacks(tmp_path):
    done = fedmq("worker", "--id", "x", "--url", AMQP_URL, "--dataset", "mnist5k",
                 "--labels", "8-12", timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no sample has label 10, 11, 12" in lines[0], done.stderr


# -- Ctrl-C -----------------------------------------------------------------------------------

def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path):
    argv = [sys.executable, "-m", "fedmq", "train", "--runs-dir", str(tmp_path), "--name", "cc",
            "--rounds", "30", "--batches", "3", "--eval-every", "0", "--batch-size", "16"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                          signal.SIG_DFL))
    for line in proc.stdout:
        if "Training round 3/30" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "interrupted after round 2" in lines[0] and lines[0].endswith("--resume")
    command = lines[0].split("continue with: ", 1)[1].split()
    assert command[:2] == ["fedmq", "train"]
    resumed = fedmq(*command[1:], "--rounds", "3", "--allow-changes", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming after round 2" in resumed.stdout


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_found_by_review_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, sigint):
    """SIGTERM (docker stop, systemd) ends a run as Ctrl-C does: the round in flight is
    cancelled (a SecAgg+ session ended), one line says how to resume, exit 143 (before, it
    died silently, its session left on the workers), also when SIGINT is ignored (a job
    started in the background)."""
    handler = signal.SIG_DFL if sigint == "default" else signal.SIG_IGN
    argv = [sys.executable, "-m", "fedmq", "train", "--runs-dir", str(tmp_path), "--name", "tt",
            "--rounds", "30", "--batches", "3", "--eval-every", "0", "--batch-size", "16",
            "--secure-aggregation", "secagg+"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                          handler))
    for line in proc.stdout:
        if "Training round 3/30" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "interrupted after round 2" in lines[0] and lines[0].endswith("--resume")


# -- the Python API ---------------------------------------------------------------------------

@pytest.mark.amqp
def test_unknown_worker_keywords_are_errors_pysyft_ones_honoured_or_refused():
    import torch

    import fedmq as sy
    hook = sy.TorchHook(torch)
    with pytest.raises(TypeError, match="'datas'.*did you mean 'data'"):
        sy.VirtualWorker(hook, id="kw1", datas=())
    with pytest.raises(ValueError, match="is_client_worker=True"):
        sy.VirtualWorker(hook, id="kw2", is_client_worker=True)
    sy.VirtualWorker(hook, id="kw3", verbose=False, log_msgs=False, auto_add=True)
    with pytest.raises(TypeError, match="'timout'.*did you mean 'timeout'"):
        sy.AMQPClientWorker(hook, id="kw4", url=AMQP_URL, timout=3)
    with pytest.raises(ValueError, match="url='amqp://"):
        sy.AMQPClientWorker(hook, id="kw5", host="127.0.0.1", port=8777)


def test_numpy_of_a_pointer_says_how_to_fetch():
    import numpy as np
    import torch

    import fedmq as sy
    from fedmq.errors import PointerError
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="np-bob")
    ptr = torch.tensor([1.0, 2.0]).send(bob)
    with pytest.raises(PointerError, match=r"lives on np-bob.*\.get\(\)"):
        ptr.numpy()
    with pytest.raises(PointerError, match=r"lives on np-bob"):
        np.asarray(ptr)
    assert ptr.get().numpy().tolist() == [1.0, 2.0]


# -- found by review: run folders and --resume -------------------------------------------------

def test_two_runs_started_at_once_with_one_name_get_two_folders(tmp_path):
    argv = [sys.executable, "-m", "fedmq", "train", "--rounds", "2", "--batches", "1",
            "--eval-every", "0", "--batch-size", "8", "--runs-dir", str(tmp_path), "--name",
            "same"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.wait(300) == 0 and second.wait(300) == 0
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["same", "same-2"]
    for name in folders:
        rounds = [json.loads(line)["round"]
                  for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert rounds == [1, 2]


def test_a_run_that_never_started_gives_its_folder_back(tmp_path):
    done = fedmq("train", "--url", "amqp://guest:guest@127.0.0.1:1/", "--runs-dir",
                 str(tmp_path), "--name", "x", timeout=60)
    assert done.returncode == 2
    assert not (tmp_path / "x").exists()


def test_resume_checks_rounds_a_broken_record_and_takes_a_new_lr(tmp_path):
    base = ["train", "--runs-dir", str(tmp_path), "--name", "r", "--batches", "1",
            "--eval-every", "0", "--batch-size", "8"]
    assert fedmq(*base, "--rounds", "3").returncode == 0
    fewer = fedmq(*base, "--rounds", "3", "--resume")
    assert fewer.returncode == 2 and "already finished round 3" in fewer.stderr
    # the seed's workers spelled out are the same workers
    same = fedmq(*base, "--rounds", "4", "--resume", "--workers", "alice,bob,charlie")
    assert same.returncode == 0, same.stderr
    faster = fedmq(*base, "--rounds", "5", "--resume", "--lr", "0.2", "--allow-changes")
    assert faster.returncode == 0, faster.stderr
    lrs = [json.loads(line)["lr"]
           for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[4] == pytest.approx(2 * lrs[3] * 0.98)  # the schedule of the new --lr
    (tmp_path / "r" / "run.json").write_text("{garbage")
    broken = fedmq(*base, "--rounds", "6", "--resume", "--lr", "0.3")
    assert broken.returncode == 2 and "cannot be read" in broken.stderr


def test_a_runs_dir_that_is_a_file_is_named(tmp_path, capsys):
    from fedmq.cli import main
    (tmp_path / "afile").write_text("")
    assert main(["train", "--runs-dir", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "--runs-dir" in err and "is a file" in err
