"""fedmq's wire format (fedmq.serde): what round trips, what is refused, and that no bytes can do
anything but decode to allowlisted values or raise `fedmq.SerdeError`.

Sections:
    helpers and strategies
    tensors: every dtype, shape and layout, bit for bit; autograd state; Parameters
    plain values and message records
    the frame: layout and size
    garbage input: random bytes, truncation, flipped bytes, hand-made malicious frames, pickle
    encoding what cannot be sent
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fedmq
import fedmq.messages as m
from fedmq.serde import DTYPES, SerdeError, codec, decode, encode, record
from fedmq.serde.frame import join_frame
from fedmq.serde.frame import ALIGN  # buffers start at multiples of ALIGN bytes into the data

MAGIC = b"FMQ1"
NO_GRAD = 0xFFFFFFFF
TENSOR_HEAD = struct.Struct("<BBBII")  # dtype code, flags, ndim, data buffer, grad buffer
DTYPE_LIST = [DTYPES[code] for code in sorted(DTYPES)]
DTYPE_CODE = {dtype: code for code, dtype in DTYPES.items()}

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- helpers ------------------------------------------------------------------------------------

def tensor_from_bytes(data: bytes, shape, dtype: torch.dtype) -> torch.Tensor:
    """A tensor whose elements are exactly `data` (bool bytes masked to 0/1)."""
    if not data:
        return torch.empty(tuple(shape), dtype=dtype)
    raw = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    if dtype is torch.bool:
        raw = raw & 1
    return raw.view(dtype).reshape(tuple(shape))


def seeded_tensor(shape, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (numel * itemsize,), dtype=torch.uint8, generator=gen)
    return tensor_from_bytes(data.numpy().tobytes(), shape, dtype)


def element_bytes(t: torch.Tensor) -> torch.Tensor:
    """The elements' bytes in logical order, whatever the layout, conj or neg bit."""
    t = t.detach().resolve_conj().resolve_neg()
    flat = torch.empty(t.numel(), dtype=t.dtype)  # fresh, so stride 1 even for size-1 views
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


def assert_same(got, want, path: str = "value") -> None:
    """`got` equals `want` with the same types all the way down; floats and tensors compared
    bit for bit (so NaN payloads count), tensors with dtype, shape and autograd state."""
    if isinstance(want, torch.Tensor):
        want_type = torch.nn.Parameter if isinstance(want, torch.nn.Parameter) else torch.Tensor
        assert type(got) is want_type, f"{path}: {type(got).__name__}, want {want_type.__name__}"
        assert got.dtype == want.dtype, f"{path}: dtype {got.dtype}, want {want.dtype}"
        assert got.shape == want.shape, f"{path}: shape {got.shape}, want {want.shape}"
        assert got.requires_grad == want.requires_grad, f"{path}: requires_grad differs"
        assert got.is_leaf, f"{path}: a decoded tensor is a leaf"
        assert torch.equal(element_bytes(got), element_bytes(want)), f"{path}: bytes differ"
        want_grad = want.grad if want.is_leaf and want.requires_grad else None
        if want_grad is None:
            assert got.grad is None, f"{path}: unexpected .grad"
        else:
            assert got.grad is not None, f"{path}: .grad was lost"
            assert_same(got.grad, want_grad, f"{path}.grad")
        return
    assert type(got) is type(want), f"{path}: {type(got).__name__}, want {type(want).__name__}"
    if isinstance(want, float):
        assert float_bits(got) == float_bits(want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, complex):
        assert (float_bits(got.real), float_bits(got.imag)) == (
            float_bits(want.real), float_bits(want.imag)), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length {len(got)}, want {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], f"{path}: keys differ"
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, slice):
        for name in ("start", "stop", "step"):
            assert_same(getattr(got, name), getattr(want, name), f"{path}.{name}")
    elif dataclasses.is_dataclass(want):
        for f in dataclasses.fields(want):
            assert_same(getattr(got, f.name), getattr(want, f.name), f"{path}.{f.name}")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def round_trip(obj):
    return decode(encode(obj))


def build_frame(header: bytes, buffers=()) -> bytes:
    """A frame made by hand from the documented layout (fedmq/serde/frame.py):
    b"FMQ1" | u32 n | n x (u64 offset, u64 length) | u32 header length | header
    | zero padding to a multiple of ALIGN (only when n > 0) | data, each buffer ALIGN-aligned.
    Returned as read-only bytes (encode() returns a writable bytearray)."""
    table, data = b"", b""
    for buf in buffers:
        data += bytes(-len(data) % ALIGN)
        table += struct.pack("<QQ", len(data), len(buf))
        data += bytes(buf)
    head = MAGIC + struct.pack("<I", len(buffers)) + table + struct.pack("<I", len(header)) + header
    if buffers:
        head += bytes(-len(head) % ALIGN)
    return head + data


def tensor_ext(dtype_code: int, shape, flags: int = 0, data_index: int = 0,
               grad_index: int = NO_GRAD) -> msgpack.ExtType:
    head = TENSOR_HEAD.pack(dtype_code, flags, len(shape), data_index, grad_index)
    return msgpack.ExtType(codec.EXT_TENSOR, head + struct.pack(f"<{len(shape)}q", *shape))


def frame_of(obj, buffers=()) -> bytes:
    """A hand-made frame whose msgpack header is `obj` (which may hold msgpack.ExtType)."""
    return build_frame(msgpack.packb(obj, use_bin_type=True), list(buffers))


def decode_or_serde_error(data):
    """Decode `data`; SerdeError is an acceptable answer, any other exception fails the test,
    and whatever does decode must be built from allowlisted types only."""
    try:
        value = decode(data)
    except SerdeError:
        return None
    assert_allowlisted(value)
    return value


ALLOWED_LEAVES = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis), torch.dtype,
                  torch.device, torch.memory_format)


def assert_allowlisted(value, path: str = "value") -> None:
    """Everything in a decoded value is a plain value, tensor or registered record: no internal
    helper objects and no foreign types leak out of decode()."""
    t = type(value)
    if t in (list, tuple, torch.Size, frozenset):
        for i, item in enumerate(value):
            assert_allowlisted(item, f"{path}[{i}]")
    elif t is dict:
        for k, v in value.items():
            assert_allowlisted(k, f"{path} key {k!r}")
            assert_allowlisted(v, f"{path}[{k!r}]")
    elif t is slice:
        for name in ("start", "stop", "step"):
            assert_allowlisted(getattr(value, name), f"{path}.{name}")
    elif t in (torch.Tensor, torch.nn.Parameter):
        if value.grad is not None:
            assert type(value.grad) is torch.Tensor, f"{path}.grad: {type(value.grad)}"
    elif t in codec._RECORD_CODES:
        for f in dataclasses.fields(value):
            assert_allowlisted(getattr(value, f.name), f"{path}.{f.name}")
    else:
        assert t in ALLOWED_LEAVES, f"{path}: decode built a {t.__module__}.{t.__qualname__}"


