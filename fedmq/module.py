"""`nn.Module.send / get / move / copy`: a model's parameters and buffers travel in one message.

Sent tensors keep their Python identity (see pointers/parameter.py), so optimizers built
before `send` keep working, and the model's forward runs remotely op by op through pointers.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from fedmq import messages as m
from fedmq.errors import PointerError
from fedmq.ids import new_id
from fedmq.pointers.parameter import PendingGet, is_remote_tensor, make_remote, retarget


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters then buffers, each tensor once."""
    seen: dict[int, torch.Tensor] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen.setdefault(id(t), t)
    return list(seen.values())


def location_of(module: nn.Module, tensors: list[torch.Tensor] | None = None) -> Any:
    """The worker holding the model, or None if it is local (`tensors`: its module_tensors)."""
    tensors = module_tensors(module) if tensors is None else tensors
    remote = [t for t in tensors if is_remote_tensor(t)]
    if not remote:
        return None
    if len(remote) != len(tensors):
        raise PointerError("part of this model is remote and part is local")
    loc = remote[0]._fedmq_location
    if any(t._fedmq_location is not loc for t in remote):
        raise PointerError("this model's tensors are spread over several workers")
    return loc


def send(module: nn.Module, *locations: Any, **_ignored: Any) -> nn.Module:
    if len(locations) != 1:
        raise NotImplementedError("a model is sent to one worker at a time; use .share() to "
                                  "split it across workers")
    location = locations[0]
    tensors = module_tensors(module)
    pending = _pending(module, tensors)
    if pending is not None:  # get() not carried out yet: the model never has to come home
        pending.cancel()
    current = location_of(module, tensors)
    if current is not None:
        return module if current is location else move(module, location)
    ids = [new_id() for _ in tensors]
    location.post(m.ObjectMessage([m.StoredObject(i, t) for i, t in zip(ids, tensors)]))
    owner = getattr(location.network, "local_worker", None)
    for t, rid in zip(tensors, ids):
        make_remote(t, location, rid, owner, has_grad=t.requires_grad and t.grad is not None)
    return module


def get(module: nn.Module) -> nn.Module:
    """Bring the model home. Carried out lazily, like a non-blocking device copy: the
    parameters arrive (in one message) the first time anything looks at them or at the
    worker's store; if the model is sent out again before that, nothing travels at all (a
    `send` to the same worker), or it goes worker to worker (a `send` elsewhere)."""
    tensors = module_tensors(module)
    location = location_of(module, tensors)
    if location is None or _pending(module, tensors) is not None:
        return module
    PendingGet(location, tensors)
    return module


def fetch(module: nn.Module) -> nn.Module:
    """`get()` carried out now."""
    get(module)
    pending = _pending(module)
    if pending is not None:
        pending.carry_out()
    return module


def _pending(module: nn.Module, tensors: list[torch.Tensor] | None = None) -> PendingGet | None:
    for t in (module_tensors(module) if tensors is None else tensors):
        return t._fedmq_pending if is_remote_tensor(t) else None
    return None


def move(module: nn.Module, destination: Any, **_ignored: Any) -> nn.Module:
    """Move the model worker to worker; its data never passes through the caller."""
    location = location_of(module)
    if location is None:
        return send(module, destination)
    if destination is location:
        return module
    if destination is getattr(location.network, "local_worker", None):
        return get(module)
    tensors = module_tensors(module)
    location.call(m.ForwardObjects([t._fedmq_id for t in tensors], destination.id))
    for t in tensors:
        retarget(t, destination)
    return module


def copy_module(module: nn.Module) -> nn.Module:
    pending = _pending(module)
    if pending is not None:
        pending.carry_out()
    if location_of(module) is not None:
        raise PointerError("copy() a model before sending it (this one is on a worker)")
    return copy.deepcopy(module)
