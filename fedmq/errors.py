"""Every exception fedmq raises, in one tree.

    FedmqError
    ├── SerdeError              bytes that are not a valid fedmq frame (malformed, truncated,
    │                           unknown type, shape that does not match its payload, ...)
    ├── PointerError            misuse of a pointer caught before anything is sent
    │   │                       (pointers at two locations, a local tensor mixed with a pointer,
    │   │                       a pointer used after .get())
    │   └── OpNotAllowedError   the op is not on the allowlist (also a NotImplementedError)
    ├── TransportError          the message could not be delivered or answered
    │   ├── ReplyTimeout        no reply within the call's timeout (also a TimeoutError)
    │   └── ConnectionLost      the connection closed or dropped while a reply was awaited
    │                           (also a ConnectionError)
    └── RemoteError             the worker received the message and refused or failed it;
        │                       carries the worker id, the op and the worker's own message
        ├── ObjectNotFoundError the id is not in the worker's store (never sent, deleted, got)
        ├── RemoteOpNotAllowed  the worker's allowlist refused the op
        ├── RemoteSerdeError    the worker could not decode what we sent
        │   └── FrameTooLargeError  the frame is larger than the worker accepts
        │                       (--max-frame-bytes); refused before decoding
        ├── RemoteExecutionError the op raised on the worker (shape mismatch, wrong dtype, ...)
        │   └── TimeLimitError  the message ran past the worker's time limit (--max-op-seconds)
        │                       and was stopped between two ops or two training batches
        ├── RemoteCancelledError its sender cancelled the message (a `Cancel`) while it ran
        │                       or waited in the worker's queue
        ├── AccessDeniedError   the worker's policy refuses this principal the action (a
        │                       private value's release, a Fit from a non-coordinator, ...)
        └── QuotaExceededError  the principal's stored bytes or objects on the worker would
                                pass the worker's quota, or one op's results would
                                (refused before the op runs)

Remote errors travel as data (`ErrorInfo(code, message, ...)`); the caller maps the code to a
class through `ERROR_CODES` below. An exception class is never looked up by a name that came
over the wire.
"""
from __future__ import annotations


class FedmqError(Exception):
    """Base class of every fedmq error."""


class SerdeError(FedmqError, ValueError):
    """Bytes that cannot be decoded into allowlisted fedmq values."""


class PointerError(FedmqError):
    """A pointer was used in a way that cannot work; nothing was sent."""


class OpNotAllowedError(PointerError, NotImplementedError):
    """The op is not on fedmq's allowlist, so it cannot run on a pointer."""


class TransportError(FedmqError):
    """The message could not be delivered, or its reply did not arrive."""


class ReplyTimeout(TransportError, TimeoutError):
    """No reply arrived within the call's timeout."""


class ConnectionLost(TransportError, ConnectionError):
    """The connection closed (or the broker dropped it) while a reply was still awaited: the
    message may or may not have been handled."""


#: the name the broker-robustness issue and Python's ConnectionError family suggest
ConnectionLostError = ConnectionLost


class ConnectionBlocked(TransportError):
    """The broker holds this connection's publishes (a memory or disk alarm: RabbitMQ's
    `connection.blocked`): a waiting call fails with this after a few seconds, saying so,
    instead of timing out as if the worker were silent. What was sent goes out once the alarm
    clears."""


class WorkerNotFoundError(TransportError, LookupError):
    """No worker serves this id: its queue does not exist, or nothing consumes it (the worker
    stopped or died). Raised at once when sending, or while waiting for a reply (the waiting
    call checks the worker every second), instead of after the call's whole timeout."""

    def __init__(self, message: str, *, worker: str | None = None) -> None:
        self.worker = worker
        super().__init__(message)


class RemoteError(FedmqError):
    """A worker refused or failed a message. `worker`, `op` and `remote_message` say which."""

    code = "remote_error"
    #: the ErrorInfo the worker recorded for this failure (set by fedmq.execution.execute)
    info = None

    def __init__(self, remote_message: str, *, worker: str | None = None, op: str | None = None):
        self.remote_message = remote_message
        self.worker = worker
        self.op = op
        where = f"worker {worker!r}" if worker else "the worker"
        what = f" running {op}" if op else ""
        super().__init__(f"{where} failed{what}: {remote_message}")


class ObjectNotFoundError(RemoteError, KeyError):
    code = "object_not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class WorkerRestartedError(ObjectNotFoundError):
    """An object is not on its worker because the worker restarted since (replies carry the
    worker's incarnation id, and it changed): everything the worker held in memory is gone;
    send it again."""
    code = "worker_restarted"


class RemoteOpNotAllowed(RemoteError, NotImplementedError):
    code = "op_not_allowed"


class RemoteSerdeError(RemoteError, ValueError):
    code = "serde_error"


class FrameTooLargeError(RemoteSerdeError):
    """The frame (or the chunks of it that arrived) is larger than the worker accepts
    (`fedmq worker --max-frame-bytes`, `Policy.max_frame_bytes`): refused before decoding."""
    code = "frame_too_large"


class RemoteExecutionError(RemoteError, RuntimeError):
    code = "execution_error"


class TimeLimitError(RemoteExecutionError):
    """The message (a Batch of Commands, a plan run, a Fit) ran past the worker's time limit
    (`fedmq worker --max-op-seconds`, `Policy.max_op_seconds`) and was stopped between two ops
    or two training batches; the worker keeps serving. One torch op is never interrupted."""
    code = "time_limit"


class RemoteCancelledError(RemoteError):
    """The sender cancelled the message (`fedmq.messages.Cancel` with its `msg_id`): it was
    stopped between two ops or two training batches, or refused when it came to run."""
    code = "cancelled"


class AccessDeniedError(RemoteError, PermissionError):
    """The worker's policy refuses the sending principal this action: fetching or replying
    with a private value the release policy keeps in, modifying the data owner's data, a `Fit`
    from a principal not granted `coordinator`, acting on behalf of another principal
    without being a trusted peer. (An object the principal may not see at all is reported as
    not found instead, so its existence does not leak.)"""
    code = "access_denied"


class QuotaExceededError(RemoteError, MemoryError):
    """Storing this would pass the principal's quota of bytes or objects on the worker (or
    one op would allocate more than it may); nothing was stored, nothing else is disturbed."""
    code = "quota_exceeded"


ERROR_CODES: dict[str, type[RemoteError]] = {
    cls.code: cls
    for cls in (RemoteError, ObjectNotFoundError, WorkerRestartedError, RemoteOpNotAllowed,
                RemoteSerdeError, FrameTooLargeError, RemoteExecutionError, TimeLimitError,
                RemoteCancelledError, AccessDeniedError, QuotaExceededError)
}


def remote_error_from(code: str, message: str, worker: str | None, op: str | None) -> RemoteError:
    """Build the exception for an error that a worker reported as data."""
    return ERROR_CODES.get(code, RemoteError)(message, worker=worker, op=op)