def split_documented(frame: bytes) -> tuple[bytes, list[bytes]]:
    """(msgpack header, buffers) of a valid frame, parsed from the documented layout."""
    frame = bytes(frame)
    (count,) = struct.unpack_from("<I", frame, 4)
    spans = [struct.unpack_from("<QQ", frame, 8 + 16 * i) for i in range(count)]
    pos = 8 + 16 * count
    (header_len,) = struct.unpack_from("<I", frame, pos)
    header = frame[pos + 4:pos + 4 + header_len]
    data_start = pos + 4 + header_len
    if count:
        data_start += -data_start % ALIGN
    data = frame[data_start:]
    return header, [data[off:off + n] for off, n in spans]


def patch_tail(frame: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the last bytes of a frame (the end of its header when it has no buffers)."""
    assert frame.endswith(old) and len(old) == len(new)
    return frame[:-len(old)] + new


@contextlib.contextmanager
def ghost_records():
    """Inside the block, records registered (`record(code)(cls)`, `replace_record`) exist;
    frames made there name record types that are unknown, or shaped differently, afterwards."""
    with mock.patch.dict(codec._RECORDS), mock.patch.dict(codec._RECORD_CODES), \
            mock.patch.dict(codec._RECORD_FIELDS):
        yield


def replace_record(code: int, cls: type) -> None:
    """Make record `code` mean `cls` (inside `ghost_records()` only)."""
    old = codec._RECORDS.pop(code)
    del codec._RECORD_CODES[old], codec._RECORD_FIELDS[old]
    record(code)(cls)


# -- strategies -----------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "stepped", "expanded", "conj", "offset"]


@st.composite
def tensors(draw, dtypes=st.sampled_from(DTYPE_LIST), max_numel: int = 48):
    """Tensors of any dtype, up to 4 dims (0-d and empty included), in every layout the encoder
    must handle, with random bytes as values (NaNs, infs, subnormals included), and for
    differentiable dtypes random requires_grad and .grad."""
    dtype = draw(dtypes)
    shape = draw(st.lists(st.integers(0, 4), max_size=4)
                 .filter(lambda s: math.prod(s) <= max_numel))
    layout = draw(st.sampled_from(LAYOUTS))
    base_shape = list(shape)
    if layout == "stepped" and shape:
        base_shape[0] = 2 * shape[0]  # base[::2] takes every other row
    if layout == "offset":
        base_shape = [math.prod(shape) + 1]  # a view that starts one element in
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(base_shape) * itemsize
    base = tensor_from_bytes(draw(st.binary(min_size=nbytes, max_size=nbytes)), base_shape, dtype)
    if (dtype.is_floating_point or dtype.is_complex) and draw(st.booleans()):
        base.requires_grad_(True)
        if layout == "contiguous" and draw(st.booleans()):
            grad = draw(st.binary(min_size=nbytes, max_size=nbytes))
            base.grad = tensor_from_bytes(grad, base_shape, dtype)
    if layout == "transposed":
        return base.mT if base.dim() >= 2 else base
    if layout == "stepped":
        return base[::2] if base.dim() else base
    if layout == "expanded":
        return base.unsqueeze(0).expand(3, *shape)
    if layout == "conj":
        return base.conj()  # sets the conj bit on complex tensors
    if layout == "offset":
        return base[1:].reshape(shape)
    return base


def plain_leaves():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2 ** 300), max_value=2 ** 300),
        st.floats(),  # nan and +-inf included
        st.text(max_size=20),
        st.binary(max_size=20),
        st.just(Ellipsis),
        st.builds(slice, st.none() | st.integers(), st.none() | st.integers(),
                  st.none() | st.integers()),
        st.sampled_from(DTYPE_LIST),
        st.sampled_from([torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")]),
        st.sampled_from([torch.contiguous_format, torch.preserve_format, torch.channels_last,
                         torch.channels_last_3d]),
        st.complex_numbers(),
        st.lists(st.integers(0, 2 ** 63 - 1), max_size=4).map(torch.Size),
        tensors(max_numel=6),
    )


def plain_values():
    keys = st.one_of(st.text(max_size=8), st.integers())
    return st.recursive(
        plain_leaves(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(keys, children, max_size=4),
        ),
        max_leaves=16,
    )


# -- tensors ------------------------------------------------------------------------------------

def test_dtypes_cover_the_issue_list():
    """DTYPES holds exactly the dtypes the issue asks for, each under one code."""
    assert set(DTYPES.values()) == {
        torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
        torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32,
        torch.float64, torch.complex32, torch.complex64, torch.complex128}
    assert len(DTYPES) == 16


@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1,), (5,), (2, 3), (1, 2, 3, 4)],
                         ids=str)
@pytest.mark.parametrize("dtype", DTYPE_LIST, ids=str)
def test_every_dtype_and_shape_round_trips(dtype, shape):
    """Each dtype, 0-d, empty and n-d, comes back with the same dtype, shape and bytes."""
    t = seeded_tensor(shape, dtype, seed=len(shape))
    got = round_trip(t)
    assert_same(got, t)


@PROPERTY
@given(tensors())
def test_random_tensors_round_trip(t):
    """Property: any tensor (dtype, shape, layout, values, autograd state) round trips."""
    assert_same(round_trip(t), t)


@pytest.mark.parametrize("make", [
    lambda b: b.t(),
    lambda b: b.permute(1, 0),
    lambda b: b[:, ::2],
    lambda b: b.narrow(1, 1, 2),
    lambda b: b[1:, 1:],
    lambda b: b[0:1].expand(5, 4),
    lambda b: b[:, :1].expand(3, 4),
    lambda b: b.unsqueeze(1).expand(3, 2, 4),
    lambda b: b.as_strided((2, 2), (0, 1)),
], ids=["t", "permute", "step", "narrow", "offset", "expand_rows", "expand_cols", "expand_new",
        "as_strided_zero"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool, torch.complex64,
                                   torch.bfloat16, torch.uint16], ids=str)
def test_non_contiguous_inputs_round_trip(dtype, make):
    """Views (transposed, stepped, offset, expanded, zero strides) send their logical values."""
    view = make(seeded_tensor((3, 4), dtype, seed=7))
    got = round_trip(view)
    assert got.is_contiguous()
    assert_same(got, view)


@pytest.mark.parametrize("make", [
    lambda b: b[:1, 0],          # one element, stride 4: e.g. `logits[:, 0]` with batch size 1
    lambda b: b[0, ::2][:1],     # one element, stride 2
    lambda b: b[:1, ::3][:, :1],  # shape (1, 1), strides (4, 3)
    lambda b: b[:1, :1].t()[0],  # shape (1,), stride 4, through a transpose
], ids=["col_of_one_row", "step_then_one", "one_by_one_strided", "transposed_one"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.float64, torch.complex64,
                                   torch.uint8], ids=str)
def test_size_one_views_with_odd_strides_round_trip(dtype, make):
    """torch calls a view whose only dims have size 1 contiguous whatever its strides; such views
    (a column of a 1-row batch) must encode like any other tensor."""
    view = make(seeded_tensor((3, 4), dtype, seed=5))
    assert view.numel() == 1
    assert_same(round_trip(view), view)


@pytest.mark.parametrize("dtype", [torch.complex32, torch.complex64, torch.complex128], ids=str)
def test_conj_and_neg_views_send_their_values(dtype):
    """Lazily conjugated / negated views are sent as the values they stand for."""
    base = seeded_tensor((2, 3), torch.float32, seed=3).to(dtype)
    conj = base.conj()
    assert conj.is_conj()
    assert_same(round_trip(conj), conj)
    assert torch.equal(element_bytes(round_trip(conj)), element_bytes(conj.resolve_conj()))
    if dtype is not torch.complex32:
        neg = base.conj().imag
        assert neg.is_neg()
        assert torch.equal(round_trip(neg), -base.imag)


NAN_PATTERNS = {
    torch.float16: (np.uint16, [0x7E01, 0x7C01, 0xFE42, 0x7FFF]),
    torch.bfloat16: (np.uint16, [0x7FC1, 0x7F81, 0xFFC3, 0x7FFF]),
    torch.float32: (np.uint32, [0x7FC00001, 0x7F800001, 0xFFC12345, 0x7FFFFFFF]),
    torch.float64: (np.uint64, [0x7FF8000000000001, 0x7FF0000000000001, 0xFFF8DEADBEEF0001,
                                0x7FFFFFFFFFFFFFFF]),
    torch.complex32: (np.uint32, [0x7E017C01, 0x7C01FE42, 0x3C007FFF, 0x7E00FFFF]),
    torch.complex64: (np.uint64, [0x7FC000017F800001, 0xFFC123457FFFFFFF, 0x3F8000007FC00002,
                                  0x7FA000003F800000]),
}


@pytest.mark.parametrize("dtype", list(NAN_PATTERNS), ids=str)
def test_nan_payloads_survive(dtype):
    """Quiet, signalling and negative NaNs keep their exact bits, contiguous or not."""
    np_type, words = NAN_PATTERNS[dtype]
    t = torch.from_numpy(np.array(words, dtype=np_type).view(np.uint8).copy()).view(dtype)
    assert_same(round_trip(t), t)
    assert_same(round_trip(t[::2]), t[::2])
    assert_same(round_trip(t.unsqueeze(0).expand(2, 4)), t.unsqueeze(0).expand(2, 4))
    got = round_trip(t)
    assert bytes(element_bytes(got).numpy()) == np.array(words, dtype=np_type).tobytes()


def test_inf_and_subnormals_survive():
    t = torch.tensor([float("inf"), -float("inf"), 1e-45, -0.0, 5e-324], dtype=torch.float64)
    assert_same(round_trip(t), t)
    assert_same(round_trip(t.float()), t.float())


class TestAutogradState:
    """requires_grad, .grad and nn.Parameter survive the trip."""

    def test_requires_grad_leaf(self):
        t = torch.randn(3, 2, requires_grad=True)
        got = round_trip(t)
        assert got.requires_grad and got.is_leaf and got.grad is None
        assert_same(got, t)

    def test_no_grad_stays_no_grad(self):
        got = round_trip(torch.randn(3))
        assert not got.requires_grad

    def test_non_leaf_arrives_as_leaf_requiring_grad(self):
        x = torch.randn(2, 3, requires_grad=True)
        y = (x * 2).t()
        got = round_trip(y)
        assert got.is_leaf and got.requires_grad and got.grad is None
        assert torch.equal(got.detach(), y.detach())

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                       torch.float64, torch.complex64, torch.complex128], ids=str)
    def test_grad_of_leaf(self, dtype):
        t = seeded_tensor((2, 3), dtype, seed=1).requires_grad_(True)
        t.grad = seeded_tensor((2, 3), dtype, seed=2)
        got = round_trip(t)
        assert got.grad is not None
        assert_same(got, t)

    def test_grad_from_backward(self):
        w = torch.randn(4, 3, requires_grad=True)
        (w.sum() * 3).backward()
        got = round_trip(w)
        assert torch.equal(got.grad, torch.full((4, 3), 3.0))

    def test_non_contiguous_grad(self):
        t = torch.randn(3, 4, requires_grad=True)
        t.grad = torch.randn(4, 3).t()
        got = round_trip(t)
        assert torch.equal(got.grad, t.grad)

    def test_parameter_stays_parameter(self):
        p = torch.nn.Parameter(torch.randn(5, 2))
        got = round_trip(p)
        assert type(got) is torch.nn.Parameter and got.requires_grad
        assert_same(got, p)

    def test_frozen_parameter(self):
        p = torch.nn.Parameter(torch.randn(3), requires_grad=False)
        got = round_trip(p)
        assert type(got) is torch.nn.Parameter and not got.requires_grad
        assert_same(got, p)

    def test_integer_parameter(self):
        p = torch.nn.Parameter(torch.arange(6).reshape(2, 3), requires_grad=False)
        assert_same(round_trip(p), p)

    def test_parameter_with_grad(self):
        p = torch.nn.Parameter(torch.randn(2, 2))
        p.grad = torch.randn(2, 2)
        got = round_trip(p)
        assert type(got) is torch.nn.Parameter
        assert_same(got, p)

    def test_module_parameters_in_a_state_dict(self):
        model = torch.nn.Linear(4, 2)
        model(torch.randn(3, 4)).sum().backward()
        params = OrderedDict(model.named_parameters())
        got = round_trip(params)
        assert type(got) is dict and list(got) == ["weight", "bias"]
        for name, p in params.items():
            assert_same(got[name], p, name)


def test_decoded_tensors_are_writable_and_independent():
    """Decoded tensors are writable and never alias the tensor that was encoded; decoded from
    read-only bytes they own their memory. (From a writable frame, such as the bytearray
    encode() returns, decode may alias the frame instead of copying.)"""
    t = torch.arange(6, dtype=torch.float32)
    frame = encode(t)
    d = decode(frame)
    d.add_(1)
    assert torch.equal(t, torch.arange(6, dtype=torch.float32))
    ro = bytes(encode(t))
    a, b = decode(ro), decode(ro)
    a.mul_(0)
    assert torch.equal(b, t) and torch.equal(decode(ro), t)


@pytest.mark.parametrize("dtype", DTYPE_LIST, ids=str)
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "writable_memoryview"])
def test_decode_accepts_every_buffer_kind(dtype, kind):
    """bytes, bytearray and memoryviews all decode (unaligned ones: see
    test_unaligned_writable_frames_do_not_crash, which runs in a child process)."""
    t = seeded_tensor((3, 5), dtype, seed=9)
    frame = bytes(encode({"t": t, "g": t[:, 1]}))
    data = {"bytes": lambda: frame, "bytearray": lambda: bytearray(frame),
            "memoryview": lambda: memoryview(frame),
            "writable_memoryview": lambda: memoryview(bytearray(frame))}[kind]()
    got = decode(data)
    assert_same(got["t"], t)
    assert_same(got["g"], t[:, 1])


# -- plain values and records -------------------------------------------------------------------

PLAIN = [
    None, True, False, 0, 1, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 2 ** 64, -(2 ** 64),
    2 ** 64 + 1, -(2 ** 63) - 1, 2 ** 200 + 12345, -(2 ** 200) - 12345, 2 ** 4000,
    0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 5e-324,
    "", "héllo ✓ \x00", b"", b"\x00\xff" * 10, [], (), {}, [1, [2, [3]]], (1, (2, (3,))),
    (1, [2, (3, [4])]), [(), []], {"a": 1, 2: "b", -3: [None]}, {"nested": {"x": (1.0, "y")}},
    slice(None), slice(1, 10, 2), slice(-1, None, -1), slice(None, None, 0), Ellipsis,
    [Ellipsis, slice(0, 2), None], torch.float32, torch.bfloat16, torch.complex32, torch.bool,
    torch.device("cpu"), torch.device("cuda", 1), torch.device("meta"), 1 + 2j, complex(0, -0.0),
    complex(float("nan"), float("inf")), torch.channels_last, {1: {2: {3: (4,)}}},
]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: repr(v)[:40])
def test_plain_values_round_trip(value):
    """Each plain value comes back with the same type (tuple stays tuple, list stays list)."""
    assert_same(round_trip(value), value)


@PROPERTY
@given(plain_values())
def test_random_nested_values_round_trip(value):
    """Property: random nests of lists, tuples and dicts over every plain leaf type and small
    tensors round trip with types preserved."""
    assert_same(round_trip(value), value)


@pytest.mark.parametrize("value", [
    torch.Size([]), torch.Size([2, 3]), torch.Size([0, 1, 2 ** 40]),
    [torch.Size([4])], {"shape": torch.Size([1, 2])}, (torch.Size([3]), 3),
], ids=repr)
def test_torch_size_stays_torch_size(value):
    """torch.Size has its own wire type and must not come back as a plain tuple."""
    assert_same(round_trip(value), value)


def test_sets_arrive_as_frozensets():
    got = round_trip([{1, 2, 3}, frozenset({"a", (1, 2)}), set()])
    assert got == [frozenset({1, 2, 3}), frozenset({"a", (1, 2)}), frozenset()]
    assert all(type(s) is frozenset for s in got)


def test_dict_keys_keep_their_type_and_order():
    value = {"b": 1, 1: 2, "a": 3, -7: 4, 2 ** 70: 5, (1, 2): 6}
    got = round_trip(value)
    assert_same(got, value)


def message_records() -> set[type]:
    return {cls for cls in vars(m).values()
            if isinstance(cls, type) and cls in codec._RECORD_CODES}


def sample_messages() -> list:
    """One realistic instance of every message record, tensors and refs inside (records whose
    fields all have defaults, such as requests without arguments, are added as `cls()`)."""
    x = torch.randn(2, 3)
    w = torch.nn.Parameter(torch.randn(3, 3))
    w.grad = torch.ones(3, 3)
    command = m.Command(
        op="torch.nn.functional.linear",
        args=(m.Ref(11), m.Ref(12, attr="grad"), x, 2.5, slice(None, 2), Ellipsis),
        kwargs={"dim": -1, "dtype": torch.float16, "out": None, "keepdim": True},
        result_ids=[2 ** 63 + 5, 42], grad_enabled=False, reply=True)
    pointer = m.PointerRef(location="bob", id_at_location=987654321987, shape=(2, 3),
                           dtype=torch.float32, requires_grad=True, tags=["#mnist", "#train"],
                           description="training images")
    samples = [
        m.Ref(1), m.Ref(2 ** 64 - 1, attr="grad"), pointer,
        m.ErrorInfo("execution_error", "The size of tensor a (3) must match ...", worker="bob",
                    op="add"),
        m.ErrorInfo("serde_error", "bad frame"),
        m.StoredObject(id=5, obj=w, tags=["#weights"], description="layer 1"),
        m.Envelope(version=m.WIRE_VERSION, sender="alice", message=command, msg_id=77),
        m.Envelope(1, "alice", m.DeleteObjects([1]),
                   **({"release": [4, 5]} if "release" in m.Envelope.__dataclass_fields__ else {})),
        m.ObjectMessage(objects=[m.StoredObject(1, x), m.StoredObject(2, torch.arange(4), [], None),
                                 m.StoredObject(3, w)]),
        m.GetRequest(ids=[1, 2, 3], delete=False), m.GetRequest(ids=[]),
        m.DeleteObjects(ids=[4, 5, 2 ** 64 - 2]),
        command,
        m.ForwardObjects(ids=[1, 2], to="carol", keep=True),
        m.ObjectsCount(), m.SearchRequest(query=["#mnist", 17]), m.ClearObjects(),
        m.Cancel(msg_id=2 ** 100 + 7),
        m.Reply(value=[x, 3, {"loss": 0.25}]),
        m.Reply(value=pointer),
        m.Reply(error=m.ErrorInfo("object_not_found", "no object 9", worker="bob", op="get")),
        m.Envelope(version=1, sender="bob", message=m.Reply(value=(x.t(), None)), msg_id=0),
        *([m.Batch(messages=[command, m.Command("relu", (m.Ref(2),), {}, [3])])]
          if hasattr(m, "Batch") else []),
        *([m.Batch(messages=[command, m.GetRequest([3])], reply_last=True),
           m.BatchReply(errors=[[0, m.ErrorInfo("execution_error", "boom", "bob", "add")]],
                        value=[x])] if hasattr(m, "BatchReply") else []),
    ]
    sampled = {type(s) for s in samples}
    for cls in sorted(message_records() - sampled, key=lambda c: c.__name__):
        if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls)):
            samples.append(cls())
    return samples


def _message_id(msg) -> str:
    return type(msg).__name__


@pytest.mark.parametrize("message", sample_messages(), ids=_message_id)
def test_message_records_round_trip(message):
    """Every record comes back as the same class with equal fields (tensors bit for bit)."""
    got = round_trip(message)
    assert type(got) is type(message)
    assert_same(got, message)


def _wrong_values(allowed):
    """Values of types a field accepting `allowed` must refuse."""
    candidates = [True, 7, 2.5, "text", b"bytes", [1], (1,), {"k": 1}, m.Ref(1), None]
    return [v for v in candidates if not isinstance(v, allowed)
            or (type(v) is bool and bool not in allowed)]


def _typed_fields():
    import fedmq.fl.messages, fedmq.plans.messages, fedmq.smpc.messages  # noqa: F401,E401
    for cls in sorted(codec._RECORDS.values(), key=lambda c: c.__name__):
        for index, name, allowed, items_allowed in codec._field_checks(cls):
            yield pytest.param(cls, index, name, allowed, items_allowed,
                               id=f"{cls.__name__}.{name}")


def _valid_value(allowed):
    good = {int: 1, float: 1.0, bool: False, str: "s", list: [], tuple: (), dict: {},
            type(None): None, m.ErrorInfo: m.ErrorInfo("serde_error", "x")}
    return next(good[t] for t in allowed if t in good)


def _record_frame(cls, index, value):
    """A hand-built frame of record `cls`: every checked field holds a valid value, except the
    one at item `index`, which holds `value` (encode() would not check, decode() must)."""
    fields = codec._RECORD_FIELDS[cls]
    values = [None] * len(fields)
    for _, name, allowed, _ in codec._field_checks(cls):
        values[fields.index(name)] = _valid_value(allowed)
    values[index - 2] = value
    header = msgpack.packb([msgpack.ExtType(codec.EXT_RECORD, b""), codec._RECORD_CODES[cls],
                            *[_raw(v) for v in values]], use_bin_type=True)
    return join_frame(header, [])


@pytest.mark.parametrize("cls, index, name, allowed, items_allowed", list(_typed_fields()))
def test_every_typed_field_is_checked_at_decode(cls, index, name, allowed, items_allowed):
    """A record whose field holds a value of the wrong type (or a typed list holding one) is
    refused while decoding, with an error naming the record and the field."""
    assert type(decode(_record_frame(cls, index, _valid_value(allowed)))) is cls
    for wrong in _wrong_values(allowed):
        with pytest.raises(SerdeError, match=rf"^{cls.__name__}\.{name} must be "):
            decode(_record_frame(cls, index, wrong))
    if items_allowed is not None:
        for wrong in _wrong_values(items_allowed):
            with pytest.raises(SerdeError, match=rf"^{cls.__name__}\.{name} holds "):
                decode(_record_frame(cls, index, [wrong]))


def _raw(value):
    """`value` as msgpack packs it inside a hand-built header (tuples and refs as fedmq does)."""
    if type(value) is tuple:
        return [msgpack.ExtType(codec.EXT_TUPLE, b""), *value]
    if type(value) is m.Ref:
        return msgpack.ExtType(codec.EXT_REF, value.id.to_bytes(16, "little"))
    if type(value) is m.ErrorInfo:
        return [msgpack.ExtType(codec.EXT_RECORD, b""), 22, value.code, value.message, None, None]
    if type(value) is list:
        return [_raw(v) for v in value]
    return value


def test_the_ids_the_issue_names_are_refused_at_decode():
    """The "Why" of the robustness issue: a release list sent as an integer."""
    header = msgpack.packb([msgpack.ExtType(codec.EXT_RECORD, b""), 40, 1, "me",
                            [msgpack.ExtType(codec.EXT_RECORD, b""), 46], 5, 9, None, None],
                           use_bin_type=True)
    with pytest.raises(SerdeError, match="Envelope.release must be list, got int"):
        decode(join_frame(header, []))
    with pytest.raises(SerdeError, match="GetRequest.delete must be bool, got int"):
        round_trip(m.GetRequest([1], delete=1))
    with pytest.raises(SerdeError, match="Command.result_ids holds int or None only, got str"):
        round_trip(m.Command("torch.add", (), {}, ["x"]))


def test_every_message_record_is_sampled():
    records = message_records()
    assert len(records) >= 14
    missing = records - {type(msg) for msg in sample_messages()}
    assert not missing, f"add samples of {sorted(c.__name__ for c in missing)}"


def test_envelope_wrapping_command_keeps_refs_and_tensors():
    """The common case in detail: Envelope(Command(args with Refs and a tensor))."""
    x = torch.randn(4, 4, requires_grad=True)
    env = m.Envelope(1, "me", m.Command("add", (m.Ref(3), x), {"alpha": 2}, [9]), msg_id=5)
    got = decode(encode(env))
    assert isinstance(got.message, m.Command)
    ref, tensor = got.message.args
    assert ref == m.Ref(3) and type(got.message.args) is tuple
    assert tensor.requires_grad and torch.equal(tensor.detach(), x.detach())
    assert got.message.kwargs == {"alpha": 2} and got.message.result_ids == [9]
    assert got.message.grad_enabled is True and got.message.reply is False


# -- the frame: layout and size ------------------------------------------------------------------

def test_frame_layout():
    """encode() writes the documented layout; each tensor's bytes sit verbatim at an
    ALIGN-aligned offset after the header."""
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    u = torch.arange(5, dtype=torch.int16)
    frame = bytes(encode([t, u]))
    assert frame[:4] == MAGIC
    (count,) = struct.unpack_from("<I", frame, 4)
    assert count == 2
    spans = [struct.unpack_from("<QQ", frame, 8 + 16 * i) for i in range(2)]
    (header_len,) = struct.unpack_from("<I", frame, 40)
    header = frame[44:44 + header_len]
    data_start = 44 + header_len + (-(44 + header_len) % ALIGN)
    assert frame[44 + header_len:data_start] == bytes(data_start - 44 - header_len)  # padding
    for (offset, length), tensor in zip(spans, (t, u)):
        assert offset % ALIGN == 0 and (data_start + offset) % ALIGN == 0
        assert frame[data_start + offset:data_start + offset + length] == tensor.numpy().tobytes()
    assert data_start + spans[1][0] + spans[1][1] == len(frame)
    exts = msgpack.unpackb(header)
    assert [e.code for e in exts] == [codec.EXT_TENSOR] * 2
    assert exts[0].data == TENSOR_HEAD.pack(DTYPE_CODE[torch.float32], 0, 2, 0, NO_GRAD) + \
        struct.pack("<2q", 3, 4)
    assert exts[1].data == TENSOR_HEAD.pack(DTYPE_CODE[torch.int16], 0, 1, 1, NO_GRAD) + \
        struct.pack("<1q", 5)
    assert split_documented(frame) == (header, [t.numpy().tobytes(), u.numpy().tobytes()])


def test_hand_built_frame_decodes():
    """A frame built from the documented layout alone decodes (the format is pinned)."""
    raw = np.arange(6, dtype="<i4").tobytes()
    grad = np.ones(6, dtype="<f8").tobytes()
    frame = frame_of([tensor_ext(DTYPE_CODE[torch.int32], (2, 3)),
                      tensor_ext(DTYPE_CODE[torch.float64], (3, 2), flags=1, data_index=1,
                                 grad_index=2)],
                     [raw, np.zeros(6, dtype="<f8").tobytes(), np.zeros(6, dtype="<f8").tobytes()])
    a, b = decode(frame)
    assert torch.equal(a, torch.arange(6, dtype=torch.int32).reshape(2, 3))
    assert b.requires_grad and torch.equal(b.detach(), torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(b.grad, torch.zeros(3, 2, dtype=torch.float64))
    frame = frame_of(tensor_ext(DTYPE_CODE[torch.float64], (2, 3), flags=1, grad_index=1),
                     [np.zeros(6, dtype="<f8").tobytes(), grad])
    assert torch.equal(decode(frame).grad, torch.ones(2, 3, dtype=torch.float64))


def test_large_tensor_frame_has_no_inflation():
    """A 1.7 MB float32 tensor costs at most 200 bytes over its raw size (no hex/base64)."""
    t = torch.randn(425_000)
    raw_len = t.numel() * t.element_size()
    assert raw_len == 1_700_000
    frame = encode(t)
    assert len(frame) <= raw_len + 200
    assert frame.endswith(t.numpy().tobytes())
    assert torch.equal(decode(frame), t)
    # the same for a non-contiguous view and inside a message
    assert len(encode(torch.randn(850_000)[::2])) <= raw_len + 200
    stored = m.ObjectMessage([m.StoredObject(1, t, ["#w"], "weights")])
    assert len(encode(m.Envelope(1, "alice", stored))) <= raw_len + 200


# -- garbage input -------------------------------------------------------------------------------

def _sample_frames() -> list[bytes]:
    w = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    w.grad = torch.ones(2, 3)
    env = m.Envelope(1, "alice", m.Command("mul", (m.Ref(1), torch.arange(4)), {"k": (1, 2.0)},
                                           [5, 6]), msg_id=3)
    return [
        encode(None),
        encode([1, "two", b"3", (4.0, None), {"k": slice(1, 2)}, 2 ** 70, torch.int8, 1j]),
        encode(torch.arange(5, dtype=torch.int16)),
        encode(w),
        encode(env),
        encode(m.Reply(error=m.ErrorInfo("execution_error", "boom", "bob", "add"))),
        encode({"a": torch.zeros(0, 2), "b": torch.tensor(True), "c": torch.device("cpu")}),
        encode({"s": torch.Size([2, 3]), "f": frozenset({1, 2}), "m": torch.channels_last,
                "e": Ellipsis, "t": ((), [()]), "r": [m.Ref(1), m.ObjectsCount()]}),
    ]


SAMPLE_FRAMES = _sample_frames()


def test_fedmq_serde_error_is_the_public_one():
    assert fedmq.SerdeError is SerdeError
    assert issubclass(SerdeError, fedmq.FedmqError)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_serde_error(data):
    """Bytes without the magic are refused with SerdeError; nothing else ever escapes."""
    if data.startswith(MAGIC):
        decode_or_serde_error(data)
    else:
        with pytest.raises(SerdeError):
            decode(data)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes_after_magic_raise_only_serde_error(tail):
    decode_or_serde_error(MAGIC + tail)


@PROPERTY
@given(st.integers(0, 4), st.binary(max_size=300))
def test_random_bytes_after_small_buffer_count_raise_only_serde_error(count, tail):
    """Get past the count check so the table, header and msgpack parsing see garbage."""
    decode_or_serde_error(MAGIC + struct.pack("<I", count) + tail)


@PROPERTY
@given(st.binary(max_size=200), st.lists(st.binary(max_size=64), max_size=3))
def test_well_framed_garbage_header_raises_only_serde_error(header, buffers):
    """A correct frame around a random msgpack header and random buffers."""
    decode_or_serde_error(build_frame(header, buffers))


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 127), st.binary(max_size=48)), min_size=1, max_size=4),
       st.lists(st.binary(max_size=64), max_size=3))
def test_random_ext_payloads_raise_only_serde_error(exts, buffers):
    """Every ext type code (known or not) with random payload bytes: value or SerdeError."""
    decode_or_serde_error(frame_of([msgpack.ExtType(c, d) for c, d in exts], buffers))


@pytest.mark.parametrize("frame", SAMPLE_FRAMES, ids=lambda f: f"{len(f)}B")
def test_every_truncation_raises_serde_error(frame):
    """A valid frame cut short at any length is refused with SerdeError (or, if the cut only
    removed alignment padding, decodes to the very same value)."""
    whole = decode(bytes(frame))
    for n in range(len(frame)):
        try:
            got = decode(bytes(frame[:n]))
        except SerdeError:
            continue
        assert_same(got, whole, f"frame cut to {n} of {len(frame)} bytes")


def test_truncated_large_frame_raises_serde_error():
    frame = encode(torch.randn(10_000))
    for n in (0, 3, 4, 11, 12, 27, 28, 40, len(frame) // 2, len(frame) - 1):
        with pytest.raises(SerdeError):
            decode(frame[:n])


@PROPERTY
@given(st.sampled_from(SAMPLE_FRAMES), st.data())
def test_flipped_bytes_raise_only_serde_error(frame, data):
    """Change 1-4 bytes anywhere in a valid frame: decode succeeds or raises SerdeError."""
    mutated = bytearray(frame)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)),
                               min_size=1, max_size=4))
    for pos, value in flips:
        mutated[pos] = value
    decode_or_serde_error(bytes(mutated))


def msgpack_values():
    """Any msgpack value, ext values of fedmq's codes (empty or not) included."""
    ext = st.builds(msgpack.ExtType, st.integers(0, 15), st.just(b"") | st.binary(max_size=12))
    leaves = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats()
              | st.text(max_size=6) | st.binary(max_size=6) | ext)
    keys = st.text(max_size=4) | st.integers(-5, 5) | ext
    return st.recursive(leaves, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(keys, c, max_size=3), max_leaves=8)


