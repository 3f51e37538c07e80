"""A worker's objects: id -> object, with the tags and description search finds them by."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from fedmq.errors import ObjectNotFoundError
from fedmq.messages import ErrorInfo


@dataclass(slots=True)
class Entry:
    obj: Any
    tags: set[str] = field(default_factory=set)
    description: str | None = None


@dataclass(slots=True, frozen=True)
class FailedResult:
    """Stored in place of the result of a pipelined op that failed, so the failure surfaces
    at the caller's next sync point (get, shape of a data-dependent op, item)."""
    error: ErrorInfo


class ObjectStore:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._entries: dict[int, Entry] = {}
        self._grad_leaves: set[int] = set()  # ids of leaf tensors that require grad
        #: ids of stored objects that reach other workers (pointers, plans, protocols: their
        #: class has `_fedmq_kind`); an op on one of them may send messages
        self._remote: set[int] = set()

    def put(self, obj_id: int, obj: Any, tags=(), description: str | None = None) -> None:
        self._entries[obj_id] = Entry(obj, set(tags or ()), description)
        if isinstance(obj, torch.Tensor) and obj.requires_grad and obj.is_leaf:
            self._grad_leaves.add(obj_id)
        else:
            self._grad_leaves.discard(obj_id)
        if getattr(type(obj), "_fedmq_kind", None) is not None or \
                not isinstance(obj, (torch.Tensor, FailedResult)):
            self._remote.add(obj_id)
        else:
            self._remote.discard(obj_id)

    @property
    def holds_remote_objects(self) -> bool:
        """Whether anything but plain tensors is stored (a pointer, a plan, a protocol...)."""
        return bool(self._remote)

    def entry(self, obj_id: int) -> Entry:
        try:
            return self._entries[obj_id]
        except (KeyError, TypeError):
            raise ObjectNotFoundError(
                f"object {obj_id} is not on worker {self.worker_id!r} (never sent, already "
                f"fetched with .get(), moved, or deleted)", worker=self.worker_id) from None

    def find(self, obj_id: Any) -> Entry | None:
        """The entry stored under `obj_id`, or None."""
        try:
            return self._entries.get(obj_id)
        except TypeError:  # an unhashable id from the wire
            return None

    def get(self, obj_id: int) -> Any:
        return self.entry(obj_id).obj

    def pop(self, obj_id: int) -> Entry:
        entry = self.entry(obj_id)
        del self._entries[obj_id]
        self._grad_leaves.discard(obj_id)
        self._remote.discard(obj_id)
        return entry

    def delete(self, obj_id: int) -> None:
        self._entries.pop(obj_id, None)
        self._grad_leaves.discard(obj_id)
        self._remote.discard(obj_id)

    def clear(self) -> None:
        self._entries.clear()
        self._grad_leaves.clear()
        self._remote.clear()

    def ids_with_grad(self) -> list[int]:
        return [i for i in self._grad_leaves if self._entries[i].obj.grad is not None]

    def search(self, query: list) -> list[tuple[int, Entry]]:
        """Objects matching every item of `query`: an item is an object id or an exact tag.
        An empty query matches every tagged object."""
        hits = []
        for obj_id, entry in self._entries.items():
            if not query:
                if entry.tags:
                    hits.append((obj_id, entry))
                continue
            if all(item == obj_id or item in entry.tags for item in query):
                hits.append((obj_id, entry))
        return hits

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, obj_id: object) -> bool:
        return obj_id in self._entries

    def items(self) -> Iterator[tuple[int, Any]]:
        return ((k, e.obj) for k, e in self._entries.items())

    def items_with_entries(self) -> Iterator[tuple[int, Entry]]:
        """(id, Entry) for every stored object: the object with its tags and description."""
        return iter(list(self._entries.items()))
