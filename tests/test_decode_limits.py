"""Decoding is bounded: a hostile frame cannot make the decoder allocate much more than its own
size (fedmq.serde.codec.DECODE_FACTOR). Before the bound, a 20 MiB frame of one-byte empty
lists cost 1.4 GiB while decoding (~70x)."""
from __future__ import annotations

import gc
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import msgpack
import pytest
import torch

from fedmq import messages as m
from fedmq.errors import SerdeError
from fedmq.ids import new_id
from fedmq.serde import codec, decode, encode
from fedmq.serde.frame import join_frame, split_frame
from fedmq.serde.tensors import NO_GRAD

MIB = 1 << 20


def array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def hostile_header(kind: str, size: int) -> bytes:
    """A msgpack header of about `size` bytes: one array holding as many of `kind` as fit."""
    items = {
        "empty lists": b"\x90",
        "empty maps": b"\x80",
        "empty records": b"\x92\xc7\x00" + bytes([codec.EXT_RECORD]) + b"\x30",  # ClearObjects
        "empty tuples": b"\x91\xc7\x00" + bytes([codec.EXT_TUPLE]),
        "nested lists": b"\x91\x90",
        "one-key maps": b"\x81\xa2ab\x90",
    }[kind]
    count = (size - 5) // len(items)
    return array32(count) + items * count


def traced_peak(fn) -> tuple[int, object]:
    """(peak bytes Python allocated while `fn` ran, what it returned or raised)."""
    gc.collect()
    tracemalloc.start()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 - returned for the caller to check
        outcome = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, outcome


@pytest.mark.parametrize("kind", ["empty lists", "empty maps", "empty records", "empty tuples",
                                  "nested lists", "one-key maps"])
def test_a_frame_of_empty_containers_is_refused_within_the_decoding_budget(kind, monkeypatch):
    monkeypatch.setattr(codec, "DECODE_SLACK", MIB)  # the same bound, reached sooner
    frame = bytes(join_frame(hostile_header(kind, MIB), []))
    header_len = len(split_frame(frame)[0])
    peak, outcome = traced_peak(lambda: decode(frame))
    assert isinstance(outcome, SerdeError) and "would build over" in str(outcome)
    budget = codec.DECODE_FACTOR * header_len + codec.DECODE_SLACK
    assert peak < 1.15 * budget + len(frame), f"{kind}: {peak / MIB:.0f} MiB while decoding"


def test_short_strings_cost_at_most_the_documented_worst_case(monkeypatch):
    """Leaves are charged once the array holding them is complete: one array of 2-character
    strings (3 bytes each, 64 in memory) is the worst case, about 21x its size."""
    monkeypatch.setattr(codec, "DECODE_SLACK", MIB)
    count = MIB // 3
    frame = bytes(join_frame(array32(count) + b"\xa2ab" * count, []))
    peak, outcome = traced_peak(lambda: decode(frame))
    assert isinstance(outcome, SerdeError)
    assert peak < 24 * len(frame) + codec.DECODE_SLACK


def test_a_buffer_backing_two_tensors_is_refused():
    """A read-only frame copies each tensor's buffer: a header naming one 1 MiB buffer many
    times would copy it as often. Each buffer backs one tensor."""
    head = struct.pack("<BBBII", 9, 0, 1, 0, NO_GRAD) + struct.pack("<q", MIB // 4)
    ext = msgpack.ExtType(codec.EXT_TENSOR, head)
    frame = bytes(join_frame(msgpack.packb([ext] * 1000), [memoryview(bytes(MIB))]))
    with pytest.raises(SerdeError, match="buffer 0 backs two tensors"):
        decode(frame)
    one = bytes(join_frame(msgpack.packb([ext]), [memoryview(bytes(MIB))]))
    assert decode(one)[0].shape == (MIB // 4,)


def test_many_empty_tensors_are_charged(monkeypatch):
    monkeypatch.setattr(codec, "DECODE_SLACK", MIB)
    head = struct.pack("<BBBII", 9, 0, 1, 0, NO_GRAD) + struct.pack("<q", 0)
    count = MIB // 24
    exts = [msgpack.ExtType(codec.EXT_TENSOR, head[:3] + struct.pack("<II", i, NO_GRAD) +
                            head[11:]) for i in range(count)]
    frame = bytes(join_frame(msgpack.packb(exts), [memoryview(b"")] * count))
    with pytest.raises(SerdeError, match="would build over"):
        decode(frame)


@pytest.mark.parametrize("value", [
    m.Reply(value=torch.randn(1_000_000).tolist()),
    m.Reply(value=torch.randint(0, 100, (2_000_000,)).tolist()),
    m.Reply(value=torch.randn(1000, 1000).tolist()),
    m.Envelope(1, "me", m.GetRequest([new_id() for _ in range(100_000)])),
    m.Envelope(1, "me", m.Batch([m.Command("Tensor.__add__", (m.Ref(new_id()), m.Ref(new_id())),
                                           {}, [new_id()]) for _ in range(16384)])),
    m.Envelope(1, "me", m.SearchRequest([f"#tag{i}" for i in range(200_000)])),
], ids=["tolist 1M floats", "tolist 2M small ints", "tolist 1000x1000", "get 100k ids",
        "batch of 16384 commands", "200k tags"])
def test_big_legitimate_frames_still_decode(value):
    frame = encode(value)
    assert len(split_frame(frame)[0]) > MIB  # big enough for the factor, not the slack
    decoded = decode(frame)
    assert type(decoded) is type(value)


_MEASURE = textwrap.dedent("""
    import resource, struct, sys
    sys.path.insert(0, {tests!r})
    from test_decode_limits import hostile_header
    from fedmq.errors import SerdeError
    from fedmq.serde import decode
    from fedmq.serde.frame import join_frame
    frame = bytes(join_frame(hostile_header({kind!r}, 20 << 20), []))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        decode(frame)
        outcome = "decoded"
    except SerdeError:
        outcome = "refused"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(outcome, (peak - before) / len(frame))
""")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty lists", "empty maps", "empty records"])
def test_a_20_mib_hostile_frame_costs_under_ten_times_its_size(kind):
    """The issue's figure, measured as the process's peak RSS (a process of its own)."""
    import pathlib
    script = _MEASURE.format(tests=str(pathlib.Path(__file__).parent), kind=kind)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    outcome, ratio = out.stdout.split()
    assert outcome == "refused"
    assert float(ratio) < 10, f"{kind}: peak RSS grew by {float(ratio):.1f}x the frame"
