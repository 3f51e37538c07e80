"""The frame: one message as bytes.

    b"FMQ1" | u32 n | n x (u64 offset, u64 length) | u32 header length | msgpack header
            | zero padding to a multiple of 64 | data (each buffer at a 64-byte aligned offset)

The msgpack header holds the message (see `codec.py`); tensors in it name a buffer by index and
their bytes follow the header, so big payloads are neither copied into msgpack nor escaped.
Decoding checks every length and offset against the frame before touching the data.
"""
from __future__ import annotations

import struct

from fedmq.errors import SerdeError

MAGIC = b"FMQ1"
MAX_BUFFERS = 1 << 20
_U32 = struct.Struct("<I")
_SPAN = struct.Struct("<QQ")


ALIGN = 64


def join_frame(header: bytes, buffers: list[memoryview]) -> bytearray:
    """One frame, as a bytearray: writable, so a decoder in the same process can hand out
    tensors that alias it instead of copying. Buffers start at 64-byte aligned offsets."""
    table = bytearray()
    parts: list = []
    offset = 0
    for buf in buffers:
        pad = -offset % ALIGN
        if pad:
            parts.append(bytes(pad))
            offset += pad
        table += _SPAN.pack(offset, len(buf))
        parts.append(buf)
        offset += len(buf)
    head = [MAGIC, _U32.pack(len(buffers)), bytes(table), _U32.pack(len(header)), header]
    lead = sum(len(h) for h in head)
    return bytearray().join(head + [bytes(-lead % ALIGN)] + parts) if buffers else \
        bytearray().join(head)


def split_frame(frame: bytes | bytearray | memoryview) -> tuple[memoryview, list[memoryview]]:
    """Return (msgpack header, buffers) of a frame, or raise SerdeError."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise SerdeError(f"a frame is bytes, not {type(frame).__name__}")
    view = memoryview(frame).cast("B")
    if len(view) < 12 or bytes(view[:4]) != MAGIC:
        raise SerdeError("not a fedmq frame (bad magic or too short)")
    (count,) = _U32.unpack_from(view, 4)
    if count > MAX_BUFFERS:
        raise SerdeError(f"frame declares {count} buffers")
    pos = 8 + count * _SPAN.size
    if pos + 4 > len(view):
        raise SerdeError("truncated frame: buffer table runs past the end")
    spans = [_SPAN.unpack_from(view, 8 + i * _SPAN.size) for i in range(count)]
    (header_len,) = _U32.unpack_from(view, pos)
    header_start = pos + 4
    data_start = header_start + header_len
    if data_start > len(view):
        raise SerdeError("truncated frame: header runs past the end")
    if count:
        data_start += -data_start % ALIGN
    data = view[data_start:]
    buffers = []
    for offset, length in spans:
        if offset + length > len(data):
            raise SerdeError(f"truncated frame: a buffer of {length} bytes at {offset} runs past "
                             f"the {len(data)} bytes of data")
        buffers.append(data[offset:offset + length])
    return view[header_start:header_start + header_len], buffers