def _paths(tree, path=()):
    yield path
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from _paths(item, path + (i,))
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, path + (k,))


def _at(tree, path):
    for step in path:
        tree = tree[step]
    return tree


def _with(tree, path, new):
    if not path:
        return new
    copy = list(tree) if isinstance(tree, list) else dict(tree)
    copy[path[0]] = _with(tree[path[0]], path[1:], new)
    return copy


@PROPERTY
@given(st.sampled_from(SAMPLE_FRAMES), st.data())
def test_structurally_mutated_headers_raise_only_serde_error(frame, data):
    """Valid msgpack, wrong structure: unpack a real header, replace / insert / delete one
    node (values, containers, ext values of any code), pack it again. Whatever the wire layout
    of records and tuples is, the result decodes to allowlisted values or raises SerdeError."""
    header, buffers = split_documented(frame)
    tree = msgpack.unpackb(header, strict_map_key=False, raw=False)
    path = data.draw(st.sampled_from(list(_paths(tree))))
    node = _at(tree, path)
    new = data.draw(msgpack_values())
    op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    if op != "replace" and isinstance(node, list) and node:
        i = data.draw(st.integers(0, len(node) - 1))
        node = node[:i] + ([new] if op == "insert" else []) + node[i + (op == "delete"):]
        mutated = _with(tree, path, node)
    else:
        mutated = _with(tree, path, new)
    decode_or_serde_error(build_frame(msgpack.packb(mutated, use_bin_type=True), buffers))


