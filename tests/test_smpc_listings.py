"""The seed's §9 listings (tests/seed/s9_*.py), run as written, against what they print."""
from __future__ import annotations

import re

from listings import run_listing

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


def test_s9_3_share_and_get():
    out, ns = run_listing("s9_3_share_get.py")
    assert AST_REPR.match(out), out
    assert out.strip().splitlines()[-1] == "tensor([25])"
    for worker in (ns["bob"], ns["alice"], ns["bill"]):
        assert worker._objects == {}  # .get() deleted the shares


def test_s9_3_introspection():
    out, ns = run_listing("s9_3_introspection.py")
    lines = out.strip().splitlines()
    assert lines[0] == "{}"
    assert re.fullmatch(r"\{\d+: tensor\(\[-?\d+\]\)\}", lines[1])
    assert lines[2] != "tensor([25])"  # bob's share is not the secret
    assert lines[3] == "tensor([25])"
    assert ns["Q"] == 2 ** 64


def test_s9_3_encrypted_addition():
    out, _ = run_listing("s9_3_encrypted_add.py")
    assert out.strip().splitlines() == ["tensor([30])", "tensor([20])"]


def test_s9_3_encrypted_multiplication_and_matmul():
    out, _ = run_listing("s9_3_encrypted_mul.py")
    assert out.strip().splitlines() == ["tensor([125])", "tensor([[2, 4],", "        [6, 8]])"]


def test_s9_3_encrypted_comparison_and_max():
    out, _ = run_listing("s9_3_encrypted_comparison.py")
    assert out.strip().splitlines() == ["tensor([1])", "tensor([0])", "tensor([0])",
                                        "tensor([4])", "tensor([4, 3])"]
