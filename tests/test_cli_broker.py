"""`fedmq broker add-user` / `delete-user` (fedmq/broker_admin.py), and the broker URL helpers the
role users rely on (fedmq/transport/amqp.py: login_of, resolve_url, describe_url).

The first tests need no broker: arguments are checked before any network call, and an error is
one line with exit 2. The `amqp` ones run the commands against the run's vhost (users are
node-wide: named `fedmqt-<run hex>-...` and deleted, see tests/test_broker_roles.py)."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import stat

import pika
import pytest

from fedmq import broker_admin
from fedmq.cli import main
from fedmq.errors import TransportError
from fedmq.transport.amqp import describe_url, login_of, resolve_url
from private_rabbitmq import free_ports


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out, (code, out, err)
    [line] = err.strip().splitlines()
    return line


# --- no broker ---------------------------------------------------------------------------------

@pytest.fixture
def nowhere() -> list[str]:
    """Management options pointing at a port nothing listens on: an error that names a
    validation problem was found before any network call."""
    return ["--management-url", f"http://127.0.0.1:{free_ports(1)[0]}"]


@pytest.mark.parametrize("argv, expected", [
    (["bad name", "--role", "worker"], "user name 'bad name': use letters"),
    (["_first", "--role", "client"], "use letters"),
    (["a/b", "--role", "client"], "user name 'a/b'"),
    (["alice", "--role", "admin"], "invalid choice: 'admin'"),
    (["alice"], "the following arguments are required: --role"),
    (["alice", "--role", "worker", "--password-file", "/nonexistent/pw"],
     "cannot read --password-file '/nonexistent/pw'"),
    (["alice", "--role", "worker", "--admin-password-file", "/nonexistent/admin"],
     "cannot read --admin-password-file"),
    (["alice", "--role", "worker", "--queue-type", "stream"], "invalid choice: 'stream'"),
])
def test_add_user_checks_its_arguments_before_any_network_call(capsys, nowhere, argv,
                                                                expected):
    line = one_line_error(capsys, "broker", "add-user", *argv, *nowhere)
    assert expected in line and "cannot reach" not in line, line


def test_management_url_is_the_option_and_mgmt_url_a_hidden_alias(capsys):
    port = free_ports(1)[0]
    for option in ("--management-url", "--mgmt-url"):
        line = one_line_error(capsys, "broker", "delete-user", "alice", option,
                              f"http://127.0.0.1:{port}")
        assert f"cannot reach the RabbitMQ management API at http://127.0.0.1:{port}/" in line
    with pytest.raises(SystemExit):
        main(["broker", "add-user", "--help"])
    shown = capsys.readouterr().out
    assert "--management-url HTTP_URL" in shown and "--mgmt-url" not in shown


def test_add_user_password_files_are_checked_before_any_network_call(capsys, nowhere,
                                                                     tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    line = one_line_error(capsys, "broker", "add-user", "alice", "--role", "worker",
                          "--password-file", str(empty), *nowhere)
    assert f"--password-file '{empty}' is empty" in line
    given = tmp_path / "given"
    given.write_text("secret\n")
    line = one_line_error(capsys, "broker", "add-user", "alice", "--role", "worker",
                          "--password-file", str(given), "--password-out",
                          str(tmp_path / "out"), *nowhere)
    assert "--password-out is for a generated password" in line
    taken = tmp_path / "taken"
    taken.write_text("keep me\n")
    line = one_line_error(capsys, "broker", "add-user", "alice", "--role", "worker",
                          "--password-out", str(taken), *nowhere)
    assert "exists (it is never overwritten)" in line and taken.read_text() == "keep me\n"


def test_a_password_out_claimed_for_a_user_that_could_not_be_added_is_removed(capsys, nowhere,
                                                                             tmp_path):
    out = tmp_path / "alice.password"
    line = one_line_error(capsys, "broker", "add-user", "alice", "--role", "worker",
                          "--password-out", str(out), *nowhere)
    assert "cannot reach the RabbitMQ management API" in line
    assert not out.exists()


def test_delete_user_checks_its_arguments(capsys, nowhere):
    assert "user name" in one_line_error(capsys, "broker", "delete-user", "x y", *nowhere)
    line = one_line_error(capsys, "broker", "delete-user", "root", "--admin-user", "root",
                          *nowhere)
    assert "refusing to delete 'root', the administrator this command logs in as" in line


def test_role_permissions_name_exactly_the_workers_queue():
    configure, write, read = broker_admin.role_permissions("worker", "a.b-1")
    assert configure == "^$"
    assert re.fullmatch(read, "fedmq.worker.a.b-1")
    for other in ("fedmq.worker.aXb-1", "fedmq.worker.a.b-10", "fedmq.worker.a.b",
                  "xfedmq.worker.a.b-1"):
        assert not re.fullmatch(read, other) and not re.search(read, other), other
    assert [bool(re.search(write, e)) for e in ("fedmq.commands", "fedmq.dlx", "amq.default",
                                                "fedmq.events", "amq.direct")] == [
        True, True, True, False, False]
    for role in ("client", "coordinator"):
        configure, write, read = broker_admin.role_permissions(role, "c")
        assert (configure, read) == ("^$", "^$") and re.search(write, "fedmq.commands")
        assert not re.search(write, "amq.default") and not re.search(write, "fedmq.dlx")
        assert bool(re.search(write, "fedmq.events")) is (role == "coordinator")


def test_password_hash_is_rabbitmqs_salted_sha256():
    raw = base64.b64decode(broker_admin.password_hash("pässword"))
    assert len(raw) == 36 and raw[4:] == hashlib.sha256(raw[:4] + "pässword".encode()).digest()


@pytest.mark.parametrize("url, login", [
    ("amqp://alice:pw@h/", "alice"),
    ("amqp://al%40ice%3A1:p%2Fw@h:5672/v", "al@ice:1"),  # percent-encoded, as URLs must be
    ("amqp://%C3%A9ve:pw@h/", "éve"),
    ("amqp://h/", "guest"),  # aiormq logs in as guest when the URL names nobody
    ("amqps://bob:pw@h/?cafile=/x", "bob"),
    ("amqps://h/?auth=external", None),  # the client certificate names the user
])
def test_login_of_reads_the_user_as_aiormq_does(url, login):
    assert login_of(url) == login


def test_resolve_url_takes_the_password_from_the_environment(tmp_path, monkeypatch):
    """$FEDMQ_AMQP_PASSWORD, for platforms that hand secrets as environment variables; a
    password file ($FEDMQ_AMQP_PASSWORD_FILE) or the URL's own password wins over it."""
    monkeypatch.delenv("FEDMQ_AMQP_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("FEDMQ_AMQP_PASSWORD", "p@ss")
    assert resolve_url("amqp://alice@h:5672/v") == "amqp://alice:p%40ss@h:5672/v"
    assert resolve_url("amqp://alice:given@h/") == "amqp://alice:given@h/"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("FEDMQ_AMQP_PASSWORD_FILE", str(secret))
    assert resolve_url("amqp://alice@h/") == "amqp://alice:from-file@h/"


def test_describe_url_names_the_tls_port():
    assert describe_url("amqps://u:secret@broker/v") == "amqps://broker:5671/v"
    assert describe_url("amqp://u:secret@broker/") == "amqp://broker:5672/"


def test_resolve_url_reads_the_password_file_and_checks_tls_files(tmp_path, monkeypatch):
    secret = tmp_path / "pw"
    secret.write_text("p@ss/w:rd\nthe first line only, as add-user --password-file reads it\n")
    monkeypatch.setenv("FEDMQ_AMQP_PASSWORD_FILE", str(secret))
    resolved = resolve_url("amqp://alice@h:5672/v")
    assert resolved == "amqp://alice:p%40ss%2Fw%3Ard@h:5672/v"
    assert resolve_url("amqp://alice:given@h/") == "amqp://alice:given@h/"  # the URL wins
    secret.write_text("")
    with pytest.raises(TransportError, match="is empty"):
        resolve_url("amqp://alice@h/")
    monkeypatch.setenv("FEDMQ_AMQP_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(TransportError, match="cannot read the password") as info:
        resolve_url("amqp://alice@h/")
    assert "No such file" in str(info.value)
    monkeypatch.delenv("FEDMQ_AMQP_PASSWORD_FILE")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(TransportError, match=r"\?cafile= is for TLS: use an amqps:// URL"):
        resolve_url(f"amqp://u:p@h:5671/?cafile={ca}")
    with pytest.raises(TransportError, match="the cafile '/nowhere/ca.pem' in the URL"):
        resolve_url("amqps://u:p@h/?cafile=/nowhere/ca.pem")
    with pytest.raises(TransportError, match="amqp:// or amqps://"):
        resolve_url("http://u:p@h/")
    assert resolve_url(f"amqps://u:p@h/?cafile={ca}") == f"amqps://u:p@h/?cafile={ca}"


# --- on the broker -----------------------------------------------------------------------------

@pytest.fixture
def broker(role_users):
    """The run's vhost and management API as command-line options, and this run's users."""
    from role_users import ADMIN, VHOST
    return role_users, ["--vhost", VHOST, "--management-url", ADMIN["url"]]


def can_log_in(user: str, password: str) -> bool:
    from role_users import url_for
    try:
        pika.BlockingConnection(pika.URLParameters(url_for(user, password))).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


@pytest.mark.amqp
def test_add_user_prints_a_generated_password_once_and_it_logs_in(capsys, broker):
    users, options = broker
    from role_users import RUN_PREFIX
    name = RUN_PREFIX + "gen"
    users.names.append(name)
    code, out, err = run(capsys, "broker", "add-user", name, "--role", "client", *options)
    assert code == 0, err
    [password] = [line.split(": ", 1)[1] for line in out.splitlines()
                  if line.startswith("password (shown once): ")]
    assert out.count(password) == 1 and len(password) >= 24
    assert "write ^fedmq\\.commands$" in out
    assert can_log_in(name, password) and not can_log_in(name, password + "x")
    # a second add is refused unless --update, which gives a new password
    line = one_line_error(capsys, "broker", "add-user", name, "--role", "client", *options)
    assert f"user {name!r} exists; give --update" in line
    code, out, _ = run(capsys, "broker", "add-user", name, "--role", "client", "--update",
                       *options)
    new = out.rsplit(": ", 1)[1].strip()
    assert code == 0 and new != password and can_log_in(name, new)
    assert not can_log_in(name, password)


@pytest.mark.amqp
def test_add_user_writes_the_password_to_a_private_file(capsys, broker, tmp_path):
    users, options = broker
    from role_users import RUN_PREFIX
    name, out_file = RUN_PREFIX + "out", tmp_path / "out.password"
    users.names.append(name)
    code, out, err = run(capsys, "broker", "add-user", name, "--role", "worker",
                         "--password-out", str(out_file), *options)
    assert code == 0, err
    password = out_file.read_text().strip()
    assert password not in out and stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    assert f"queue fedmq.worker.{name} bound to fedmq.commands" in out
    assert can_log_in(name, password)


@pytest.mark.amqp
def test_add_user_refuses_what_it_must_not_change(capsys, broker, tmp_path):
    _, options = broker
    from role_users import ADMIN_USER, RUN_PREFIX
    # an administrator (any user with tags) is never turned into a role user
    line = one_line_error(capsys, "broker", "add-user", ADMIN_USER, "--role", "worker",
                          "--update", *options)
    assert f"user {ADMIN_USER!r} exists with tags" in line and "refusing" in line
    line = one_line_error(capsys, "broker", "add-user", RUN_PREFIX + "nov", "--role", "client",
                          "--vhost", "fedmq-no-such-vhost", *options[2:])
    assert "vhost 'fedmq-no-such-vhost' does not exist" in line
    line = one_line_error(capsys, "broker", "delete-user", RUN_PREFIX + "never", *options)
    assert f"no user {RUN_PREFIX + 'never'!r}" in line


@pytest.mark.amqp
def test_delete_user_removes_the_user_and_on_request_its_queue(capsys, broker):
    users, options = broker
    from role_users import VHOST, api, q
    name, password, _ = users.add("del", "worker")
    code, out, _ = run(capsys, "broker", "delete-user", name, "--delete-queue", *options)
    assert code == 0 and f"deleted user {name!r} and queue fedmq.worker.{name}" in out
    assert not can_log_in(name, password)
    assert api("GET", f"queues/{q(VHOST)}") is not None
    assert f"fedmq.worker.{name}" not in [x["name"] for x in api("GET", f"queues/{q(VHOST)}")]


@pytest.mark.amqp
def test_the_vhost_of_url_is_the_default_vhost(capsys, broker, monkeypatch):
    """Found by review: add-user had no --url and its --vhost defaulted to / even when
    FEDMQ_URL named another vhost. The vhost of --url ($FEDMQ_URL) is the default; an explicit
    --vhost still wins."""
    users, options = broker
    from role_users import RUN_PREFIX, VHOST, api, q
    management = options[2:]
    name = RUN_PREFIX + "urlv"
    users.names.append(name)
    vhost_url = f"amqp://nobody:S3CRET@127.0.0.1:5672/{q(VHOST)}"
    code, out, err = run(capsys, "broker", "add-user", name, "--role", "worker", "--url",
                         vhost_url, *management)
    assert code == 0, err
    assert f"on vhost {VHOST!r}" in out
    assert f"fedmq.worker.{name}" in [x["name"] for x in api("GET", f"queues/{q(VHOST)}")]
    monkeypatch.setenv("FEDMQ_URL", "amqp://u:p@127.0.0.1/fedmq-no-such-vhost")
    line = one_line_error(capsys, "broker", "add-user", name + "x", "--role", "client",
                          *management)
    assert "vhost 'fedmq-no-such-vhost' does not exist" in line
    code, out, err = run(capsys, "broker", "add-user", name, "--role", "worker", "--update",
                         "--vhost", VHOST, *management)  # --vhost wins over $FEDMQ_URL
    assert code == 0 and f"on vhost {VHOST!r}" in out, err
    code, out, err = run(capsys, "broker", "delete-user", name, "--delete-queue", "--url",
                         vhost_url, *management)
    assert code == 0, err
    assert f"fedmq.worker.{name}" not in [x["name"] for x in api("GET", f"queues/{q(VHOST)}")]
    monkeypatch.setenv("FEDMQ_URL", "amqp://u:S3CRET@127.0.0.1:x/")
    line = one_line_error(capsys, "broker", "delete-user", name, *management)
    assert line.startswith("fedmq broker delete-user: --url (here from $FEDMQ_URL): the port")
    assert "S3CRET" not in line
