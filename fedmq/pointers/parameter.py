"""Parameters and buffers of a sent model: the same Python objects, with remote data.

`model.send(bob)` must keep every `nn.Parameter` the object it was, or an optimizer built before
the send would step tensors nobody uses. So a sent parameter keeps its identity and changes its
class to `RemoteParameter` (its buffers to `RemoteBuffer`); its local data becomes a zero-memory
placeholder of the right shape and dtype (`torch.zeros(()).expand(shape)`); every torch call on it
goes through the same dispatch as a pointer. `.get()` restores the class and the real data.

Gradients stay on the worker. The worker's reply to `backward` lists which stored leaves now
have a gradient; `param.grad` then returns a pointer to it (no message), and `param.grad = None`
(what `optimizer.zero_grad()` does) clears it remotely.
"""
from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from fedmq import messages as m
from fedmq.errors import PointerError
from fedmq.pointers import dispatch


def _grad_of(t: Any) -> Any:
    if t._fedmq_pending is not None:  # the model came home: its real gradient
        t._fedmq_pending.carry_out(t)
        return t.grad
    return dispatch._grad_get(None, (t,), {})


def _set_grad_of(t: Any, value: Any) -> None:
    if t._fedmq_pending is not None:
        t._fedmq_pending.carry_out(t)
        t.grad = value
        return
    dispatch._grad_set(None, (t, value), {})


def _set_(self: Any, *args: Any, **kwargs: Any) -> Any:
    """`Tensor.set_`, the one in-place method torch calls without `__torch_function__`: sent
    through the same dispatch as every other call, so after a deferred `model.get()` it acts on
    the fetched tensor, and on remote data it is refused (OpNotAllowedError) instead of
    replacing the local placeholder while the worker keeps the old values."""
    if not is_remote_tensor(self):  # the model came home while the arguments were evaluated
        return torch.Tensor.set_(self, *args, **kwargs)
    return dispatch.torch_function(type(self), torch.Tensor.set_, (type(self),),
                                   (self, *args), kwargs)


def _location_of(t: Any) -> Any:
    """PySyft's `param.location`: the worker holding a sent parameter. A parameter that is
    home (never sent, or its model's `get()` is pending) has none: AttributeError, as in
    PySyft, where only pointers had a location."""
    if t.__dict__.get("_fedmq_pending") is not None:
        raise AttributeError("this parameter is local (its model's .get() was called): it has "
                             "no .location")
    return t._fedmq_location


def _id_at_location_of(t: Any) -> int:
    """PySyft's `param.id_at_location`: the id of the sent parameter in its worker's store."""
    _location_of(t)
    return t._fedmq_id


def _whole_model_only(verb: str, example: str):
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        pending = self.__dict__.get("_fedmq_pending")
        if pending is not None:  # its model's get() was called: it is a local tensor now
            pending.carry_out(self)
            return getattr(self, verb)(*args, **kwargs)
        kind = "parameter" if type(self) is RemoteParameter else "buffer"
        where = self._fedmq_location.id
        raise PointerError(
            f"{kind}.{verb}(): this {kind} belongs to a model that was sent to {where!r}; "
            f"{ {'send': 'sending', 'move': 'moving'}[verb]} it alone would split the model across workers. {verb.capitalize()} "
            f"the whole model (model.{verb}({example})), or {verb} a copy of the {kind}: "
            f"m.weight.copy().{verb}({example}) (a pointer; with requires_grad=True on move "
            f"its gradient flows back into the {kind})")
    method.__name__ = verb
    method.__doc__ = (f"`{verb}` on a sent model's parameter or buffer: refused with "
                      f"PointerError (it would split the model), unless the model's get() "
                      f"was called (then the tensor is local and this is torch's {verb}).")
    return method


