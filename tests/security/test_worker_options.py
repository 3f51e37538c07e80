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
