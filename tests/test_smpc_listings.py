"""The seed's §9 listings (tests/seed/s9_*.py), run as written, against what they print.

The §9.3 listings run twice (the `transport` fixture of tests/conftest.py): in-process, and with
every `sy.VirtualWorker(...)` a client of a `fedmq worker` service over RabbitMQ. bob and alice
are the session's services; crypto_provider and bill are started here for this module.
"""
from __future__ import annotations

import re

import pytest

from listings import run_listing

#: services the §9 listings need besides the session's bob and alice
EXTRA_SERVICES = ("crypto_provider", "bill")


@pytest.fixture(scope="module")
def smpc_services(worker_processes):
    with worker_processes.running(*EXTRA_SERVICES):
        yield


@pytest.fixture
def factory(request, worker_factory):
    """`worker_factory` (None in-process), with the extra services running for "amqp"."""
    if worker_factory is not None:
        request.getfixturevalue("smpc_services")
    return worker_factory

AST_REPR = re.compile(r"\(Wrapper\)>\[AdditiveSharingTensor\]\n"
                      r"(\t-> \[PointerTensor \| me:\d+ -> (\w+):\d+\]\n){3}"
                      r"\t\*crypto provider: None\*")


def test_s9_1_plain_python_shares():
    out, ns = run_listing("s9_1_encrypt_decrypt.py")
    lines = out.strip().splitlines()
    assert len(eval(lines[0])) == 3
    assert lines[1] == "25"
    assert lines[2] != "25"  # two shares of three tell nothing
    assert lines[3] == "30"


def test_s9_3_share_and_get(factory):
    out, ns = run_listing("s9_3_share_get.py", factory)
    assert AST_REPR.match(out), out
    assert out.strip().splitlines()[-1] == "tensor([25])"
    for worker in (ns["bob"], ns["alice"], ns["bill"]):
        assert worker._objects == {}  # .get() deleted the shares


def test_s9_3_introspection(factory):
    out, ns = run_listing("s9_3_introspection.py", factory)
    lines = out.strip().splitlines()
    assert lines[0] == "{}"
    assert re.fullmatch(r"\{\d+: tensor\(\[-?\d+\]\)\}", lines[1])
    assert lines[2] != "tensor([25])"  # bob's share is not the secret
    assert lines[3] == "tensor([25])"
    assert ns["Q"] == 2 ** 64


def test_s9_3_encrypted_addition(factory):
    out, _ = run_listing("s9_3_encrypted_add.py", factory)
    assert out.strip().splitlines() == ["tensor([30])", "tensor([20])"]


def test_s9_3_encrypted_multiplication_and_matmul(factory):
    out, _ = run_listing("s9_3_encrypted_mul.py", factory)
    assert out.strip().splitlines() == ["tensor([125])", "tensor([[2, 4],", "        [6, 8]])"]


def test_s9_3_encrypted_comparison_and_max(factory):
    out, _ = run_listing("s9_3_encrypted_comparison.py", factory)
    assert out.strip().splitlines() == ["tensor([1])", "tensor([0])", "tensor([0])",
                                        "tensor([4])", "tensor([4, 3])"]
