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


import pytest  # noqa: E402

from fedmq.transport.amqp import MAX_CHUNKS, ChunkError  # noqa: E402


@pytest.mark.parametrize("headers,why", [
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": "0", "x-fedmq-chunks": 2}, "chunk index"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": 0, "x-fedmq-chunks": "2"}, "chunk count"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": 0, "x-fedmq-chunks": 0}, "chunk count"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": 0, "x-fedmq-chunks": MAX_CHUNKS + 1}, "count"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": 2, "x-fedmq-chunks": 2}, "chunk index"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": -1, "x-fedmq-chunks": 2}, "chunk index"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": 1.0, "x-fedmq-chunks": 2}, "chunk index"),
    ({"x-fedmq-frame": 5, "x-fedmq-chunk": 0, "x-fedmq-chunks": 2}, "frame id"),
    ({"x-fedmq-chunk": 0, "x-fedmq-chunks": 2}, "frame id"),
    ({"x-fedmq-frame": "f", "x-fedmq-chunk": True, "x-fedmq-chunks": 2}, "chunk index"),
])
def test_bad_chunk_headers_raise_a_chunk_error_and_hold_nothing(headers, why):
    asm = ChunkAssembler()
    with pytest.raises(ChunkError, match=why):
        asm.add(headers, b"data", "alice")
    assert len(asm) == 0 and asm.held("alice") == 0


def test_a_chunk_count_that_changes_or_a_chunk_sent_twice_gives_up_the_frame():
    asm = ChunkAssembler()
    asm.add(chunk("f", 0, 3), b"a", "alice")
    with pytest.raises(ChunkError, match="announced in 3 chunks"):
        asm.add(chunk("f", 1, 4), b"b", "alice")
    assert len(asm) == 0 and asm.held("alice") == 0
    asm.add(chunk("g", 0, 2), b"a", "alice")
    with pytest.raises(ChunkError, match="arrived twice, different"):
        asm.add(chunk("g", 0, 2), b"z", "alice")
    assert len(asm) == 0


def test_the_same_chunk_published_again_is_a_duplicate_not_an_error():
    """A sender publishes again what its broker did not confirm before the connection dropped;
    some of it may have arrived: the same bytes under the same index are ignored."""
    asm = ChunkAssembler()
    assert asm.add(chunk("g", 0, 2), b"a", "alice") is None
    assert asm.add(chunk("g", 0, 2), b"a", "alice") is None
    assert asm.held("alice") == 1
    assert asm.add(chunk("g", 1, 2), b"b", "alice") == b"ab"


def test_the_bytes_of_one_senders_partial_frames_are_bounded():
    asm = ChunkAssembler(max_partial_bytes=100)
    asm.add(chunk("a1", 0, 2), b"x" * 60, "alice")
    asm.add(chunk("b1", 0, 2), b"x" * 60, "bob")  # another sender: its own budget
    with pytest.raises(ChunkError, match="alice has over 100 bytes"):
        asm.add(chunk("a2", 0, 2), b"x" * 60, "alice")
    assert asm.held("alice") == 60 and asm.held("bob") == 60
    assert asm.add(chunk("a1", 1, 2), b"y" * 60, "alice") == b"x" * 60 + b"y" * 60
    assert asm.held("alice") == 0  # a completed frame frees its sender's budget
    asm.add(chunk("a3", 0, 2), b"x" * 60, "alice")


def test_the_bytes_of_all_senders_partial_frames_are_bounded_too():
    """Found by review: a sender is named by its reply-to, which a publisher chooses; sixty
    "senders" each held a 4 MiB partial frame. All of them together are bounded as well."""
    asm = ChunkAssembler(max_partial_bytes=100, max_total_bytes=250)
    for i in range(4):
        asm.add(chunk(f"f{i}", 0, 2), b"x" * 60, f"reply-to-{i}")
    with pytest.raises(ChunkError, match="over 250 bytes of incomplete frames waiting "
                                         r"\(from all senders\)"):
        asm.add(chunk("f4", 0, 2), b"x" * 60, "reply-to-4")
    assert asm.held(None) == 240 and len(asm) == 4
    assert asm.add(chunk("f0", 1, 2), b"y" * 60, "reply-to-0") == b"x" * 60 + b"y" * 60
    asm.expire(-1)  # everything given up: nothing held
    assert asm.held(None) == 0
    asm.add(chunk("f5", 0, 2), b"x" * 60, "reply-to-5")
    assert asm.held(None) == 60


def test_incomplete_frames_are_bounded_in_number_per_sender_and_in_all():
    """70 000 one-byte first chunks once held a worker's whole prefetch window: bytes alone
    do not bound partial frames."""
    from fedmq.transport.chunks import ChunkAssembler, ChunkError
    asm = ChunkAssembler(max_partial_frames=3, max_frames_total=5)
    for i in range(3):
        assert asm.add(chunk(f"m{i}", 0, 2), b"x", "mallory") is None
    with pytest.raises(ChunkError, match="mallory already has 3 incomplete frames"):
        asm.add(chunk("m3", 0, 2), b"x", "mallory")
    assert asm.add(chunk("m0", 1, 2), b"y", "mallory") == b"xy"  # a frame completes: room again
    assert asm.add(chunk("m4", 0, 2), b"x", "mallory") is None
    assert asm.add(chunk("a0", 0, 2), b"x", "alice") is None
    assert asm.add(chunk("a1", 0, 2), b"x", "alice") is None
    with pytest.raises(ChunkError, match="5 incomplete frames waiting"):
        asm.add(chunk("a2", 0, 2), b"x", "alice")
    assert asm.add(chunk("one", 0, 1), b"whole", "alice") == b"whole"  # one-chunk frames pass
    asm.expire(-1)
    assert len(asm) == 0 and asm.add(chunk("a2", 0, 2), b"x", "alice") is None
