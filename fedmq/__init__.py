"""fedmq: remote execution, federated learning and SMPC for PyTorch, on RabbitMQ.

The data path, top to bottom (each a small module; imports only point down):
    hook.py              TorchHook: adds .send/.get/.move/... to tensors and modules, loads
                         the extensions (extensions.py) and owns a Context (context.py)
    pointers/            PointerTensor; dispatch.py turns torch calls into Commands
    shapes.py            result shapes on meta tensors (pointers, plans, SMPC), one LRU cache
    module.py            model.send()/get()/move()/copy()
    client.py            WorkerClient: what a pointer's .location is (call / post / buffers)
    engine.py            RequestEngine: envelopes, the pending-reply table, timeouts, lost
                         connections; the one way anything sends to a worker
    transport/           local (in-process) and amqp: move frames, nothing else (amqp also
                         checks a worker is served; chunks.py cuts and joins big frames)
    messages.py          the message dataclasses
    serde/               the wire format (msgpack + raw tensor bytes; never pickle)
    worker.py            Worker.handle_frame(frame, login) -> reply frame, the same for every
                         transport; each message handled in a Session for its principal
    principals.py        who a message acts for (AMQP user_id, or the hook's principal)
    policy.py, store.py  the data owner's policy (grants, release, quotas); the store, one
                         space per principal, the owner's data private
    dataset_info.py      what a worker tells about its data (samples, per-label counts)
    execution.py, ops/   the worker's one execution primitive and the op allowlist
    service.py           `fedmq worker`: a Worker consuming its RabbitMQ queue
Built on that (each declares what it adds in its hooks.py `EXTENSION` table):
    federated/, data/    FederatedDataset, FederatedDataLoader, .federate; local data sources
    sandbox.py, grid.py  create_sandbox, PrivateGridNetwork
    plans/               func2plan, Plan, PointerPlan, Protocol (traced op lists, one message)
    smpc/                fix_precision, share, Beaver products, comparisons (crypto provider)
    fl/, strategy/       federated rounds: Fit/Evaluate on the workers, the asyncio
                         coordinator (`fedmq train`), FedAvg/FedProx/FedAdam/.../FedBuff
    secagg/, privacy/    private rounds: SecAgg+ and additive-sharing aggregation, DP-FedAvg
                         and DP-SGD (Opacus) with an accountant
"""
import importlib
import sys
import types

from fedmq.errors import (AccessDeniedError, ConnectionBlocked, ConnectionLost,
                          ConnectionLostError, FedmqError, FrameTooLargeError,
                          ObjectNotFoundError, QuotaExceededError,
                          OpNotAllowedError, PointerError, RemoteCancelledError, RemoteError,
                          RemoteExecutionError, ReplyTimeout, SerdeError, TimeLimitError,
                          TransportError, WorkerNotFoundError, WorkerRestartedError)

#: names imported on first use, so `import fedmq` (and `fedmq --help`) does not import torch
_LAZY = {
    "TorchHook": "fedmq.hook", "PointerTensor": "fedmq.pointers",
    "RemoteParameter": "fedmq.pointers", "VirtualWorker": "fedmq.workers",
    "AMQPClientWorker": "fedmq.workers.amqp",
    "BaseDataset": "fedmq.federated", "FederatedDataset": "fedmq.federated",
    "FederatedDataLoader": "fedmq.federated", "create_sandbox": "fedmq.sandbox",
    "PrivateGridNetwork": "fedmq.grid", "func2plan": "fedmq.plans", "Plan": "fedmq.plans",
    "Protocol": "fedmq.plans", "PointerPlan": "fedmq.plans", "Policy": "fedmq.policy",
    "TrainConfig": "fedmq.fl.train_config",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedmq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"hook", "local_worker"})


class _FedmqModule(types.ModuleType):
    """`fedmq.hook` is the most recent TorchHook and `fedmq.local_worker` its worker "me"
    (PySyft's `sy.hook`, `sy.local_worker`), not the submodules of those names: the import
    system's assignment of the submodule `fedmq.hook` is ignored."""

    @property
    def hook(self):
        from fedmq.context import latest_hook
        return latest_hook()

    @hook.setter
    def hook(self, value) -> None:  # the submodule fedmq.hook, set by the import system
        pass

    @property
    def local_worker(self):
        latest = self.hook
        return None if latest is None else latest.local_worker


sys.modules[__name__].__class__ = _FedmqModule

__version__ = "0.1.0"

__all__ = [
    "AMQPClientWorker", "AccessDeniedError", "ConnectionBlocked", "ConnectionLost",
    "ConnectionLostError", "FedmqError", "FrameTooLargeError", "Policy", "QuotaExceededError",
    "ObjectNotFoundError", "OpNotAllowedError", "PointerError", "PointerTensor",
    "RemoteCancelledError", "RemoteError", "RemoteExecutionError", "RemoteParameter",
    "ReplyTimeout", "SerdeError", "TimeLimitError", "TorchHook", "TrainConfig",
    "TransportError", "VirtualWorker", "WorkerNotFoundError", "WorkerRestartedError", "hook",
    "local_worker",
]
