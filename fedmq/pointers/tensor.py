"""PointerTensor: a tensor whose data lives on another worker.

It is a `torch.Tensor` wrapper subclass with no storage (like DTensor or FakeTensor): shape,
dtype and requires_grad are real, so code that inspects tensors works, and every torch call on
it is intercepted by `__torch_function__` (dispatch.py) and becomes a `Command` to its location.

Ownership: one pointer owns its remote object. When it is garbage collected the object is
deleted remotely; `.get()` consumes it; sending or moving a pointer hands ownership on.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch

from fedmq import messages as m
from fedmq.errors import PointerError
from fedmq.ids import new_id
from fedmq.pointers import dispatch, keywords, split
from fedmq.pointers.ownership import OwnedRemote


class PointerTensor(OwnedRemote, torch.Tensor):
    _fedmq_kind = "pointer"
    # class-level defaults: most pointers never set these, and setting attributes on a tensor
    # is not free on the hot path
    attr: str | None = None
    description: str | None = None
    _consumed = False
    _finalizer = None
    _tags: set | None = None
    _wire_ref = None  # the messages.Ref naming this pointer's target (dispatch.py caches it)
    #: pointers are strided wrappers (what `_make_wrapper_subclass` builds), never sparse;
    #: optimizers ask `p.grad.is_sparse` every step, so answer it without dispatch
    is_sparse = False

    @staticmethod
    def __new__(cls, location: Any, id_at_location: int, shape, dtype: torch.dtype,
                requires_grad: bool = False, *, owner: Any = None, id: int | None = None,
                attr: str | None = None, gc: bool = True, tags=None,
                description: str | None = None) -> "PointerTensor":
        self = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device="cpu",
                                                   requires_grad=requires_grad)
        self._fedmq_meta = (tuple(shape), dtype, requires_grad)  # read on every dispatch
        self.location = location
        self.id_at_location = id_at_location
        if id is not None:
            self._id = id
        self.owner = owner
        if attr is not None:
            self.attr = attr  # "grad": this points at the gradient of object id_at_location
        if tags:
            self._tags = set(tags)
        if description is not None:
            self.description = description
        if gc and attr is None:
            self._finalizer = weakref.finalize(self, location.release, id_at_location)
        return self

    _id: int | None = None

    @property
    def id(self) -> int:
        """This pointer's own id (drawn when first asked for)."""
        if self._id is None:
            self._id = new_id()
        return self._id

    @property
    def tags(self) -> set:
        if self._tags is None:
            self._tags = set()
        return self._tags

    @tags.setter
    def tags(self, value) -> None:
        self._tags = set(value or ())

    __torch_function__ = classmethod(dispatch.torch_function)

    def set_(self, *args: Any, **kwargs: Any) -> Any:
        """`Tensor.set_` skips `__torch_function__` in torch; route it through the dispatch
        like every other call (it is not on the allowlist: OpNotAllowedError)."""
        return dispatch.torch_function(type(self), torch.Tensor.set_, (type(self),),
                                       (self, *args), kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise PointerError(f"internal error: aten op {func} reached a PointerTensor; "
                           f"its data is remote")

    # -- the pointer API ------------------------------------------------------------------------
    @OwnedRemote.garbage_collect_data.setter
    def garbage_collect_data(self, value: bool) -> None:
        if not value:
            self._disown()
        elif not self.garbage_collect_data and self.attr is None:
            self._finalizer = weakref.finalize(self, self.location.release, self.id_at_location)

    def get(self, **pysyft: Any) -> Any:
        """Fetch the object (deleting it remotely) and return it; this pointer is then spent.
        PySyft's keywords (user, reason, deregister_ptr, inplace) are accepted at their
        defaults only (fedmq/pointers/keywords.py); others raise TypeError."""
        keywords.check("PointerTensor.get", pysyft, keywords.GET)
        self._check_usable()
        if self.attr is not None:  # a gradient: copy it out, the parameter keeps it
            value = self.location.call(m.GetRequest([m.Ref(self.id_at_location, self.attr)],
                                                    delete=False))[0]
        else:
            value = self.location.call(m.GetRequest([self.id_at_location], delete=True))[0]
            self._disown()
            self._consumed = True
        return materialize(value, self.owner, self.location.network)

    def send(self, *locations: Any, **pysyft: Any) -> "PointerTensor":
        """Send this pointer to another worker: returns a pointer to the pointer there.
        Keywords: PySyft's `send` ones (fedmq/pointers/keywords.py); `garbage_collect_data`
        is honoured, `requires_grad=True` is refused (a pointer to a pointer has no
        gradient: use `.move(worker, requires_grad=True)`), the others at defaults only."""
        options = keywords.check("PointerTensor.send", pysyft, keywords.TENSOR_SEND,
                                 honoured=("garbage_collect_data", "requires_grad"))
        if options.get("requires_grad"):
            raise TypeError("PointerTensor.send(): requires_grad=True is refused (sending a "
                            "pointer makes a pointer to a pointer, which has no gradient); "
                            "use ptr.move(worker, requires_grad=True) to move the value with "
                            "its gradient link")
        location = one_location(locations)
        self._check_usable()
        rid = new_id()
        location.post(m.ObjectMessage([m.StoredObject(rid, self, sorted(self.tags),
                                                      self.description)]))
        pointer = PointerTensor(location, rid, self.shape_local, self.dtype_local,
                                self.requires_grad_local, owner=self.owner)
        if not options.get("garbage_collect_data", True):
            pointer.garbage_collect_data = False
        return pointer

    def move(self, location: Any, **pysyft: Any) -> Any:
        """Move the object to `location` worker to worker (it never passes through us).

        `requires_grad=True` (PySyft 0.2, split learning): the source keeps its copy and its
        autograd graph, the copy at `location` requires grad, and a backward there sends its
        gradient back to the source's copy and backpropagates it there (fedmq/pointers/
        split.py). Moving to this client then returns a local leaf whose gradient goes back
        the same way. Raises TypeError for any other keyword (fedmq/pointers/keywords.py)."""
        requires_grad = keywords.check("PointerTensor.move", pysyft, keywords.MOVE,
                                       honoured=("requires_grad",)).get("requires_grad", False)
        self._check_usable()
        if location is self.location or getattr(location, "id", None) == self.location.id:
            if requires_grad and not self.requires_grad_local:
                self.requires_grad_(True)
            return self
        if location is getattr(self.location.network, "local_worker", None) or \
                location is self.owner:
            if requires_grad and self.requires_grad_local:
                origin = self.copy()  # a clone on the worker, in its autograd graph
                return split.local_copy_with_hook(origin, self.get())
            if requires_grad:  # no graph upstream: a local leaf that requires grad
                return self.get().detach().requires_grad_(True)
            return self.get()
        origin = None
        if requires_grad and not self.requires_grad_local:
            self.requires_grad_(True)  # a leaf then (no graph upstream): nothing to link
        elif requires_grad:
            origin = PointerTensor(self.location, self.id_at_location, self.shape_local,
                                   self.dtype_local, True,
                                   owner=self.owner)  # owns the source's copy from now on
            split.set_keep(origin, split.keep_of(self))  # links upstream of the source
        self.location.call(m.ForwardObjects([self.id_at_location], location.id,
                                            keep=origin is not None))
        self._disown()
        self.location = location
        self._wire_ref = None
        self._finalizer = weakref.finalize(self, location.release, self.id_at_location)
        if origin is not None:
            split.link(self, origin)
        return self

    def copy(self) -> "PointerTensor":
        """A new remote object with the same value (`clone` on the worker)."""
        return self.clone()

    def tag(self, *tags: str) -> "PointerTensor":
        self.tags.update(tags)
        return self

    def describe(self, description: str) -> "PointerTensor":
        self.description = description
        return self

    # -- metadata without dispatch ----------------------------------------------------------------
    @property
    def shape_local(self) -> torch.Size:
        with torch._C.DisableTorchFunctionSubclass():
            return self.shape

    @property
    def dtype_local(self) -> torch.dtype:
        with torch._C.DisableTorchFunctionSubclass():
            return self.dtype

    @property
    def requires_grad_local(self) -> bool:
        with torch._C.DisableTorchFunctionSubclass():
            return self.requires_grad

    def __fedmq_pointer_ref__(self, worker_id: str, obj_id: int, tags=(),
                              description: str | None = None) -> m.PointerRef:
        """Describe this pointer, stored as `obj_id` on `worker_id`, as a PointerRef."""
        return m.PointerRef(worker_id, obj_id, tuple(self.shape_local), self.dtype_local,
                            self.requires_grad_local, sorted(tags), description)

    def __fedmq_encode__(self) -> m.PointerRef:
        """Sending a pointer hands over ownership of the remote object to the receiver."""
        self._check_usable()
        self._disown()
        return m.PointerRef(self.location.id, self.id_at_location, tuple(self.shape_local),
                            self.dtype_local, self.requires_grad_local, sorted(self.tags),
                            self.description)

    def describe_pointer(self) -> str:
        owner = getattr(self.owner, "id", self.owner)
        target = f"{self.location.id}:{self.id_at_location}"
        if self.attr:
            target += f".{self.attr}"
        return f"(Wrapper)>[PointerTensor | {owner}:{self.id} -> {target}]"

    def pointer_repr(self) -> str:
        """The pointer line; for tagged or described objects (search results) also PySyft's
        `Tags:` (each followed by a space), `Description:` (first line, cut at 80 characters,
        then "...") and `Shape:` lines, as the seed prints them."""
        text = self.describe_pointer()
        if self.tags:
            text += "\n\tTags: " + "".join(f"{tag} " for tag in sorted(self.tags))
        if self.description is not None:
            lines = self.description.split("\n")
            text += f"\n\tDescription: {lines[0][:80]}..."
        if self.tags or self.description is not None:
            text += f"\n\tShape: {self.shape_local}"
        return text


def one_location(locations: tuple) -> Any:
    if len(locations) != 1:
        raise NotImplementedError("sending to several workers at once is not supported; "
                                  "use .share() to split a tensor across workers")
    return locations[0]


def pointer_from_ref(ref: m.PointerRef, owner: Any, network: Any, id: int | None = None,
                     gc: bool = True) -> PointerTensor:
    if network is None:
        raise PointerError(f"cannot reach worker {ref.location!r} to hold a pointer to it")
    to_pointer = getattr(ref, "to_pointer", None)  # a plan or protocol (fedmq.plans.PlanRef)
    if to_pointer is not None:
        return to_pointer(owner, network, id=id, gc=gc)
    location = network.client(ref.location)
    return PointerTensor(location, ref.id_at_location, tuple(ref.shape), ref.dtype,
                         ref.requires_grad, owner=owner, id=id, gc=gc, tags=ref.tags,
                         description=ref.description)


#: a PointerRef describing a stored object (search results, replies): one implementation
ref_for = m.describe


def materialize(value: Any, owner: Any, network: Any) -> Any:
    """Turn PointerRefs in a reply into pointers owned by `owner` (messages.adopt_all)."""
    return m.adopt_all(value, owner=owner, network=network)


m.register_pointer_factory(pointer_from_ref)
dispatch.use_pointer_class(PointerTensor)
