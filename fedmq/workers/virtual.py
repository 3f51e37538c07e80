"""VirtualWorker: a worker living in this process, reached through the local transport.

It is both the worker (store, `handle`) and the client pointers talk to; every message to it is
encoded and decoded exactly as over RabbitMQ, through the hook's request engine.
"""
from __future__ import annotations

from typing import Any

from fedmq.client import WorkerClient
from fedmq.ids import new_id
from fedmq.policy import Policy
from fedmq.worker import Worker
from fedmq.workers.options import check_worker_options


class VirtualWorker(WorkerClient):
    """An in-process worker. `data` is stored as the data owner's (with its `tags`);
    `policy` says who may do what here (default: `Policy.open(owner=the hook's principal)`,
    the seed's open behaviour: every principal may find, compute on and fetch anything it
    sees; each principal's own objects stay its own)."""

    def __init__(self, hook: Any, id: str, data: tuple | list = (), network: Any = None,
                 policy: Policy | None = None, **_pysyft_options: Any) -> None:
        check_worker_options("VirtualWorker", _pysyft_options,
                             ("hook", "id", "data", "network", "policy"))
        network = network if network is not None else hook.network
        context = network.context
        self.hook = hook
        self.worker = Worker(id, network, policy or Policy.open(context.transport.principal))
        context.transport.add(self.worker)
        super().__init__(id, context.engine, network)
        network.add(self)
        for obj in data:
            self.worker.store.put(new_id(), obj, getattr(obj, "tags", ()) or (),
                                  getattr(obj, "description", None))

    def connect(self, hook: Any) -> "VirtualWorker":
        """This same in-process worker as `hook`'s clients reach it: their messages act for
        `hook.principal` (a second hook with another principal is a second user of the
        worker, as a second broker user is over RabbitMQ)."""
        network = hook.network
        other = VirtualWorker.__new__(VirtualWorker)
        other.hook = hook
        other.worker = self.worker
        network.context.transport.add(self.worker)
        WorkerClient.__init__(other, self.id, network.context.engine, network)
        network.add(other)
        return other

    @property
    def _objects(self) -> dict:
        """The worker's store as {id: object} (PySyft's VirtualWorker attribute)."""
        self.carry_out_pending_gets()
        self.flush()
        principal = self.engine.transport.principal if hasattr(self.engine.transport,
                                                               "principal") else None
        store = self.worker.store
        return dict(store.view(principal).items() if principal else store.items())

    @property
    def message_count(self) -> int:
        return self.worker.message_count

    def __repr__(self) -> str:
        return f"<VirtualWorker id:{self.id} #objects:{len(self.worker.store)}>"
