"""One check of a broker URL for every command (fedmq.cli_options.check_amqp_url): a URL with
no host, a port that is not one, a broken IPv6 address or another scheme is refused at once,
in one line naming --url (and $FEDMQ_URL when the value came from there), exit 2, without
the password. Found by review: `fedmq queues` with FEDMQ_URL=...:notaport/ listed and exited
0, `fedmq events --url 127.0.0.1` said "not ''", and a host-less URL made the clients retry
forever ("encoding with 'idna' codec failed")."""
from __future__ import annotations

import pytest

from fedmq.cli import main
from fedmq.cli_options import UsageError, check_amqp_url, url_option

BAD = [
    ("amqp://guest:S3CRET@127.0.0.1:notaport/", "the port of 'amqp://127.0.0.1:notaport/' is "
                                                "not a number from 1 to 65535"),
    ("amqp://guest:S3CRET@127.0.0.1:99999/", "the port of 'amqp://127.0.0.1:99999/'"),
    ("amqp://guest:S3CRET@127.0.0.1:0/", "the port of 'amqp://127.0.0.1:0/'"),
    ("amqp://guest:S3CRET@[::1/", "'amqp://[::1/' is not a broker URL"),
    ("amqp://guest:S3CRET@[nothost]:5672/", "'amqp://[nothost]:5672/' is not a broker URL"),
    ("amqp://.../", "'...' is not a host name or address"),
    ("amqp://", "'amqp://' names no broker host"),
    ("amqp://guest:S3CRET@/", "'amqp:///' names no broker host"),
    ("amqp://guest:S3CRET@:5672/v", "'amqp://:5672/v' names no broker host"),
]


@pytest.mark.parametrize("url,expected", BAD)
def test_check_amqp_url_refuses_what_names_no_broker(url, expected):
    with pytest.raises(UsageError) as info:
        check_amqp_url(url)
    text = str(info.value)
    assert text.startswith("--url: ") and expected in text and "S3CRET" not in text, text


def test_check_amqp_url_keeps_good_urls_and_its_http_message():
    for url in ("amqp://guest:guest@127.0.0.1:5672/", "amqps://u:p@broker.example.com/v",
                "amqp://u:p%2Fx@[::1]:5672/%2F", "amqp://h/?auth=external", "amqp://h.:1/"):
        assert check_amqp_url(url) == url
    with pytest.raises(UsageError, match="http:// is the management API: give it with "
                                         "--management-url"):
        check_amqp_url("http://127.0.0.1:15672")
    with pytest.raises(UsageError, match="which this command does not use"):
        check_amqp_url("http://127.0.0.1:15672", management_option=None)
    with pytest.raises(UsageError, match=r"^--url must be an amqp:// or amqps:// URL .*not "
                                         r"'127.0.0.1'$"):
        check_amqp_url("127.0.0.1")
    with pytest.raises(UsageError, match="^--broker: "):
        check_amqp_url("amqp://", "--broker")


def test_url_option_says_when_the_value_came_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEDMQ_URL", "amqp://h:notaport/")
    assert url_option("amqp://h:notaport/") == "--url (here from $FEDMQ_URL)"
    assert url_option("amqp://other/") == "--url"
    with pytest.raises(UsageError, match=r"^--url \(here from \$FEDMQ_URL\): the port"):
        check_amqp_url("amqp://h:notaport/")


COMMANDS = [["events"], ["dashboard"], ["dead-letters"], ["dead-letters", "list"],
            ["queues"], ["queues", "list"], ["broker", "add-user", "someone", "--role", "client"],
            ["worker", "--id", "w"]]


def one_line(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and not out and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("url,expected", BAD[:1] + BAD[3:4] + BAD[7:8])
def test_every_command_refuses_a_bad_url_naming_it(capsys, command, url, expected):
    line = one_line(capsys, [*command, "--url", url])
    assert line.startswith(f"fedmq {command[0]}") and f": --url: {expected}" in line, line
    assert "S3CRET" not in line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_names_fedmq_url_when_the_bad_url_came_from_there(capsys, monkeypatch,
                                                                         command):
    monkeypatch.setenv("FEDMQ_URL", "amqp://guest:S3CRET@127.0.0.1:notaport/")
    line = one_line(capsys, command)
    assert ": --url (here from $FEDMQ_URL): the port of 'amqp://127.0.0.1:notaport/'" in line
    assert "S3CRET" not in line


def test_events_names_url_for_a_bare_host(capsys):
    line = one_line(capsys, ["events", "--url", "127.0.0.1"])
    assert line == ("fedmq events: --url must be an amqp:// or amqps:// URL "
                    "(amqp://user:password@host:5672/vhost), not '127.0.0.1'")


@pytest.mark.parametrize("command", [["dead-letters"], ["events"], ["worker", "--id", "w"]],
                         ids=" ".join)
def test_commands_without_a_management_url_option_do_not_suggest_one(capsys, command):
    line = one_line(capsys, [*command, "--url", "http://127.0.0.1:15672"])
    assert "--url is the AMQP broker URL" in line and "management-url" not in line, line
