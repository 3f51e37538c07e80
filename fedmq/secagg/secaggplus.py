"""SecAgg+ (helper A writes this module)."""
from __future__ import annotations

#: message type -> worker handler(session, message)
HANDLERS: dict = {}
#: wire records (codes 110-117)
RECORDS: tuple = ()
