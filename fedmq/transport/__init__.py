"""Transports move frames between clients and workers; see base.py for the interface."""
from fedmq.transport.base import Transport
from fedmq.transport.local import LocalNetwork, LocalTransport

__all__ = ["LocalNetwork", "LocalTransport", "Transport"]
