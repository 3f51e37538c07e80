"""Object and message ids: 128-bit random integers from the OS's CSPRNG.

PySyft drew ids from `random.random()` (about 37 bits, predictable), so one client could read
another's tensors by guessing (PySyft #2432). Guessing a 128-bit id is not a practical attack.
"""
from __future__ import annotations

import secrets


def new_id() -> int:
    """A fresh 128-bit object id."""
    return secrets.randbits(128)
