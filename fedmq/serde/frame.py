"""The frame: one message as bytes.

    b"FMQ1" | u32 n | n x (u64 offset, u64 length) | u32 header length | msgpack header | data

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


def join_frame(header: bytes, buffers: list[memoryview]) -> bytes:
    table = bytearray()
    offset = 0
    for buf in buffers:
        table += _SPAN.pack(offset, len(buf))
        offset += len(buf)
    return b"".join([MAGIC, _U32.pack(len(buffers)), bytes(table), _U32.pack(len(header)),
                     header, *buffers])


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
    data = view[data_start:]
    buffers = []
    for offset, length in spans:
        if offset + length > len(data):
            raise SerdeError(f"truncated frame: a buffer of {length} bytes at {offset} runs past "
                             f"the {len(data)} bytes of data")
        buffers.append(data[offset:offset + length])
    return view[header_start:data_start], buffers
