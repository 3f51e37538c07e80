"""`__torch_function__` for pointers and remote parameters: torch calls become Commands.

The pipeline, for every call that touches remote data:
    unwrap (pointers -> Refs, one location, no local tensors)
    -> allowlist (fedmq.ops; anything else: OpNotAllowedError)
    -> result metadata on meta tensors (fedmq.shapes, the shape engine; cached)
    -> Command with caller-chosen result ids, posted without waiting
    -> wrap (a PointerTensor per new result; in-place ops return their input)
Metadata queries (shape, dtype, dim, hash, ...) are answered locally and send nothing.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from fedmq import messages as m, ops, shapes
from fedmq.errors import OpNotAllowedError, PointerError
from fedmq.ids import new_id
from fedmq.pointers import split


#: the pointer class results are wrapped in (set by fedmq.pointers.tensor, which builds on this
#: module: PointerTensor's `__torch_function__` is `torch_function` below)
_pointer_class: list = []


def use_pointer_class(cls: type) -> None:
    _pointer_class[:] = [cls]


def is_remote(value: Any) -> bool:
    return getattr(type(value), "_fedmq_kind", None) is not None


def remote_id(value: Any) -> int:
    return value.id_at_location if type(value)._fedmq_kind == "pointer" else value._fedmq_id


def location_of(value: Any) -> Any:
    return value.location if type(value)._fedmq_kind == "pointer" else value._fedmq_location


def owner_of(value: Any) -> Any:
    return value.owner if type(value)._fedmq_kind == "pointer" else value._fedmq_owner


# -- calls answered without sending anything ----------------------------------------------------

def _plain(func: Callable, args: tuple, kwargs: dict) -> Any:
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def _repr(func: Callable, args: tuple, kwargs: dict) -> str:
    obj = args[0]
    if type(obj)._fedmq_kind == "pointer":
        return obj.pointer_repr()
    loc = obj._fedmq_location
    return f"(Wrapper)>[RemoteParameter | {loc.id}:{obj._fedmq_id} shape={tuple(obj.shape)}]"


def _format(func: Callable, args: tuple, kwargs: dict) -> str:
    return _repr(func, args, kwargs)


def _refuse_copy(func: Callable, args: tuple, kwargs: dict) -> Any:
    raise PointerError("a remote tensor cannot be copied or pickled locally: use .copy() on "
                       "the pointer for a remote copy, or .get() to fetch it")


def _refuse_local_values(func: Callable, args: tuple, kwargs: dict) -> Any:
    location = getattr(args[0], "_fedmq_location", None) or getattr(args[0], "location", None)
    where = getattr(location, "id", None) or "a worker"
    name = getattr(func, "__name__", "numpy")
    raise PointerError(f"{name}() needs the values, and this tensor lives on {where}: fetch "
                       f"it first with .get() (e.g. ptr.get().numpy(); ptr.copy().get() "
                       f"leaves it on the worker), as the worker's policy allows")


def _grad_get(func: Callable, args: tuple, kwargs: dict) -> Any:
    t = args[0]
    if type(t)._fedmq_kind == "pointer":
        return _remote_call("Tensor.grad", func, args, kwargs, sync=True)
    if not t._fedmq_has_grad:
        return None
    ptr = t.__dict__.get("_fedmq_grad_ptr")
    if ptr is None or ptr.location is not t._fedmq_location:
        shape, dtype, _ = shapes.local_meta(t)
        ptr = _pointer_class[0](t._fedmq_location, t._fedmq_id, shape, dtype, False,
                            owner=t._fedmq_owner, attr="grad", gc=False)
        t._fedmq_grad_ptr = ptr
    return ptr


def _grad_set(func: Callable, args: tuple, kwargs: dict) -> None:
    t, value = args
    if type(t)._fedmq_kind == "pointer":
        return _remote_call("Tensor.grad.__set__", func, args, kwargs)
    if value is None:
        if t._fedmq_has_grad:
            clear_remote_grad(t._fedmq_location, t._fedmq_id)
        t._fedmq_has_grad = False
        return None
    _remote_call("Tensor.grad.__set__", func, args, kwargs)
    t._fedmq_has_grad = True
    return None


def clear_remote_grad(location: Any, remote_id: int) -> None:
    """`grad = None` on the worker. Consecutive clears (an optimizer's `zero_grad()`) join one
    buffered `fedmq.clear_grads` Command instead of one Command per parameter."""
    with location.context.send_lock:  # the buffer's last command is not sent meanwhile
        buffer = location._buffer
        last = buffer[-1] if buffer else None
        if last is not None and last.op == "fedmq.clear_grads":
            last.args[0].append(m.Ref(remote_id))
        else:
            location.post(m.Command("fedmq.clear_grads", ([m.Ref(remote_id)],), {}, []))


_LOCAL: dict[Any, Callable[[Callable, tuple, dict], Any]] = {}
for _attr in ("shape", "dtype", "device", "ndim", "requires_grad", "is_leaf", "layout",
              "is_sparse", "is_cuda", "is_meta", "is_quantized", "is_nested", "is_mkldnn",
              "is_cpu", "names", "itemsize", "nbytes", "_version"):
    if hasattr(torch.Tensor, _attr):
        _LOCAL[getattr(torch.Tensor, _attr).__get__] = _plain
for _fn in (torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.nelement,
            torch.Tensor.ndimension, torch.Tensor.is_floating_point, torch.Tensor.is_complex,
            torch.Tensor.element_size, torch.Tensor.__len__, torch.Tensor.is_contiguous,
            torch.Tensor.stride, torch.Tensor.is_signed, torch.Tensor.get_device,
            torch.is_complex, torch.is_floating_point, torch.numel, torch.Tensor.__dir__,
            torch.Tensor.dim_order):
    _LOCAL[_fn] = _plain
_LOCAL[torch.Tensor.__hash__] = _plain  # hashing never fetches (optimizer state is keyed by it)
_LOCAL[torch.Tensor.__repr__] = _repr
_LOCAL[torch.Tensor.__format__] = _format
for _fn in (torch.Tensor.__deepcopy__, torch.Tensor.__reduce_ex__, torch.Tensor.__setstate__):
    _LOCAL[_fn] = _refuse_copy
for _fn in (torch.Tensor.numpy, torch.Tensor.__array__):
    _LOCAL[_fn] = _refuse_local_values
_LOCAL[torch.Tensor.grad.__get__] = _grad_get
_LOCAL[torch.Tensor.grad.__set__] = _grad_set


# -- the dispatch -------------------------------------------------------------------------------

def torch_function(cls, func, types, args=(), kwargs=None):
    kwargs = kwargs or {}
    try:
        local = _LOCAL.get(func)
    except TypeError:
        local = None
    if local is not _plain and _carry_out_pending_gets(args, kwargs):
        return func(*args, **kwargs)  # the model came home: run the call as usual
    if local is not None:
        return local(func, args, kwargs)
    if func in _EQUALITY and len(args) == 2 and not _comparable(args[1]):
        # as torch does: `==` with None, a string, ... is NotImplemented, and Python then
        # compares identities (`ptr == None` is False, `ptr != None` True)
        return NotImplemented
    name = ops.name_of(func)
    if name is None:
        raise OpNotAllowedError(f"{_func_name(func)} is not on fedmq's allowlist, so it cannot "
                                f"run on remote data (see fedmq/ops/allowlist.py)")
    return _remote_call(name, func, args, kwargs)


_EQUALITY = {torch.Tensor.__eq__, torch.Tensor.__ne__}


def _comparable(value: Any) -> bool:
    """Whether torch compares a tensor with `value` elementwise (else `==` is identity)."""
    return isinstance(value, (torch.Tensor, int, float, complex, bool, list, tuple))


class Sent:
    """Whether this process ever sent a model (parameter.make_remote): until then the
    optimizer pre-step hook (optim.colocate_state) has nothing to look for."""
    anything = False


class PendingGets:
    """How many deferred `model.get()`s (parameter.PendingGet) are alive in this process: a
    guard that lets the dispatch skip looking for them when there are none. Each PendingGet is
    registered with its own worker client; no other state is shared between contexts."""
    live = 0


def _carry_out_pending_gets(args: tuple, kwargs: dict) -> bool:
    """A deferred `model.get()` is carried out as soon as one of its tensors is used."""
    if not PendingGets.live:
        return False
    done = False
    for value in (*args, *kwargs.values()):
        if type(value) in (tuple, list):
            done |= _carry_out_pending_gets(tuple(value), {})
        else:
            pending = getattr(value, "_fedmq_pending", None)
            if pending is not None and is_remote(value):
                pending.carry_out(value)
                done = True
    return done


def _remote_call(name: str, func: Callable, args: tuple, kwargs: dict, sync: bool = False) -> Any:
    found: list = []
    distinct: dict[int, Any] = {}
    key: list = [name, torch.is_grad_enabled()]  # the shape-cache key, built on the same walk
    wire_args = _unwrap(args, found, name, distinct, key)
    key.append("|")
    wire_kwargs = _unwrap(kwargs, found, name, distinct, key) if kwargs else kwargs
    if not found:
        raise PointerError(f"{name} was dispatched to fedmq without a remote argument")
    location = location_of(found[0])
    for other in found[1:]:
        other_loc = location_of(other)
        if other_loc is not location and (other_loc.id != location.id or
                                          other_loc.engine is not location.engine):
            same_name = " (two workers of that name, on different hooks or connections)" \
                if other_loc.id == location.id else ""
            raise PointerError(f"{name}: arguments live on different workers "
                               f"({location.id!r} and {other_loc.id!r}){same_name}; move one "
                               f"first")
    owner = owner_of(found[0])
    grad = torch.is_grad_enabled()

    if name == "Tensor.backward":
        with_grad = location.call(m.Command(name, wire_args, wire_kwargs, [], grad))
        registry = location._remote_params
        for rid in with_grad or ():
            param = registry.get(rid)
            if param is not None:
                param._fedmq_has_grad = True
        if split.has_links(location):  # split learning: gradients go back across moves
            split.push_gradients(location, with_grad, split.retain_graph_of(args, kwargs),
                                args[0], _pointer_class[0])
        return None
    if name in ("Tensor.to", "Tensor.cpu") and _to_is_noop(args, kwargs):
        return args[0]

    spec = None if sync else shapes.spec_for(
        func, name, args, kwargs, key=tuple(key) if key[-1] is not _UNHASHABLE else None)
    if spec is None:
        value = location.call(m.Command(name, wire_args, wire_kwargs, [], grad, reply=True))
        result = m.adopt_all(value, owner=owner, network=location.network)
        if split.has_links(location):  # results of a linked copy keep its gradient link alive
            split.inherit(result, [v for _, v in distinct.values()])
        return result

    result_ids = [None if type(leaf) is shapes.Alias else new_id() for leaf in spec.leaves]
    location.post(m.Command(name, wire_args, wire_kwargs, result_ids, grad))
    inputs = [v for _, v in distinct.values()]
    result = _wrap(spec.template, iter(result_ids), inputs, location, owner)
    if split.has_links(location):  # results of a linked copy keep its gradient link alive
        split.inherit(result, inputs)
    return result


_UNHASHABLE = object()


def _unwrap(value: Any, found: list, name: str, distinct: dict, key: list) -> Any:
    """Pointers -> Refs; `found` gets every remote input, `distinct` each one once, in
    first-appearance order (the order shapes.Alias indexes); `key` gets a flat, hashable
    description of the call for the shape cache (ends with _UNHASHABLE if there is none)."""
    cls = type(value)
    if cls is int or cls is float or value is None or cls is bool or cls is str:
        key += (cls, value)
        return value
    if isinstance(value, torch.Tensor):
        kind = getattr(cls, "_fedmq_kind", None)
        if kind is not None:
            found.append(value)
            seen = distinct.get(id(value))
            if seen is None:
                seen = distinct[id(value)] = (len(distinct), value)
            key.append((seen[0], value.__dict__.get("_fedmq_meta") or shapes.local_meta(value)))
            if kind == "pointer":
                if value._consumed:
                    value._check_usable()
                ref = value._wire_ref
                if ref is None:  # the same Ref every time: the pointer's target never changes
                    ref = value._wire_ref = m.Ref(value.id_at_location, value.attr)
                return ref
            return m.Ref(value._fedmq_id)
        kind = "parameter" if isinstance(value, torch.nn.Parameter) else "tensor"
        raise PointerError(f"{name}: a local {kind} of shape {tuple(value.shape)} was mixed with "
                           f"remote data; send it to the worker first (a local tensor is never "
                           f"moved implicitly)")
    # Module-level recursion, never a closure: a recursive closure is a reference cycle, and a
    # cycle would keep dead pointers (and so their remote objects) alive until the next GC.
    if cls is tuple or cls is list:
        key += (cls, len(value))
        out = []
        for v in value:  # scalars inline: conv2d's stride/padding/... are most of the items
            vcls = type(v)
            if vcls is int or vcls is float or v is None or vcls is bool:
                key += (vcls, v)
                out.append(v)
            else:
                out.append(_unwrap(v, found, name, distinct, key))
        return out if cls is list else tuple(out)
    if cls is dict:
        key.append(dict)
        key.append(tuple(value))
        return {k: _unwrap(v, found, name, distinct, key) for k, v in value.items()}
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        key.append(tuple)
        key.append(len(value))
        return tuple(_unwrap(v, found, name, distinct, key) for v in value)
    try:
        hash(value)
        key.append(cls)
        key.append(value)
    except TypeError:
        key.append(_UNHASHABLE)
    return value


def _wrap(template: Any, ids, inputs: list, location: Any, owner: Any) -> Any:
    if template is None:
        return None
    cls = type(template)
    if cls is shapes.TensorMeta:
        return _pointer_class[0](location, next(ids), template.shape, template.dtype,
                             template.requires_grad, owner=owner)
    if cls is shapes.Alias:
        next(ids)
        target = inputs[template.index]
        shape, dtype, requires_grad = shapes.local_meta(target)
        if requires_grad != template.requires_grad:
            with torch._C.DisableTorchFunctionSubclass():
                target.requires_grad_(template.requires_grad)
            target.__dict__["_fedmq_meta"] = (shape, dtype, template.requires_grad)
        return target
    kind, parts = template
    values = [_wrap(p, ids, inputs, location, owner) for p in parts]
    if kind in (tuple, list):
        return kind(values)
    try:
        return kind(*values)  # namedtuples such as torch.return_types.max
    except TypeError:
        return kind(values)


def _to_is_noop(args: tuple, kwargs: dict) -> bool:
    src = args[0]
    _, dtype, _ = shapes.local_meta(src)
    for value in list(args[1:]) + list(kwargs.values()):
        if isinstance(value, torch.dtype) and value != dtype:
            return False
        if isinstance(value, (str, torch.device)) and torch.device(value).type != "cpu":
            return False
        if isinstance(value, torch.Tensor):
            return False
    return not kwargs.get("copy", False)


def _func_name(func: Any) -> str:
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    module = getattr(func, "__module__", None)
    return f"{module}.{qual}" if module and not qual.startswith(module) else str(qual)
