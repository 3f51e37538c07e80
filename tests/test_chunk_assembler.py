"""Chunked frames: reassembly in any order, and partial frames given up after a while."""
from fedmq.transport.amqp import ChunkAssembler


def chunk(frame: str, i: int, n: int) -> dict:
    return {"x-fedmq-frame": frame, "x-fedmq-chunk": i, "x-fedmq-chunks": n}


def test_chunks_in_any_order_make_the_frame():
    asm = ChunkAssembler()
    assert asm.add(chunk("f", 2, 3), b"c") is None
    assert asm.add(chunk("f", 0, 3), b"a") is None
    assert asm.add(chunk("f", 1, 3), b"b") == b"abc"
    assert len(asm) == 0
    assert asm.add(None, b"whole") == b"whole"  # not chunked: passes through


def test_a_frame_missing_chunks_is_given_up_after_max_age():
    now = [0.0]
    asm = ChunkAssembler(clock=lambda: now[0])
    asm.add(chunk("old", 0, 2), b"a")
    now[0] = 5.0
    asm.add(chunk("new", 0, 2), b"x")
    assert asm.expire(10.0) == []
    now[0] = 12.0
    assert asm.expire(10.0) == ["old"] and len(asm) == 1
    assert asm.add(chunk("new", 1, 2), b"y") == b"xy"
    assert len(asm) == 0 and asm.expire(0.0) == []
