"""A worker's objects: id -> object, with the tags and description search finds them by, kept
in one *space* per principal.

Every object belongs to the principal whose message created it, and lives in that principal's
space. A message is handled through a `StoreView` for its principal (`ObjectStore.view`): the
view reads and writes the principal's own space, and, for a principal the policy grants
`scientist`, also reads the data owner's space (the worker's private data). Anything else does
not exist for it: an id in another principal's space is "not found", with the same words as an
id that was never used, so existence does not leak, and ids are never shared across spaces
(a principal cannot overwrite, delete or clear another's objects: it only ever writes its own
space).

Private data: the data owner's space is private as a whole (`raw`); an object computed from
private data is marked `private` (derived) when stored. A view records, per op, whether it read
private data (`op_tainted`), and results stored by that op are marked; it also marks the
message's `Acting` record, so whatever the worker sends on carries the mark.

Quotas (`Policy.max_bytes`, `max_objects`) are per principal; the owner's space is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from fedmq.errors import AccessDeniedError, ObjectNotFoundError, QuotaExceededError
from fedmq.messages import ErrorInfo
from fedmq.policy import Policy
from fedmq.principals import Acting


@dataclass(slots=True)
class Entry:
    obj: Any
    tags: set[str] = field(default_factory=set)
    description: str | None = None
    #: computed from private data (the owner's space is private as a whole)
    private: bool = False
    #: bytes counted against the principal's quota
    nbytes: int = 0
    #: the data owner's raw data itself, copied or rearranged (a move, a view, a clone): what
    #: `--release derived` still keeps in
    raw: bool = False


@dataclass(slots=True, frozen=True)
class FailedResult:
    """Stored in place of the result of a pipelined op that failed, so the failure surfaces
    at the caller's next sync point (get, shape of a data-dependent op, item)."""
    error: ErrorInfo


class Space:
    """One principal's objects."""
    __slots__ = ("principal", "entries", "grad_leaves", "nbytes", "version")

    def __init__(self, principal: str) -> None:
        self.principal = principal
        self.entries: dict[int, Entry] = {}
        self.grad_leaves: set[int] = set()  # ids of leaf tensors that require grad
        self.nbytes = 0
        self.version = 0  # changes whenever an entry is stored or removed


