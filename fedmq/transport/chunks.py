"""Big frames in chunks: how a frame is cut (`split_chunks`), and how chunks become a frame
again (`ChunkAssembler`), with every header checked and partial frames bounded in time and in
bytes, per sender and in all. Used by the RabbitMQ transport and the worker service; no broker
code here, so `import fedmq` stays free of aio-pika."""
from __future__ import annotations

import collections
import time
from typing import Callable

from fedmq.errors import TransportError

#: frames above this many bytes travel in chunks (RabbitMQ's max_message_size is 128 MiB)
CHUNK_SIZE = 64 * 1024 * 1024
#: the smallest chunk size accepted (bytes)
MIN_CHUNK_SIZE = 4096


def check_chunk_size(chunk_size: int) -> int:
    """`chunk_size` if it is a sane chunk size in bytes (at least 4 KiB), else ValueError."""
    if type(chunk_size) is not int or chunk_size < MIN_CHUNK_SIZE:
        raise ValueError(f"a chunk size is a number of bytes of at least {MIN_CHUNK_SIZE}, "
                         f"got {chunk_size!r}")
    return chunk_size


def split_chunks(frame: bytes | bytearray, chunk_size: int) -> list[memoryview]:
    view = memoryview(frame)
    return [view[i:i + chunk_size] for i in range(0, max(len(view), 1), chunk_size)]


#: most chunks one frame may declare (64 MiB chunks: 4 TiB)
MAX_CHUNKS = 1 << 16
#: frames refused as too large whose later chunks are recognised (and refused at once)
MAX_REFUSED = 1024
#: bytes of incomplete frames one sender may have waiting (its next chunk over it is refused)
MAX_PARTIAL_BYTES = 2 * 1024 * 1024 * 1024
#: bytes of incomplete frames all senders together may have waiting: a sender is named by
#: what it publishes (its reply-to, until user ids are enforced), so many "senders" could
#: otherwise hold MAX_PARTIAL_BYTES each
MAX_PARTIAL_TOTAL = 2 * MAX_PARTIAL_BYTES
#: incomplete frames one sender may have waiting, and all senders together: bytes alone do not
#: bound them (70 000 one-byte first chunks held a worker's whole prefetch window)
MAX_PARTIAL_FRAMES = 16
MAX_PARTIAL_FRAMES_TOTAL = 256


class ChunkError(TransportError):
    """A chunk whose headers make no sense (or whose sender holds too much partial data): the
    frame it belongs to is given up. `code` is the error code a worker answers with."""
    code = "chunk_error"

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(reason)


class FrameTooLarge(ChunkError):
    """A chunked frame whose chunks declare, or add up to, more bytes than the receiver
    accepts (`max_frame_bytes`): given up before the rest of it arrives."""
    code = "frame_too_large"


