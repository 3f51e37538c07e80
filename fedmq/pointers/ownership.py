"""What every pointer kind shares: it owns its remote object until `.get()` or a send."""
from __future__ import annotations

from fedmq.errors import PointerError


class OwnedRemote:
    """Mixin for pointers (tensors, plans, protocols). Subclasses set `_what` and hold
    `location`, `id_at_location`, `_finalizer` (deletes the remote object when the pointer
    dies) and `_consumed` (set by `.get()`)."""

    _what = "object"

    @property
    def garbage_collect_data(self) -> bool:
        """Whether dropping this pointer deletes its remote object."""
        return self._finalizer is not None and self._finalizer.alive

    def _disown(self) -> None:
        """Stop owning the remote object (it was fetched, or handed to someone else)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _check_usable(self) -> None:
        if self._consumed:
            raise PointerError(f"this pointer to {self._what} {self.id_at_location} on "
                               f"{self.location.id!r} was already used by .get()")
