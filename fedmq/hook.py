"""`TorchHook(torch)`: adds fedmq's methods to tensors and modules, and creates the local
worker "me".

It only *adds* methods that torch does not have (`send`, `get`, `move`, `copy`, `tag`,
`describe` on tensors; `send`, `get`, `move`, `copy` on modules); no torch function is replaced,
so plain PyTorch code runs exactly as before and pays nothing. Remote behaviour comes from the
pointer classes' `__torch_function__`, not from patching torch.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from fedmq.client import WorkerClient
from fedmq import messages as m
from fedmq import module as module_ops
from fedmq.context import Context, set_latest_hook
from fedmq.extensions import load_extensions
from fedmq.ids import new_id
from fedmq.pointers import keywords, optim, split
from fedmq.pointers.tensor import PointerTensor, one_location
from fedmq.principals import LOCAL
from fedmq.runtime import tune_malloc
from fedmq.workers.virtual import VirtualWorker


# -- tensor methods (a PointerTensor overrides each of them) -------------------------------------

def tensor_send(self: torch.Tensor, *locations: Any, **pysyft: Any):
    """Send this tensor to a worker and return a pointer to it there. PySyft's keywords
    (fedmq/pointers/keywords.py): `garbage_collect_data` and `requires_grad` (split learning,
    fedmq/pointers/split.py) are honoured, the others accepted at their defaults only."""
    options = keywords.check("Tensor.send", pysyft, keywords.TENSOR_SEND,
                             honoured=("garbage_collect_data", "requires_grad"))
    location = one_location(locations)
    rid = new_id()
    tags = sorted(getattr(self, "tags", None) or ())
    description = getattr(self, "description", None)
    value = split.sendable(self, options.get("requires_grad", False))
    location.post(m.ObjectMessage([m.StoredObject(rid, value, tags, description)]))
    pointer = PointerTensor(location, rid, tuple(self.shape), self.dtype, value.requires_grad,
                            owner=getattr(location.network, "local_worker", None), tags=tags,
                            description=description)
    if not options.get("garbage_collect_data", True):
        pointer.garbage_collect_data = False
    if options.get("requires_grad") and value is self:
        split.link(pointer, self)
    return pointer


def tensor_get(self: torch.Tensor) -> torch.Tensor:
    """A local tensor is already here."""
    return self


def tensor_move(self: torch.Tensor, location: Any, **pysyft: Any):
    """A local tensor's move is its send (PySyft 0.2); `requires_grad` as in tensor_send."""
    keywords.check("Tensor.move", pysyft, keywords.MOVE, honoured=("requires_grad",))
    return tensor_send(self, location, **pysyft)


def tensor_copy(self: torch.Tensor) -> torch.Tensor:
    return self.clone()


def tensor_tag(self: torch.Tensor, *tags: str) -> torch.Tensor:
    """Add search tags (they travel with the tensor when it is sent)."""
    current = getattr(self, "tags", None) or set()
    self.tags = set(current) | set(tags)
    return self


def tensor_describe(self: torch.Tensor, description: str) -> torch.Tensor:
    self.description = description
    return self


TENSOR_METHODS = {"send": tensor_send, "get": tensor_get, "move": tensor_move,
                  "copy": tensor_copy, "tag": tensor_tag, "describe": tensor_describe}
MODULE_METHODS = {"send": module_ops.send, "get": module_ops.get, "move": module_ops.move,
                  "copy": module_ops.copy_module, "location": module_ops.LOCATION}

_installed = False


def install() -> None:
    """Load the extensions (fedmq.extensions) and add fedmq's methods and theirs to
    torch.Tensor, nn.Module, Dataset and torch.optim.Optimizer (idempotent). Raises
    RuntimeError rather than replace a method torch itself defines."""
    global _installed
    if _installed:
        return
    extensions = load_extensions().values()
    optim.install()  # optimizers on sent models: one Command per step, not one per parameter
    tables = ((torch.Tensor, [TENSOR_METHODS, *(e.tensor_methods for e in extensions)]),
              (nn.Module, [MODULE_METHODS, *(e.module_methods for e in extensions)]),
              (Dataset, [e.dataset_methods for e in extensions]),
              (torch.optim.Optimizer, [e.optimizer_methods for e in extensions]),
              (WorkerClient, [e.worker_methods for e in extensions]))
    for cls, method_tables in tables:
        for methods in method_tables:
            for name, fn in methods.items():
                existing = cls.__dict__.get(name)
                if existing is not None and \
                        getattr(existing, "__module__", "").startswith("fedmq"):
                    setattr(cls, name, fn)
                    continue
                if hasattr(cls, name):
                    raise RuntimeError(f"torch already defines {cls.__name__}.{name}; fedmq "
                                       f"will not replace it")
                setattr(cls, name, fn)
    _installed = True


class TorchHook:
    """`hook = fedmq.TorchHook(torch)`: install fedmq's methods and create the worker "me".

    Each hook owns a `fedmq.context.Context`: its in-process workers, its broker connections,
    its buffered commands and its extensions' state. Two hooks in one process are independent.
    `fedmq.hook` and `fedmq.local_worker` name the most recent hook and its worker (PySyft's
    `sy.local_worker`), for scripts; fedmq itself never reads them.

    `principal` is who this hook's clients are to in-process workers (fedmq.principals; the
    seed's "me" by default): a worker created with another hook sees it as a stranger."""

    def __init__(self, torch_module: Any = torch, local_worker: Any = None,
                 is_client: bool = True, verbose: bool = False,
                 principal: str = LOCAL) -> None:
        install()
        tune_malloc()
        self.torch = torch_module
        #: who this hook's clients are to in-process workers (over RabbitMQ: the broker login)
        self.principal = principal
        self.context = Context(principal=principal)
        self.network = self.context.network
        self.local_worker = local_worker or VirtualWorker(self, id="me")
        self.local_worker.is_client_worker = is_client
        self.context.local_worker = self.local_worker
        set_latest_hook(self)

    def __repr__(self) -> str:
        return f"<TorchHook local_worker={self.local_worker.id!r}>"
