"""fedmq's wire format: `encode(obj) -> bytes` and `decode(bytes) -> obj`. No pickle.

Every message, in-process or over RabbitMQ, is one frame made here (frame.py), with msgpack for
structure (codec.py) and raw little-endian bytes for tensors (tensors.py).
"""
from fedmq.errors import SerdeError
from fedmq.serde.codec import decode, encode, record
from fedmq.serde.tensors import DTYPES

__all__ = ["DTYPES", "SerdeError", "decode", "encode", "record"]
