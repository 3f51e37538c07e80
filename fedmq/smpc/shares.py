"""The coordinator's handles on shares: one fedmq pointer per party, and what every SMPC layer
above does with them.

    make_pointer     a pointer owning a share stored on a party (by the provider, or by a step)
    to_wire          pointers as `Ref`s in a message to the party holding them
    remote           one allowlisted op on a party's shares: a pipelined Command, pointers back
    open_shares      open several shared values at once: one GetRequest per party (one round)
    cat, stack       join shared tensors share by share
    _stats           openings performed (the online phase's rounds), for benchmarks and tests

A shared tensor here is an `AdditiveSharingTensor` (additive.py, built on this module and on the
protocols): what is used of it is its `shares` (pointers, in party order), `n_parties`,
`_same_parties(other)` and `_new(shares)`.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq import messages as m, shapes
from fedmq.client import call_all
from fedmq.ids import new_id
from fedmq.pointers.tensor import PointerTensor

#: how the modules below additive.py annotate an AdditiveSharingTensor: they use its methods,
#: never its class (which is built on them)
SharedTensor = Any


def _owner(location: Any) -> Any:
    return getattr(location.network, "local_worker", None)


def make_pointer(location: Any, obj_id: int, shape, dtype=torch.int64) -> PointerTensor:
    """A pointer owning object `obj_id` on `location` (stored there by someone else)."""
    return PointerTensor(location, obj_id, tuple(shape), dtype, False, owner=_owner(location))


def to_wire(value: Any, location: Any) -> Any:
    """`value` as an argument of a message to `location`: its pointers (to shares there)
    become Refs; ints, public tensors (sent inline) and None stay as they are."""
    if isinstance(value, PointerTensor):
        if value.location is not location and value.location.id != location.id:
            raise ValueError(f"internal error: a share of {value.location.id!r} was used on "
                             f"{location.id!r}")
        value._check_usable()
        return m.Ref(value.id_at_location)
    if type(value) in (list, tuple):
        return type(value)(to_wire(v, location) for v in value)
    return value  # ints, public tensors (sent inline), None


def remote(location: Any, op: str, *args: Any, **kwargs: Any) -> Any:
    """Run allowlisted `op` on `location` (args: pointers there, public tensors, numbers);
    returns pointers to the results. Pipelined: one buffered Command, no round trip."""
    spec = shapes.op_spec(op, args, kwargs, aliases=False, strict=True)  # raises as the op
    ids = [new_id() for _ in spec.leaves]
    location.post(m.Command(op, to_wire(args, location), to_wire(kwargs, location), ids, False))
    out = tuple(make_pointer(location, i, t.shape, t.dtype) for i, t in zip(ids, spec.leaves))
    return out[0] if type(spec.template) is shapes.TensorMeta else out


def open_shares(groups: list[list[PointerTensor]], combine: str = "add",
                delete: bool = True) -> list[torch.Tensor]:
    """Open several shared values at once: one GetRequest per party (one round).
    `groups[k]` is the list of shares (one per party, same party order) of value k;
    `combine` is "add" (additive shares) or "xor" (binary shares)."""
    if not groups:
        return []
    n_parties = len(groups[0])
    calls = []
    for p in range(n_parties):
        ptrs = [g[p] for g in groups]
        for ptr in ptrs:
            ptr._check_usable()
        calls.append((ptrs[0].location,
                      m.GetRequest([ptr.id_at_location for ptr in ptrs], delete=delete)))
    per_party: list[list[torch.Tensor]] = call_all(calls)  # all parties in one round trip
    if delete:
        for g in groups:
            for ptr in g:
                ptr._disown()
                ptr._consumed = True
    out = []
    for k in range(len(groups)):
        total = per_party[0][k]
        for p in range(1, n_parties):
            total = total + per_party[p][k] if combine == "add" else total ^ per_party[p][k]
        out.append(total)
    _stats.rounds += 1
    return out


class _Stats:
    """Openings performed (communication rounds of the online phase), for benchmarks."""
    rounds = 0


_stats = _Stats()


def cat(tensors: list, dim: int = 0) -> Any:
    """torch.cat of shared tensors (each party joins its own shares)."""
    return _join("torch.cat", tensors, dim)


def stack(tensors: list, dim: int = 0) -> Any:
    """torch.stack of shared tensors (each party joins its own shares)."""
    return _join("torch.stack", tensors, dim)


def _join(op: str, tensors: list, dim: int) -> Any:
    """cat/stack share by share: each party joins its own shares."""
    first = tensors[0]
    for t in tensors[1:]:
        first._same_parties(t)
    return first._new([remote(first.shares[p].location, op, [t.shares[p] for t in tensors], dim)
                       for p in range(first.n_parties)])
