"""`fedmq worker` refused by the broker (a wrong password, an unknown vhost): the broker's
refusal is the only line on stderr at the default log level, exit 2, and comes before the
data is read (found by review: an INFO line of the data and aio-pika's "Connection ...
closed. Reconnecting" came first, after 6-9 s of loading MNIST)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse

import pytest


def run_worker(url: str, *argv: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDMQ_URL", "FEDMQ_AMQP_URL")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fedmq.cli", "worker", "--id", "refused",
                           "--url", url, "--connect-wait", "5", *argv],
                          capture_output=True, text=True, timeout=120, env=env)
    return done, time.monotonic() - started


@pytest.mark.amqp
@pytest.mark.parametrize("what", ["password", "vhost"])
def test_a_refused_login_is_one_line_before_the_data_is_read(what):
    from worker_procs import AMQP_URL

    parts = urllib.parse.urlsplit(AMQP_URL)
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username or "guest")
    if what == "password":
        url = f"amqp://{user}:not-the-password@{host}{parts.path}"
        expected = "the broker refused the user name or password in the URL"
    else:
        url = f"amqp://{parts.netloc}/fedmq-no-such-vhost"
        expected = "does the vhost in the URL exist"
    done, took = run_worker(url, "--dataset", "mnist5k", "--labels", "0-3")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "ERROR fedmq.service: fedmq worker refused: cannot connect to RabbitMQ" in lines[0]
    assert expected in lines[0] and "not-the-password" not in lines[0]
    assert "holds" not in done.stderr and "Reconnecting" not in done.stderr
    assert took < 30, took
