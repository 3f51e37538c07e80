"""A worker service whose broker is not there: not up yet, refusing it, or gone while it runs.
Each case was found by trying it (a traceback and exit 1, no retry, a worker that ignored
SIGTERM for minutes while its broker was away)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fedmq
from private_rabbitmq import PrivateNodeError, PrivateRabbitMQ, free_ports, start_or_skip
from worker_procs import AMQP_URL

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


def worker(url: str, worker_id: str, log, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedmq.cli", "worker", "--id", worker_id,
                             "--url", url, *extra], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_a_worker_started_before_its_broker_waits_for_it(tmp_path):
    node = PrivateRabbitMQ()  # its ports are chosen; it is not started yet
    log_path = tmp_path / "worker.log"
    with open(log_path, "a") as log:
        proc = worker(node.amqp_url, "early", log, "--connect-wait", "180")
    try:
        deadline = time.monotonic() + 60
        while "cannot be reached yet" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        try:
            node.start()
        except (PrivateNodeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not start a private RabbitMQ node: {exc}")
        hook = fedmq.TorchHook(torch)
        try:
            bob = fedmq.AMQPClientWorker(hook, id="early", url=node.amqp_url, timeout=30)
            bob.wait_until_served(90)
            assert (torch.tensor([2.0]).send(bob) * 3).get().tolist() == [6.0]
        finally:
            hook.context.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
        node.stop()


def test_a_worker_that_cannot_reach_its_broker_exits_2_saying_why(tmp_path):
    port = free_ports(1)[0]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "worker", "--id", "lonely",
                           "--url", f"amqp://guest:secret@127.0.0.1:{port}/",
                           "--connect-wait", "2"], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert f"cannot connect to RabbitMQ at amqp://127.0.0.1:{port}/" in output
    assert "Traceback" not in output and "secret" not in output
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("change, why", [
    (lambda url: url.rsplit("/", 1)[0] + "/no-such-vhost-for-fedmq", "does the vhost"),
    (lambda url: url.replace("guest:guest@", "guest:wrong@"), "user name or password"),
])
def test_a_worker_the_broker_refuses_exits_2_at_once(change, why):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "worker", "--id", "refused",
                           "--url", change(AMQP_URL)], capture_output=True, text=True,
                          timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and why in output and "Traceback" not in output, output[-2000:]
    assert time.monotonic() - started < 30  # a refusal is not tried again for --connect-wait


def test_sigterm_stops_a_worker_whose_broker_is_away(tmp_path):
    node = start_or_skip()
    log_path = tmp_path / "worker.log"
    with open(log_path, "a") as log:
        proc = worker(node.amqp_url, "away", log)
    try:
        deadline = time.monotonic() + 90
        while "consuming fedmq.worker.away" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                log_path.read_text()[-2000:]
            time.sleep(0.2)
        node.halt()
        time.sleep(2)  # reconnecting, in vain
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        assert proc.wait(60) == 0, log_path.read_text()[-2000:]
        assert time.monotonic() - stopped < 30
        assert "stopped" in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        node.stop()


def test_a_memory_alarm_fails_a_waiting_call_saying_so_and_loses_nothing(tmp_path):
    """Found by review: with the broker's publishers blocked (a memory alarm), a call waited
    its whole timeout and blamed the worker. Now it fails after a few seconds with
    ConnectionBlocked, and what was posted during the alarm is applied once it clears."""
    node = start_or_skip()
    log_path = tmp_path / "worker.log"
    with open(log_path, "a") as log:
        proc = worker(node.amqp_url, "alarmed", log)
    hook = fedmq.TorchHook(torch)
    try:
        bob = fedmq.AMQPClientWorker(hook, id="alarmed", url=node.amqp_url,
                                     timeout=60).wait_until_served(90)
        counter = torch.zeros(1).send(bob)
        assert bob.objects_count() == 1
        assert node.ctl("set_vm_memory_high_watermark", "0.0001").returncode == 0
        time.sleep(2)
        for _ in range(50):
            counter.add_(1)
        bob.flush()
        started = time.monotonic()
        with pytest.raises(fedmq.ConnectionBlocked, match="blocked publishing on this "
                                                          "connection.*memory or disk alarm"):
            bob.objects_count()
        assert time.monotonic() - started < 20
        assert node.ctl("set_vm_memory_high_watermark", "0.8").returncode == 0
        assert counter.get().item() == 50
    finally:
        hook.context.close()
        proc.terminate()
        proc.wait(30)
        node.stop()