def _get_(self: Any, *args: Any, **kwargs: Any) -> Any:
    """`param.get()`: after the model's `get()`, the now local parameter itself; while the
    model is on a worker, PointerError (fetching one parameter would split the model: call
    model.get(), or param.copy().get() for its value)."""
    pending = self.__dict__.get("_fedmq_pending")
    if pending is not None:
        pending.carry_out(self)
        return self.get(*args, **kwargs)
    kind = "parameter" if type(self) is RemoteParameter else "buffer"
    raise PointerError(
        f"{kind}.get(): this {kind} belongs to a model that was sent to "
        f"{self._fedmq_location.id!r}; fetching it alone would split the model. Call "
        f"model.get() to bring the whole model home, or m.weight.copy().get() for the value "
        f"(the model stays on the worker)")


class RemoteParameter(torch.nn.Parameter):
    _fedmq_kind = "parameter"
    _fedmq_pending = None  # a PendingGet while `model.get()` has not been carried out yet
    __torch_function__ = classmethod(dispatch.torch_function)
    #: optimizers read `p.grad` several times per parameter per step: answer it directly
    #: (the same code `__torch_function__` would reach, without torch's dispatch around it)
    grad = property(_grad_of, _set_grad_of)
    set_ = _set_
    send = _whole_model_only("send", "bob")
    move = _whole_model_only("move", "bob")
    get = _get_
    location = property(_location_of)
    id_at_location = property(_id_at_location_of)

    def __deepcopy__(self, memo):
        return _deepcopy_remote(self, memo)


class RemoteBuffer(torch.Tensor):
    _fedmq_kind = "buffer"
    _fedmq_pending = None
    __torch_function__ = classmethod(dispatch.torch_function)
    set_ = _set_
    send = _whole_model_only("send", "bob")
    move = _whole_model_only("move", "bob")
    get = _get_
    location = property(_location_of)
    id_at_location = property(_id_at_location_of)

    def __deepcopy__(self, memo):
        return _deepcopy_remote(self, memo)


class PendingGet:
    """`model.get()`: for a worker in another process (RabbitMQ) the GetRequest goes out at
    once and its reply -- the model's values -- is kept here (one round trip, as PySyft's get), so once get() returned, stopping or losing the worker loses
    nothing; for an in-process worker the request waits for the first touch. Either way the
    tensors become local the first time anyone looks at them or at the worker's store (see
    module.get).

    The request reads without deleting (`delete=False`): if the model is sent back to the same
    worker before anyone looked (`cancel`), nothing has to travel again; when it is carried
    out, the worker's copies are released (their ids ride along with the next message)."""

    def __init__(self, location: Any, tensors: list) -> None:
        self.location = location
        self.tensors = tensors
        self._values: dict | None = None
        #: while the get is pending this object holds the tensors, and it releases their
        #: remote copies itself: no weak references to them (torch.utils.swap_tensors refuses
        #: tensors that have one)
        self._gc_data = []  # whether dropping each tensor deletes its remote copy
        for t in tensors:
            t._fedmq_pending = self
            self._gc_data.append(t._fedmq_finalizer.detach() is not None)
            location._remote_params.pop(t._fedmq_id, None)
        self._ids = [t._fedmq_id for t in tensors]
        self._message = m.GetRequest(self._ids, delete=False)
        self._reply = self._buffered = None
        if location.engine.transport.pipelines:
            # A worker in another process: the reply is awaited here. A worker service stopped
            # with SIGTERM finishes only the message in hand and puts the others back in its
            # queue, so a request still queued when get() returned would be lost with the
            # worker's memory. Errors it reports are raised on first touch.
            self._request()
        # (an in-process worker cannot stop on its own: the request waits for the first touch,
        # and a model sent back before that never travels)
        location._pending_gets[id(self)] = self
        dispatch.PendingGets.live += 1

    def _request(self) -> None:
        with self.location.context.send_lock:
            frame, self._buffered = self.location._call_frame(self._message, None)
            call = self.location.engine.start_frame(self.location.id, frame, "GetRequest")
        self._reply = call.reply(self.location.timeout)

    def carry_out(self, touched: Any = None) -> None:
        """Wait for the reply (if it is not in yet) and make every tensor local again.
        `touched`: the tensor being used, if it may not be one of ours by identity (an
        object whose contents `torch.utils.swap_tensors` exchanged with one of ours)."""
        if self.tensors:
            tensors, self.tensors = self.tensors, []
            self._unregister()
            if self._reply is None:
                self._request()
            reply, self._reply = self._reply, None
            values = self.location._call_result(reply, self._message, self._buffered)
            self._values = dict(zip(self._ids, values))
            for rid in self._values:
                self.location.release(rid)
            for t in tensors:
                if t.__dict__.get("_fedmq_pending") is self:  # (else swapped away)
                    make_local(t, self._values[t._fedmq_id])
        if touched is not None and touched.__dict__.get("_fedmq_pending") is self \
                and self._values is not None:
            make_local(touched, self._values[touched._fedmq_id])

    def _unregister(self) -> None:
        if self.location._pending_gets.pop(id(self), None) is not None:
            dispatch.PendingGets.live -= 1

    def cancel(self) -> list:
        """The model goes back out before anyone looked: keep it where it is (the worker
        kept its copies; the reply is dropped)."""
        tensors, self.tensors = self.tensors, []
        self._unregister()
        self._reply = None
        for t, gc_data in zip(tensors, self._gc_data):
            t.__dict__.pop("_fedmq_pending", None)
            _attach(t, self.location, t._fedmq_id, t._fedmq_owner)
            if not gc_data:  # sent with garbage_collect_data=False
                t._fedmq_finalizer.detach()
        return tensors


