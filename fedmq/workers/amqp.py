"""AMQPClientWorker: a worker service reached through RabbitMQ, used like a VirtualWorker.

    bob = fedmq.AMQPClientWorker(hook, id="bob", url="amqp://guest:guest@127.0.0.1:5672/")
    x = torch.tensor([1, 2, 3]).send(bob)       # the worker process `fedmq worker --id bob`

Everything a pointer does goes through the same `WorkerClient` as for in-process workers; only
the transport differs (fedmq/transport/amqp.py).
"""
from __future__ import annotations

from typing import Any

from fedmq import messages as m
from fedmq.client import WorkerClient, flush_all
from fedmq.transport.amqp import DEFAULT_TIMEOUT, DEFAULT_URL, AMQPConnection, AMQPTransport, \
    shared_connection


class AMQPNetwork:
    """Workers behind one broker connection, by id (how pointers to pointers and `.move()`
    reach workers from a script or from another worker)."""

    def __init__(self, connection: AMQPConnection, local_worker: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, sender: str = "me") -> None:
        self.connection = connection
        self.local_worker = local_worker
        self.timeout = timeout
        self.sender = sender
        self._clients: dict[str, "AMQPClientWorker"] = {}

    def add(self, client: "AMQPClientWorker") -> None:
        self._clients[client.id] = client

    def client(self, worker_id: str) -> "AMQPClientWorker":
        client = self._clients.get(worker_id)
        if client is None:
            client = AMQPClientWorker(None, worker_id, connection=self.connection, network=self,
                                      timeout=self.timeout)
        return client

    def flush_all(self) -> None:
        flush_all()
        if self.sender != "me":  # a worker relaying: make sure it is enqueued before replying
            self.connection.drain()


class AMQPClientWorker(WorkerClient):
    def __init__(self, hook: Any, id: str, url: str = DEFAULT_URL, *,
                 timeout: float = DEFAULT_TIMEOUT, connection: AMQPConnection | None = None,
                 network: AMQPNetwork | None = None, **_pysyft_options: Any) -> None:
        connection = connection or shared_connection(url)
        if network is None:
            local = getattr(hook, "local_worker", None)
            network = _networks.setdefault((id_of(connection), id_of(local)),
                                           AMQPNetwork(connection, local, timeout))
        super().__init__(id, AMQPTransport(connection, timeout), network, sender=network.sender)
        self.hook = hook
        self.connection = connection
        network.add(self)

    @property
    def _objects(self) -> dict:
        """The worker's objects, fetched (copies; pointers held there are not taken over)."""
        from fedmq.pointers.tensor import pointer_from_ref

        listing = self.call(m.ListObjects())
        return {obj_id: (pointer_from_ref(obj, owner=self, network=self.network, id=obj_id,
                                          gc=False) if isinstance(obj, m.PointerRef) else obj)
                for obj_id, obj in listing.items()}

    @property
    def message_count(self) -> int:
        return self.call(m.WorkerStats())["message_count"]

    def __repr__(self) -> str:
        return f"<AMQPClientWorker id:{self.id} broker:{self.connection._safe_url()}>"


_networks: dict[tuple, AMQPNetwork] = {}


def id_of(obj: Any) -> int:
    return id(obj)
