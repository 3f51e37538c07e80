"""msgpack with fedmq's extension types; the only way bytes become objects in fedmq.

Decoding builds nothing but msgpack's plain types (no timestamps) and the ext types below; records (messages,
references, error reports) must have been registered with `@record(code)`. There is no pickle,
no import of names from the wire, and every size is checked (see `tensors.py`, `frame.py`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

import msgpack
import numpy as np
import torch

from fedmq.errors import SerdeError
from fedmq.serde import tensors
from fedmq.serde.frame import join_frame, split_frame

# Ext type codes (part of the wire format: never renumber).
EXT_TENSOR = 1
EXT_BIGINT = 2
EXT_TUPLE = 3
EXT_SLICE = 4
EXT_ELLIPSIS = 5
EXT_DTYPE = 6
EXT_SIZE = 7
EXT_DEVICE = 8
EXT_RECORD = 9
EXT_MEMORY_FORMAT = 10
EXT_COMPLEX = 11
EXT_SET = 12
EXT_REF = 13

MAX_HEADER = 256 * 1024 * 1024
_MEMORY_FORMATS = {1: torch.contiguous_format, 2: torch.preserve_format,
                   3: torch.channels_last, 4: torch.channels_last_3d}
_MEMORY_FORMAT_CODES = {v: k for k, v in _MEMORY_FORMATS.items()}

_RECORDS: dict[int, type] = {}
_RECORD_CODES: dict[type, int] = {}
_RECORD_FIELDS: dict[type, tuple[str, ...]] = {}
_RECORD_CHECKS: dict[type, tuple] = {}  # filled on a record type's first decode

T = TypeVar("T")


def record(code: int) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as a wire record under `code` (its fields travel in order)."""

    def register(cls: type[T]) -> type[T]:
        if code in _RECORDS:
            raise RuntimeError(f"record code {code} is taken by {_RECORDS[code].__name__}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a wire record")
        _RECORDS[code] = cls
        _RECORD_CODES[cls] = code
        _RECORD_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return cls

    return register


class _Marker:
    """Decoded form of a marker ext: only meaningful as the first item of an array."""
    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


# Structured values travel as msgpack arrays led by an empty marker ext: [<mark>, items...].
# One packer and one unpacker handle the whole message (no nested msgpack calls).
_MARKS = {code: msgpack.ExtType(code, b"") for code in
          (EXT_TUPLE, EXT_SLICE, EXT_SIZE, EXT_RECORD, EXT_COMPLEX, EXT_SET)}
_MARKERS = {code: _Marker(code) for code in _MARKS}
_Timestamp = msgpack.Timestamp
_Ref: type = type(None)  # fedmq.messages.Ref, once messages registers it (see use_ref_type)


def use_ref_type(cls: type) -> type:
    """Give object references (fedmq.messages.Ref) their compact ext type."""
    global _Ref
    _Ref = cls
    return cls
_T_MARK, _R_MARK = _MARKS[EXT_TUPLE], _MARKS[EXT_RECORD]


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """msgpack.ExtType(code, data) without its argument checks (ours are always valid): ids
    and references are packed this way dozens of times per message."""
    return tuple.__new__(msgpack.ExtType, (code, data))