class ChunkAssembler:
    """Collects the chunks of big frames: `add(...)` returns the whole frame when complete.
    A frame whose other chunks never come (they expired in the queue, or the sender died)
    is given up by `expire(max_age)`, so partial frames cannot pile up in memory; neither can
    one sender's (`max_partial_bytes`). Headers are checked: `add` raises ChunkError (and
    forgets that frame) for a chunk count or index that is not a sane integer, a count that
    differs between chunks of one frame, or a chunk sent twice with different bytes (the same
    bytes twice is a chunk published again after its confirm was lost: ignored).

    `max_frame_bytes` (None: no limit) refuses a frame larger than that many bytes as soon as
    that is known (FrameTooLarge): from the chunks that arrived, or from what its chunk count
    declares. Every chunk of a frame but the last has the same size (`split_chunks`), so a
    frame of N chunks holding a chunk of S bytes that is not its last is at least
    (N - 1) * S + 1 bytes long."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, *,
                 max_partial_bytes: int = MAX_PARTIAL_BYTES,
                 max_total_bytes: int = MAX_PARTIAL_TOTAL,
                 max_frame_bytes: int | None = None,
                 max_partial_frames: int = MAX_PARTIAL_FRAMES,
                 max_frames_total: int = MAX_PARTIAL_FRAMES_TOTAL) -> None:
        self._parts: dict[str, dict[int, bytes]] = {}
        self._first_seen: dict[str, float] = {}
        self._total: dict[str, int] = {}
        self._owner: dict[str, str] = {}
        self._held: dict[str, int] = {}  # sender -> bytes in its incomplete frames
        self._arrived: dict[str, int] = {}  # frame -> bytes of its chunks that arrived
        #: frames refused as too large: their later chunks are refused at once
        self._too_large: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.max_partial_bytes = max_partial_bytes
        self.max_total_bytes = max_total_bytes
        self.max_frame_bytes = max_frame_bytes
        self._held_total = 0
        self._frames: dict[str, int] = {}  # sender -> its incomplete frames
        self.max_partial_frames = max_partial_frames
        self.max_frames_total = max_frames_total
        self._clock = clock

    def add(self, headers: dict | None, body: bytes, sender: str = "") -> bytes | bytearray | None:
        headers = headers or {}
        total = headers.get("x-fedmq-chunks")
        if total is None:
            return body
        key = headers.get("x-fedmq-frame")
        if type(key) is not str or not key:
            raise ChunkError("", f"a chunk needs a frame id (x-fedmq-frame), got {key!r}")
        index = headers.get("x-fedmq-chunk", 0)
        if key in self._too_large:
            raise FrameTooLarge(key, self._too_large[key])
        if type(total) is not int or not 1 <= total <= MAX_CHUNKS:
            self.forget(key)
            raise ChunkError(key, f"chunk count {total!r} is not an integer in 1..{MAX_CHUNKS}")
        if type(index) is not int or not 0 <= index < total:
            self.forget(key)
            raise ChunkError(key, f"chunk index {index!r} is not an integer in 0..{total - 1}")
        if key in self._total and self._total[key] != total:
            expected = self._total[key]
            self.forget(key)
            raise ChunkError(key, f"frame {key} was announced in {expected} chunks, this chunk "
                                  f"says {total}")
        parts = self._parts.setdefault(key, {})
        if index in parts:
            if parts[index] == body:  # published again after a lost confirm: a duplicate
                return None
            self.forget(key)
            raise ChunkError(key, f"chunk {index} of frame {key} arrived twice, different")
        limit = self.max_frame_bytes
        if limit is not None:
            arrived = self._arrived.get(key, 0) + len(body)
            declared = (total - 1) * len(body) + 1 if index < total - 1 else arrived
            if max(arrived, declared) > limit:
                self.forget(key)
                how = "its chunk count declares" if declared > arrived else "its chunks add up to"
                reason = (f"frame {key} ({total} chunks) is over this worker's limit of {limit} "
                          f"bytes a frame (--max-frame-bytes): {how} at least "
                          f"{max(arrived, declared)} bytes")
                self._too_large[key] = reason
                while len(self._too_large) > MAX_REFUSED:
                    self._too_large.popitem(last=False)
                raise FrameTooLarge(key, reason)
        completes = len(parts) + 1 == total  # the frame leaves the assembler at once
        if key not in self._owner and not completes:  # a new incomplete frame
            if self._frames.get(sender, 0) >= self.max_partial_frames:
                self._parts.pop(key, None)
                raise ChunkError(key, f"sender {sender or '?'} already has "
                                      f"{self.max_partial_frames} incomplete frames waiting")
            if len(self._owner) >= self.max_frames_total:
                self._parts.pop(key, None)
                raise ChunkError(key, f"this worker has {self.max_frames_total} incomplete "
                                      f"frames waiting (from all senders)")
            self._frames[sender] = self._frames.get(sender, 0) + 1
        owner = self._owner.setdefault(key, sender)
        if not completes and self._held.get(owner, 0) + len(body) > self.max_partial_bytes:
            self.forget(key)
            raise ChunkError(key, f"sender {owner or '?'} has over {self.max_partial_bytes} "
                                  f"bytes of incomplete frames waiting")
        if not completes and self._held_total + len(body) > self.max_total_bytes:
            self.forget(key)
            raise ChunkError(key, f"this worker has over {self.max_total_bytes} bytes of "
                                  f"incomplete frames waiting (from all senders)")
        self._total[key] = total
        self._first_seen.setdefault(key, self._clock())
        parts[index] = body
        self._arrived[key] = self._arrived.get(key, 0) + len(body)
        self._held[owner] = self._held.get(owner, 0) + len(body)
        self._held_total += len(body)
        if len(parts) < total:
            return None
        frame = bytearray().join(parts[i] for i in range(total))
        self.forget(key)
        return frame

    def forget(self, key: str) -> None:
        """Drop what arrived of frame `key`."""
        parts = self._parts.pop(key, None)
        owner = self._owner.pop(key, None)
        if owner is not None:
            left = self._frames.get(owner, 0) - 1
            if left > 0:
                self._frames[owner] = left
            else:
                self._frames.pop(owner, None)
        if parts:
            self._held_total -= sum(len(b) for b in parts.values())
        if parts and owner is not None:
            left = self._held.get(owner, 0) - sum(len(b) for b in parts.values())
            if left > 0:
                self._held[owner] = left
            else:
                self._held.pop(owner, None)
        self._first_seen.pop(key, None)
        self._total.pop(key, None)
        self._arrived.pop(key, None)

    def expire(self, max_age: float) -> list[str]:
        """Drop the frames whose first chunk came more than `max_age` seconds ago; their keys."""
        if not self._first_seen:
            return []
        now = self._clock()
        stale = [key for key, seen in self._first_seen.items() if now - seen > max_age]
        for key in stale:
            self.forget(key)
        return stale

    def held(self, sender: str | None = "") -> int:
        """Bytes of `sender`'s incomplete frames (None: of every sender's)."""
        if sender is None:
            return self._held_total
        return self._held.get(sender, 0)

    def __len__(self) -> int:
        return len(self._parts)
