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