class _Encoder:
    """Packs one frame; tensors' bytes are collected as out-of-band buffers."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def pack(self, obj: Any) -> bytes:
        return msgpack.packb(obj, default=self.default, strict_types=True, use_bin_type=True)

    def add_buffer(self, buf: memoryview) -> int:
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def default(self, obj: Any) -> Any:  # noqa: C901 - a flat type switch reads best
        cls = type(obj)
        if cls is int:  # only ints outside 64 bits reach here (object ids, mostly)
            if obj.bit_length() > 4096:
                raise SerdeError("integer too large to send")
            return _ext(EXT_BIGINT, obj.to_bytes((obj.bit_length() + 8) // 8, "little",
                                                 signed=True))
        if cls is _Ref and type(obj.id) is int and 0 <= obj.id < 1 << 128:
            # the most frequent record on the wire: 16 id bytes, then the attribute name
            data = obj.id.to_bytes(16, "little")
            return _ext(EXT_REF, data if obj.attr is None else data + obj.attr.encode())
        fields = _RECORD_FIELDS.get(cls)
        if fields is not None:
            return [_R_MARK, _RECORD_CODES[cls], *[getattr(obj, name) for name in fields]]
        if cls is tuple:
            return [_T_MARK, *obj]
        if isinstance(obj, torch.Tensor):
            hook = getattr(obj, "__fedmq_encode__", None)
            if hook is not None:  # pointers and remote parameters encode as references
                return self.default(hook())
            data = self.add_buffer(tensors.tensor_bytes(obj))
            grad = obj.grad if obj.requires_grad and obj.is_leaf else None
            grad_index = None if grad is None else self.add_buffer(tensors.tensor_bytes(grad))
            return msgpack.ExtType(EXT_TENSOR, tensors.pack_header(obj, data, grad_index))
        if isinstance(obj, torch.Size):
            return [_MARKS[EXT_SIZE], *obj]
        if isinstance(obj, tuple):  # namedtuple (e.g. torch.return_types): travels as a tuple
            return [_T_MARK, *obj]
        if cls is slice:
            return [_MARKS[EXT_SLICE], obj.start, obj.stop, obj.step]
        if obj is Ellipsis:
            return msgpack.ExtType(EXT_ELLIPSIS, b"")
        if isinstance(obj, torch.dtype):
            if obj not in tensors.DTYPE_CODES:
                raise SerdeError(f"dtype {obj} cannot be sent")
            return msgpack.ExtType(EXT_DTYPE, bytes([tensors.DTYPE_CODES[obj]]))
        if isinstance(obj, torch.device):
            return msgpack.ExtType(EXT_DEVICE, str(obj).encode())
        if isinstance(obj, torch.memory_format):
            return msgpack.ExtType(EXT_MEMORY_FORMAT, bytes([_MEMORY_FORMAT_CODES[obj]]))
        if cls is complex:
            return [_MARKS[EXT_COMPLEX], obj.real, obj.imag]
        if isinstance(obj, (set, frozenset)):
            return [_MARKS[EXT_SET], *sorted(obj, key=repr)]
        if isinstance(obj, dict):  # OrderedDict and friends travel as plain dicts
            return dict(obj)
        for base in (bool, str, bytes, float, list, int):  # subclasses of native types
            if isinstance(obj, base):
                return base(obj)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(obj))
        raise SerdeError(f"cannot send an object of type {cls.__module__}.{cls.__qualname__}")


def encode(obj: Any) -> bytes:
    """Encode `obj` (messages, tensors, plain values) into one frame."""
    encoder = _Encoder()
    try:
        header = encoder.pack(obj)
    except SerdeError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise SerdeError(f"cannot encode {type(obj).__name__}: {exc}") from exc
    return join_frame(header, encoder.buffers)


#: Decoding may build Python objects worth about DECODE_FACTOR times the msgpack header's bytes,
#: plus DECODE_SLACK bytes, and no more: each object decoding makes is charged what CPython
#: spends on it (the costs below, in bytes) as soon as the container holding it is complete, and
#: a frame that passes the budget is refused with a SerdeError at that point. Without it a frame
#: of one-byte empty lists or maps costs ~70 times its size (a 20 MiB frame: 1.4 GiB).
#: Tensor bytes are out of band: a tensor aliases or copies its own buffer once (each buffer may
#: back one tensor), so they cost at most the frame's size again.
DECODE_FACTOR = 8
DECODE_SLACK = 16 * 1024 * 1024
_LIST, _SLOT = 64, 8  # a list object (with its GC header), and each item's slot in it
_DICT, _PAIR = 72, 64  # a dict, and each entry (with the transient pair tuple msgpack builds)
_STR = 56  # a str or bytes object of 2+ characters, plus its length (shorter ones are shared)
_NUMBER = 32  # an int outside CPython's small-int cache, or a float
_OBJECT = 64  # a record, tuple, slice, Size, device, ... (plus a slot per field)
_TENSOR = 512  # a tensor's Python object, TensorImpl and storage (its bytes are the buffer's)


def decode(frame: bytes | bytearray | memoryview) -> Any:
    """Decode one frame into allowlisted objects, or raise SerdeError saying what is wrong.
    What decoding allocates is bounded: see DECODE_FACTOR."""
    header, buffers = split_frame(frame)
    size = len(header)
    if size > MAX_HEADER:
        raise SerdeError(f"header of {size} bytes is over the {MAX_HEADER} limit")
    budget = DECODE_FACTOR * size + DECODE_SLACK
    left = [budget]  # bytes of objects decoding may still build

    def over() -> SerdeError:
        return SerdeError(f"decoding this frame would build over {budget} bytes of objects "
                          f"from a {size}-byte header (at most {DECODE_FACTOR}x the header "
                          f"plus {DECODE_SLACK >> 20} MiB)")

    markers = [0]  # markers made minus markers consumed by _list_hook: must end at 0
    used: set[int] = set()  # buffers a tensor took

    def ext_hook(code: int, data: bytes) -> Any:
        if code == EXT_TENSOR:
            left[0] -= _TENSOR
            if left[0] < 0:
                raise over()
            return tensors.unpack_tensor(data, buffers, used)
        marker = _MARKERS.get(code)
        if marker is not None:
            if data:
                raise SerdeError(f"marker {code} carries data")
            markers[0] += 1
            return marker
        left[0] -= _OBJECT + len(data)
        if left[0] < 0:
            raise over()
        if code == EXT_BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == EXT_REF:
            if len(data) < 16:
                raise SerdeError("truncated reference")
            try:
                attr = data[16:].decode() or None
            except UnicodeDecodeError as exc:
                raise SerdeError(f"invalid reference attribute: {exc}") from exc
            return _Ref(int.from_bytes(data[:16], "little"), attr)
        if code == EXT_ELLIPSIS:
            return Ellipsis
        if code == EXT_DTYPE:
            if len(data) != 1 or data[0] not in tensors.DTYPES:
                raise SerdeError("unknown dtype code")
            return tensors.DTYPES[data[0]]
        if code == EXT_DEVICE:
            try:
                return torch.device(data.decode())
            except (RuntimeError, UnicodeDecodeError) as exc:
                raise SerdeError(f"invalid device: {exc}") from exc
        if code == EXT_MEMORY_FORMAT:
            if len(data) != 1 or data[0] not in _MEMORY_FORMATS:
                raise SerdeError("unknown memory format code")
            return _MEMORY_FORMATS[data[0]]
        raise SerdeError(f"unknown extension type {code}")

    def list_hook(items: list) -> Any:
        cost = _SLOT * len(items)
        for item in items:
            cls = type(item)
            if cls is float:
                cost += _NUMBER
            elif cls is int:
                if not -5 <= item <= 256:
                    cost += _NUMBER
            elif cls is str or cls is bytes:
                if len(item) > 1:
                    cost += _STR + len(item)
            elif cls is _Timestamp:  # msgpack decodes ext -1 itself; fedmq never sends it
                raise SerdeError("unknown extension type -1 (msgpack timestamp)")
        if items and type(items[0]) is _Marker:  # the list goes; a record, tuple, ... stays
            left[0] -= cost + _OBJECT
            if left[0] < 0:
                raise over()
            markers[0] -= 1
            return _list_hook(items)
        left[0] -= cost + _LIST
        if left[0] < 0:
            raise over()
        return items

    def pairs_hook(pairs: list) -> dict:
        cost = _DICT + _PAIR * len(pairs)
        for pair in pairs:
            for item in pair:
                cls = type(item)
                if cls is str or cls is bytes:
                    if len(item) > 1:
                        cost += _STR + len(item)
                elif cls is float:
                    cost += _NUMBER
                elif cls is int:
                    if not -5 <= item <= 256:
                        cost += _NUMBER
                elif cls is _Timestamp:
                    raise SerdeError("unknown extension type -1 (msgpack timestamp)")
        left[0] -= cost
        if left[0] < 0:
            raise over()
        return dict(pairs)

    try:
        # msgpack's own limits, as it would derive them from the header: no container or
        # string can claim more items or bytes than the header has bytes. (An array's slots
        # are allocated when its header is read, zeroed and untouched until filled: declared
        # but missing items cost address space, not memory; nesting stops at msgpack's stack.)
        value = msgpack.unpackb(header, ext_hook=ext_hook, list_hook=list_hook, raw=False,
                                object_pairs_hook=pairs_hook, strict_map_key=False,
                                use_list=True, max_str_len=size, max_bin_len=size,
                                max_array_len=size, max_map_len=size // 2, max_ext_len=size)
    except SerdeError:
        raise
    except RecursionError as exc:
        raise SerdeError("frame nests too deeply") from exc
    except Exception as exc:  # msgpack raises many types on garbage; callers see one
        raise SerdeError(f"malformed frame: {type(exc).__name__}: {exc}") from exc
    if markers[0] != 0:
        raise SerdeError("a structure marker stands where it means nothing")
    if type(value) is _Timestamp:
        raise SerdeError("unknown extension type -1 (msgpack timestamp)")
    return value


def _list_hook(items: list) -> Any:
    """Build the value of an array led by a marker: [<mark>, items...]."""
    code = items[0].code
    if code == EXT_TUPLE:
        return tuple(items[1:])
    if code == EXT_RECORD:
        if len(items) < 2 or type(items[1]) is not int:
            raise SerdeError("malformed record")
        cls = _RECORDS.get(items[1])
        if cls is None:
            raise SerdeError(f"unknown record type {items[1]}")
        fields = _RECORD_FIELDS[cls]
        if len(items) - 2 != len(fields):
            raise SerdeError(f"{cls.__name__} has {len(fields)} fields, got {len(items) - 2}")
        checks = _RECORD_CHECKS.get(cls)
        if checks is None:
            checks = _RECORD_CHECKS[cls] = _field_checks(cls)
        for index, name, allowed, items_allowed in checks:
            value = items[index]
            if not isinstance(value, allowed) or (type(value) is bool and bool not in allowed):
                raise SerdeError(f"{cls.__name__}.{name} must be {_describe(allowed)}, "
                                 f"got {type(value).__name__}")
            if items_allowed is not None:
                for item in value:
                    if not isinstance(item, items_allowed) or (
                            type(item) is bool and bool not in items_allowed):
                        raise SerdeError(f"{cls.__name__}.{name} holds "
                                         f"{_describe(items_allowed)} only, got "
                                         f"{type(item).__name__}")
        try:
            return cls(*items[2:])
        except (TypeError, ValueError) as exc:
            raise SerdeError(f"invalid {cls.__name__}: {exc}") from exc
    if code == EXT_SIZE:
        if not all(type(i) is int and i >= 0 for i in items[1:]):
            raise SerdeError("torch.Size holds non-negative ints only")
        return torch.Size(items[1:])
    if code == EXT_SLICE:
        if len(items) != 4 or not all(i is None or type(i) is int for i in items[1:]):
            raise SerdeError("a slice is three ints or None")
        return slice(*items[1:])
    if code == EXT_COMPLEX:
        if len(items) != 3 or not all(type(i) is float for i in items[1:]):
            raise SerdeError("a complex number is two floats")
        return complex(items[1], items[2])
    if code == EXT_SET:
        try:
            return frozenset(items[1:])
        except TypeError as exc:
            raise SerdeError(f"unhashable set member: {exc}") from exc
    raise SerdeError(f"marker {code} cannot lead an array")  # pragma: no cover




# -- field types, checked at decode ---------------------------------------------------------------
# A record's annotations are its wire schema: `int`, `str`, `bool`, `float` (an int is accepted,
# as in Python's numeric tower), `list`, `tuple`, `dict`, another record type, `X | None`,
# `list[X]` (each item checked), or `Any` (not checked). A bool is not accepted for an int.


def _allowed(hint: Any) -> tuple[type, ...] | None:
    """The types an isinstance check accepts for `hint`, or None for Any."""
    if hint is Any:
        return None
    if hint is float:
        return (float, int)
    if hint is type(None):
        return (type(None),)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        accepted: list[type] = []
        for arm in typing.get_args(hint):
            arm_types = _allowed(arm)
            if arm_types is None:
                return None
            accepted.extend(arm_types)
        return tuple(accepted)
    if origin is not None:
        return (origin,)
    if isinstance(hint, type):
        return (hint,)
    raise TypeError(f"cannot check a wire field annotated {hint!r}")


def _field_checks(cls: type) -> tuple:
    """(item index, field name, accepted types, accepted item types or None) per checked field
    of record `cls`, from its annotations."""
    hints = typing.get_type_hints(cls)
    checks = []
    for index, name in enumerate(_RECORD_FIELDS[cls], start=2):
        hint = hints.get(name, Any)
        allowed = _allowed(hint)
        if allowed is None:
            continue
        items_allowed = None
        if typing.get_origin(hint) is list and typing.get_args(hint):
            items_allowed = _allowed(typing.get_args(hint)[0])
        checks.append((index, name, allowed, items_allowed))
    return tuple(checks)


def _describe(allowed: tuple[type, ...]) -> str:
    names = ["None" if t is type(None) else t.__name__ for t in allowed if t is not int
             or float not in allowed]
    return " or ".join(dict.fromkeys(names))
