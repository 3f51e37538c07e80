"""The transport interface: move one encoded frame to a worker, and maybe its reply back.

Transports know frames and worker ids, nothing about messages. Every transport module opens
with the same docstring: what it is, its URL, its features.
"""
from __future__ import annotations

from typing import Optional


class Transport:
    #: short name used in URLs and logs ("local", "amqp")
    name: str = "base"
    #: True when `send` returns without waiting for the worker (pipelining)
    pipelines: bool = False

    def request(self, worker_id: str, frame: bytes, timeout: float | None = None) -> bytes:
        """Deliver `frame` to `worker_id` and return the reply frame."""
        raise NotImplementedError(f"transport {self.name!r} does not implement request()")

    def send(self, worker_id: str, frame: bytes) -> Optional[bytes]:
        """Deliver `frame`; return the reply frame if the transport has it at no cost, else
        None (the reply is not awaited)."""
        raise NotImplementedError(f"transport {self.name!r} does not implement send()")

    def close(self) -> None:
        pass
