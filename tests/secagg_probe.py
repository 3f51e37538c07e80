"""A stand-in for the Fit in SecAgg+'s RabbitMQ test (until the round loop wires `protect`
into the Fit): `ProtectProbe` makes a worker draw its own vector (from `probe_vector`, as a
Fit computes its update from its own data) and answer `secaggplus.protect` of it. Test-only:
the record (code 990) and its handler exist only in processes started as
`python tests/secagg_probe.py worker --id ...` (the `fedmq worker` command plus this)."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from fedmq.serde import record


@record(990)
@dataclass(slots=True)
class ProtectProbe:
    entry: dict
    length: int
    seed: int


def probe_vector(worker: str, length: int, seed: int) -> torch.Tensor:
    """The int64 vector worker `worker` masks (the test computes the same to check the sum)."""
    g = torch.Generator().manual_seed(seed * 1000 + sum(map(ord, worker)))
    return torch.randint(-(1 << 62), 1 << 62, (length,), generator=g, dtype=torch.int64)


def handle_probe(session, msg: ProtectProbe) -> dict:
    session.require("coordinator", "send ProtectProbe")
    from fedmq.secagg.secaggplus import protect
    return protect(session, msg.entry, probe_vector(session.id, msg.length, msg.seed))


if __name__ == "__main__":
    from fedmq.cli import main
    from fedmq.worker import register_handler

    register_handler(ProtectProbe, handle_probe)
    sys.exit(main())
