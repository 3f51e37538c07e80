"""Transports move frames between clients and workers; see base.py for the interface.
`local` (in-process) is imported here; `amqp` (RabbitMQ, aio-pika) only when it is used."""
from fedmq.transport.base import ReplySink, Transport
from fedmq.transport.local import LocalTransport

__all__ = ["LocalTransport", "ReplySink", "Transport"]
