"""`fedmq queues [list|purge|delete]` and its API client (fedmq.management).

The `amqp` tests use the real broker: they declare a throwaway queue `fedmq.worker.test-<hex>`
in the run's vhost (tests/broker_vhost.py), publish to it with pika and read it back through
the management API (port 15672; `.ci/broker.sh` enables the plugin). The management plugin
samples queue statistics every 5 s by default, so depths are polled for up to 20 s.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from broker_vhost import credentials, vhost_of
from cli_run import one_line, run_fedmq
from fedmq.cli import main
from fedmq.management import QueueRow, format_table, list_queues

AMQP_URL = os.environ.get("FEDMQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT_URL = os.environ.get("FEDMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
#: the run's vhost (FEDMQ_AMQP_URL names it) and the URL's credentials
VHOST = vhost_of(AMQP_URL)
USER, PASSWORD = credentials(AMQP_URL)
STATS_WAIT = 20.0  # seconds: 5 s statistics interval, with room for a busy machine


@contextmanager
def throwaway_queue(name: str, messages: int = 0):
    """Declare queue `name`, publish `messages` messages to it (with publisher confirms), and
    delete it afterwards."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.queue_declare(name, durable=False, auto_delete=False)
        channel.confirm_delivery()
        for i in range(messages):
            channel.basic_publish("", name, f"message {i}".encode())
        yield name
    finally:
        if connection.is_open:
            connection.channel().queue_delete(name)
            connection.close()


def wait_for_row(name: str, ready: int, include_all: bool = False) -> QueueRow | None:
    """Poll the management API until queue `name` shows `ready` messages; the last row seen."""
    deadline = time.monotonic() + STATS_WAIT
    row = None
    while time.monotonic() < deadline:
        rows = {r.name: r for r in fedmq_queues(include_all=include_all)}
        row = rows.get(name)
        if row is not None and row.messages_ready == ready:
            return row
        time.sleep(0.5)
    return row


def fedmq_queues(include_all: bool = False) -> list[QueueRow]:
    """list_queues on the run's vhost."""
    return list_queues(MANAGEMENT_URL, USER, PASSWORD, vhost=VHOST, include_all=include_all)


def queues_command(*extra: str) -> int:
    """`fedmq queues` on the run's vhost."""
    return main(["queues", "--management-url", MANAGEMENT_URL, "--user", USER, "--password",
                 PASSWORD, "--vhost", VHOST, *extra])


def closed_port() -> int:
    """A local TCP port nothing listens on (bound and released, so connecting is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- against the broker ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.amqp
def test_list_queues_reports_the_depth_of_a_fresh_worker_queue():
    name = f"fedmq.worker.test-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=7):
        row = wait_for_row(name, ready=7)
        assert row is not None, f"{name} never appeared in /api/queues"
        assert row.messages_ready == 7, f"depth stayed {row.messages_ready} for {STATS_WAIT} s"
        assert row.messages_unacknowledged == 0 and row.consumers == 0
        assert row.publish_rate >= 0.0 and row.deliver_rate == 0.0


@pytest.mark.slow
@pytest.mark.amqp
def test_fedmq_queues_prints_the_queue_row(capsys):
    name = f"fedmq.worker.test-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=3):
        assert wait_for_row(name, ready=3) is not None
        assert queues_command() == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert header.split() == ["queue", "ready", "unacked", "consumers", "publish/s",
                              "deliver/s"]
    [line] = [line for line in lines if line.split()[0] == name]
    assert line.split()[1:4] == ["3", "0", "0"]


@pytest.mark.slow
@pytest.mark.amqp
def test_only_fedmq_queues_unless_all():
    name = f"test-not-fedmq-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=1):
        assert wait_for_row(name, ready=1, include_all=True) is not None
        assert name not in {r.name for r in fedmq_queues()}
        assert all(r.name.startswith("fedmq.") for r in fedmq_queues())


@pytest.mark.amqp
def test_wrong_password_is_a_clear_error(capsys):
    assert queues_command("--password", "not-the-password") == 2
    assert "401" in capsys.readouterr().err


# --- purge and delete ------------------------------------------------------------------------

def depth(name: str) -> int | None:
    """The queue's ready messages now (a passive declare: no statistics lag), None if gone."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        return connection.channel().queue_declare(name, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if connection.is_open:
            connection.close()


def cli_options() -> list[str]:
    """--url names the user, password and vhost; --management-url the API."""
    return ["--url", AMQP_URL, "--management-url", MANAGEMENT_URL]


