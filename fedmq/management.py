"""`fedmq queues`: fedmq's queues as the RabbitMQ management API sees them."""
from __future__ import annotations

import argparse


def add_queues_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queues", help="list fedmq queues with depth, consumers and rates")
    p.add_argument("--url", default="http://127.0.0.1:15672")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
