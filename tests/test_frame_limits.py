"""Frames larger than the worker's limit (`Policy.max_frame_bytes`, `fedmq worker
--max-frame-bytes`) are refused before they are decoded, and chunked ones as their chunks
arrive, before the frame is assembled (issue 12, item 4.1). Over RabbitMQ: test_amqp_limits.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import fedmq
from fedmq import errors, messages as m, serde
from fedmq.fl.connections import decode_reply, encode_request
from fedmq.policy import Policy
from fedmq.transport.chunks import ChunkAssembler, FrameTooLarge


def test_a_frame_over_the_limit_is_refused_without_being_read(monkeypatch):
    worker = fedmq.worker.Worker("w", policy=dataclasses.replace(Policy.open(),
                                                                 max_frame_bytes=4096))
    small = encode_request(m.ObjectsCount())
    big = encode_request(m.ObjectMessage([m.StoredObject(1, torch.zeros(2000))]))
    assert len(small) < 4096 < len(big)
    read = []
    real_decode = serde.decode
    monkeypatch.setattr(serde, "decode", lambda frame: read.append(len(frame)) or
                        real_decode(frame))
    reply, why = worker.handle_frame_checked(big, "me")
    assert read == [] and why.startswith("frame_too_large:")
    with pytest.raises(errors.FrameTooLargeError, match="over the limit of worker 'w', 4096"):
        decode_reply(reply, "w")
    assert decode_reply(worker.handle_frame(small, "me"), "w") == 0  # it keeps serving


def test_sending_more_than_the_frame_limit_raises_frame_too_large(hook):
    bob = fedmq.VirtualWorker(hook, id="fbob")
    bob.worker.policy = dataclasses.replace(Policy.open(), max_frame_bytes=64 * 1024)
    pointer = torch.zeros(100_000).send(bob)  # posted: its error comes at the next call
    with pytest.raises(errors.FrameTooLargeError) as info:
        pointer.get()
    assert isinstance(info.value, errors.RemoteSerdeError)  # callers of serde errors see it
    assert torch.equal(torch.ones(10).send(bob).get(), torch.ones(10))


def test_chunks_over_the_frame_limit_are_refused_before_the_frame_is_assembled():
    assembler = ChunkAssembler(max_frame_bytes=10_000)

    def chunk(key, index, total, body):
        return assembler.add({"x-fedmq-frame": key, "x-fedmq-chunk": index,
                              "x-fedmq-chunks": total}, body, "mallory")

    # its first chunk says the frame is 1000 x 4 KiB: refused at once
    with pytest.raises(FrameTooLarge, match="chunk count declares at least 4091905") as info:
        chunk("a", 0, 1000, bytes(4096))
    assert info.value.code == "frame_too_large" and assembler.held("mallory") == 0
    with pytest.raises(FrameTooLarge):  # its later chunks are refused as they come
        chunk("a", 999, 1000, bytes(10))
    # chunks that lie about their size are refused once what arrived passes the limit
    assert chunk("b", 0, 3, bytes(4000)) is None  # 3 chunks of 4000: fine so far
    with pytest.raises(FrameTooLarge, match="add up to at least 11000"):
        chunk("b", 2, 3, bytes(7000))
    assert len(assembler) == 0 and assembler.held(None) == 0
    # a frame under the limit is assembled
    assert chunk("c", 0, 2, bytes(5000)) is None
    assert len(chunk("c", 1, 2, bytes(4000))) == 9000
