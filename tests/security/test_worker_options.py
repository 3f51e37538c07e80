"""`fedmq worker`'s access options: mistakes are one line and exit 2, before any broker work;
the policy they describe is the one the worker runs."""
from __future__ import annotations

import argparse

import pytest

from fedmq.cli import build_parser, main
from fedmq.service import policy_from_args, service_policy


@pytest.mark.parametrize("argv,expected", [
    (["--grant", "admin:eve"], "--grant 'admin:eve': expected ROLE:PRINCIPAL"),
    (["--grant", "coordinator"], "expected ROLE:PRINCIPAL"),
    (["--grant", "scientist:"], "expected ROLE:PRINCIPAL"),
])
def test_bad_grants_are_one_line_and_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        main(["worker", "--id", "opt_w", "--url", "amqp://u:p@127.0.0.1:1/", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


@pytest.mark.parametrize("argv", [["--release", "some"], ["--max-bytes", "lots"],
                                  ["--max-bytes", "-5"], ["--max-objects", "x"]])
def test_bad_values_are_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["worker", "--id", "opt_w", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmq worker: argument " + argv[0])


def test_the_options_make_the_policy():
    args = build_parser().parse_args([
        "worker", "--id", "w", "--url", "amqp://alice%40lab:pw@broker:5672/v",
        "--grant", "coordinator:coord", "--grant", "scientist:sci", "--grant", "scientist:ann",
        "--release", "derived", "--max-bytes", "512M", "--max-objects", "0"])
    policy = policy_from_args(args)
    assert policy.owner == "alice@lab"  # the URL's user, percent-decoded
    assert policy.grants == {"coordinator": {"coord"}, "scientist": {"sci", "ann"}}
    assert policy.release == "derived" and policy.max_bytes == 512 << 20
    assert policy.max_objects is None  # 0: no limit
    defaults = service_policy("amqp://guest:guest@h/")
    assert (defaults.owner, defaults.release, dict(defaults.grants)) == ("guest", "none", {})
    assert defaults.max_bytes == 1 << 30 and defaults.max_objects == 100_000
    assert policy_from_args(argparse.Namespace(
        url="amqp://h/", grant=[], release="none", owner="data-team", max_bytes=0,
        max_objects=0, max_frame_bytes=0, max_op_bytes=-1, max_op_seconds=0)
    ).owner == "data-team"
    digest = "sha256:" + "0123456789abcdef" * 4
    allowed = policy_from_args(build_parser().parse_args(
        ["worker", "--url", "amqp://h/", "--allow-model", digest, "--allow-model", "any"]))
    assert allowed.models == {digest, "any"} and allowed.allows_model("coord", "sha256:x")


# --- ids, numbers and the URL: one line naming the option, exit 2, before anything slow ------
# (found by review: a bad id connected, then died with a 42-line traceback; nan was taken)

def worker_error(capsys, *argv: str) -> str:
    """The one line `fedmq worker *argv` refuses with (exit 2, no broker contacted: the URL
    names a port nothing listens on, unless argv gives another)."""
    with pytest.raises(SystemExit) as info:
        main(["worker", "--url", "amqp://u:p@127.0.0.1:1/", *argv])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert not out and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("fedmq worker: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("argv,option", [
    (["--id", "<img src=x onerror=alert(1)>"], "--id"),
    (["--id", "a\x1b[31mb"], "--id"),
    (["--id", "w" * 300], "--id"),
    (["--id", "a b"], "--id"),
    (["--id", "x#"], "--id"),
    (["--id", "a/b"], "--id"),
    (["--id", ""], "--id"),
    (["--id", ".."], "--id"),
    (["--ids", "w0,a/b"], "--ids"),
])
def test_an_id_that_is_not_a_worker_id_is_refused(capsys, argv, option):
    line = worker_error(capsys, *argv)
    assert line.startswith(f"fedmq worker: {option}: ") and "is not a worker id" in line
    assert "\x1b" not in line


@pytest.mark.parametrize("argv,expected", [
    (["--ids", "w0,,w2"], "--ids 'w0,,w2': an empty id"),
    (["--ids", "w0,"], "--ids 'w0,': an empty id"),
    (["--ids", "w0,w0"], "--ids: worker id 'w0' is given twice"),
    (["--id", "a", "--id", "a"], "--id: worker id 'a' is given twice"),
    (["--id", "a", "--ids", "b,a"], "--ids: worker id 'a' is given twice"),
    ([], "give at least one --id"),
])
def test_empty_and_repeated_ids_are_refused_not_dropped(capsys, argv, expected):
    assert expected in worker_error(capsys, *argv)


def test_several_ids_in_order():
    from fedmq.service import worker_ids
    args = build_parser().parse_args(["worker", "--id", "a", "--ids", "b, c", "--ids", "d"])
    assert worker_ids(args) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("option,value", [
    ("--connect-wait", "nan"), ("--connect-wait", "-1"), ("--connect-wait", "inf"),
    ("--chunk-timeout", "nan"), ("--chunk-timeout", "0"), ("--chunk-timeout", "-inf"),
    ("--max-op-seconds", "nan"), ("--max-op-seconds", "-2"), ("--max-op-seconds", "inf"),
    ("--health-interval", "nan"), ("--health-interval", "inf"), ("--health-interval", "0"),
    ("--iid-parts", "-1"), ("--first-part", "-1"), ("--iid-seed", "-3"),
    ("--max-objects", "-1"), ("--prefetch", "0"), ("--prefetch", "70000"),
    ("--max-frame-bytes", "-1"), ("--max-op-bytes", "-1"), ("--chunk-size", "0"),
])
def test_every_number_is_checked_and_its_option_named(capsys, option, value):
    line = worker_error(capsys, "--id", "w", option, value)
    assert line.startswith(f"fedmq worker: argument {option}: "), line


def test_the_iid_options_need_iid_parts(capsys):
    assert "--first-part is the IID part of the first id: give --iid-parts too" in \
        worker_error(capsys, "--id", "w", "--first-part", "2")
    assert "--iid-seed seeds the IID split: give --iid-parts too" in \
        worker_error(capsys, "--id", "w", "--iid-seed", "2")
    assert "--iid-parts cuts the partition of a --dataset" in \
        worker_error(capsys, "--ids", "a,b", "--iid-parts", "2")
    assert "3 ids from part 0 do not fit in --iid-parts 2" in \
        worker_error(capsys, "--ids", "a,b,c", "--iid-parts", "2", "--dataset", "mnist5k")


@pytest.mark.parametrize("url,expected", [
    ("amqp://guest:guest@127.0.0.1:notaport/", "--url: the port of "
                                               "'amqp://127.0.0.1:notaport/' is not a number"),
    ("amqp://guest:guest@127.0.0.1:99999/", "is not a number from 1 to 65535"),
    ("amqp://guest:guest@[::1/", "--url: 'amqp://[::1/' is not a broker URL"),
    ("amqp://.../", "--url: 'amqp://.../': '...' is not a host name"),
    ("amqp://", "--url: 'amqp://' names no broker host"),
    ("amqp://guest:S3CRET@/", "--url: 'amqp:///' names no broker host"),
    ("127.0.0.1", "--url must be an amqp:// or amqps:// URL"),
    ("http://127.0.0.1:15672", "--url is the AMQP broker URL"),
])
def test_a_url_that_names_no_broker_is_refused_naming_url(capsys, url, expected):
    line = worker_error(capsys, "--id", "w", "--url", url)
    assert expected in line and "S3CRET" not in line and "guest:guest" not in line, line


def test_a_bad_url_from_the_environment_is_named_as_such(capsys, monkeypatch):
    monkeypatch.setenv("FEDMQ_URL", "amqp://guest:S3CRET@127.0.0.1:notaport/")
    with pytest.raises(SystemExit) as info:
        main(["worker", "--id", "w"])
    assert info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("fedmq worker: --url (here from $FEDMQ_URL): the port of") and \
        "S3CRET" not in line
