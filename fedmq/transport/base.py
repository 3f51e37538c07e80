"""The transport interface: move one encoded frame to a worker, and maybe its reply back.

Transports know frames and worker ids, nothing about messages. Every transport module opens
with the same docstring: what it is, its URL, its features.
"""
from __future__ import annotations

from typing import Callable, Optional


class Transport:
    #: short name used in URLs and logs ("local", "amqp")
    name: str = "base"
    #: True when `send` returns without waiting for the worker (pipelining)
    pipelines: bool = False

    def request(self, worker_id: str, frame: bytes, timeout: float | None = None,
                message_type: str = "message") -> bytes:
        """Deliver `frame` to `worker_id` and return the reply frame (`message_type` names the
        message in a timeout error)."""
        raise NotImplementedError(f"transport {self.name!r} does not implement request()")

    def send(self, worker_id: str, frame: bytes,
             on_reply: Optional[Callable[[bytes], None]] = None,
             message_type: str = "message") -> None:
        """Deliver `frame` without waiting; `on_reply`, if given, receives the reply frame
        whenever it arrives (at once for in-process workers)."""
        raise NotImplementedError(f"transport {self.name!r} does not implement send()")

    def close(self) -> None:
        pass