def size_of(obj: Any, depth: int = 0) -> int:
    """Bytes `obj` holds, as a quota counts them: a tensor's elements; a string's or bytes'
    length; 8 bytes an item of a container plus its items; the fields of a record (a plan
    and its state); everything past a few levels at 64 bytes an object."""
    if isinstance(obj, torch.Tensor):
        if getattr(type(obj), "_fedmq_kind", None) is not None:
            return 0  # a pointer: its data is elsewhere
        return obj.numel() * obj.element_size()
    if obj is None or isinstance(obj, (int, float, bool)):
        return 8
    if isinstance(obj, (str, bytes, bytearray)):
        return len(obj) + 8
    if depth > 8:
        return 64
    if isinstance(obj, dict):
        return 8 * len(obj) + sum(size_of(k, depth + 1) + size_of(v, depth + 1)
                                  for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return 8 * len(obj) + sum(size_of(v, depth + 1) for v in obj)
    slots = getattr(type(obj), "__slots__", None)
    fields = slots if isinstance(slots, (tuple, list)) else getattr(obj, "__dict__", {})
    return sum(size_of(getattr(obj, name, None), depth + 1) for name in fields)


class ObjectStore:
    """Every space of one worker. Used directly (`worker.store.put(...)`, as `fedmq worker`
    loads its dataset), it acts as the data owner's view; messages go through `view()`."""

    def __init__(self, worker_id: str, policy: Policy | None = None) -> None:
        self.worker_id = worker_id
        self._spaces: dict[str, Space] = {}
        #: (principal, id) of stored objects that reach other workers (pointers, plans,
        #: protocols: their class has `_fedmq_kind`); an op on one of them may send messages
        self._remote: set[tuple[str, int]] = set()
        self._protected: tuple[int, frozenset] = (-1, frozenset())
        self.policy = policy or Policy.open()

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Set the policy; a new owner takes over the old owner's space (the data loaded
        before the policy was known)."""
        old = getattr(self, "_policy", None)
        if old is not None and old.owner != policy.owner and old.owner in self._spaces:
            if self._spaces.get(policy.owner, None) is not None and \
                    self._spaces[policy.owner].entries:
                raise ValueError(f"cannot make {policy.owner!r} the data owner: it already "
                                 f"stores objects of its own on {self.worker_id!r}")
            space = self._spaces.pop(old.owner)
            space.principal = policy.owner
            self._spaces[policy.owner] = space
            self._remote = {(policy.owner if who == old.owner else who, i)
                            for who, i in self._remote}
        self._policy = policy
        self._owner_view = StoreView(self, policy.owner)

    def space(self, principal: str) -> Space:
        space = self._spaces.get(principal)
        if space is None:
            space = self._spaces[principal] = Space(principal)
        return space

    def view(self, principal: str, acting: Acting | None = None) -> "StoreView":
        """The store as `principal` sees it (for one message; `acting` gets the taint)."""
        if principal == self._policy.owner and acting is None:
            return self._owner_view
        return StoreView(self, principal, acting)

    @property
    def holds_remote_objects(self) -> bool:
        """Whether anything but plain tensors is stored (a pointer, a plan, a protocol...)."""
        return bool(self._remote)

    def total(self) -> int:
        """Objects in every space."""
        return sum(len(s.entries) for s in self._spaces.values())

    def protected_storages(self) -> frozenset:
        """The storage addresses of the data owner's tensors: what no other principal may
        write, through whatever view or alias it holds of them."""
        space = self._spaces.get(self._policy.owner)
        if space is None:
            return frozenset()
        version, storages = self._protected
        if version != space.version:
            storages = frozenset(
                ptr for e in space.entries.values() if isinstance(e.obj, torch.Tensor)
                and getattr(type(e.obj), "_fedmq_kind", None) is None
                and (ptr := e.obj.untyped_storage().data_ptr()))
            self._protected = (space.version, storages)
        return storages

    def guard_writes(self, op: str, tensors: list) -> None:
        """Raise AccessDeniedError if any of `tensors` shares storage with the owner's data."""
        protected = self.protected_storages()
        if not protected:
            return
        for tensor in tensors:
            try:
                ptr = tensor.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # no storage (a pointer, a meta tensor)
                continue
            if ptr in protected:
                raise AccessDeniedError(f"{op} would modify the data owner's private data; only "
                                        f"the owner may", worker=self.worker_id, op=op)

    def usage(self, principal: str) -> tuple[int, int]:
        """(bytes, objects) `principal` stores here."""
        space = self._spaces.get(principal)
        return (0, 0) if space is None else (space.nbytes, len(space.entries))

    # -- the data owner's view (what `fedmq worker` and in-process code use directly) -----------
    def put(self, obj_id: int, obj: Any, tags=(), description: str | None = None) -> None:
        self._owner_view.put(obj_id, obj, tags, description, private=False)

    def entry(self, obj_id: int) -> Entry:
        return self._owner_view.entry(obj_id)

    def find(self, obj_id: Any) -> Entry | None:
        return self._owner_view.find(obj_id)

    def get(self, obj_id: int) -> Any:
        return self._owner_view.entry(obj_id).obj

    def pop(self, obj_id: int) -> Entry:
        return self._owner_view.pop(obj_id)

    def delete(self, obj_id: int) -> None:
        self._owner_view.delete(obj_id)

    def clear(self) -> None:
        """Forget every object of every principal."""
        for space in self._spaces.values():
            space.entries.clear()
            space.grad_leaves.clear()
            space.nbytes = 0
            space.version += 1
        self._remote.clear()

    def ids_with_grad(self) -> list[int]:
        return self._owner_view.ids_with_grad()

    def search(self, query: list) -> list[tuple[int, Entry]]:
        return self._owner_view.search(query)

    def __len__(self) -> int:
        return self.total()

    def __contains__(self, obj_id: object) -> bool:
        return any(obj_id in s.entries for s in self._spaces.values()
                   if _hashable(obj_id))

    def items(self) -> Iterator[tuple[int, Any]]:
        """(id, object) of every object of every principal."""
        return ((k, e.obj) for s in list(self._spaces.values())
                for k, e in list(s.entries.items()))

    def items_with_entries(self) -> Iterator[tuple[int, Entry]]:
        return self._owner_view.items_with_entries()


