"""Shared fixtures' helpers for tests/test_smpc_*.py (in-process workers only)."""
from __future__ import annotations

import torch

import fedmq

PARTY_IDS = ("bob", "alice", "bill", "carol", "dave")


def make_parties(hook, n: int = 5):
    workers = [fedmq.VirtualWorker(hook, id=i) for i in PARTY_IDS[:n]]
    provider = fedmq.VirtualWorker(hook, id="crypto_provider")
    return workers, provider


def ceil_div(p: torch.Tensor, d: int) -> torch.Tensor:
    return -torch.div(-p, d, rounding_mode="floor")


def assert_rescaled(result: torch.Tensor, product: torch.Tensor, d: int) -> None:
    """The truncation protocol's guarantee: ceil(p/d) or ceil(p/d) - 1, exactly."""
    hi = ceil_div(product, d)
    ok = (result == hi) | (result == hi - 1)
    assert bool(ok.all()), (result[~ok], product[~ok])
