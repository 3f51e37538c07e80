"""Small in-process workers holding synthetic image data, for the federated-round tests."""
from __future__ import annotations

import torch

from fedmq.extensions import load_extensions
from fedmq.ids import new_id
from fedmq.worker import Worker

load_extensions()  # Fit / Evaluate handlers


def data_worker(worker_id: str, n: int = 64, labels=range(10), split: str = "train",
                seed: int = 0) -> Worker:
    """A worker holding n random 1x28x28 images whose label is written into the pixels (so a
    CNN can learn it), tagged like `fedmq worker --dataset synth` stores its partition."""
    g = torch.Generator().manual_seed(seed)
    labels = list(labels)
    target = torch.tensor(labels)[torch.randint(len(labels), (n,), generator=g)]
    data = torch.randn(n, 1, 28, 28, generator=g) * 0.1
    for i, y in enumerate(target.tolist()):
        data[i, 0, y * 2:(y * 2) + 3, :] += 2.0
    worker = Worker(worker_id)
    worker.store.put(new_id(), data, ("#synth", "#data", f"#{split}"))
    worker.store.put(new_id(), target, ("#synth", "#target", f"#{split}"))
    return worker


def tensors_in(value, out: list) -> list:
    """Every tensor in `value` (nested dicts, lists, tuples and records), appended to `out`:
    what a frame a coordinator received carries."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            tensors_in(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            tensors_in(v, out)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            tensors_in(getattr(value, name), out)
    return out


async def rounds_with_faults(url: str, train: list[str], testing: str, cfg, run_dir,
                             faults: dict, *, delay: float | None = 0.2,
                             wait_after_failure: bool = False):
    """`cfg.rounds` coordinator rounds over RabbitMQ at `url`; `faults[r]` (a blocking
    function) runs in a thread `delay` seconds into round r, once its Fits are out (with
    `delay=None`: before the round starts). With `wait_after_failure`, a round that failed is
    followed by waiting for the workers. The round records, each with `wall` (seconds from
    the fault's end to the round's)."""
    import asyncio
    import time

    from fedmq.fl.connections import AMQPRoundConnection
    from fedmq.fl.coordinator import Coordinator

    conn = await AMQPRoundConnection.connect(url)
    coord = Coordinator(conn, list(train), cfg, testing=testing, echo=lambda line: None,
                        run_dir=run_dir)
    records = []
    try:
        coord.prepare()
        for round in range(1, cfg.rounds + 1):
            fault = faults.get(round)
            if fault is not None and delay is None:
                await asyncio.to_thread(fault)
            task = asyncio.ensure_future(coord.run_round(round))
            if fault is not None and delay is not None:
                await asyncio.sleep(delay)
                await asyncio.to_thread(fault)
            started = time.monotonic()
            record = await task
            if wait_after_failure and record.status != "ok":
                await coord.wait_for_workers(60)
            record.wall = time.monotonic() - started
            coord.end_round(record)
            records.append(record)
    finally:
        await conn.aclose()
    return records
