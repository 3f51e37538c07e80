"""`fedmq dead-letters list|show|requeue|purge` (fedmq/dead_letters.py, dead_letters_cli.py).

The `amqp` tests make real dead letters in a vhost of this module's own (so no other test's
dead letters, and no other test reading the run's dead-letter queue, get in the way): a real
`fedmq worker` process refuses a garbage frame and a Command that is not allowlisted (its
copies carry x-fedmq-* headers), and the broker expires a message in a worker queue nobody
consumes (x-death). The tests without a broker check the pieces: what a message says about
itself, the confirmation, the frame view.
"""
from __future__ import annotations

import datetime
import pathlib
import secrets
import subprocess
import sys
import tempfile
import time
import uuid

import pika
import pytest
import torch
from pamqp.commands import Basic

from cli_run import one_line, run_fedmq
from fedmq import messages as m, serde
from fedmq.cli import main
from fedmq.cli_options import UsageError, confirm
from fedmq.dead_letters import DeadLetter
from fedmq.dead_letters_cli import format_age, format_table
from fedmq.transport.amqp import DEAD_LETTER_QUEUE, worker_queue_arguments

WORKER = "dlw"
IDLE = "dlidle"  # a worker queue nobody consumes: its expired messages are dead-lettered


def envelope(message) -> bytes:
    return bytes(serde.encode(m.Envelope(m.WIRE_VERSION, "test", message)))


# --- on the broker -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vhost():
    """A vhost of this module's own (named and swept as the run's is), with a worker service."""
    from broker_vhost import RunVhost
    from worker_procs import WorkerProcesses

    run = RunVhost.new()
    try:
        run.create()
    except Exception as exc:  # noqa: BLE001 - no broker: the amqp tests fail with the reason
        pytest.fail(f"cannot create a vhost: {exc}", pytrace=False)
    with tempfile.TemporaryDirectory() as logs:
        procs = WorkerProcesses(pathlib.Path(logs), url=run.amqp_url)
        try:
            procs.start(WORKER)
            yield run.amqp_url
        finally:
            procs.stop_all()
            run.delete()


