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

A link lasts as long as the destination's copy can still receive gradient: as long as the
pointer to it, or any pointer computed from it (they carry it along, see `inherit`), is
alive on this client. Each backward that reaches the copy pushes only what it added to the
copy's gradient (the worker keeps what was pushed so far), so a second backward through the
same copy (`retain_graph=True`, two losses, the same activation moved twice) accumulates into
the origin exactly as plain PyTorch does; the origin's backward gets the same `retain_graph`,
so a second backward without it fails on the origin's worker as torch fails (its graph was
freed). When the last pointer that can reach the copy is garbage collected the link is
dropped, and with it the source's copy (evaluation forwards that never backpropagate leak
nothing). Setting the copy's `.grad` by hand between two backwards is not seen by the link.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

_LINKS = "_fedmq_grad_links"
_KEEP = "_fedmq_keep"


class _Link:
    """Destination copy (its id, shape, dtype, owner) -> origin; `pushed`: the part of the
    destination's gradient already pushed (a pointer on the destination, or a local tensor)."""
    __slots__ = ("rid", "shape", "dtype", "owner", "origin", "pushed", "__weakref__")

    def __init__(self, destination_pointer: Any, origin: Any) -> None:
        self.rid = destination_pointer.id_at_location
        self.shape = destination_pointer.shape_local
        self.dtype = destination_pointer.dtype_local
        self.owner = destination_pointer.owner
        self.origin = origin
        self.pushed = None


def link(destination_pointer: Any, origin: Any) -> None:
    """After a backward on the destination, push the destination's gradient to `origin` (a
    local tensor, or a pointer on another worker). The link is dropped (and the origin with
    it) when `destination_pointer` and every pointer computed from it are gone."""
    location = destination_pointer.location
    links = location.__dict__.setdefault(_LINKS, {})
    rid = destination_pointer.id_at_location
    links[rid] = _Link(destination_pointer, origin)
    destination_pointer.__dict__["_fedmq_linked"] = True
    weakref.finalize(destination_pointer, _unlink, links, rid)


def _unlink(links: dict, rid: int) -> None:
    links.pop(rid, None)


def inherit(result: Any, inputs: list) -> None:
    """Pointers computed from a linked copy keep it (and so its link) alive: the worker's
    graph behind them still reaches the copy. Called by the dispatch for every remote op on a
    worker that has links."""
    keep: dict | None = None  # id -> linked copy (tensors compare elementwise: no sets)
    for value in inputs:
        own = value.__dict__
        if own.get("_fedmq_linked"):
            keep = keep if keep is not None else {}
            keep[id(value)] = value
        extra = own.get(_KEEP)
        if extra:
            keep = keep if keep is not None else {}
            keep.update(extra)
    if not keep:
        return
    outs = result if type(result) in (tuple, list) else \
        (result,) if isinstance(result, torch.Tensor) else tuple(result or ())
    input_ids = {id(v) for v in inputs}
    for out in outs:
        if isinstance(out, torch.Tensor) and getattr(type(out), "_fedmq_kind", None) \
                and id(out) not in input_ids:
            own = out.__dict__
            own[_KEEP] = {**own.get(_KEEP, {}), **keep}


def sendable(tensor: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """What `tensor.send(w, requires_grad=...)` stores: the tensor itself (its copy on the
    worker requires grad if it does); with requires_grad=True and a tensor that does not
    require grad, a detached copy that does (the worker's copy is a leaf either way)."""
    if requires_grad and not tensor.requires_grad:
        return tensor.detach().requires_grad_(True)
    return tensor


def has_links(location: Any) -> bool:
    return bool(location.__dict__.get(_LINKS))


def retain_graph_of(args: tuple, kwargs: dict) -> bool:
    """`Tensor.backward(gradient, retain_graph, create_graph, inputs)`'s retain_graph, with
    torch's default (create_graph)."""
    retain = kwargs.get("retain_graph", args[2] if len(args) > 2 else None)
    if retain is None:
        retain = kwargs.get("create_graph", args[3] if len(args) > 3 else False)
    return bool(retain)


def reachable(root: Any) -> set:
    """Remote ids of the linked copies `root`'s graph reaches (on root's worker)."""
    own = root.__dict__
    linked = list(own.get(_KEEP, {}).values())
    if own.get("_fedmq_linked"):
        linked.append(root)
    location = getattr(root, "location", None)
    return {p.id_at_location for p in linked if p.location is location}


def push_gradients(location: Any, ids_with_grad: Any, retain_graph: bool,
                   root: Any, pointer_class: type) -> None:
    """Called by the dispatch after `root.backward()` ran on `location`: every linked copy
    that backward reached (the worker lists leaves with a gradient; only copies in root's
    graph count, a copy of an earlier batch keeps its old gradient) pushes what it gained."""
    links = location.__dict__.get(_LINKS)
    if not links:
        return
    reached = reachable(root)
    for rid in list(ids_with_grad or ()):
        entry = links.get(rid)
        if entry is not None and rid in reached:
            _push(location, entry, retain_graph, pointer_class)


def keep_of(pointer: Any) -> dict:
    """The linked copies `pointer` keeps alive (for an origin made from it by `move`)."""
    return dict(pointer.__dict__.get(_KEEP, {}))


def set_keep(pointer: Any, keep: dict) -> None:
    if keep:
        pointer.__dict__[_KEEP] = keep


def _push(location: Any, entry: _Link, retain_graph: bool, pointer_class: type) -> None:
    grad_pointer = pointer_class(location, entry.rid, entry.shape, entry.dtype, False,
                                     owner=entry.owner, attr="grad", gc=False)
    origin = entry.origin
    if getattr(type(origin), "_fedmq_kind", None) is None:  # a local tensor of this graph
        total = grad_pointer.get()
        delta = total if entry.pushed is None else total - entry.pushed
        entry.pushed = total
        origin.backward(delta, retain_graph=retain_graph)
        return
    total = grad_pointer.clone()  # a stored copy on the destination worker
    delta = total.clone() if entry.pushed is None else total - entry.pushed
    entry.pushed = total  # (`move` below takes `delta` away from the destination)
    delta = delta.move(origin.location)  # worker to worker
    origin.backward(delta, retain_graph=retain_graph)


def local_copy_with_hook(pointer: Any, value: torch.Tensor) -> torch.Tensor:
    """`ptr.move(me, requires_grad=True)`: `value` (fetched, the worker keeps its copy
    `pointer`) becomes a leaf whose gradient is sent back and backpropagated on the worker.
    The hook sees each backward's own contribution, so every backward through the leaf
    (`retain_graph=True`, two losses) reaches the worker; the worker's graph is kept for
    that (retain_graph=True there) and freed with `pointer` when the leaf is collected."""
    value = value.detach().requires_grad_(True)

    def send_back(grad: torch.Tensor) -> None:
        pointer.backward(grad.send(pointer.location), retain_graph=True)

    value.register_hook(send_back)
    return value
