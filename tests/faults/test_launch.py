"""Worker processes started by `fedmq train --launch` (fedmq/fl/launch.py): they die with
their coordinator however it dies, and one that exits on its own is started again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from worker_procs import AMQP_URL, consumer_count, delete_queue

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_launched_workers_die_with_a_killed_coordinator(tmp_path):
    worker_id = f"launch-orphan-{os.getpid()}"
    script = textwrap.dedent(f"""
        import sys, time
        from fedmq.fl.launch import WorkerLauncher
        launcher = WorkerLauncher({AMQP_URL!r}, {str(tmp_path)!r})
        proc = launcher._spawn({worker_id!r}, [{worker_id!r}], [sys.executable, "-m",
            "fedmq.cli", "worker", "--id", {worker_id!r}, "--url", {AMQP_URL!r}])
        launcher.wait_consuming()
        print(proc.pid, flush=True)
        time.sleep(600)
    """)
    coordinator = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                   text=True)
    try:
        worker_pid = int(coordinator.stdout.readline())
        assert _alive(worker_pid) and consumer_count(f"fedmq.worker.{worker_id}") == 1
        coordinator.send_signal(signal.SIGKILL)  # no cleanup code runs
        coordinator.wait(10)
        deadline = time.monotonic() + 30
        while _alive(worker_pid):
            assert time.monotonic() < deadline, "the worker outlived its coordinator"
            time.sleep(0.1)
    finally:
        coordinator.kill()
        delete_queue(f"fedmq.worker.{worker_id}")


def test_a_launched_worker_that_dies_is_started_again(tmp_path):
    from fedmq.fl.launch import WorkerLauncher

    worker_id = f"launch-restart-{os.getpid()}"
    launcher = WorkerLauncher(AMQP_URL, tmp_path)
    said = []
    try:
        first = launcher._spawn(worker_id, [worker_id], [
            sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id, "--url", AMQP_URL])
        launcher.wait_consuming()
        launcher.supervise(said.append, interval=0.2)
        first.kill()
        deadline = time.monotonic() + 60
        while launcher.procs[worker_id] is first or \
                consumer_count(f"fedmq.worker.{worker_id}") != 1:
            assert time.monotonic() < deadline, "the worker was not started again"
            time.sleep(0.2)
        assert launcher.restarts[worker_id] == 1
        assert said and f"worker process {worker_id} exited" in said[0]
        second = launcher.procs[worker_id]
        launcher.stop(worker_id)  # stopped on purpose: not restarted
        time.sleep(1)
        assert worker_id not in launcher.procs and second.poll() is not None
    finally:
        launcher.stop_all()
        delete_queue(f"fedmq.worker.{worker_id}")