@pytest.mark.parametrize("place", ["alone", "first", "second", "map_value", "map_key", "nested"])
@pytest.mark.parametrize("code", range(1, 13))
def test_empty_known_ext_anywhere(code, place):
    """An empty ext value of each of fedmq's codes, wherever it sits, decodes to allowlisted
    values or raises SerdeError (internal placeholder objects never leak out)."""
    ext = msgpack.ExtType(code, b"")
    header = {"alone": ext, "first": [ext, 1], "second": [1, ext], "map_value": {"k": ext},
              "map_key": {ext: 1}, "nested": [[ext], [1, [ext]]]}[place]
    decode_or_serde_error(frame_of(header))


@pytest.mark.parametrize("frame", SAMPLE_FRAMES, ids=lambda f: f"{len(f)}B")
def test_every_single_byte_flip_raises_only_serde_error(frame):
    """Exhaustive over positions: each byte xor 0xFF and set to 0x00 / 0x7F / 0x80."""
    for pos in range(len(frame)):
        for value in {frame[pos] ^ 0xFF, 0x00, 0x7F, 0x80}:
            mutated = bytearray(frame)
            mutated[pos] = value
            decode_or_serde_error(bytes(mutated))


def test_extra_bytes_after_header_are_refused():
    header = msgpack.packb([1, 2]) + msgpack.packb(3)
    with pytest.raises(SerdeError):
        decode(build_frame(header))


