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
from fedmq.pointers import keywords
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


def send(module: nn.Module, *locations: Any, **pysyft: Any) -> nn.Module:
    """Send the model's parameters and buffers to one worker (in one message), in place.
    PySyft 0.2's keywords (`force_send` and the tensor send ones, fedmq/pointers/keywords.py):
    `garbage_collect_data=False` is honoured (dropping the model leaves its tensors on the
    worker); `requires_grad=True` is refused (a sent model's gradients stay with it on the
    worker, `param.grad` points at them); the others are accepted at their defaults only.
    Raises TypeError for any other keyword or value."""
    options = keywords.check("Module.send", pysyft, keywords.MODULE_SEND,
                             honoured=("garbage_collect_data", "requires_grad"))
    if options.get("requires_grad"):
        raise TypeError("Module.send(): requires_grad=True is refused (a sent model's "
                        "gradients stay with it on the worker, and param.grad points at them; "
                        "for split learning move the activations: "
                        "a.move(worker, requires_grad=True))")
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
        if current is not location:
            move(module, location)
    else:
        ids = [new_id() for _ in tensors]
        location.post(m.ObjectMessage([m.StoredObject(i, t) for i, t in zip(ids, tensors)]))
        owner = getattr(location.network, "local_worker", None)
        for t, rid in zip(tensors, ids):
            make_remote(t, location, rid, owner,
                        has_grad=t.requires_grad and t.grad is not None)
    if not options.get("garbage_collect_data", True):
        for t in tensors:  # dropping the model leaves its tensors on the worker
            t._fedmq_finalizer.detach()
    return module


def get(module: nn.Module) -> nn.Module:
    """Bring the model home. From a worker in another process (RabbitMQ) the values arrive
    before get() returns (one GetRequest, one round trip), so stopping that worker afterwards
    loses nothing; from an in-process worker they are fetched the first time anything looks
    at them. Either way the tensors turn local on first touch (parameter.PendingGet), and if
    the model is sent out again before that, nothing travels again (a `send` to the same
    worker: the worker kept its copies), or it goes worker to worker (a `send` or `move`
    elsewhere). The optimizer's state stays on the worker until `optimizer.state_dict()` or
    a local step (fedmq/pointers/optim.py)."""
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


def move(module: nn.Module, destination: Any) -> nn.Module:
    """Move the model worker to worker; its data never passes through the caller. (PySyft
    0.2's `module.move(destination)` took no keywords, so none are accepted.)"""
    location = location_of(module)
    if location is None:
        return send(module, destination)
    if destination is getattr(location.network, "local_worker", None):
        return get(module)
    pending = _pending(module)
    if pending is not None:  # get() called, not carried out: it goes worker to worker
        pending.cancel()
    if destination is location:
        return module
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


def _location(module: nn.Module) -> Any:
    """PySyft 0.2's `model.location`: the worker holding the sent model. A model that is
    home (never sent, or its `get()` called) has none: AttributeError, as PySyft raised.
    An attribute, parameter, buffer or submodule of the model's own named `location` wins."""
    own = module.__dict__
    if "location" in own:
        return own["location"]
    for store in ("_parameters", "_buffers", "_modules"):
        if "location" in own.get(store, ()):
            return own[store]["location"]
    tensors = module_tensors(module)
    location = location_of(module, tensors)
    if location is None or _pending(module, tensors) is not None:
        raise AttributeError("Module has no attribute location, did you already send it to "
                             "some location?")
    return location


def _set_location(module: nn.Module, value: Any) -> None:
    module.__dict__["location"] = value  # a model's own attribute named `location`


def _del_location(module: nn.Module) -> None:
    try:
        del module.__dict__["location"]
    except KeyError:
        raise AttributeError("location") from None


class _Location(property):
    """A property whose `__module__` says it is fedmq's (fedmq.hook re-installs its own)."""


#: `nn.Module.location` (installed by fedmq.hook). TorchScript compiles every property of a
#: module it traces or scripts (torch.jit.frontend.get_class_properties) unless its getter is
#: marked unused: this one is Python-side bookkeeping, never part of a model's computation.
LOCATION = _Location(torch.jit.unused(_location), _set_location, _del_location)
