"""In-process transport: frames go straight to `Worker.handle_frame` in this process.

URL: local://
Features: synchronous; every message is still encoded and decoded, so an in-process run
exercises exactly the bytes a network would carry. The embedded default: no broker needed.
"""
from __future__ import annotations

import threading
from typing import Any

from fedmq.errors import TransportError
from fedmq.transport.base import Transport


class LocalTransport(Transport):
    name = "local"
    pipelines = False

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._lock = threading.RLock()

    def request(self, worker_id: str, frame: bytes, timeout: float | None = None,
                message_type: str = "message") -> bytes:
        if worker_id != self.worker.id:
            raise TransportError(f"local transport of {self.worker.id!r} cannot reach "
                                 f"{worker_id!r}")
        with self._lock:
            return self.worker.handle_frame(frame)

    def send(self, worker_id: str, frame: bytes, on_reply=None, message_type: str = "message"):
        reply = self.request(worker_id, frame)
        if on_reply is not None:
            on_reply(reply)


class LocalNetwork:
    """The in-process workers, by id: how one in-process worker reaches another."""

    def __init__(self) -> None:
        self._clients: dict[str, Any] = {}
        self.local_worker: Any = None

    def add(self, client: Any) -> None:
        self._clients[client.id] = client

    def client(self, worker_id: str) -> Any:
        try:
            return self._clients[worker_id]
        except KeyError:
            raise TransportError(f"no in-process worker with id {worker_id!r}") from None

    def flush_all(self) -> None:
        from fedmq.client import flush_all
        flush_all()

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self._clients
