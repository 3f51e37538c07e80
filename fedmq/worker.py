"""A worker: an object store plus `handle(message) -> Reply | None`. No transport code here.

`VirtualWorker` (in-process) and the RabbitMQ worker service feed this same class the same
frames; `handle_frame` is the whole server side: decode, dispatch on the message type, encode.
"""
from __future__ import annotations

import collections
import logging
import secrets
import threading
from typing import Any, Callable, NamedTuple, Protocol

import torch

from fedmq import errors, limits, messages as m, principals, serde
from fedmq.dataset_info import describe_datasets
from fedmq.execution import earlier_failure, error_info, resolve, run_command
from fedmq.policy import RELEASES, Policy
from fedmq.principals import Acting
from fedmq.store import FailedResult, ObjectStore, StoreView, size_of

log = logging.getLogger("fedmq.worker")


class Network(Protocol):
    """How a worker reaches other workers (for `.move()` and pointers to pointers)."""
    local_worker: Any

    def client(self, worker_id: str) -> Any: ...

    def flush_all(self) -> None: ...


#: what `Worker.is_light` lets a service run on its event loop: store messages, and ops on at
#: most LIGHT_ELEMENTS input elements in all (a matmul of two 90 x 90 matrices), LIGHT_MESSAGES
#: to a batch, no int literal above LIGHT_LITERAL, no backward pass
LIGHT_TYPES = (m.ObjectsCount, m.WorkerStats, m.DeleteObjects, m.SearchRequest)
LIGHT_ELEMENTS = 16384
LIGHT_MESSAGES = 64
LIGHT_LITERAL = 4096
HEAVY_OPS = frozenset({"Tensor.backward"})

#: cancels that came before their message, remembered per principal (the oldest are forgotten,
#: so one principal's Cancels never push out another's)
MAX_EARLY_CANCELS = 1024
#: the largest frame `Worker.handle_control_frame` reads (a Cancel is ~100 bytes)
CONTROL_FRAME = 4096

#: handlers extensions add for their own message types: {type: fn(session, message) -> value}
EXTRA_HANDLERS: dict[type, Callable[["Session", Any], Any]] = {}


def register_handler(message_type: type, handler: Callable[["Session", Any], Any]) -> None:
    """Let every worker answer `message_type` (plans, protocols, federated training, ...).
    The handler gets the message's `Session` (the worker as the sending principal sees it)."""
    if message_type in EXTRA_HANDLERS:
        raise RuntimeError(f"{message_type.__name__} already has a handler")
    EXTRA_HANDLERS[message_type] = handler


#: message types extensions let a service handle on its event loop when small:
#: {type: fn(message) -> the values it reads (Refs, inline tensors, numbers), or None if it
#: is never light}; see Worker._is_light
LIGHT_EXTRAS: dict[type, Callable[[Any], "tuple | list | None"]] = {}


def register_light(message_type: type, values: Callable[[Any], "tuple | list | None"]) -> None:
    """Let a service run `message_type` on its event loop (two thread switches fewer per call)
    when the values `values(message)` returns (Refs to stored tensors, inline tensors, numbers)
    hold at most LIGHT_ELEMENTS elements in all: for a message whose handler is local tensor
    work proportional to its inputs, like an SMPC protocol round."""
    if LIGHT_EXTRAS.get(message_type, values) is not values:
        raise RuntimeError(f"{message_type.__name__} already has a light check")
    LIGHT_EXTRAS[message_type] = values


class Failure(str):
    """Why a message failed ("code: message"), knowing the decoded message's type (for the
    dead-letter copy's x-fedmq-message-type: the AMQP `type` property is the sender's claim)."""
    message_type: str | None = None

    def __new__(cls, reason: str, message_type: str | None = None) -> "Failure":
        self = super().__new__(cls, reason)
        self.message_type = message_type
        return self


