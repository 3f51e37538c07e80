"""Split learning: gradients flow back across `move(w, requires_grad=True)` (PySyft 0.2).

`a.move(bob, requires_grad=True)` on a pointer to activations on alice copies them worker to
worker (ForwardObjects, keep=True: alice keeps her copy and its autograd graph); the copy on
bob is a leaf that requires grad, and a *gradient link* (bob's copy -> alice's) is kept on
this client. When a `backward()` dispatched to bob reports that the copy now has a gradient
(the reply to Tensor.backward lists the stored leaves with one), the gradient is cloned on
bob, moved bob -> alice (ForwardObjects: it never passes through this client) and
`alice_copy.backward(gradient)` runs on alice, which may push further links (a chain of
parts). Only existing messages are used (Command, ForwardObjects, GetRequest).

The origin may also be local: `t.send(bob, requires_grad=True)` / `t.move(bob,
requires_grad=True)` on a local tensor of this client's graph: bob's gradient is fetched and
`t.backward(gradient)` runs here. And `ptr.move(me, requires_grad=True)` brings a copy home
with a hook that sends its gradient back to the worker's copy and runs backward there.

A link is used once: the backward that reaches the copy pushes its gradient and drops the
link (one forward, one backward per batch, as split learning runs). Until then the link
keeps both copies alive, even if the pointer to bob's copy is dropped (the graph on bob
still uses it).
"""
from __future__ import annotations

from typing import Any

import torch

_LINKS = "_fedmq_grad_links"


def link(destination_pointer: Any, origin: Any) -> None:
    """After a backward on the destination, push the destination's gradient to `origin` (a
    local tensor, or a pointer on another worker)."""
    location = destination_pointer.location
    links = location.__dict__.setdefault(_LINKS, {})
    links[destination_pointer.id_at_location] = (destination_pointer, origin)


def sendable(tensor: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """What `tensor.send(w, requires_grad=...)` stores: the tensor itself (its copy on the
    worker requires grad if it does); with requires_grad=True and a tensor that does not
    require grad, a detached copy that does (the worker's copy is a leaf either way)."""
    if requires_grad and not tensor.requires_grad:
        return tensor.detach().requires_grad_(True)
    return tensor


def has_links(location: Any) -> bool:
    return bool(location.__dict__.get(_LINKS))


def push_gradients(location: Any, ids_with_grad: Any) -> None:
    """Called by the dispatch after `Tensor.backward` ran on `location`."""
    links = location.__dict__.get(_LINKS)
    if not links:
        return
    for rid in list(ids_with_grad or ()):
        entry = links.pop(rid, None)
        if entry is not None:
            _push(*entry)


def _push(destination: Any, origin: Any) -> None:
    if destination._consumed:  # fetched with .get() since: its gradient came home too
        return
    grad_pointer = type(destination)(destination.location, destination.id_at_location,
                                     destination.shape_local, destination.dtype_local,
                                     False, owner=destination.owner, attr="grad", gc=False)
    if getattr(type(origin), "_fedmq_kind", None) is None:  # a local tensor of this graph
        origin.backward(grad_pointer.get())
        return
    gradient = grad_pointer.clone()  # a stored copy on the destination worker
    gradient = gradient.move(origin.location)  # worker to worker
    origin.backward(gradient)


def local_copy_with_hook(pointer: Any, value: torch.Tensor) -> torch.Tensor:
    """`ptr.move(me, requires_grad=True)`: `value` (fetched, the worker keeps its copy
    `pointer`) becomes a leaf whose gradient is sent back and backpropagated on the worker."""
    value = value.detach().requires_grad_(True)

    def send_back(grad: torch.Tensor) -> None:
        pointer.backward(grad.send(pointer.location))

    value.register_hook(send_back)
    return value
