"""The client side of a worker: what a pointer's `.location` is.

`WorkerClient.call(msg)` sends a message and returns the reply's value (raising the worker's
error as a fedmq exception); `post(msg)` sends a message whose result stays remote, without
waiting when the transport can pipeline. Both go through a `Transport` (fedmq/transport), which
moves encoded frames and nothing else.

Pointers that are garbage collected call `release(id)`; the ids are deleted remotely in one
list attached to the next message's envelope (or sent by `flush()`), so GC never sends from
inside a finalizer and never costs a message of its own in a loop.
"""
from __future__ import annotations

import collections
import threading
import weakref
from typing import Any

from fedmq import messages as m, serde
from fedmq.errors import remote_error_from


class WorkerClient:
    #: the transport moving this client's frames (fedmq.transport.base.Transport)
    transport: Any

    def __init__(self, id: str, transport: Any, network: Any = None, sender: str = "me") -> None:
        self.id = id
        self.transport = transport
        self.network = network
        self.sender = sender
        self._pending_deletes: collections.deque[int] = collections.deque()
        self._lock = threading.RLock()
        #: remote parameters of sent models, by remote id (for gradient bookkeeping)
        self._remote_params: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    # -- sending ---------------------------------------------------------------------------------
    def call(self, message: Any, *, sender: str | None = None, timeout: float | None = None) -> Any:
        """Send `message`, wait for the reply, return its value or raise the worker's error."""
        frame = self._frame(message, sender)
        reply = serde.decode(self.transport.request(self.id, frame, timeout=timeout))
        return self._value(reply, message)

    def post(self, message: Any, *, sender: str | None = None) -> None:
        """Send a message whose result stays on the worker. Transports that can pipeline
        return at once (errors then surface at the next sync point); the in-process transport
        has the reply anyway and raises right here."""
        frame = self._frame(message, sender)
        reply_frame = self.transport.send(self.id, frame)
        if reply_frame is not None:
            self._value(serde.decode(reply_frame), message)

    def _frame(self, message: Any, sender: str | None) -> bytes:
        return serde.encode(m.Envelope(m.WIRE_VERSION, sender or self.sender, message,
                                       release=self._take_pending()))

    def _take_pending(self) -> list[int]:
        ids = []
        while self._pending_deletes:
            try:
                ids.append(self._pending_deletes.popleft())
            except IndexError:  # emptied by another thread
                break
        return ids

    def _value(self, reply: Any, message: Any) -> Any:
        if not isinstance(reply, m.Reply):
            raise serde.SerdeError(f"worker {self.id!r} answered with "
                                   f"{type(reply).__name__}, not a Reply")
        if reply.error is not None:
            err = reply.error
            raise remote_error_from(err.code, err.message, err.worker or self.id,
                                    err.op or getattr(message, "op", None))
        return reply.value

    # -- garbage collection of remote objects ----------------------------------------------------
    def release(self, obj_id: int) -> None:
        """Called from finalizers (any thread): delete `obj_id` remotely soon."""
        self._pending_deletes.append(obj_id)

    def flush(self) -> None:
        """Send pending deletes now (they otherwise ride along with the next message)."""
        ids = self._take_pending()
        if ids:
            frame = serde.encode(m.Envelope(m.WIRE_VERSION, self.sender, m.DeleteObjects(ids)))
            self.transport.send(self.id, frame)

    # -- conveniences every worker answers --------------------------------------------------------
    def objects_count(self) -> int:
        return self.call(m.ObjectsCount())

    def clear_objects(self) -> "WorkerClient":
        self.call(m.ClearObjects())
        return self

    def search(self, *query: Any) -> list:
        """Pointers to every object on this worker carrying all the tags in `query`
        (a list, or tags as arguments). Found pointers do not delete their object when dropped."""
        from fedmq.pointers.tensor import pointer_from_ref

        items: list = []
        for q in query:
            items.extend(q if isinstance(q, (list, tuple)) else [q])
        refs = self.call(m.SearchRequest(items))
        owner = getattr(self.network, "local_worker", None)
        return [pointer_from_ref(ref, owner=owner, network=self.network, gc=False)
                for ref in refs]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id:{self.id}>"
