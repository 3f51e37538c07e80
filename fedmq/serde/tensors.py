"""Tensors on the wire: a small fixed header in a msgpack ext, the raw bytes out of band.

Header (little endian): dtype code (u8), flags (u8), ndim (u8), data buffer index (u32),
grad buffer index (u32, 0xFFFFFFFF = no grad), then ndim x i64 sizes. The bytes themselves go into
the frame's buffer table (see `frame.py`), so a 1.7 MB state dict is copied once on encode and
once on decode, and never hex- or base64-encoded. Each buffer backs one tensor (or gradient)
only: a frame naming one twice is refused.
"""
from __future__ import annotations

import struct
import sys

import numpy as np
import torch

from fedmq.errors import SerdeError

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
    raise ImportError("fedmq's wire format assumes a little-endian host")

# Codes are part of the wire format: never renumber, only append.
DTYPES: dict[int, torch.dtype] = {
    1: torch.bool, 2: torch.uint8, 3: torch.int8, 4: torch.int16, 5: torch.int32,
    6: torch.int64, 7: torch.float16, 8: torch.bfloat16, 9: torch.float32, 10: torch.float64,
    11: torch.complex64, 12: torch.complex128, 13: torch.uint16, 14: torch.uint32,
    15: torch.uint64, 16: torch.complex32,
}
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in DTYPES.items()}
ITEMSIZE: dict[torch.dtype, int] = {dtype: dtype.itemsize for dtype in DTYPES.values()}

FLAG_REQUIRES_GRAD = 1
FLAG_PARAMETER = 2
NO_GRAD = 0xFFFFFFFF
MAX_NDIM = 64
_HEAD = struct.Struct("<BBBII")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's elements as a read-only byte view, copying only if it is not contiguous."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.numel() == 0:
        return memoryview(b"")
    flat = t.reshape(-1)
    if flat.stride(0) != 1:  # a true strided view, or one element with a stride torch ignores
        flat = flat.as_strided((1,), (1,)) if flat.numel() == 1 else flat.contiguous()
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def pack_header(t: torch.Tensor, data_index: int, grad_index: int | None) -> bytes:
    try:
        code = DTYPE_CODES[t.dtype]
    except KeyError:
        raise SerdeError(f"tensors of dtype {t.dtype} cannot be sent") from None
    if t.device.type != "cpu":
        raise SerdeError(f"only CPU tensors can be sent (got a tensor on {t.device})")
    flags = (FLAG_REQUIRES_GRAD if t.requires_grad else 0)
    if isinstance(t, torch.nn.Parameter):
        flags |= FLAG_PARAMETER
    shape = tuple(t.shape)
    return _HEAD.pack(code, flags, len(shape), data_index,
                      NO_GRAD if grad_index is None else grad_index) + struct.pack(
        f"<{len(shape)}q", *shape)


def unpack_tensor(header: bytes, buffers: list[memoryview],
                  used: set[int] | None = None) -> torch.Tensor:
    """The tensor a header describes, its bytes taken from `buffers`. `used`: the buffer indexes
    earlier tensors of the same frame took; each buffer may back one tensor only (an encoder
    never shares one; a frame that names a buffer twice could make a read-only frame copy it
    again and again). Raises SerdeError."""
    if len(header) < _HEAD.size:
        raise SerdeError("truncated tensor header")
    code, flags, ndim, data_index, grad_index = _HEAD.unpack_from(header)
    if code not in DTYPES:
        raise SerdeError(f"unknown tensor dtype code {code}")
    if ndim > MAX_NDIM or len(header) != _HEAD.size + 8 * ndim:
        raise SerdeError(f"tensor header of {len(header)} bytes does not hold {ndim} dimensions")
    shape = struct.unpack_from(f"<{ndim}q", header, _HEAD.size)
    if any(s < 0 for s in shape):
        raise SerdeError(f"negative size in tensor shape {shape}")
    dtype = DTYPES[code]
    value = _tensor_from(buffers, data_index, shape, dtype, used)
    if grad_index != NO_GRAD:
        grad = _tensor_from(buffers, grad_index, shape, dtype, used)
    if flags & FLAG_PARAMETER:
        value = torch.nn.Parameter(value, requires_grad=bool(flags & FLAG_REQUIRES_GRAD))
    elif flags & FLAG_REQUIRES_GRAD:
        if not (dtype.is_floating_point or dtype.is_complex):
            raise SerdeError(f"a {dtype} tensor cannot require grad")
        value.requires_grad_(True)
    if grad_index != NO_GRAD:
        value.grad = grad
    return value


def _tensor_from(buffers: list[memoryview], index: int, shape: tuple[int, ...],
                 dtype: torch.dtype, used: set[int] | None = None) -> torch.Tensor:
    if index >= len(buffers):
        raise SerdeError(f"tensor refers to buffer {index}, the frame has {len(buffers)}")
    if used is not None:
        if index in used:
            raise SerdeError(f"buffer {index} backs two tensors (a frame names each once)")
        used.add(index)
    raw = buffers[index]
    numel = 1
    for s in shape:
        numel *= s
    itemsize = ITEMSIZE[dtype]
    if numel * itemsize != len(raw):
        raise SerdeError(f"tensor of shape {tuple(shape)} and dtype {dtype} needs "
                         f"{numel * itemsize} bytes, the payload has {len(raw)}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    if not raw.readonly:  # a writable frame (bytearray): alias it, no copy, if aligned
        aliased = torch.frombuffer(raw, dtype=dtype)
        if aliased.data_ptr() % max(16, itemsize) == 0:
            return aliased.reshape(shape)
    out = torch.empty(len(raw), dtype=torch.uint8)
    out.numpy()[:] = np.frombuffer(raw, dtype=np.uint8)
    return out.view(dtype).reshape(shape)
