"""AMQPClientWorker: a worker service reached through RabbitMQ, used like a VirtualWorker.

    bob = fedmq.AMQPClientWorker(hook, id="bob", url="amqp://guest:guest@127.0.0.1:5672/")
    x = torch.tensor([1, 2, 3]).send(bob)       # the worker process `fedmq worker --id bob`

Everything a pointer does goes through the same `WorkerClient` and request engine as for
in-process workers; only the transport differs (fedmq/transport/amqp.py). The clients of one
hook share one connection per broker URL (`amqp_engine`).
"""
from __future__ import annotations

import time
from typing import Any

from fedmq import messages as m
from fedmq.client import WorkerClient
from fedmq.context import Context
from fedmq.engine import DEFAULT_TIMEOUT, RequestEngine
from fedmq.errors import WorkerNotFoundError
from fedmq.transport.chunks import check_chunk_size
from fedmq.workers.options import check_worker_options

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def amqp_engine(context: Context, url: str, *, chunk_size: int | None = None,
                persistent: bool | None = None) -> RequestEngine:
    """The request engine over `context`'s RabbitMQ connection to `url`: made on first use and
    shared by every AMQPClientWorker of that context with that URL (one connection, one reply
    consumer). A connection made with `persistent=False` publishes transient frames without
    publisher confirms. Raises TransportError when the broker cannot be reached."""
    # aio-pika is imported only when a broker is used: `import fedmq` stays light
    from fedmq.transport.amqp import CHUNK_SIZE, AMQPTransport

    def connect() -> RequestEngine:
        transport = AMQPTransport(url, chunk_size=chunk_size or CHUNK_SIZE,
                                  connection_name="fedmq client",
                                  persistent=True if persistent is None else persistent)
        return RequestEngine(transport, timeout=DEFAULT_TIMEOUT)

    key = f"amqp {url} {chunk_size}"
    engine = context.state(key, connect)
    if engine.closed:  # closed by its user: a new connection
        context.discard(key)
        engine = context.state(key, connect)
    return engine


class AMQPNetwork:
    """Workers behind one broker connection, by id (how pointers to pointers and `.move()`
    reach workers from a script or from another worker)."""

    def __init__(self, engine: RequestEngine, context: Context,
                 timeout: float | None = DEFAULT_TIMEOUT, relaying: bool = False) -> None:
        self.engine = engine
        self.context = context
        self.timeout = timeout
        #: a worker service relaying for its callers drains before it replies
        self.relaying = relaying
        self._clients: dict[str, WorkerClient] = {}

    @property
    def local_worker(self) -> Any:
        return self.context.local_worker

    def add(self, client: WorkerClient) -> None:
        self._clients[client.id] = client

    def client(self, worker_id: str) -> WorkerClient:
        client = self._clients.get(worker_id)
        if client is None:
            client = AMQPClientWorker(None, worker_id, network=self, timeout=self.timeout)
        return client

    def flush_all(self) -> None:
        self.context.flush_all()
        if self.relaying:  # what it relayed is enqueued before the worker replies
            self.engine.drain()


class AMQPClientWorker(WorkerClient):
    def __init__(self, hook: Any, id: str, url: str = DEFAULT_URL, *,
                 timeout: float | None = DEFAULT_TIMEOUT, network: AMQPNetwork | None = None,
                 chunk_size: int | None = None, persistent: bool | None = None,
                 **_pysyft_options: Any) -> None:
        """A worker served by a `fedmq worker --id <id>` service on the broker at `url`.
        The hook's clients for one URL share one connection, which these set: `chunk_size`
        (bytes, at least 4 KiB; default 64 MiB) is how it splits big frames, and must stay
        below the broker's max_message_size; `persistent` (default True) publishes frames so
        that those waiting in a worker's queue survive a broker restart, with publisher
        confirms (False: transient, a little faster; without confirms when it is the first
        client of the connection). PySyft's other keywords are honoured or refused
        (fedmq.workers.options); any other keyword is a TypeError."""
        check_worker_options("AMQPClientWorker", _pysyft_options,
                             ("hook", "id", "url", "timeout", "network", "chunk_size",
                              "persistent"), remote=True)
        if network is None:
            context = getattr(hook, "context", None) or Context()
            engine = amqp_engine(context, url, persistent=persistent)
            key = f"amqp-network {url}"
            network = context.state(key, lambda: AMQPNetwork(engine, context, timeout))
            if network.engine is not engine:  # its connection was closed: a new one
                context.discard(key)
                network = context.state(key, lambda: AMQPNetwork(engine, context, timeout))
        super().__init__(id, network.engine, network, timeout=timeout)
        transport = network.engine.transport
        if chunk_size is not None:
            transport.chunk_size = check_chunk_size(chunk_size)
        if persistent is not None:
            transport.persistent = bool(persistent)
        self.hook = hook
        network.add(self)

    def wait_until_served(self, timeout: float = 60.0, poll: float = 0.2) -> "AMQPClientWorker":
        """Wait until a `fedmq worker --id <id>` service consumes this worker's queue and
        answers (a worker process just started, say). Returns self; raises
        WorkerNotFoundError with the last reason after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call(m.ObjectsCount(), timeout=max(0.1, deadline - time.monotonic()))
                return self
            except WorkerNotFoundError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(poll)

    @property
    def _objects(self) -> dict:
        """The worker's objects, fetched (copies; pointers held there are not taken over)."""
        listing = self.call(m.ListObjects())
        return {obj_id: (m.adopt(obj, owner=self, network=self.network, id=obj_id, gc=False)
                         if isinstance(obj, m.PointerRef) else obj)
                for obj_id, obj in listing.items()}

    @property
    def message_count(self) -> int:
        return self.call(m.WorkerStats())["message_count"]

    def __repr__(self) -> str:
        return f"<AMQPClientWorker id:{self.id} broker:{self.engine.transport.describe()}>"
