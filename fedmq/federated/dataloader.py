"""`FederatedDataLoader`: batches of a FederatedDataset, as pointers, worker after worker.

Each batch is ONE remote indexing op per tensor (`data[i:j]`, or `data[[i1, i2, ...]]` when
shuffling), pipelined like any other command: no reply is awaited, and the commands ride in
the next frame to that worker. PySyft indexed one sample at a time (a message per sample,
issue #2522). `len(loader)` is the number of batches actually yielded:
sum over workers of ceil(n_w / batch_size) (floor with drop_last); PySyft's
ceil(total / batch_size) disagreed with it (#3707).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch

from fedmq.federated.dataset import FederatedDataset


class FederatedDataLoader:
    def __init__(self, federated_dataset: FederatedDataset, batch_size: int = 8,
                 shuffle: bool = False, num_iterators: int = 1, drop_last: bool = False,
                 collate_fn: Any = None, iter_per_worker: bool = False,
                 generator: torch.Generator | None = None, **_torch_options: Any) -> None:
        """`_torch_options` (num_workers, pin_memory, ...) are accepted and ignored: the data
        is not here to load. `collate_fn` cannot run remotely and must be None."""
        if not isinstance(federated_dataset, FederatedDataset):
            raise TypeError(f"FederatedDataLoader takes a FederatedDataset (from "
                            f"dataset.federate(workers) or sy.FederatedDataset([...])), got "
                            f"{type(federated_dataset).__name__}")
        if int(batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        if num_iterators != 1:
            raise NotImplementedError("num_iterators > 1 is not supported: batches come worker "
                                      "after worker (use iter_per_worker=True for one batch "
                                      "from every worker per step)")
        if collate_fn is not None:
            raise NotImplementedError("collate_fn cannot run on the workers; a batch is one "
                                      "remote indexing op on each tensor")
        for worker, ds in federated_dataset.datasets.items():
            if ds.transform_ is not None:
                raise NotImplementedError(f"the dataset on {worker!r} has a transform; apply "
                                          f"transforms before sending")
        self.federated_dataset = federated_dataset
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.iter_per_worker = iter_per_worker
        self.generator = generator

    @property
    def dataset(self) -> FederatedDataset:
        return self.federated_dataset

    @property
    def workers(self) -> list[str]:
        return self.federated_dataset.workers

    def _batches_of(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches_per_worker(self) -> dict[str, int]:
        return {w: self._batches_of(n) for w, n in self.federated_dataset.lengths().items()}

    def __len__(self) -> int:
        counts = self.batches_per_worker().values()
        if self.iter_per_worker:
            return max(counts, default=0)
        return sum(counts)

    def _worker_batches(self, worker: str) -> Iterator[tuple[Any, Any]]:
        ds = self.federated_dataset[worker]
        n, bs = len(ds), self.batch_size
        order = torch.randperm(n, generator=self.generator).tolist() if self.shuffle else None
        for b in range(self._batches_of(n)):
            start, stop = b * bs, min((b + 1) * bs, n)
            if order is None:
                index: Any = slice(start, stop)
            else:
                index = order[start:stop]  # a python list: one remote advanced-indexing op
            yield ds.data[index], ds.targets[index]

    def __iter__(self) -> Iterator[Any]:
        if not self.iter_per_worker:
            for worker in self.workers:
                yield from self._worker_batches(worker)
            return
        # one batch from every worker still holding data, per step: {worker id: (data, target)}
        iterators = {w: self._worker_batches(w) for w in self.workers}
        while iterators:
            step = {}
            for worker, it in list(iterators.items()):
                try:
                    step[worker] = next(it)
                except StopIteration:
                    del iterators[worker]
            if step:
                yield step

    def __repr__(self) -> str:
        return (f"<FederatedDataLoader batch_size={self.batch_size} shuffle={self.shuffle} "
                f"drop_last={self.drop_last} workers={self.workers} batches={len(self)}>")