class Session:
    """One message as a worker handles it: the worker, with `store` the sending principal's
    view of its store (fedmq.store.StoreView) and `principal`/`acting` saying whose message
    it is. Handlers, the worker's own and extensions', get a Session where they used to get the
    worker: every other attribute is the worker's."""
    __slots__ = ("worker", "store", "principal", "acting", "delegated")

    def __init__(self, worker: "Worker", store: StoreView, acting: Acting | None = None,
                 delegated: bool = False) -> None:
        self.worker = worker
        self.store = store
        self.principal = store.principal
        self.acting = acting
        #: a peer worker sent this on the principal's behalf (it may only store objects)
        self.delegated = delegated

    @property
    def id(self) -> str:
        return self.worker.id

    @property
    def network(self) -> Any:
        return self.worker.network

    @property
    def policy(self) -> Policy:
        return self.worker.store.policy

    def require(self, role: str, what: str) -> None:
        """Raise AccessDeniedError unless this message's principal holds `role`."""
        if not self.policy.allows(role, self.principal):
            raise errors.AccessDeniedError(
                f"principal {self.principal!r} may not {what} on worker {self.id!r} (the data "
                f"owner grants it with --grant {role}:{self.principal})", worker=self.id)

    def as_owner(self) -> "Session":
        """This message with the data owner's view of the store (a Fit reads the owner's data
        for a coordinator that may not see it itself)."""
        store = self.worker.store
        return Session(self.worker, store.view(store.policy.owner), self.acting)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)

    def __repr__(self) -> str:
        return f"<Session worker={self.id!r} principal={self.principal!r}>"


class Undecodable(NamedTuple):
    """What `Worker.decode_frame` returns for bytes that are no fedmq frame: the error reply,
    and why (for the dead-letter copy)."""
    reply: bytes
    reason: str