def _storage_ptr(tensor: Any) -> int:
    """The address of a plain tensor's memory (0 for None, a pointer, a meta tensor)."""
    if not isinstance(tensor, torch.Tensor) or getattr(type(tensor), "_fedmq_kind", None):
        return 0
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class StoreView:
    """What one principal may see and do in a worker's store (see the module's docstring).

    Same interface as the store itself: `entry`, `find`, `get`, `put`, `pop`, `delete`,
    `clear`, `search`, `items_with_entries`, `ids_with_grad`, `len()`, `in`."""
    __slots__ = ("store", "principal", "worker_id", "policy", "acting", "is_owner", "_own",
                 "_shared", "op_tainted", "base_taint", "read_shared", "op_raw", "base_raw",
                 "result_raw")

    def __init__(self, store: ObjectStore, principal: str, acting: Acting | None = None) -> None:
        self.store = store
        self.principal = principal
        self.worker_id = store.worker_id
        self.policy = policy = store.policy
        self.acting = acting
        self.is_owner = principal == policy.owner
        self._own = store.space(principal)
        self._shared = store.space(policy.owner) if not self.is_owner and \
            policy.allows("scientist", principal) else None
        #: whether the current op read private data (results it stores are marked private)
        self.op_tainted = False
        #: what op_tainted starts from (True while storing what a private message carried)
        self.base_taint = False
        #: whether the current op read raw data (the owner's, or a copy of it), and whether
        #: what it stores is raw data still (a view, a clone, a move of it)
        self.op_raw = self.base_raw = self.result_raw = False
        #: the owner's tensors the current op read (checked for modification after it ran)
        self.read_shared: list | None = None

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, obj_id: Any) -> tuple[Entry | None, bool]:
        """(entry, raw): the entry `obj_id` names for this principal (None if it may not see
        one), and whether it is the data owner's (raw private data)."""
        try:
            entry = self._own.entries.get(obj_id)
        except TypeError:  # an unhashable id from the wire
            return None, False
        if entry is None and self._shared is not None:
            entry = self._shared.entries.get(obj_id)
            if entry is not None:
                return entry, True
        return entry, False

    def not_found(self, obj_id: Any) -> ObjectNotFoundError:
        return ObjectNotFoundError(
            f"object {obj_id} is not on worker {self.worker_id!r} (never sent, already "
            f"fetched with .get(), moved, or deleted)", worker=self.worker_id)

    def entry(self, obj_id: int) -> Entry:
        entry, raw = self.lookup(obj_id)
        if entry is None:
            raise self.not_found(obj_id)
        if raw or entry.private:
            self.taint(raw, entry.obj, entry.raw)
        return entry

    def find(self, obj_id: Any) -> Entry | None:
        """The entry stored under `obj_id`, or None (does not count as reading it)."""
        return self.lookup(obj_id)[0]

    def get(self, obj_id: int) -> Any:
        """The object under `obj_id`. The owner's tensors reach another principal detached
        from autograd: its backward pass never writes their gradients."""
        entry, raw = self.lookup(obj_id)
        if entry is None:
            raise self.not_found(obj_id)
        obj = entry.obj
        if raw or entry.private:
            self.taint(raw, obj, entry.raw)
            if raw and isinstance(obj, torch.Tensor) and obj.requires_grad:
                return obj.detach()
        return obj

    def taint(self, raw: bool = False, obj: Any = None, copy: bool = False) -> None:
        """The current op read private data (`raw`: the owner's own `obj`; `copy`: a copy of
        raw data the principal holds)."""
        self.op_tainted = True
        if raw or copy:
            self.op_raw = True
        if self.acting is not None:
            self.acting.tainted = True
            if raw or copy:
                self.acting.raw = True
        if raw and self.read_shared is not None and isinstance(obj, torch.Tensor):
            self.read_shared.append((obj, obj._version))

    def begin_op(self) -> None:
        """A new op starts: its results are private only if it reads private data."""
        self.op_tainted = self.base_taint
        self.op_raw = self.result_raw = self.base_raw
        self.read_shared = [] if self._shared is not None else None

    def check_unmodified(self, op: str | None) -> None:
        """Raise if the op that just ran modified the owner's data in place (the allowlist's
        in-place guard should have refused it first: this is the backstop)."""
        for tensor, version in self.read_shared or ():
            if tensor._version != version:
                raise AccessDeniedError(f"{op or 'the op'} modified the data owner's data in "
                                        f"place; only the owner may", worker=self.worker_id,
                                        op=op)

    def check_writable(self, obj_id: Any, op: str | None = None) -> None:
        """Raise unless this principal may modify object `obj_id` in place (its own)."""
        entry, raw = self.lookup(obj_id)
        if entry is None:
            raise self.not_found(obj_id)
        if raw:
            raise AccessDeniedError(f"object {obj_id} is the data owner's private data: only the "
                                    f"owner may modify it", worker=self.worker_id, op=op)

    def releasable(self, obj_id: Any) -> Entry:
        """The entry under `obj_id`, if its value may leave the worker in the clear for this
        principal (a get, a reply carrying it); raises AccessDeniedError for private data the
        release policy keeps in, ObjectNotFoundError for what the principal cannot see."""
        entry, raw = self.lookup(obj_id)
        if entry is None:
            raise self.not_found(obj_id)
        raw = raw or entry.raw
        if (raw or entry.private) and not self.is_owner and not self.policy.releases(raw):
            raise AccessDeniedError(self.release_refusal(obj_id, raw), worker=self.worker_id)
        return entry

    def release_refusal(self, what: Any, raw: bool) -> str:
        kind = "is (or holds a copy of) the data owner's private data" if raw else \
            "was computed from private data"
        releases = "no private values" if self.policy.release == "none" else \
            "only values computed from its private data, never the data itself"
        return (f"object {what} {kind}; worker {self.worker_id!r} releases {releases} "
                f"(--release {self.policy.release})")

    def may_release_tainted(self, raw: bool | None = None) -> bool:
        """Whether a value the current op computed may leave in the clear (a reply)."""
        return not self.op_tainted or self.is_owner or self.policy.releases(
            self.result_raw if raw is None else raw)

    # -- writing ----------------------------------------------------------------------------------
    def put(self, obj_id: int, obj: Any, tags=(), description: str | None = None,
            private: bool | None = None) -> None:
        """Store `obj` under `obj_id` in this principal's space (replacing its own object of
        that id, never another principal's). `private` None: whether the current op read
        private data. Raises QuotaExceededError past the principal's quota."""
        space = self._own
        nbytes = 0 if isinstance(obj, FailedResult) else size_of(obj)
        old = space.entries.get(obj_id)
        if not self.is_owner:
            self._check_quota(space, nbytes - (old.nbytes if old else 0), 0 if old else 1)
        if private is None:
            private = self.op_tainted
        raw = private and self.result_raw
        space.entries[obj_id] = Entry(obj, set(tags or ()), description, private, nbytes, raw)
        space.nbytes += nbytes - (old.nbytes if old else 0)
        space.version += 1
        if isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf:
            space.grad_leaves.add(obj_id)
        else:
            space.grad_leaves.discard(obj_id)
        key = (self.principal, obj_id)
        if getattr(type(obj), "_fedmq_kind", None) is not None or \
                not isinstance(obj, (torch.Tensor, FailedResult)):
            self.store._remote.add(key)
        elif self.store._remote:
            self.store._remote.discard(key)

    def _check_quota(self, space: Space, more_bytes: int, more_objects: int) -> None:
        policy = self.policy
        if policy.max_bytes is not None and more_bytes > 0 and \
                space.nbytes + more_bytes > policy.max_bytes:
            raise QuotaExceededError(
                f"storing {more_bytes} more bytes would pass principal {self.principal!r}'s "
                f"quota on worker {self.worker_id!r}: {space.nbytes} of {policy.max_bytes} "
                f"bytes in use (delete objects, or ask for a larger --max-bytes)",
                worker=self.worker_id)
        if policy.max_objects is not None and more_objects > 0 and \
                len(space.entries) + more_objects > policy.max_objects:
            raise QuotaExceededError(
                f"principal {self.principal!r} already stores {len(space.entries)} objects on "
                f"worker {self.worker_id!r}, its quota (--max-objects {policy.max_objects})",
                worker=self.worker_id)

    def mark_private(self, obj_id: Any) -> None:
        """Mark this principal's own object `obj_id` as holding values computed from private
        data (an op that read private data wrote into it)."""
        entry = self._own.entries.get(obj_id)
        if entry is not None:
            entry.private = True

    def mark_private_memory(self, tensors: list) -> None:
        """Mark private every object of this principal whose tensor (or gradient) shares
        memory with one of `tensors`: whatever a view or an alias of it was written through."""
        ptrs = set()
        for tensor in tensors:
            ptr = _storage_ptr(tensor)
            if ptr:
                ptrs.add(ptr)
        if not ptrs:
            return
        for entry in self._own.entries.values():
            obj = entry.obj
            if isinstance(obj, torch.Tensor) and not entry.private and (
                    _storage_ptr(obj) in ptrs or _storage_ptr(obj.grad) in ptrs):
                entry.private = True

    def check_room(self, more_bytes: int, more_objects: int) -> None:
        """Raise QuotaExceededError unless this principal may store that much more (so that a
        message storing many objects is refused whole, not half stored)."""
        if not self.is_owner:
            self._check_quota(self._own, more_bytes, more_objects)

    def room(self) -> int | None:
        """Bytes this principal may still store here (None: no limit)."""
        if self.is_owner or self.policy.max_bytes is None:
            return None
        return max(0, self.policy.max_bytes - self._own.nbytes)

    def pop(self, obj_id: int) -> Entry:
        """Remove and return this principal's own object (another's: not found)."""
        try:
            entry = self._own.entries.pop(obj_id)
        except (KeyError, TypeError):
            raise self.not_found(obj_id) from None
        self._forget(obj_id, entry)
        return entry

    def delete(self, obj_id: int) -> None:
        """Forget this principal's own object `obj_id` (anything else: nothing happens)."""
        try:
            entry = self._own.entries.pop(obj_id, None)
        except TypeError:
            return
        if entry is not None:
            self._forget(obj_id, entry)

    def _forget(self, obj_id: int, entry: Entry) -> None:
        self._own.nbytes -= entry.nbytes
        self._own.version += 1
        self._own.grad_leaves.discard(obj_id)
        if self.store._remote:
            self.store._remote.discard((self.principal, obj_id))

    def clear(self) -> None:
        """Forget every object of this principal (nobody else's)."""
        for obj_id in list(self._own.entries):
            self.delete(obj_id)

    # -- listing -------------------------------------------------------------------------------
    def ids_with_grad(self) -> list[int]:
        entries = self._own.entries
        return [i for i in self._own.grad_leaves if entries[i].obj.grad is not None]

    def _visible(self) -> Iterator[tuple[int, Entry, bool]]:
        for obj_id, entry in list(self._own.entries.items()):
            yield obj_id, entry, False
        if self._shared is not None:
            for obj_id, entry in list(self._shared.entries.items()):
                yield obj_id, entry, True

    def search(self, query: list) -> list[tuple[int, Entry]]:
        """Objects this principal may see matching every item of `query`: an item is an
        object id or an exact tag. An empty query matches every tagged object."""
        hits = []
        for obj_id, entry, _ in self._visible():
            if not query:
                if entry.tags:
                    hits.append((obj_id, entry))
                continue
            if all(item == obj_id or item in entry.tags for item in query):
                hits.append((obj_id, entry))
        return hits

    def items_with_entries(self) -> Iterator[tuple[int, Entry]]:
        """(id, Entry) for every object this principal may see."""
        return iter([(obj_id, entry) for obj_id, entry, _ in self._visible()])

    def items_with_origin(self) -> list[tuple[int, Entry, bool]]:
        """(id, Entry, raw) for every object this principal may see."""
        return list(self._visible())

    def items(self) -> Iterator[tuple[int, Any]]:
        return ((obj_id, entry.obj) for obj_id, entry, _ in self._visible())

    @property
    def holds_remote_objects(self) -> bool:
        return self.store.holds_remote_objects

    def __len__(self) -> int:
        return len(self._own.entries)

    def __contains__(self, obj_id: object) -> bool:
        return self.lookup(obj_id)[0] is not None
