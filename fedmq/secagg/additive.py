"""Additive-sharing aggregation (helper C writes this module)."""
from __future__ import annotations

#: message type -> worker handler(session, message)
HANDLERS: dict = {}
#: wire records (codes 118-121)
RECORDS: tuple = ()