class Worker:
    """id: the worker's name (its queue is fedmq.worker.<id>).
    network: how it reaches other workers (None: it cannot).
    policy: who may do what here (fedmq.policy.Policy; default `Policy.open()`, the seed's
        in-process behaviour; `fedmq worker` builds a closed one from its options)."""

    def __init__(self, id: str, network: Network | None = None,
                 policy: Policy | None = None) -> None:
        self.id = id
        self.network = network
        self.store = ObjectStore(id, policy)
        self.message_count = 0
        #: this worker's incarnation: new at every start, sent with every reply
        self.incarnation = secrets.randbits(63)
        #: (principal, msg_id) -> the Budget of a message being handled (Cancel finds it here)
        self._running: dict[tuple, limits.Budget] = {}
        #: (principal, msg_id) cancelled before they came (refused when they do)
        self._early_cancels: dict[str, collections.OrderedDict[int, None]] = {}
        self._cancel_lock = threading.Lock()
        self._handlers: dict[type, Callable[[Any], Any]] = {
            m.ObjectMessage: self._on_objects,
            m.GetRequest: self._on_get,
            m.DeleteObjects: self._on_delete,
            m.Command: self._on_command,
            m.ForwardObjects: self._on_forward,
            m.ObjectsCount: lambda session, msg: len(session.store),
            m.SearchRequest: self._on_search,
            m.ClearObjects: lambda session, msg: session.store.clear(),
            m.Batch: self._on_batch,
            m.ListObjects: self._on_list,
            m.WorkerStats: self._on_stats,
            m.Cancel: lambda session, msg: self.cancel(session.principal, msg.msg_id),
        }

    @property
    def policy(self) -> Policy:
        return self.store.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.store.policy = policy

    def register(self, message_type: type, handler: Callable[[Session, Any], Any]) -> None:
        """Add a handler `handler(session, message)` for another message type."""
        if message_type in self._handlers:
            raise RuntimeError(f"{message_type.__name__} already has a handler")
        self._handlers[message_type] = handler

    # -- the whole server side ------------------------------------------------------------------
    def handle_frame(self, frame: bytes, login: str | None = None) -> bytes:
        """Decode a frame, handle it for the principal `login` (the transport's authenticated
        sender; None: this process itself, as the data owner), and encode the reply. Never
        raises for bad input."""
        return self.handle_frame_checked(frame, login)[0]

    def handle_frame_checked(self, frame: bytes, login: str | None = None
                             ) -> tuple[bytes, str | None]:
        """`handle_frame`, also saying why the message failed (services dead-letter it with
        that reason), or None when it did not."""
        envelope = self.decode_frame(frame)
        if type(envelope) is Undecodable:
            return envelope.reply, envelope.reason
        return self.respond(envelope, login)

    #: the handle_frame `light_reply` stands in for (fedmq.transport.local: a subclass that
    #: overrides handle_frame, or an instance whose handle_frame is replaced, is not answered
    #: through light_reply)
    LIGHT_OF = handle_frame

    def light_reply(self, frame: bytes | bytearray, login: str | None = None
                    ) -> tuple[tuple[bytes, str | None] | None, Any]:
        """For a caller that may answer quick messages on its own thread (a service's event
        loop, the in-process transport's caller): (`respond`'s (encoded reply, why it
        failed), None) for a frame that cannot be decoded or that `is_light` calls quick and
        local, handled here and now; else (None, its decoded envelope), for `respond` on the
        worker's own thread."""
        envelope = self.decode_frame(frame)
        if type(envelope) is Undecodable:
            return (envelope.reply, envelope.reason), None
        if self.is_light(envelope, login):
            return self.respond(envelope, login), None
        return None, envelope

    def decode_frame(self, frame: bytes | bytearray) -> Any:
        """The frame's Envelope, or `Undecodable` holding the encoded error reply: for bytes
        that are no fedmq frame ("serde_error"), and, without reading them, for a frame larger
        than `Policy.max_frame_bytes` ("frame_too_large", FrameTooLargeError at the caller).
        What decoding allocates is bounded by the frame's size (fedmq.serde.codec)."""
        self.message_count += 1
        limit = self.store.policy.max_frame_bytes
        if limit is not None and len(frame) > limit:
            why = (f"a frame of {len(frame)} bytes is over the limit of worker {self.id!r}, "
                   f"{limit} bytes (--max-frame-bytes); it was not read")
            log.warning("worker %s: refused a message: %s", self.id, why)
            return Undecodable(serde.encode(m.Reply(
                error=m.ErrorInfo("frame_too_large", why, self.id),
                incarnation=self.incarnation)), f"frame_too_large: {why}")
        try:
            return serde.decode(frame)
        except errors.SerdeError as exc:
            log.warning("worker %s: undecodable message: %s", self.id, exc)
            return Undecodable(serde.encode(m.Reply(
                error=m.ErrorInfo("serde_error", str(exc), self.id),
                incarnation=self.incarnation)), f"serde_error: {exc}")

    # -- cancellation ---------------------------------------------------------------------------
    def cancel(self, principal: str, msg_id: Any) -> bool:
        """Cancel message `msg_id` (its `Envelope.msg_id`) of `principal` (see `m.Cancel`):
        True if it is being handled now (it stops at its next check, fedmq.limits), False if
        not (it is refused if it comes later). Thread-safe: a service calls it on its event
        loop while the message runs on its op thread. Raises RemoteSerdeError for msg_id 0."""
        if type(msg_id) is not int or msg_id == 0:
            raise errors.RemoteSerdeError("Cancel names the msg_id of a message (not 0)",
                                          worker=self.id)
        key = (principal, msg_id)
        with self._cancel_lock:
            budget = self._running.get(key)
            if budget is not None:
                budget.cancelled = True
            else:
                early = self._early_cancels.setdefault(principal, collections.OrderedDict())
                early[msg_id] = None
                while len(early) > MAX_EARLY_CANCELS:
                    early.popitem(last=False)
        log.info("worker %s: principal %s cancelled message %s (%s)", self.id, principal, msg_id,
                 "running: it stops at its next check" if budget is not None
                 else "not running: refused if it comes")
        return budget is not None

    def running_messages(self) -> list[tuple[str, int]]:
        """(principal, msg_id) of every message being handled now that a Cancel can stop."""
        with self._cancel_lock:
            return list(self._running)

    def handle_control_frame(self, frame: bytes | bytearray, login: str | None = None
                             ) -> bytes | None:
        """The encoded reply to `frame` if it is a `Cancel` (handled at once, whatever this
        worker is running: a service calls this on its event loop, an in-process transport
        without taking the worker's lock), else None (handle it as any other message). Never
        raises."""
        if len(frame) > CONTROL_FRAME:
            return None
        try:
            envelope = serde.decode(frame)
        except errors.SerdeError:
            return None
        if type(envelope) is not m.Envelope or type(envelope.message) is not m.Cancel or \
                envelope.version != m.WIRE_VERSION:
            return None
        self.message_count += 1
        policy = self.store.policy
        try:
            principal = envelope.on_behalf or policy.owner if login is None else \
                policy.principal_for(login, envelope.on_behalf)
            if login is not None and principal != login:  # a peer: it may only store objects
                raise PermissionError("a peer worker may only store objects and delete them on "
                                      "a principal's behalf, not send Cancel")
            reply = m.Reply(value=self.cancel(principal, envelope.message.msg_id))
        except PermissionError as exc:
            reply = self._error("access_denied", str(exc))
        except errors.RemoteError as exc:
            reply = m.Reply(error=error_info(exc, self.id))
        reply.incarnation = self.incarnation
        return serde.encode(reply)

    def _budget(self, envelope: m.Envelope, session: Session) -> limits.Budget:
        """The Budget of a message about to be handled, registered under its msg_id for
        Cancel (already cancelled if its Cancel came first)."""
        policy = self.store.policy
        msg_id = envelope.msg_id
        budget = limits.Budget(self.id, session.principal, msg_id,
                               seconds=policy.max_op_seconds, view=session.store,
                               max_op_bytes=policy.max_op_bytes)
        if msg_id and type(msg_id) is int:
            key = (session.principal, msg_id)
            with self._cancel_lock:
                early = self._early_cancels.get(session.principal)
                if early is not None and msg_id in early:
                    del early[msg_id]
                    budget.cancelled = True
                self._running[key] = budget
        return budget

    def _finished(self, budget: limits.Budget) -> None:
        if budget.msg_id and type(budget.msg_id) is int:
            with self._cancel_lock:
                key = (budget.principal, budget.msg_id)
                if self._running.get(key) is budget:
                    del self._running[key]

    def session(self, envelope: Any, login: str | None = None) -> Session:
        """The Session `envelope` is handled in: the principal is `login` (checked by the
        transport), or the principal a trusted peer forwards for (`Envelope.on_behalf`);
        login None is this process itself. Raises AccessDeniedError for an on-behalf claim
        from a principal that is not a peer worker."""
        store = self.store
        policy = store.policy
        on_behalf = getattr(envelope, "on_behalf", None)
        if login is None:
            principal = on_behalf or policy.owner
        else:
            try:
                principal = policy.principal_for(login, on_behalf)
            except PermissionError as exc:
                raise errors.AccessDeniedError(str(exc), worker=self.id) from None
        if type(principal) is not str:
            raise errors.AccessDeniedError("the message names no principal", worker=self.id)
        acting = Acting(principal, may_forward_private=self._may_forward_private,
                        guard=None if principal == policy.owner else store.guard_writes,
                        release=policy.release)
        view = store.view(principal, acting)
        private = getattr(envelope, "private", None)
        if private:  # it carries private values (from a peer worker)
            kind, _, origin = str(private).partition(":")
            if origin not in RELEASES or RELEASES.index(policy.release) > RELEASES.index(origin):
                raise errors.AccessDeniedError(
                    f"private values from a worker that releases {origin or '?'} cannot be "
                    f"stored here: worker {self.id!r} releases more (--release "
                    f"{policy.release})", worker=self.id)
            view.base_taint = view.op_tainted = acting.tainted = True
            if kind == "raw":
                view.base_raw = view.op_raw = view.result_raw = acting.raw = True
        return Session(self, view, acting, delegated=login is not None and principal != login)

    def _may_forward_private(self, worker_id: str) -> bool:
        return self.store.policy.allows("worker", worker_id)

    def respond(self, envelope: Any, login: str | None = None) -> tuple[bytes, str | None]:
        """Handle a decoded envelope for the principal `login` (see `session`): the encoded
        reply, and why the message failed (None if it did not). Never raises: a message whose
        fields have the wrong types (which decoding cannot see) is answered with a
        serde_error."""
        try:
            if not isinstance(envelope, m.Envelope):
                reply = self.handle(envelope)
            else:
                session = self.session(envelope, login)
                budget = self._budget(envelope, session)
                try:
                    if budget.cancelled:
                        reply = self._error("cancelled", f"{type(envelope.message).__name__} "
                                                         f"{envelope.msg_id} was cancelled by "
                                                         f"its sender before it ran")
                    else:
                        with principals.acting(session.acting), limits.running(budget):
                            reply = self.handle(envelope, session)
                            if self.network is not None:
                                # commands this worker pipelined to others while handling it
                                # go out now, on behalf of the same principal
                                self.network.flush_all()
                finally:
                    self._finished(budget)
        except errors.AccessDeniedError as exc:
            reply = self._error("access_denied", exc.remote_message)
        except Exception as exc:  # a malformed message: refused, and the worker keeps serving
            what = type(getattr(envelope, "message", envelope)).__name__
            reply = self._error("serde_error", f"malformed {what}: {type(exc).__name__}: {exc}")
        reply.incarnation = self.incarnation
        message = getattr(envelope, "message", None)
        failed = _failure(reply, message)
        if failed is not None and message is not None:
            failed = Failure(failed, type(message).__name__)
        try:
            return serde.encode(reply), failed
        except errors.SerdeError as exc:
            why = f"the result cannot be sent back: {exc}"
            return serde.encode(m.Reply(error=m.ErrorInfo("serde_error", why, self.id),
                                        incarnation=self.incarnation)), f"serde_error: {why}"

    def is_light(self, envelope: Any, login: str | None = None) -> bool:
        """Whether `envelope` may be handled on a service's event loop (see `_is_light`);
        False for anything malformed (the op thread's answer then says what is wrong)."""
        try:
            return self._is_light(envelope, login)
        except Exception:
            return False

    def _is_light(self, envelope: Any, login: str | None = None) -> bool:
        """Whether handling `envelope` is certainly quick and stays on this worker, so a service
        may run it on its event loop instead of its op thread (saving two thread switches on
        every small call). True only for store messages and ops whose tensor inputs hold at
        most LIGHT_ELEMENTS elements in all, with no large literal (a size or a repeat count),
        and no backward pass, while nothing but plain tensors is stored (an op on a stored
        pointer may send messages and wait for replies)."""
        if not isinstance(envelope, m.Envelope) or self.store.holds_remote_objects:
            return False
        store = self.store.view(self.store.policy.principal_for(
            login, envelope.on_behalf)) if login is not None else self.store
        message = envelope.message
        items = message.messages if type(message) is m.Batch else (message,)
        if len(items) > LIGHT_MESSAGES:
            return False
        budget = LIGHT_ELEMENTS
        made: set = set()  # results of this batch's earlier commands
        for item in items:
            kind = type(item)
            if kind is m.Command:
                if item.op in HEAVY_OPS:
                    return False
                budget = self._light_budget(store, item.args, budget)
                if item.kwargs:
                    budget = self._light_budget(store, tuple(item.kwargs.values()), budget)
                made.update(item.result_ids)
            elif kind is m.GetRequest:
                # reading a result of this batch back (`(x + 1).get()`) is light; a stored
                # object counts with its size
                stored = tuple(m.Ref(i) if type(i) is int else i for i in item.ids
                               if i not in made)
                budget = self._light_budget(store, stored, budget, missing_ok=True)
            elif kind in LIGHT_EXTRAS:
                values = LIGHT_EXTRAS[kind](item)
                if values is None:
                    return False
                budget = self._light_budget(store, values, budget, tensors=True)
            elif kind not in LIGHT_TYPES:
                return False
            if budget < 0:
                return False
        return True

    def _light_budget(self, store: Any, values: tuple | list, budget: int,
                      missing_ok: bool = False, tensors: bool = False) -> int:
        """`budget` less the elements of every stored tensor `values` refer to (and, with
        `tensors`, of every inline tensor); -1 for a large literal, an id not stored
        (`missing_ok`: it fails quickly), or anything else that makes the cost unknown."""
        for value in values:
            kind = type(value)
            if kind is m.Ref:
                entry = store.find(value.id)
                if entry is None:  # made earlier in the same batch, of unknown size (or absent)
                    if missing_ok:
                        continue
                    return -1
                obj = entry.obj
                if isinstance(obj, FailedResult):
                    continue
                budget -= obj.numel()
            elif kind is int:
                if value > LIGHT_LITERAL:
                    return -1
            elif kind is tuple or kind is list:
                budget = self._light_budget(store, value, budget, missing_ok, tensors)
            elif tensors and kind is torch.Tensor:
                budget -= value.numel()
            elif kind is not float and kind is not bool and value is not None and \
                    kind is not str:
                return -1
            if budget < 0:
                return -1
        return budget

    def handle(self, envelope: Any, session: Session | None = None) -> m.Reply:
        """The Reply to `envelope`, handled in `session` (default: as this process itself)."""
        if not isinstance(envelope, m.Envelope):
            return self._error("serde_error", f"expected an Envelope, got "
                                              f"{type(envelope).__name__}")
        if envelope.version != m.WIRE_VERSION:
            return self._error("serde_error", f"wire version {envelope.version} is not "
                                              f"supported (this worker speaks {m.WIRE_VERSION})")
        # Released ids: their pointers are dead. Commands in the same envelope may still read
        # them (they were buffered while the pointer lived) or create them (a result's pointer
        # can die before its batch is sent), so deletes run after a Command or Batch, and
        # before anything else (so ObjectsCount and friends see an up-to-date store).
        if session is None:
            session = self.owner_session()
        if session.delegated and not _delegable(envelope.message):
            return self._error("access_denied", f"a peer worker may only store objects and "
                                                f"delete them on a principal's behalf, not send "
                                                f"{type(envelope.message).__name__}")
        store = session.store
        after = type(envelope.message) in (m.Command, m.Batch)
        if not after:
            for obj_id in envelope.release:
                store.delete(obj_id)
        reply = self.handle_message(envelope.message, session)
        if after:
            for obj_id in envelope.release:
                store.delete(obj_id)
        return reply

    def owner_session(self) -> Session:
        """A Session for this process itself (the data owner): direct in-process calls."""
        return Session(self, self.store.view(self.store.policy.owner))

    def handle_message(self, message: Any, session: Session | None = None) -> m.Reply:
        if session is None:
            session = self.owner_session()
        if type(message) is m.Batch and message.reply_last and message.messages:
            errors_seen = self._on_batch(session, m.Batch(message.messages[:-1]))
            last = self.handle_message(message.messages[-1], session)
            return m.Reply(value=m.BatchReply(errors_seen, last.value), error=last.error)
        handler = self._handlers.get(type(message))
        if handler is None and type(message) in EXTRA_HANDLERS:
            handler = self._handlers[type(message)] = EXTRA_HANDLERS[type(message)]
        if handler is None:
            return self._error("serde_error", f"no handler for message type "
                                              f"{type(message).__name__}")
        try:
            return m.Reply(value=handler(session, message))
        except Exception as exc:  # refused, or the op itself failed: report it, keep serving
            # (a failed op has already recorded its failure under its result ids: execution.py)
            info = error_info(exc, self.id, getattr(message, "op", None))
            log.info("worker %s: %s%s", self.id, f"{info.op}: " if info.op else "", info.message)
            return m.Reply(error=info)

    def _error(self, code: str, text: str, op: str | None = None) -> m.Reply:
        log.info("worker %s: %s%s", self.id, f"{op}: " if op else "", text)
        return m.Reply(error=m.ErrorInfo(code, text, self.id, op))

    # -- handlers -------------------------------------------------------------------------------
    def _on_objects(self, session: Session, msg: m.ObjectMessage) -> None:
        store = session.store
        if store.policy.max_bytes is not None or store.policy.max_objects is not None:
            # all or nothing: the whole message against the quota first
            new = {item.id for item in msg.objects if _hashable_id(item.id) and
                   store.find(item.id) is None}
            store.check_room(sum(size_of(item.obj) for item in msg.objects), len(new))
        for item in msg.objects:
            obj = item.obj
            if isinstance(obj, m.PointerRef):  # a pointer handed to us: we own it now
                obj = m.adopt(obj, owner=self, network=self.network, id=item.id)
            store.put(item.id, obj, item.tags, item.description)

    def _on_get(self, session: Session, msg: m.GetRequest) -> list:
        store = session.store
        values = []
        for obj_id in msg.ids:
            if isinstance(obj_id, m.Ref):  # an attribute (a gradient): copied, never deleted
                store.releasable(obj_id.id)
                values.append(resolve(obj_id, store))
                continue
            entry = store.entry(obj_id)
            if entry.private or store.lookup(obj_id)[1]:  # refused alike, failed or not
                store.releasable(obj_id)
            if isinstance(entry.obj, FailedResult):
                store.delete(obj_id)
                err = entry.obj.error
                raise errors.remote_error_from(err.code, earlier_failure(err.message),
                                               self.id, err.op)
            values.append(store.releasable(obj_id).obj)
        if msg.delete:
            for obj_id in msg.ids:
                if not isinstance(obj_id, m.Ref):
                    store.delete(obj_id)
        return values

    def _on_batch(self, session: Session, msg: m.Batch) -> list:
        errors_seen = []
        for index, message in enumerate(msg.messages):
            if isinstance(message, m.Batch):
                errors_seen.append([index, m.ErrorInfo("serde_error", "nested batch", self.id)])
                continue
            reply = self.handle_message(message, session)
            if reply.error is not None:
                errors_seen.append([index, reply.error])
        return errors_seen

    def _on_stats(self, session: Session, msg: m.WorkerStats) -> dict:
        # Asking is not counted: `message_count` is the same whether read in-process or remotely.
        self.message_count -= 1
        stats = {"message_count": self.message_count, "objects": len(session.store)}
        if msg.datasets:
            stats["datasets"] = describe_datasets(self.store.items_with_entries()) \
                if session.policy.shares_statistics(session.principal) else None
        return stats

    def _on_list(self, session: Session, msg: m.ListObjects) -> dict:
        """Every object the principal may see: its value, or a description where the value is
        a pointer, a failure, or private data the release policy keeps in."""
        store = session.store
        out = {}
        for obj_id, entry, raw in store.items_with_origin():
            obj = entry.obj
            if getattr(type(obj), "_fedmq_kind", None) == "pointer":  # describe; ownership stays
                obj = m.describe(obj.location.id, obj.id_at_location, obj, entry.tags,
                                 entry.description)
            elif (raw or entry.private) and not store.is_owner and \
                    not store.policy.releases(raw or entry.raw):
                # the owner's data is described (its shape is no secret); what was computed
                # from it is not: its shape, or whether computing it failed, would tell
                obj = m.describe(self.id, obj_id, obj, entry.tags, entry.description) if raw \
                    else "<private: computed from private data>"
            elif isinstance(obj, FailedResult):
                obj = f"<failed: {obj.error.message}>"
            out[obj_id] = obj
        return out

    def _on_delete(self, session: Session, msg: m.DeleteObjects) -> None:
        for obj_id in msg.ids:
            session.store.delete(obj_id)

    def _on_command(self, session: Session, msg: m.Command) -> Any:
        return run_command(msg, session.store, self.id)

    def _on_forward(self, session: Session, msg: m.ForwardObjects) -> None:
        if self.network is None:
            raise errors.RemoteExecutionError("this worker cannot reach other workers",
                                              worker=self.id)
        store = session.store
        entries = [(obj_id, store.entry(obj_id)) for obj_id in msg.ids]
        target = self.network.client(msg.to)
        target.call(m.ObjectMessage([m.StoredObject(obj_id, e.obj, sorted(e.tags),
                                                    e.description) for obj_id, e in entries]),
                    sender=self.id)
        if not msg.keep:
            for obj_id, _ in entries:
                store.delete(obj_id)

    def _on_search(self, session: Session, msg: m.SearchRequest) -> list:
        query = msg.query if isinstance(msg.query, list) else [msg.query]
        store = session.store
        hidden = not store.is_owner and store.policy.release != "all"
        return [m.describe(self.id, obj_id, e.obj, e.tags, e.description)
                for obj_id, e in store.search(query)
                if not (hidden and e.private and not store.policy.releases(e.raw))]

    def __repr__(self) -> str:
        return f"<Worker id:{self.id} #objects:{len(self.store)}>"


#: what a peer worker may send on a principal's behalf: objects to store (a move, a plan's
#: forwarded outputs, SMPC deals) and deletes. Anything that reads, runs or lists would give the
#: peer that principal's rights over everything it holds here.
DELEGABLE = (m.ObjectMessage, m.DeleteObjects)


def _hashable_id(value: Any) -> bool:
    return type(value) is int


def _delegable(message: Any) -> bool:
    if type(message) is m.Batch:
        return all(type(item) in DELEGABLE for item in message.messages)
    return type(message) in DELEGABLE


def _failure(reply: m.Reply, message: Any) -> str | None:
    """Why the message `reply` answers failed ("code: message"), or None: the reply's error, or
    the first failed command of a batch."""
    if reply.error is not None:
        return f"{reply.error.code}: {reply.error.message}"
    if type(message) is m.Batch:
        value = reply.value
        errors_ = value.errors if isinstance(value, m.BatchReply) else value
        if errors_:
            try:
                index, info = errors_[0]
                return (f"{len(errors_)} of {len(message.messages)} batched messages failed; "
                        f"#{index}: {info.code}: {info.message}")
            except Exception:  # noqa: BLE001 - a malformed batch: say so, never raise
                return "batched messages failed"
    return None