@pytest.mark.parametrize("bad", ["FMQ1", None, 1234, [b"FMQ1"], object()], ids=repr)
def test_non_bytes_input_raises_serde_error(bad):
    with pytest.raises(SerdeError):
        decode(bad)


class TestMaliciousFrames:
    """Hand-made frames that lie: each is refused with a SerdeError that says why."""

    def test_shape_larger_than_payload(self):
        frame = encode(torch.zeros(2, 3))
        old = struct.pack("<2q", 2, 3)
        assert frame.count(old) == 1
        patched = frame.replace(old, struct.pack("<2q", 2, 4))
        with pytest.raises(SerdeError) as info:
            decode(patched)
        msg = str(info.value)
        assert "(2, 4)" in msg and "24" in msg and "32" in msg

    def test_shape_smaller_than_payload(self):
        with pytest.raises(SerdeError, match=r"\(5,\).*20.*24"):
            decode(frame_of(tensor_ext(DTYPE_CODE[torch.float32], (5,)), [bytes(24)]))

    def test_grad_shape_mismatch(self):
        frame = frame_of(tensor_ext(DTYPE_CODE[torch.float32], (2,), flags=1, grad_index=1),
                         [bytes(8), bytes(12)])
        with pytest.raises(SerdeError, match="12"):
            decode(frame)

    @pytest.mark.parametrize("shape", [(2 ** 62, 4), (2 ** 63 - 1,), (-1, -4), (3, -1),
                                       (0, 2 ** 63 - 1), (1,) * 65])
    def test_absurd_shapes(self, shape):
        with pytest.raises(SerdeError):
            decode(frame_of(tensor_ext(DTYPE_CODE[torch.float32], shape), [bytes(16)]))

    def test_ndim_does_not_match_header_length(self):
        ext = tensor_ext(DTYPE_CODE[torch.float32], (2, 2))
        lying = msgpack.ExtType(ext.code, ext.data[:2] + bytes([3]) + ext.data[3:])
        with pytest.raises(SerdeError):
            decode(frame_of(lying, [bytes(16)]))

    def test_truncated_tensor_header(self):
        with pytest.raises(SerdeError):
            decode(frame_of(msgpack.ExtType(codec.EXT_TENSOR, b"\x09\x00"), [bytes(4)]))

    def test_buffer_index_out_of_range(self):
        with pytest.raises(SerdeError, match="buffer"):
            decode(frame_of(tensor_ext(DTYPE_CODE[torch.float32], (1,), data_index=3),
                            [bytes(4)]))

    def test_buffer_past_end_of_frame(self):
        frame = bytearray(encode(torch.zeros(4)))
        struct.pack_into("<QQ", frame, 8, 0, 10 ** 12)
        with pytest.raises(SerdeError, match="truncated"):
            decode(bytes(frame))

    def test_huge_buffer_count(self):
        with pytest.raises(SerdeError):
            decode(MAGIC + struct.pack("<I", 0xFFFFFFFF) + bytes(64))

    def test_huge_header_length(self):
        with pytest.raises(SerdeError):
            decode(MAGIC + struct.pack("<I", 0) + struct.pack("<I", 0xFFFFFFFF) + b"\xc0")

    @pytest.mark.parametrize("code", [0, 17, 99, 255])
    def test_unknown_tensor_dtype_code(self, code):
        with pytest.raises(SerdeError, match="dtype"):
            decode(frame_of(tensor_ext(code, (1,)), [bytes(8)]))

    @pytest.mark.parametrize("data", [b"\x00", b"\x11", b"\xff", b"", b"\x09\x09"])
    def test_unknown_dtype_value_code(self, data):
        with pytest.raises(SerdeError, match="dtype"):
            decode(frame_of(msgpack.ExtType(codec.EXT_DTYPE, data)))

    @pytest.mark.parametrize("code", [0, 14, 42, 100, 127, -1, -2, -128])
    def test_unknown_ext_type(self, code):
        """fedmq's ext codes are 1-13; any other code, msgpack's reserved negative ones
        included (-1 is msgpack's timestamp), is refused."""
        ext = b"\xd7" + struct.pack("b", code) + bytes(8)  # fixext 8
        with pytest.raises(SerdeError) as info:
            decode(build_frame(b"\x92\xa2ok" + ext))
        if code >= 0:  # msgpack handles -1 itself, so only fedmq's own codes must be named
            assert re.search(rf"(?<!\d){code}(?!\d)", str(info.value)), str(info.value)

    @pytest.mark.parametrize("data", [b"", b"\x01" * 15])
    def test_truncated_reference(self, data):
        with pytest.raises(SerdeError, match="reference"):
            decode(frame_of(msgpack.ExtType(codec.EXT_REF, data)))

    @pytest.mark.parametrize("code", [0, 1, 19, 24, 59, 61, 999, 2 ** 40, -5])
    def test_unknown_record_type(self, code):
        @dataclasses.dataclass
        class Ghost:
            a: int
            b: str

        while code in codec._RECORDS:  # taken by a record added since: use a free code
            code += 1000
        with ghost_records():
            record(code)(Ghost)
            frame = encode(["ok", Ghost(1, "x")])
        assert Ghost not in codec._RECORD_CODES
        with pytest.raises(SerdeError, match=f"unknown record type {code}"):
            decode(frame)

    @pytest.mark.parametrize("fields", [0, 1, 3, 6])
    def test_record_with_wrong_field_count(self, fields):
        """A frame whose Ref carries a different number of fields than Ref has (2)."""
        ghost = dataclasses.make_dataclass("Ghost", [f"f{i}" for i in range(fields)])
        with ghost_records():
            replace_record(codec._RECORD_CODES[m.Ref], ghost)
            frame = encode(ghost(*range(fields)))
        assert decode(encode(m.Ref(1))) == m.Ref(1)
        with pytest.raises(SerdeError, match="Ref"):
            decode(frame)

    @pytest.mark.parametrize("value, old, new", [
        (torch.Size([1, 2]), b"\x02", b"\xff"),  # a size of -1
        (torch.Size([1, 2 ** 40]), b"\xcf" + struct.pack(">Q", 2 ** 40),
         b"\xcb" + struct.pack(">d", 2.0 ** 40)),  # a float size
        (complex(1.0, 2.0), b"\xcb" + struct.pack(">d", 2.0),
         b"\xcf" + struct.pack(">Q", 2)),  # an int where a float belongs
    ], ids=["size_negative", "size_float", "complex_int"])
    def test_invalid_builtin_values(self, value, old, new):
        """Patch the last item of an encoded torch.Size / complex into something invalid."""
        frame = encode(value)
        decode(frame)
        with pytest.raises(SerdeError):
            decode(patch_tail(frame, old, new))

    @pytest.mark.parametrize("data", [b"\xff\xfe", b"gpu:0", b"cpu:-5", b"", b"cuda:x"], ids=repr)
    def test_invalid_devices(self, data):
        with pytest.raises(SerdeError):
            decode(frame_of(msgpack.ExtType(codec.EXT_DEVICE, data)))

    def test_invalid_utf8_string(self):
        with pytest.raises(SerdeError):
            decode(build_frame(b"\xa2\xff\xfe"))

    def test_unhashable_map_key(self):
        with pytest.raises(SerdeError):
            decode(build_frame(b"\x81\x91\x01\x02"))  # {[1]: 2}

    def test_deep_plain_nesting(self):
        with pytest.raises(SerdeError):
            decode(build_frame(b"\x91" * 100_000 + b"\xc0"))


