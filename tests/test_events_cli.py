"""`fedmq events`: readable and JSON lines of what is published on `fedmq.events`, against the
real broker (the run's vhost); broker problems are one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

from fedmq.events_cli import clean, format_event, json_line
from fedmq.eventstream import Event, decode_body

T = 1_700_000_000.0


def event(key: str, body) -> Event:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Event(key, decode_body(raw), raw, T)


# --- the lines (no broker) -----------------------------------------------------------------

def test_readable_lines():
    started = format_event(event("round.started", {"round": 2, "rounds": 5, "lr": 0.1,
                                                   "workers": ["a", "b"], "time": T}))
    assert started.split()[1:] == ["round.started", "round", "2/5", "2", "worker(s)"]
    fit = format_event(event("fit.result", {"round": 2, "worker": "alice", "loss": 0.12345,
                                            "samples": 64}))
    assert "round 2  worker alice  loss 0.1235  64 samples" in fit
    evaluated = format_event(event("evaluate.result", {"version": 3, "model": "testing",
                                                       "loss": 0.5, "correct": 912,
                                                       "total": 1000}))
    assert "version 3  model testing  loss 0.5000  accuracy 91.20%" in evaluated
    finished = format_event(event("round.finished", {
        "round": 2, "status": "ok", "loss": 0.4, "accuracy": 0.9, "test_loss": 0.3,
        "workers": {"a": {}}, "failed": {"b": "timeout"}}))
    assert "round 2  ok  1 worker(s)  loss 0.4000  accuracy 90.00%  test loss 0.3000  " \
           "failed: b" in finished
    assert "(not a JSON object: 3 bytes)" in format_event(event("x", b"\xff\x00["))


def test_untrusted_text_cannot_reach_the_terminal():
    line = format_event(event("fit.failed", {"round": 1, "worker": "al\x1b[2Jice",
                                             "reason": "a\nb\rc" + "z" * 500}))
    assert "\x1b" not in line and "\n" not in line and "\r" not in line
    assert "worker al\\x1b[2Jice" in line and "reason: a\\nb\\rc" in line
    assert len(line) < 400
    assert clean("ok") == "ok"


def test_json_lines():
    line = json.loads(json_line(event("fit.result", {"round": 1, "worker": "a"})))
    assert line == {"routing_key": "fit.result", "received": T,
                    "body": {"round": 1, "worker": "a"}}
    bad = json.loads(json_line(event("x", b"not json")))
    assert bad["body"] is None and bad["raw"] == "not json"


# --- against the broker ----------------------------------------------------------------------

def _events_process(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("FEDMQ_URL", None)
    return subprocess.Popen([sys.executable, "-m", "fedmq.cli", "events", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_following(proc: subprocess.Popen) -> None:
    """Until the process says it follows (its queue is bound), or fail with its stderr."""
    line = proc.stderr.readline()
    assert "following" in line, line + proc.stderr.read()


def _publish(url: str, *events: tuple[str, object]) -> None:
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        for key, body in events:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            channel.basic_publish("fedmq.events", key, raw)
    finally:
        conn.close()


ROUND = [
    ("round.started", {"round": 1, "rounds": 3, "workers": ["w1", "w2"], "lr": 0.1}),
    ("fit.result", {"round": 1, "worker": "w1", "loss": 0.5, "samples": 64}),
    ("fit.failed", {"round": 1, "worker": "w2", "reason": "ReplyTimeout"}),
    ("round.finished", {"round": 1, "status": "ok", "loss": 0.5, "accuracy": 0.8125,
                        "workers": {"w1": {}}, "failed": {"w2": "ReplyTimeout"}}),
]


@pytest.mark.amqp
def test_follows_every_event():
    url = os.environ["FEDMQ_AMQP_URL"]
    proc = _events_process("--url", url, "--count", "5")
    try:
        _wait_following(proc)
        _publish(url, *ROUND, ("x.y", b"\x00not json"))
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == \
        ["round.started", "fit.result", "fit.failed", "round.finished", "x.y"]
    assert "round 1/3" in lines[0] and "worker w1  loss 0.5000  64 samples" in lines[1]
    assert "worker w2  reason: ReplyTimeout" in lines[2]
    assert "accuracy 81.25%" in lines[3] and "not a JSON object" in lines[4]


@pytest.mark.amqp
def test_filter_and_json():
    url = os.environ["FEDMQ_AMQP_URL"]
    proc = _events_process("--url", url, "--filter", "round.*", "--json", "--count", "2")
    try:
        _wait_following(proc)
        _publish(url, *ROUND)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["routing_key"] for line in lines] == ["round.started", "round.finished"]
    assert lines[1]["body"]["accuracy"] == 0.8125


@pytest.mark.amqp
def test_ctrl_c_exits_130_without_a_traceback():
    proc = _events_process("--url", os.environ["FEDMQ_AMQP_URL"])
    try:
        _wait_following(proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip() == "fedmq events: interrupted"


def _with_login(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.mark.amqp
@pytest.mark.parametrize("change, expected", [
    (lambda url: url.rsplit("/", 1)[0] + "/fedmq-no-such-vhost", "does the vhost"),
    (lambda url: _with_login(url, "nobody-here", "wrong"), "refused the user name or password"),
    (lambda url: "amqp://127.0.0.1:1/", "cannot connect to RabbitMQ at amqp://127.0.0.1:1/"),
    (lambda url: "http://127.0.0.1:5672/", "--url is the AMQP broker URL"),
])
def test_broker_problems_are_one_line_and_exit_2(change, expected):
    url = change(os.environ["FEDMQ_AMQP_URL"])
    started = time.monotonic()
    proc = _events_process("--url", url)
    try:
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert time.monotonic() - started < 10
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("fedmq events: ") and expected in err
    assert "wrong" not in err  # no password in the message


def test_usage_mistakes_name_the_option():
    proc = _events_process("--filter", "a b")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.strip().startswith("fedmq events: --filter:")
