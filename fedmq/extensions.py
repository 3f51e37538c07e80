"""Extensions: what plans, SMPC, federated data and federated training add to fedmq, declared.

Each extension module defines one table, `EXTENSION = Extension(...)`: the message handlers
every worker gains, and the methods `TorchHook` adds to tensors, modules, datasets and worker
clients. Nothing
is registered by importing a module; `load_extensions()` (called by `TorchHook`, the worker
service and `fedmq train`) imports the modules named in `BUILTIN` and applies their tables.
Wire records are declared in each extension's `messages` module and listed in its table, so
loading an extension is also what makes its messages decodable.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from fedmq.worker import register_handler, register_light


@dataclass(frozen=True)
class Extension:
    """One extension's declarations (see the module docstring)."""
    name: str
    #: message type -> handler(worker, message) -> reply value, answered by every worker
    handlers: dict[type, Callable[[Any, Any], Any]] = field(default_factory=dict)
    #: message type -> fn(message) -> the values it reads, or None: when those are small, a
    #: service may handle it on its event loop (fedmq.worker.register_light)
    light: dict[type, Callable[[Any], Any]] = field(default_factory=dict)
    #: wire records this extension adds (their codes are registered when they are defined)
    records: tuple[type, ...] = ()
    #: methods TorchHook adds to torch.Tensor, nn.Module and torch.utils.data.Dataset
    tensor_methods: dict[str, Callable] = field(default_factory=dict)
    module_methods: dict[str, Callable] = field(default_factory=dict)
    dataset_methods: dict[str, Callable] = field(default_factory=dict)
    #: methods TorchHook adds to torch.optim.Optimizer (e.g. SMPC's `fix_precision`)
    optimizer_methods: dict[str, Callable] = field(default_factory=dict)
    #: methods TorchHook adds to worker clients (VirtualWorker, AMQPClientWorker)
    worker_methods: dict[str, Callable] = field(default_factory=dict)


#: the extensions fedmq ships: name -> the module whose `EXTENSION` declares it
BUILTIN = {
    "federated": "fedmq.federated.hooks",
    "plans": "fedmq.plans.hooks",
    "smpc": "fedmq.smpc.hooks",
    "fl": "fedmq.fl.hooks",
    "secagg": "fedmq.secagg.hooks",
}

_loaded: dict[str, Extension] = {}
_lock = threading.Lock()


def load_extensions(names: tuple[str, ...] | None = None) -> dict[str, Extension]:
    """Import and apply the named extensions (default: all of `BUILTIN`); idempotent.
    Returns every extension loaded so far, by name. Raises KeyError for an unknown name."""
    with _lock:
        for name in names or tuple(BUILTIN):
            if name in _loaded:
                continue
            extension = importlib.import_module(BUILTIN[name]).EXTENSION
            for message_type, handler in extension.handlers.items():
                register_handler(message_type, handler)
            for message_type, values in extension.light.items():
                register_light(message_type, values)
            _loaded[name] = extension
        return dict(_loaded)


def loaded() -> dict[str, Extension]:
    """The extensions applied so far, by name."""
    return dict(_loaded)