class Client:
    """pika on the vhost: publishes as guest with direct reply-to, reads replies and queues."""

    def __init__(self, url: str) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.replies: dict[str, list[m.Reply]] = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, ch, method, props, body) -> None:
        self.replies.setdefault(props.correlation_id, []).append(serde.decode(body))

    def publish(self, routing_key: str, body: bytes, *, exchange: str = "fedmq.commands",
                kind: str = "Envelope", expiration: str | None = None) -> str:
        corr = uuid.uuid4().hex
        self.ch.basic_publish(exchange, routing_key, body, pika.BasicProperties(
            user_id="guest", reply_to="amq.rabbitmq.reply-to", correlation_id=corr,
            message_id=uuid.uuid4().hex, type=kind, delivery_mode=2, expiration=expiration,
            headers={"x-test": "kept"}))
        return corr

    def replies_to(self, corr: str, count: int = 1, timeout: float = 30) -> list[m.Reply]:
        deadline = time.monotonic() + timeout
        while len(self.replies.get(corr, [])) < count and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.1)
        assert len(self.replies.get(corr, [])) >= count, f"{count} replies to {corr} expected"
        return self.replies[corr]

    def depth(self, queue: str) -> int | None:
        ch = self.conn.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
        finally:
            if ch.is_open:
                ch.close()

    def wait_depth(self, queue: str, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.depth(queue) != count:
            assert time.monotonic() < deadline, f"{queue} holds {self.depth(queue)}, not {count}"
            self.conn.process_data_events(time_limit=0.1)

    def idle_queue(self) -> str:
        """fedmq.worker.dlidle, declared as a worker declares its queue (dead-lettering to
        fedmq.dlx), with no consumer."""
        name = f"fedmq.worker.{IDLE}"
        self.ch.queue_declare(name, durable=True, arguments=worker_queue_arguments())
        return name

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


@pytest.fixture
def client(vhost):
    c = Client(vhost)
    c.ch.queue_purge(DEAD_LETTER_QUEUE)
    yield c
    c.close()


def dead_letters(vhost: str, *argv: str, capsys) -> tuple[int, str, str]:
    try:
        code = main(["dead-letters", *argv, "--url", vhost])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def make_three(client: Client) -> dict[str, str]:
    """Dead letters 1-3: a garbage frame and a non-allowlisted Command holding a 3x4 tensor
    (refused by the worker), and a message the broker expired in the idle queue."""
    garbage = client.publish(WORKER, b"\x00\x01 this is not a frame")
    assert client.replies_to(garbage)[0].error.code == "serde_error"
    command = client.publish(WORKER, envelope(m.Command(
        "os.system", (torch.arange(12.).reshape(3, 4),), {}, [], reply=True)), kind="Command")
    assert client.replies_to(command)[0].error.code == "op_not_allowed"
    client.wait_depth(DEAD_LETTER_QUEUE, 2)
    expired = client.publish(client.idle_queue(), envelope(m.ObjectsCount()), exchange="",
                             kind="ObjectsCount", expiration="1")
    client.wait_depth(DEAD_LETTER_QUEUE, 3)
    return {"garbage": garbage, "command": command, "expired": expired}


@pytest.mark.amqp
def test_list_shows_each_dead_letter_and_leaves_them_in_order(vhost, client, capsys):
    make_three(client)
    code, out, err = dead_letters(vhost, "list", capsys=capsys)
    assert code == 0, err
    title, header, *rows = out.splitlines()
    assert title.startswith(f"3 dead letters in {DEAD_LETTER_QUEUE} on amqp://127.0.0.1:5672/")
    assert header.split() == ["#", "age", "size", "queue", "type", "reason"]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    cells = [row.split(None, 5) for row in rows]
    assert [c[4] for c in cells] == [f"fedmq.worker.{WORKER}", f"fedmq.worker.{WORKER}",
                                     f"fedmq.worker.{IDLE}"]
    assert [c[5].split()[0] for c in cells] == ["Envelope", "Command", "ObjectsCount"]
    assert cells[0][5].split(None, 1)[1].startswith("serde_error:")
    assert cells[1][5].split(None, 1)[1].startswith("op_not_allowed:")
    assert cells[2][5].split(None, 1)[1] == "broker: expired"
    assert all(c[1].endswith("s") for c in cells)  # seconds old
    assert cells[0][2:4] == ["22", "B"]
    # nothing was removed, and the order (so the positions) is the same when listed again
    assert client.depth(DEAD_LETTER_QUEUE) == 3
    code, again, _ = dead_letters(vhost, capsys=capsys)  # no action: list
    assert code == 0 and [line.split(None, 3)[3] for line in again.splitlines()[2:]] == \
        [line.split(None, 3)[3] for line in rows]


@pytest.mark.amqp
def test_show_decodes_a_message_as_data_and_a_garbage_body_as_hex(vhost, client, capsys):
    make_three(client)
    code, out, err = dead_letters(vhost, "show", "2", capsys=capsys)
    assert code == 0, err
    assert out.startswith(f"dead letter 2 of 3 in {DEAD_LETTER_QUEUE}")
    assert "reason        op_not_allowed:" in out and "message type  Command" in out
    assert f"queue         fedmq.worker.{WORKER}" in out and "sender        guest" in out
    assert "reply_to        amq.rabbitmq.reply-to" in out
    headers = dict(line.split(None, 1) for line in
                   out.split("\nheaders\n", 1)[1].split("\nbody\n", 1)[0].splitlines())
    assert headers["x-test"] == "kept" and headers["x-fedmq-worker"] == WORKER
    assert headers["x-fedmq-message-type"] == "Command" and "x-fedmq-dead-at" in headers
    body = out.split("\nbody\n", 1)[1]
    assert body.splitlines()[0].strip() == "Envelope"
    assert "op: 'os.system'" in body and "tensor float32 [3, 4]" in body
    assert "11." not in body  # the tensor is summarized, not dumped
    code, out, err = dead_letters(vhost, "show", "1", capsys=capsys)
    assert code == 0, err
    body = out.split("\nbody\n", 1)[1]
    assert "not decoded:" in body
    assert "22 bytes, first 22: 00 01 20 74 68 69 73" in body
    code, out, err = dead_letters(vhost, "show", "3", capsys=capsys)
    assert "reason        broker: expired" in out and "x-death[0]" in out and "ObjectsCount" in out
    assert client.depth(DEAD_LETTER_QUEUE) == 3  # still all there
    code, out, err = dead_letters(vhost, "show", "9", capsys=capsys)
    assert code == 2 and not out
    assert err.strip() == (f"fedmq dead-letters show: no dead letter at position 9: "
                           f"{DEAD_LETTER_QUEUE} holds 3 (`fedmq dead-letters list`)")


@pytest.mark.amqp
def test_requeue_sends_a_message_back_as_its_sender_with_its_properties(vhost, client,
                                                                        capsys):
    ids = make_three(client)
    code, out, err = dead_letters(vhost, "requeue", "3", capsys=capsys)
    assert code == 0, err
    assert out.strip() == f"requeued dead letter 3 (ObjectsCount) to fedmq.worker.{IDLE}"
    assert client.depth(DEAD_LETTER_QUEUE) == 2
    method, props, body = client.ch.basic_get(f"fedmq.worker.{IDLE}", auto_ack=True)
    assert method is not None and body == envelope(m.ObjectsCount())
    assert (props.user_id, props.correlation_id, props.type) == \
        ("guest", ids["expired"], "ObjectsCount")
    assert props.reply_to.startswith("amq.rabbitmq.reply-to.")  # the sender's, as it was
    assert props.headers == {"x-test": "kept"}  # x-death and friends removed
    assert props.expiration is None
    # a message the worker ran and failed: requeued, it is not run again (one message id,
    # run once): the worker answers with its first reply again
    code, out, err = dead_letters(vhost, "requeue", "2", capsys=capsys)
    assert code == 0 and "requeued dead letter 2 (Command)" in out, err
    second = client.replies_to(ids["command"], count=2)[1]
    assert second.error.code == "op_not_allowed"
    client.wait_depth(DEAD_LETTER_QUEUE, 1)  # acked as a duplicate, not dead-lettered again
    # --new-message-id: it runs again (and, refused again, is dead-lettered again)
    code, out, err = dead_letters(vhost, "requeue", "1", "--new-message-id", capsys=capsys)
    assert code == 0, err
    assert client.replies_to(ids["garbage"], count=2)[1].error.code == "serde_error"
    client.wait_depth(DEAD_LETTER_QUEUE, 1)


@pytest.mark.amqp
def test_requeue_to_a_queue_that_is_gone_is_an_error_and_the_message_stays(vhost, client,
                                                                           capsys):
    queue = client.idle_queue()
    client.publish(queue, envelope(m.ObjectsCount()), exchange="", expiration="1")
    client.wait_depth(DEAD_LETTER_QUEUE, 1)
    garbage = client.publish(WORKER, b"garbage")
    client.replies_to(garbage)
    client.wait_depth(DEAD_LETTER_QUEUE, 2)
    client.ch.queue_delete(queue)
    code, out, err = dead_letters(vhost, "requeue", "--all", capsys=capsys)
    assert code == 1
    assert err.strip() == (f"fedmq dead-letters requeue: dead letter 1 (Envelope): queue "
                           f"'{queue}' does not exist (any more); left in {DEAD_LETTER_QUEUE}")
    assert "requeued dead letter 2 (Envelope)" in out
    client.wait_depth(DEAD_LETTER_QUEUE, 1)  # the first one stays (the second is handled as
    # a duplicate by the worker)
    code, out, err = dead_letters(vhost, "requeue", "1", "--all", capsys=capsys)
    assert code == 2 and "not both" in err


@pytest.mark.amqp
def test_requeue_never_publishes_as_another_user_than_the_sender(vhost, client, capsys):
    """A dead letter whose sender is not this login (guest, without the impersonator tag)
    cannot be requeued as that sender: the broker refuses, the message stays, and the next
    one is requeued all the same (on a channel of its own)."""
    for sender in ("someone-else", None):
        headers = {"x-fedmq-worker": WORKER, "x-fedmq-error": "test: made up",
                   "x-fedmq-message-type": "ObjectsCount"}
        if sender:
            headers["x-fedmq-user-id"] = sender
        client.ch.basic_publish("fedmq.dlx", WORKER, envelope(m.ObjectsCount()),
                                pika.BasicProperties(user_id="guest", headers=headers,
                                                     message_id=uuid.uuid4().hex))
    client.wait_depth(DEAD_LETTER_QUEUE, 2)
    code, out, err = dead_letters(vhost, "requeue", "--all", capsys=capsys)
    assert code == 1
    [line] = err.strip().splitlines()
    assert line.startswith("fedmq dead-letters requeue: dead letter 1 (ObjectsCount): the "
                           "broker refused to let user 'guest' publish it as its sender "
                           "'someone-else'")
    assert "or as a user with the 'impersonator' tag; left in fedmq.dead-letters" in line
    # the second had no sender: requeued without a user_id (the worker refuses it, saying so)
    assert out.strip() == f"requeued dead letter 2 (ObjectsCount) to fedmq.worker.{WORKER}"
    client.wait_depth(DEAD_LETTER_QUEUE, 2)  # 1 stayed; 2 came back, refused: no user_id
    code, out, err = dead_letters(vhost, "list", capsys=capsys)
    assert "test: made up" in out and "access_denied: the message carries no AMQP user_id" in out


@pytest.mark.amqp
def test_purge_asks_first_and_refuses_without_a_terminal(vhost, client, capsys):
    for _ in range(2):
        client.replies_to(client.publish(WORKER, b"garbage"))
    client.wait_depth(DEAD_LETTER_QUEUE, 2)
    refused = run_fedmq("dead-letters", "purge", "--url", vhost)
    assert refused.returncode == 2 and refused.stdout == ""
    assert one_line(refused) == (
        f"fedmq dead-letters purge: refusing to purge 2 dead letters from {DEAD_LETTER_QUEUE} "
        f"on amqp://127.0.0.1:5672/{vhost.rsplit('/', 1)[1]} without asking: stdin is not a "
        f"terminal; give --yes to go on")
    declined = run_fedmq("dead-letters", "purge", "--url", vhost, answer="no")
    assert declined.returncode == 1 and "Purge 2 dead letters" in declined.stdout
    assert client.depth(DEAD_LETTER_QUEUE) == 2
    agreed = run_fedmq("dead-letters", "purge", "--url", vhost, answer="y")
    assert agreed.returncode == 0, agreed.stderr
    assert "purged 2 dead letters" in agreed.stdout and client.depth(DEAD_LETTER_QUEUE) == 0
    client.replies_to(client.publish(WORKER, b"garbage"))
    client.wait_depth(DEAD_LETTER_QUEUE, 1)
    code, out, err = dead_letters(vhost, "purge", "--yes", capsys=capsys)
    assert code == 0 and "purged 1 dead letter " in out + " "
    code, out, err = dead_letters(vhost, "list", capsys=capsys)
    assert code == 0 and out.startswith("no dead letters in")


@pytest.mark.amqp
def test_broker_problems_are_one_line_within_seconds(vhost, capsys):
    host = "127.0.0.1:5672"
    cases = {
        f"amqp://guest:wrong@{host}/": "the broker refused the user name or password",
        f"amqp://guest:guest@{host}/no-such-vhost-{secrets.token_hex(3)}":
            "does the vhost in the URL exist",
    }
    from private_rabbitmq import free_ports
    cases[f"amqp://guest:guest@127.0.0.1:{free_ports(1)[0]}/"] = "is RabbitMQ running"
    for url, expected in cases.items():
        started = time.monotonic()
        result = run_fedmq("dead-letters", "list", "--url", url)
        assert time.monotonic() - started < 15
        assert result.returncode == 2 and result.stdout == ""
        line = one_line(result)
        assert line.startswith("fedmq dead-letters list: cannot connect to RabbitMQ at ")
        assert expected in line and "wrong" not in line  # no password either


@pytest.mark.amqp
def test_list_and_purge_do_not_import_torch(vhost, client):
    code = ("import sys; from fedmq.cli import main; "
            f"rc = main(['dead-letters', 'list', '--url', {vhost!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no dead letters in")


# --- without a broker ----------------------------------------------------------------------------

def letter(headers: dict | None = None, **properties) -> DeadLetter:
    return DeadLetter(1, Basic.Properties(headers=headers, **properties), 10, b"x" * 10, 1,
                      False)


def test_a_workers_copy_and_a_broker_dead_letter_describe_themselves():
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    copy = letter({"x-fedmq-error": "quota_exceeded: too big", "x-fedmq-worker": "alice",
                   "x-fedmq-message-type": "Command", "x-fedmq-user-id": "scientist",
                   "x-fedmq-dead-at": when, "x-fedmq-frame": "f", "x-fedmq-chunk": 0,
                   "x-fedmq-chunks": 1, "x-other": 1},
                  user_id="alice", message_type="Envelope", reply_to="r", correlation_id="c",
                  message_id="id")
    assert (copy.reason, copy.queue, copy.message_type, copy.sender, copy.died_at) == \
        ("quota_exceeded: too big", "fedmq.worker.alice", "Command", "scientist", when)
    props = copy.requeue_properties()
    assert (props.user_id, props.reply_to, props.correlation_id, props.message_id) == \
        ("scientist", "r", "c", "id")  # the sender's user_id, never the worker's
    assert props.headers == {"x-fedmq-frame": "f", "x-fedmq-chunk": 0, "x-fedmq-chunks": 1,
                             "x-other": 1}
    new_ids: dict[str, str] = {}
    fresh = copy.requeue_properties(new_ids)
    assert fresh.message_id != "id" and fresh.headers["x-fedmq-frame"] == new_ids["f"] != "f"
    assert copy.requeue_properties(new_ids).headers["x-fedmq-frame"] == new_ids["f"]
    expired = letter({"x-death": [{"reason": "expired", "queue": "fedmq.worker.bob",
                                   "time": when, "count": 1}],
                      "x-first-death-queue": "fedmq.worker.bob"},
                     user_id="coordinator", message_type="Fit")
    assert (expired.reason, expired.queue, expired.message_type, expired.sender,
            expired.died_at) == ("broker: expired", "fedmq.worker.bob", "Fit", "coordinator",
                                 when)
    assert expired.requeue_properties().headers is None
    assert (letter().reason, letter().queue, letter().died_at, letter().sender) == \
        ("?", None, None, None)
    assert letter({"x-fedmq-chunk": 1, "x-fedmq-chunks": 3, "x-fedmq-frame": "f"}).chunk == \
        (1, 3, "f")


def test_ages_and_the_table():
    now = datetime.datetime(2030, 1, 2, tzinfo=datetime.timezone.utc)
    ago = [now - datetime.timedelta(seconds=s) for s in (5, 125, 7300, 200000)]
    assert [format_age(when, now) for when in ago] == ["5s", "2m", "2h", "2d"]
    assert format_age(None, now) == "?"
    rows = [letter({"x-fedmq-error": "serde_error:  a\nlong " + "x" * 200,
                    "x-fedmq-worker": "alice", "x-fedmq-dead-at": ago[0]})]
    header, row = format_table(rows, now).splitlines()
    assert row.split()[:6] == ["1", "5s", "10", "B", "fedmq.worker.alice", "?"]
    assert "serde_error: a long xxx" in row and row.endswith("...") and "\n" not in row


class _Terminal:
    def __init__(self, answer: str, tty: bool = True) -> None:
        self.answer, self.tty, self.closed = answer, tty, False

    def isatty(self) -> bool:
        return self.tty

    def readline(self) -> str:
        return self.answer


def test_confirm_asks_on_a_terminal_and_refuses_without_one(capsys):
    import io
    out = io.StringIO()
    assert confirm("purge it", False, stdin=_Terminal("y\n"), stdout=out)
    assert out.getvalue() == "Purge it? [y/N] "
    assert confirm("purge it", False, stdin=_Terminal("YES\n"), stdout=out)
    for answer in ("\n", "n\n", "yess\n", ""):
        assert not confirm("purge it", False, stdin=_Terminal(answer), stdout=out)
    assert confirm("purge it", True, stdin=_Terminal("n", tty=False))
    with pytest.raises(UsageError, match="refusing to purge it without asking: stdin is not a "
                                         "terminal; give --yes"):
        confirm("purge it", False, stdin=_Terminal("y", tty=False))


def test_the_frame_view_summarizes_tensors_and_cuts_long_values():
    from fedmq.frame_view import view_frame
    lines = view_frame(envelope(m.ObjectMessage([m.StoredObject(
        7, torch.zeros(2, 3, dtype=torch.int64), ["#tag"] * 60, "d" * 300)])))
    text = "\n".join(lines)
    assert lines[0] == "Envelope" and "tensor int64 [2, 3]" in text
    assert "list of 60" in text and "... 40 more" in text and "... (302 chars)" in text
    assert view_frame(b"\x93\x01")[0].startswith("not decoded: ")


def test_usage_mistakes_are_one_line(capsys):
    for argv, expected in ((["show", "x"], "argument N: 'x' is not a position"),
                           (["show"], "the following arguments are required: N"),
                           (["requeue"], "give the positions to requeue (N ...) or --all"),
                           (["list", "--limit", "0"], "argument --limit: must be at least 1"),
                           (["show", "1", "--bytes", "0"],
                            "argument --bytes: must be at least 1"),
                           (["list", "--url", "http://127.0.0.1:15672"],
                            "http:// is the management API, which this command does not use")):
        try:
            code = main(["dead-letters", *argv])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2 and not out
        [line] = err.strip().splitlines()
        assert line.startswith(f"fedmq dead-letters {argv[0]}: ") and expected in line, line


def test_review_wording_of_usage_mistakes(capsys):
    """Found by review: requeue with nothing said "... or --all, not both"; --limit 0 said
    "'0' is not a position"; an http:// --url was told to use --management-url, which
    dead-letters does not have; `dead-letters --limit 5` was "invalid choice: '5'"."""
    for argv, expected in (
            (["requeue"], "fedmq dead-letters requeue: give the positions to requeue (N ...) "
                          "or --all"),
            (["--limit", "0"], "fedmq dead-letters: argument --limit: must be at least 1, "
                               "got 0 (see fedmq dead-letters --help)"),
            (["--limit", "2", "show", "1"], "fedmq dead-letters show: --limit is for list "
                                            "(fedmq dead-letters list --limit N)"),
            (["--url", "http://127.0.0.1:15672"],
             "fedmq dead-letters list: --url is the AMQP broker URL "
             "(amqp://user:password@host:5672/vhost); http:// is the management API, which "
             "this command does not use")):
        try:
            code = main(["dead-letters", *argv])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 2 and not out and err.strip() == expected, err


@pytest.mark.amqp
def test_limit_without_an_action_lists(vhost, client, capsys):
    make_three(client)
    for argv in (["--limit", "2"], ["--limit", "2", "list"], ["list", "--limit", "2"]):
        code, out, err = dead_letters(vhost, *argv, capsys=capsys)
        assert code == 0, err
        title, _, *rows = out.splitlines()
        assert "(the first 2 shown; --limit)" in title and len(rows) == 2, out


@pytest.mark.amqp
def test_requeue_goes_only_to_worker_queues_unless_any_queue(vhost, client, capsys):
    """Found by review: a dead letter whose forged x-death named queue `victim` was requeued
    into `victim`. The queue comes from headers anyone who may publish to fedmq.dlx writes:
    only fedmq.worker.* unless --any-queue (as `fedmq queues delete`)."""
    victim = f"victim-{secrets.token_hex(3)}"
    client.ch.queue_declare(victim)
    try:
        client.ch.basic_publish("fedmq.dlx", "forged", b"payload", pika.BasicProperties(
            user_id="guest", headers={"x-death": [{"queue": victim, "reason": "rejected",
                                                   "count": 1, "exchange": ""}]}))
        client.wait_depth(DEAD_LETTER_QUEUE, 1)
        code, out, err = dead_letters(vhost, "requeue", "1", capsys=capsys)
        assert code == 1 and not out
        assert err.strip() == (
            f"fedmq dead-letters requeue: dead letter 1 (?): it names queue '{victim}', not a "
            f"worker queue (fedmq.worker.*): its x-death header may be forged (anyone who may "
            f"publish to fedmq.dlx writes it); give --any-queue to requeue it there anyway; "
            f"left in {DEAD_LETTER_QUEUE}")
        assert client.depth(victim) == 0 and client.depth(DEAD_LETTER_QUEUE) == 1
        code, out, err = dead_letters(vhost, "requeue", "--all", "--any-queue", capsys=capsys)
        assert code == 0 and out.strip() == f"requeued dead letter 1 (?) to {victim}", err
        client.wait_depth(victim, 1)
    finally:
        client.ch.queue_delete(victim)


@pytest.mark.amqp
def test_show_says_a_workers_copy_names_its_sender_in_a_header(vhost, client, capsys):
    client.ch.basic_publish("fedmq.dlx", "forged", b"payload", pika.BasicProperties(
        user_id="guest", headers={"x-fedmq-worker": WORKER, "x-fedmq-user-id": "admin",
                                  "x-fedmq-error": "forged"}))
    client.wait_depth(DEAD_LETTER_QUEUE, 1)
    code, out, err = dead_letters(vhost, "show", "1", capsys=capsys)
    assert code == 0, err
    assert ("sender        admin (header x-fedmq-user-id: anyone who may publish to fedmq.dlx "
            "can write it; requeue publishes as this user)") in out.splitlines()
    with pytest.raises(SystemExit):
        main(["dead-letters", "requeue", "--help"])
    assert "anyone who may publish to fedmq.dlx can write" in \
        " ".join(capsys.readouterr().out.split())


@pytest.mark.amqp
def test_forged_headers_are_shown_escaped_and_never_crash_the_listing(vhost, client, capsys):
    """Anyone who may publish on fedmq.dlx (a worker's user) writes the headers: escape
    sequences, newlines and bidi overrides are shown escaped; an impossible time is no
    time (found by review: they reached the terminal raw, and dead-at 10**18 crashed list)."""
    nasty = "alice\x1b[31m\r\nFAKE ROW\x1b]0;pwn\x07\u202e"
    client.ch.basic_publish("fedmq.dlx", "forged", b"\x1b[2J garbage", pika.BasicProperties(
        type="Envelope\x1b[2J", headers={"x-fedmq-worker": nasty,
                                        "x-fedmq-error": "op_not_allowed: " + nasty,
                                        "x-fedmq-dead-at": 10 ** 18}))
    client.wait_depth(DEAD_LETTER_QUEUE, 1)
    for argv in (["list"], ["show", "1"]):
        code, out, err = dead_letters(vhost, *argv, capsys=capsys)
        assert code == 0, err
        assert "\x1b" not in out + err and "\x07" not in out and "\u202e" not in out
        assert "\\x1b" in out
        assert "\nFAKE ROW" not in out
    assert client.depth(DEAD_LETTER_QUEUE) == 1  # still there, for the operator to purge