DEEP_NESTING_SCRIPT = textwrap.dedent("""
    import struct
    import fedmq.messages as m
    from fedmq.serde import SerdeError, decode, encode

    def check(frame):
        try:
            decode(frame)
        except SerdeError:
            pass

    def frame(header):
        return b"FMQ1" + struct.pack("<I", 0) + struct.pack("<I", len(header)) + header

    # made by encode() itself: tuples and records nested 100 to 2000 deep
    for depth in (100, 250, 500, 2000):
        x, env = 0, m.Ref(1)
        for _ in range(depth):
            x, env = (x,), m.Envelope(1, "a", env)
        for value in (x, env):
            try:
                data = encode(value)
            except SerdeError:  # refusing to encode something this deep is fine too
                continue
            check(data)
    # made by hand: ext values (code 3, tuple) each holding the next, 2000 deep
    h = b"\\x00"
    for _ in range(2000):
        h = b"\\xc9" + struct.pack(">I", len(h) + 1) + bytes([3]) + b"\\x91" + h
    check(frame(h))
    # made by hand: arrays led by an empty ext of code 3, 5000 deep
    check(frame(b"\\x92\\xc7\\x00\\x03" * 5000 + b"\\x00"))
    print("survived")
""")


UNALIGNED_SCRIPT = textwrap.dedent("""
    import torch
    import fedmq.messages
    from fedmq.serde import DTYPES, SerdeError, decode, encode

    for dtype in DTYPES.values():
        for numel in (15, 16, 17):
            t = torch.ones(numel, dtype=torch.float64).to(dtype)
            frame = bytes(encode(t))
            for offset in (1, 4, 8):
                # a writable buffer whose frame starts `offset` bytes in, e.g. after a length
                # prefix: as a memoryview slice, and as a bytearray with its head deleted
                buf = bytearray(b"x" * offset) + frame
                views = [memoryview(buf)[offset:]]
                trimmed = bytearray(buf)
                del trimmed[:offset]
                views.append(trimmed)
                for data in views:
                    try:
                        got = decode(data)
                    except SerdeError:
                        continue
                    assert torch.equal(got.clone().view(torch.uint8),
                                       t.view(torch.uint8)), (dtype, numel, offset)
    print("survived")
""")


