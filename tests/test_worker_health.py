"""`fedmq worker --health-file` and `fedmq worker-health` (fedmq/health.py): the health file
says that a worker is connected and consuming, and a worker that is stuck or disconnected fails
the check (compose.yaml's worker healthcheck).

The first tests need no broker. The `amqp` one runs a real `fedmq worker` process on the run's
vhost and takes it through what a container healthcheck must tell apart: serving, frozen
(SIGSTOP), its connection closed by the broker while it may not reconnect (the vhost's
connection limit set to 0), and serving again."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest

from fedmq.cli import main
from fedmq.health import HEALTHY, UNHEALTHY, HealthFile, beat_text, check


def test_health_file_is_fresh_then_stale_then_gone(tmp_path):
    path = tmp_path / "health"
    health = HealthFile(path)
    assert check(path, 30) == (UNHEALTHY, f"unhealthy: no health file {path} (the worker is "
                                          f"starting, lost its broker connection or its "
                                          f"consumer, or stopped)")
    health.beat("serving alice (pid 1)")
    status, line = check(path, 30)
    assert status == HEALTHY and line.startswith("healthy: serving alice (pid 1)")
    assert [p.name for p in tmp_path.iterdir()] == ["health"]  # the temporary file is renamed
    old = time.time() - 31
    os.utime(path, (old, old))
    status, line = check(path, 30)
    assert status == UNHEALTHY and "last written 31 s ago" in line and "stuck" in line
    health.clear()
    health.clear()  # nothing to remove: no error
    assert not path.exists()


def test_worker_health_command_exit_codes(tmp_path, capsys, monkeypatch):
    path = tmp_path / "health"
    assert main(["worker-health", "--file", str(path)]) == 1
    assert "unhealthy: no health file" in capsys.readouterr().err
    HealthFile(path).beat(f"serving bob (pid {os.getpid()})")
    assert main(["worker-health", "--file", str(path), "--max-age", "5"]) == 0
    assert capsys.readouterr().out.startswith("healthy: serving bob")
    monkeypatch.setenv("FEDMQ_HEALTH_FILE", str(path))  # the path from the environment
    old = time.time() - 10
    os.utime(path, (old, old))
    assert main(["worker-health", "--max-age", "5"]) == 1
    with pytest.raises(SystemExit) as info:
        main(["worker-health", "--max-age", "0"])
    assert info.value.code == 2


def test_a_killed_worker_is_unhealthy_at_once(tmp_path):
    """The file names the worker's pid on this host: once that process is gone (kill -9),
    the check fails without waiting for --max-age (found by review: "healthy: serving hw
    (pid 4538)" for 31 s after the kill)."""
    path = tmp_path / "health"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        HealthFile(path).beat(beat_text("hw", child.pid))
        assert path.read_text() == f"serving hw (pid {child.pid} on {socket.gethostname()})\n"
        assert check(path, 30)[0] == HEALTHY
    finally:
        child.kill()
        child.wait()
    status, line = check(path, 30)
    assert status == UNHEALTHY
    assert line == (f"unhealthy: {path} names pid {child.pid}, which is not running (the "
                    f"worker was killed)")
    # the pid of another host (a file on a shared volume) is not looked up here
    HealthFile(path).beat(beat_text("hw", child.pid, host="elsewhere.example"))
    assert check(path, 30)[0] == HEALTHY
    HealthFile(path).beat(f"serving hw (pid {child.pid})")  # no host: this one
    assert check(path, 30)[0] == UNHEALTHY


def test_a_file_from_the_future_or_a_directory_is_not_healthy(tmp_path, capsys):
    path = tmp_path / "health"
    HealthFile(path).beat(beat_text("hw"))
    ahead = time.time() + 120
    os.utime(path, (ahead, ahead))
    status, line = check(path, 30)
    assert status == UNHEALTHY and "written 120 s in the future" in line
    ahead = time.time() + 2  # a little ahead (clocks, rounding): still fine
    os.utime(path, (ahead, ahead))
    assert check(path, 30)[0] == HEALTHY
    assert main(["worker-health", "--file", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"unhealthy: {tmp_path} is a directory, not a health file (--file names the file "
        f"`fedmq worker --health-file` writes)")


def test_usage_says_file_or_the_environment(capsys, monkeypatch):
    """--file is not required: $FEDMQ_HEALTH_FILE does as well (found by review: the usage
    showed `--file FILE` as required)."""
    monkeypatch.delenv("FEDMQ_HEALTH_FILE", raising=False)
    with pytest.raises(SystemExit):
        main(["worker-health", "--help"])
    usage = capsys.readouterr().out
    assert "[--file PATH]" in usage and "$FEDMQ_HEALTH_FILE" in usage
    with pytest.raises(SystemExit) as info:
        main(["worker-health"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("fedmq worker-health: give the health file "
                                               "with --file PATH or $FEDMQ_HEALTH_FILE")
    for value in ("nan", "inf", "-1"):
        with pytest.raises(SystemExit) as info:
            main(["worker-health", "--file", "/nowhere", "--max-age", value])
        assert info.value.code == 2
        assert "argument --max-age: must be a number of seconds" in capsys.readouterr().err


def test_the_check_imports_neither_torch_nor_aio_pika():
    """A healthcheck runs every few seconds in every worker container: it must be cheap."""
    code = ("import sys; from fedmq.cli import main; main(['worker-health', '--file', '/nowhere'])"
            "; print(sorted(m for m in ('torch', 'aio_pika') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


def test_worker_refuses_a_health_file_it_cannot_write(tmp_path, capsys):
    from fedmq.service import health_file_from_args

    with pytest.raises(SystemExit) as info:
        health_file_from_args(argparse.Namespace(health_file=str(tmp_path / "no" / "health")))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"fedmq worker: --health-file "
                                               f"{tmp_path}/no/health: cannot write in "
                                               f"{tmp_path}/no")
    assert health_file_from_args(argparse.Namespace(health_file=None)) is None


def test_a_health_file_left_by_an_earlier_run_is_removed_at_start(tmp_path):
    """A restarted container keeps its files: `fedmq worker` removes an old health file before
    anything else (run_worker, before loading data or connecting), so a worker that never
    connects never looks healthy."""
    from fedmq.service import health_file_from_args

    path = tmp_path / "health"
    HealthFile(path).beat("serving h (pid 1)")
    health = health_file_from_args(argparse.Namespace(health_file=str(path)))
    assert health.path == str(path) and not path.exists()


def wait_for(condition, timeout: float, what: str) -> float:
    """Poll `condition` every 50 ms; return the seconds it took, or fail naming `what`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"after {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.amqp
@pytest.mark.slow  # a worker process, ~15 s
def test_health_file_tells_a_serving_worker_from_a_stuck_or_disconnected_one(tmp_path):
    from role_users import VHOST, api, q
    from worker_procs import WorkerProcesses, consumer_count

    procs = WorkerProcesses(tmp_path)
    worker_id = f"health-{os.getpid()}"
    path = tmp_path / "health"
    path.write_text("left by an earlier run\n")  # a restarted container keeps its files
    proc = procs.start(worker_id, "--health-file", str(path), "--health-interval", "0.5",
                       wait=False)
    healthy = lambda: check(path, 2)[0] == HEALTHY  # noqa: E731
    try:
        procs.wait_consuming(worker_id, proc)
        wait_for(healthy, 10, "the health file of a consuming worker")
        assert path.read_text() == \
            f"serving {worker_id} (pid {proc.pid} on {socket.gethostname()})\n"
        assert main(["worker-health", "--file", str(path), "--max-age", "2"]) == 0

        # stuck: a frozen process writes nothing, so its file goes stale
        proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not healthy(), 5, "the file of a frozen worker going stale")
            assert "stuck" in check(path, 2)[1]
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(healthy, 10, "the health file once the worker runs again")

        # disconnected: the broker closes the worker's connection and refuses new ones
        connection_limit(VHOST, 0)
        [connection] = wait_for_connection(f"fedmq worker {worker_id}", VHOST, api)
        api("DELETE", f"connections/{q(connection)}")
        took = wait_for(lambda: not path.exists(), 5, "the health file removed on disconnect")
        assert took < 3
        time.sleep(2.5)  # reconnecting is refused: still no file, the check fails
        assert not path.exists() and proc.poll() is None
        assert main(["worker-health", "--file", str(path), "--max-age", "2"]) == 1

        # the broker takes connections again: the worker reconnects, consumes, is healthy
        connection_limit(VHOST, None)
        wait_for(healthy, 15, "the health file after reconnecting")
        assert consumer_count(f"fedmq.worker.{worker_id}") == 1
    finally:
        connection_limit(VHOST, None)
        procs.stop_all(delete_queues=True)
    assert not path.exists()  # a stopped worker removes its file
    assert "not serving (the broker connection or the consumer is lost)" in procs.log(worker_id)


def connection_limit(vhost: str, value: int | None) -> None:
    """Set the vhost's max-connections limit (None: remove it). Straight through urllib: on
    RabbitMQ 3.10 the vhost-limits endpoint answers 406 to `Accept: application/json`, which
    fedmq.management sends."""
    import base64
    import urllib.error
    import urllib.request

    from broker_vhost import credentials, management_url_for
    from worker_procs import AMQP_URL

    user, password = credentials(AMQP_URL)
    url = (f"{management_url_for(AMQP_URL)}/api/vhost-limits/"
           f"{urllib.parse.quote(vhost, safe='')}/max-connections")
    request = urllib.request.Request(
        url, method="DELETE" if value is None else "PUT",
        data=None if value is None else f'{{"value": {value}}}'.encode(),
        headers={"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
                 .decode(), "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if not (value is None and exc.code == 404):  # no limit to remove
            raise


def wait_for_connection(name: str, vhost: str, api, timeout: float = 20.0) -> list[str]:
    """The management API's names of the connections the client named `name` in `vhost` (the
    API lists a connection a few seconds after it opens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = api("GET", f"vhosts/{urllib.parse.quote(vhost, safe='')}/connections") or []
        found = [c["name"] for c in listed
                 if (c.get("client_properties") or {}).get("connection_name") == name]
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"connection {name!r} never appeared in the management API")