@pytest.mark.amqp
def test_purge_and_delete_ask_first_and_refuse_without_a_terminal():
    name = f"fedmq.worker.test-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=3):
        for action in ("purge", "delete"):  # a script must say --yes
            refused = run_fedmq("queues", action, name, *cli_options())
            assert refused.returncode == 2 and refused.stdout == ""
            line = one_line(refused)
            assert line.startswith(f"fedmq queues {action}: refusing to {action} queue '{name}'")
            assert "stdin is not a terminal; give --yes" in line and depth(name) == 3
        declined = run_fedmq("queues", "purge", name, *cli_options(), answer="n")
        assert declined.returncode == 1, declined.stderr
        assert f"Purge queue '{name}'" in declined.stdout and "[y/N]" in declined.stdout
        assert "nothing done" in declined.stderr and depth(name) == 3
        agreed = run_fedmq("queues", "purge", name, *cli_options(), answer="y")
        assert agreed.returncode == 0, agreed.stderr
        assert f"purged '{name}'" in agreed.stdout and depth(name) == 0
        # options before or after the action; --yes does not ask
        assert main(["queues", *cli_options(), "delete", name, "--yes"]) == 0
        assert depth(name) is None


@pytest.mark.amqp
def test_purge_refuses_a_queue_that_is_not_fedmqs_unless_any_queue(capsys):
    name = f"test-not-fedmq-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=2):
        assert main(["queues", "purge", name, "--yes", *cli_options()]) == 2
        err = capsys.readouterr().err
        assert f"'{name}' is not a fedmq queue (fedmq.*); give --any-queue" in err
        assert depth(name) == 2
        assert main(["queues", "purge", name, "--yes", "--any-queue", *cli_options()]) == 0
        assert depth(name) == 0
    missing = f"fedmq.worker.gone-{secrets.token_hex(4)}"
    assert main(["queues", "delete", missing, "--yes", *cli_options()]) == 2
    assert f"no queue '{missing}' on vhost '{VHOST}'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.amqp
def test_url_names_the_user_and_vhost_of_the_listing(capsys):
    name = f"fedmq.worker.test-{secrets.token_hex(4)}"
    with throwaway_queue(name, messages=1):
        assert wait_for_row(name, ready=1) is not None
        assert main(["queues", "list", *cli_options()]) == 0
        assert name in capsys.readouterr().out


def test_an_http_url_given_as_url_is_a_one_line_usage_error():
    for argv in (["queues", "--url", "http://127.0.0.1:15672"],
                 ["queues", "purge", "fedmq.worker.x", "--yes", "--url", "https://h:15671"],
                 ["dead-letters", "list", "--url", "http://127.0.0.1:15672"]):
        result = run_fedmq(*argv)
        assert result.returncode == 2 and result.stdout == ""
        line = one_line(result)
        assert line.startswith(f"fedmq {argv[0]}") and "--url is the AMQP broker URL" in line
        if argv[0] == "queues":
            assert "give it with --management-url" in line
        else:  # dead-letters has no --management-url (found by review)
            assert "management API, which this command does not use" in line


# --- without a broker --------------------------------------------------------------------------

def test_unreachable_management_api_exits_2_and_says_how_to_enable_it():
    url = f"http://127.0.0.1:{closed_port()}"
    result = subprocess.run([sys.executable, "-m", "fedmq.cli", "queues", "--management-url",
                             url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the RabbitMQ management API" in result.stderr
    assert "rabbitmq-plugins enable rabbitmq_management" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_row_from_api_counts_missing_statistics_as_zero():
    fresh = QueueRow.from_api({"name": "fedmq.worker.new"})
    assert fresh == QueueRow("fedmq.worker.new", 0, 0, 0, 0.0, 0.0)
    busy = QueueRow.from_api({
        "name": "fedmq.worker.alice", "messages_ready": 4, "messages_unacknowledged": 1,
        "consumers": 1,
        "message_stats": {"publish": 10, "publish_details": {"rate": 2.5},
                          "deliver_get": 6, "deliver_get_details": {"rate": 1.25}}})
    assert busy == QueueRow("fedmq.worker.alice", 4, 1, 1, 2.5, 1.25)


def test_format_table_aligns_columns():
    table = format_table([QueueRow("fedmq.worker.alice", 12, 1, 1, 2.5, 0.0),
                          QueueRow("fedmq.dead-letters", 0, 0, 0, 0.0, 0.0)])
    lines = table.splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert lines[1].split() == ["fedmq.worker.alice", "12", "1", "1", "2.5", "0.0"]