def _deepcopy_remote(t: torch.Tensor, memo: dict) -> torch.Tensor:
    if t._fedmq_pending is not None:
        t._fedmq_pending.carry_out(t)
        return copy.deepcopy(t, memo)
    raise PointerError("a tensor on a worker cannot be copied locally: .get() it first")


def is_remote_tensor(t: torch.Tensor) -> bool:
    return type(t) in (RemoteParameter, RemoteBuffer)


def make_remote(t: torch.Tensor, location: Any, remote_id: int, owner: Any,
                has_grad: bool) -> None:
    """Turn local tensor `t` (already stored on `location` under `remote_id`) into a handle."""
    local_class = type(t)
    placeholder = torch.zeros((), dtype=t.dtype).expand(t.shape)
    t.grad = None
    t.data = placeholder
    t.__class__ = RemoteParameter if isinstance(t, torch.nn.Parameter) else RemoteBuffer
    t._fedmq_local_class = local_class
    with torch._C.DisableTorchFunctionSubclass():
        t._fedmq_meta = (tuple(t.shape), t.dtype, t.requires_grad)
    _attach(t, location, remote_id, owner)
    t._fedmq_has_grad = has_grad
    dispatch.Sent.anything = True


def retarget(t: torch.Tensor, location: Any) -> None:
    """`t`'s remote object moved to `location` under the same id (sent with
    garbage_collect_data=False, it stays uncollected there too)."""
    collected = t._fedmq_finalizer.detach() is not None
    t._fedmq_location._remote_params.pop(t._fedmq_id, None)
    t.__dict__.pop("_fedmq_grad_ptr", None)
    _attach(t, location, t._fedmq_id, t._fedmq_owner)
    if not collected:
        t._fedmq_finalizer.detach()


def make_local(t: torch.Tensor, value: torch.Tensor) -> None:
    """Give `t` back its class and the data fetched from the worker."""
    t._fedmq_finalizer.detach()
    t._fedmq_location._remote_params.pop(t._fedmq_id, None)
    t.__class__ = t._fedmq_local_class
    for attr in ("_fedmq_local_class", "_fedmq_location", "_fedmq_id", "_fedmq_owner",
                 "_fedmq_finalizer", "_fedmq_has_grad", "_fedmq_grad_ptr", "_fedmq_pending",
                 "_fedmq_meta"):
        t.__dict__.pop(attr, None)
    grad = value.grad if value.requires_grad else None
    t.data = value.detach()
    t.grad = None if grad is None else grad


def _attach(t: torch.Tensor, location: Any, remote_id: int, owner: Any) -> None:
    t._fedmq_location = location
    t._fedmq_id = remote_id
    t._fedmq_owner = owner
    t._fedmq_finalizer = weakref.finalize(t, location.release, remote_id)
    location._remote_params[remote_id] = t