def run_isolated(script: str) -> subprocess.CompletedProcess:
    """Run `script` in a child Python, so a crash (segfault) fails one test, not the run."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)


def test_deeply_nested_frame_does_not_crash_the_process():
    """A small frame of deeply nested values (tuples in tuples, records in records) must
    decode or raise SerdeError, not overflow the C stack."""
    proc = run_isolated(DEEP_NESTING_SCRIPT)
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"child exited with {proc.returncode}: {proc.stderr[-2000:]}")


def test_unaligned_writable_frames_do_not_crash():
    """decode() may alias a writable frame instead of copying it; a frame that does not start
    at an aligned address (a slice after a length prefix) must still give tensors that are
    safe to compute with (copied if need be) -- every dtype, complex128 included."""
    proc = run_isolated(UNALIGNED_SCRIPT)
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"child exited with {proc.returncode}: {proc.stderr[-2000:]}")


class Boom:
    """Unpickling this appends to UNPICKLED: the side effect a pickle payload would have."""

    def __reduce__(self):
        return (UNPICKLED.append, ("unpickled!",))


UNPICKLED: list = []


class TestNoPickle:
    """Pickle payloads are data at most, never executed."""

    @pytest.fixture(autouse=True)
    def _clean(self):
        UNPICKLED.clear()
        yield
        assert UNPICKLED == [], "a pickle payload was unpickled"

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_raw_pickle(self, protocol):
        payload = pickle.dumps(Boom(), protocol=protocol)
        pickle.loads(pickle.dumps(1))  # sanity: loads itself works here
        with pytest.raises(SerdeError):
            decode(payload)
        decode_or_serde_error(MAGIC + payload)
        decode_or_serde_error(build_frame(payload))

    @pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
    def test_pickle_in_bin_is_plain_bytes(self, protocol):
        payload = pickle.dumps(Boom(), protocol=protocol)
        got = decode(frame_of({"obj": payload, "list": [payload]}))
        assert got == {"obj": payload, "list": [payload]}
        assert type(got["obj"]) is bytes

    def test_pickle_through_encode_is_plain_bytes(self):
        payload = pickle.dumps(Boom())
        got = round_trip(m.StoredObject(1, payload))
        assert got.obj == payload and type(got.obj) is bytes

    def test_pickle_as_tensor_buffer_is_a_uint8_tensor(self):
        payload = pickle.dumps(Boom())
        got = decode(frame_of(tensor_ext(DTYPE_CODE[torch.uint8], (len(payload),)), [payload]))
        assert bytes(got.numpy()) == payload

    @pytest.mark.parametrize("code", range(0, 20))
    def test_pickle_as_ext_payload(self, code):
        payload = pickle.dumps(Boom())
        decode_or_serde_error(frame_of(msgpack.ExtType(code, payload), [payload]))

    def test_pickle_in_every_field_of_a_message(self):
        payload = pickle.dumps(Boom())
        command = m.Command("add", (payload, m.Ref(1)), {"p": payload}, [3])
        got = round_trip(m.Envelope(1, payload.decode("latin-1"), command))
        assert got.message.args[0] == payload and got.message.kwargs["p"] == payload
        # in a typed field, pickled bytes are refused at decode (and never unpickled)
        with pytest.raises(SerdeError, match="Command.result_ids holds int or None only"):
            round_trip(m.Envelope(1, "me", m.Command("add", (), {}, [payload])))


# -- encoding what cannot be sent ----------------------------------------------------------------

class Opaque:
    pass


def _generator():
    yield 1


@pytest.mark.parametrize("value, type_name", [
    (lambda: 1, "function"),
    (object(), "builtins.object"),  # qualified: "object" alone is in any message
    (Opaque(), "Opaque"),
    (_generator(), "generator"),
    (Opaque, "builtins.type"),
    (print, "builtin_function_or_method"),
    (torch.Generator(), "Generator"),
    (torch.nn.Linear(2, 2), "Linear"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unsupported_objects_raise_serde_error_naming_the_type(value, type_name):
    """Encoding something outside the allowlist raises SerdeError naming its type, at the top
    level and deep inside containers or messages."""
    for wrapped in (value, [1, value], {"k": (value,)},
                    m.Envelope(1, "me", m.Command("add", (m.Ref(1), value), {}, [2]))):
        with pytest.raises(SerdeError, match=type_name):
            encode(wrapped)


def test_unsupported_tensor_dtype_raises_serde_error():
    t = torch.zeros(2).to(torch.float8_e4m3fn)
    with pytest.raises(SerdeError, match="float8_e4m3fn"):
        encode(t)
    with pytest.raises(SerdeError, match="float8_e4m3fn"):
        encode(torch.float8_e4m3fn)


def test_integer_too_large_raises_serde_error():
    with pytest.raises(SerdeError):
        encode(2 ** 5000)
