"""The context a `TorchHook` owns: everything that used to be a process-wide global.

    context.local_worker     the worker "me" (PySyft's `hook.local_worker`)
    context.network          the in-process workers, by id (VirtualWorker joins it)
    context.engine           the request engine over the in-process transport
    context.flush_all()      send every client's buffered commands (ordering across workers)
    context.state(key, make) per-context state of extensions (the SMPC primitive store, ...)

Two hooks (or two threads, each with its own hook and workers) in one process never see each
other's workers, objects, buffered commands, pending gets or dealt triples.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from fedmq import principals
from fedmq.engine import RequestEngine
from fedmq.errors import TransportError
from fedmq.transport.local import LocalTransport


class LocalNetwork:
    """The in-process workers of one context, by id: how one in-process worker (or a pointer
    to a pointer) reaches another."""

    def __init__(self, context: "Context") -> None:
        self.context = context
        self._clients: dict[str, Any] = {}

    @property
    def local_worker(self) -> Any:
        return self.context.local_worker

    def add(self, client: Any) -> None:
        self._clients[client.id] = client

    def client(self, worker_id: str) -> Any:
        try:
            return self._clients[worker_id]
        except KeyError:
            raise TransportError(f"no in-process worker with id {worker_id!r}") from None

    def flush_all(self) -> None:
        self.context.flush_all()

    def __contains__(self, worker_id: str) -> bool:
        return worker_id in self._clients


class Context:
    """sender: the name messages say they come from; principal: who this context's clients
    are to in-process workers (fedmq.principals; default "me")."""

    def __init__(self, sender: str = "me", principal: str = principals.LOCAL) -> None:
        self.local_worker: Any = None
        self.transport = LocalTransport(principal=principal)
        self.engine = RequestEngine(self.transport, sender=sender, timeout=None)
        self.network = LocalNetwork(self)
        self._dirty: dict[int, Any] = {}
        self._dirty_lock = threading.Lock()
        #: held while a frame is built from buffered commands and sent (fedmq.client), so
        #: threads sharing this context cannot split a buffer from its send, nor send a call
        #: before the commands it reads (reentrant: an in-process worker handles a frame in
        #: the sending thread, and may send frames of its own)
        self.send_lock = threading.RLock()
        self._state: dict[str, Any] = {}
        self._state_lock = threading.Lock()

    # -- ordering: buffered commands go out before anything else ---------------------------------
    def mark_dirty(self, client: Any) -> None:
        """`client` holds buffered commands (flushed before any other message is sent)."""
        with self._dirty_lock:
            self._dirty[id(client)] = client

    def mark_clean(self, client: Any) -> None:
        with self._dirty_lock:
            self._dirty.pop(id(client), None)

    def flush_all(self) -> None:
        """Send every client's buffered commands (repeats while flushing produces more)."""
        with self.send_lock:
            while self._dirty:
                with self._dirty_lock:
                    clients = list(self._dirty.values())
                    self._dirty.clear()
                for client in clients:
                    client._send_buffer()

    # -- extension state -------------------------------------------------------------------------
    def state(self, key: str, make: Callable[[], Any]) -> Any:
        """Per-context state (an extension's store, a broker connection), made by `make()` on
        first use; thread-safe."""
        value = self._state.get(key)
        if value is None:
            with self._state_lock:
                value = self._state.get(key)
                if value is None:
                    value = self._state[key] = make()
        return value

    def discard(self, key: str) -> None:
        """Forget the state kept under `key` (the next `state(key, ...)` makes it anew)."""
        with self._state_lock:
            self._state.pop(key, None)

    def close(self) -> None:
        """Close every request engine this context holds (its broker connections)."""
        for value in list(self._state.values()):
            if isinstance(value, RequestEngine):
                value.close()
        self.engine.close()

    def __repr__(self) -> str:
        me = getattr(self.local_worker, "id", None)
        return f"<fedmq.Context local_worker={me!r} workers={sorted(self.network._clients)}>"


#: the most recent TorchHook: what `fedmq.hook` and `fedmq.local_worker` answer (PySyft's API,
#: for scripts; a Plan built without an owner belongs to its local worker). fedmq's own code
#: otherwise goes through a pointer's or a worker's context.
_latest_hook: list = []


def set_latest_hook(hook: Any) -> None:
    _latest_hook[:] = [hook]


def latest_hook() -> Any:
    return _latest_hook[0] if _latest_hook else None


def latest_local_worker() -> Any:
    hook = latest_hook()
    return None if hook is None else hook.local_worker
