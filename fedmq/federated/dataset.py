"""`BaseDataset`, `FederatedDataset` and `Dataset.federate(workers)`.

A `BaseDataset` holds `data` and `targets` tensors, local or as pointers to one worker. A
`FederatedDataset` groups remote BaseDatasets, one per worker, and is what
`FederatedDataLoader` iterates. `federate` splits a local dataset into contiguous chunks, one
per worker (as PySyft did), applying the dataset's transforms before anything is sent.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from fedmq.errors import PointerError


def _is_remote(t: Any) -> bool:
    return getattr(type(t), "_fedmq_kind", None) == "pointer"


def _rows(t: Any) -> int:
    if _is_remote(t):
        shape = t.shape_local
    else:
        shape = t.shape
    if len(shape) == 0:
        raise ValueError("a dataset's tensors need a first (sample) dimension")
    return int(shape[0])


class BaseDataset(Dataset):
    """`(data[i], targets[i])` pairs. `data`/`targets` are tensors here or pointers to one
    worker. `transform` is applied to each local item (remote data is transformed before it is
    sent: a worker runs only allowlisted tensor ops, not Python callables)."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor,
                 transform: Callable | None = None, owner: Any = None, **_pysyft: Any) -> None:
        if _is_remote(data) != _is_remote(targets):
            raise PointerError("BaseDataset: data and targets must both be local or both be "
                               "pointers")
        if _is_remote(data) and data.location.id != targets.location.id:
            raise PointerError(f"BaseDataset: data is on {data.location.id!r} but targets are on "
                               f"{targets.location.id!r}")
        if _rows(data) != _rows(targets):
            raise ValueError(f"BaseDataset: {_rows(data)} data rows but {_rows(targets)} "
                             f"targets")
        self.data = data
        self.targets = targets
        self.transform_ = transform
        self.owner = owner

    def __len__(self) -> int:
        return _rows(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        data, target = self.data[index], self.targets[index]
        if self.transform_ is not None:
            if _is_remote(data):
                raise NotImplementedError("transforms run before data is sent; this dataset "
                                          "is on a worker")
            data = self.transform_(data)
        return data, target

    def transform(self, transform: Callable) -> "BaseDataset":
        """Apply `transform` to the whole (local) data tensor now."""
        if self.is_remote:
            raise NotImplementedError("transform() applies to local data; transform before "
                                      "sending")
        self.data = transform(self.data)
        return self

    @property
    def is_remote(self) -> bool:
        return _is_remote(self.data)

    @property
    def location(self) -> Any:
        """The worker holding the data, or None if it is local."""
        return self.data.location if self.is_remote else None

    def send(self, location: Any) -> "BaseDataset":
        """Send data and targets to `location` (in place; returns self, as PySyft did)."""
        if self.transform_ is not None and not self.is_remote:
            self.data = torch.stack([self.transform_(x) for x in self.data])
            self.transform_ = None
        self.data = self.data.send(location)
        self.targets = self.targets.send(location)
        return self

    def get(self) -> "BaseDataset":
        """Bring data and targets back here (in place)."""
        if self.is_remote:
            self.data = self.data.get()
            self.targets = self.targets.get()
        return self

    def federate(self, workers: Sequence[Any]) -> "FederatedDataset":
        return dataset_federate(self, workers)

    def __repr__(self) -> str:
        where = f"on {self.location.id}" if self.is_remote else "local"
        return (f"<BaseDataset {where}: data {tuple(_shape(self.data))}, "
                f"targets {tuple(_shape(self.targets))}>")


def _shape(t: Any) -> torch.Size:
    return t.shape_local if _is_remote(t) else t.shape


class FederatedDataset:
    """Remote `BaseDataset`s by worker id, in insertion order."""

    def __init__(self, datasets: Sequence[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        for ds in datasets:
            location = getattr(ds, "location", None)
            if location is None:
                raise PointerError("FederatedDataset takes datasets on workers; send each "
                                   "BaseDataset first (dataset.send(worker))")
            if location.id in self.datasets:
                raise ValueError(f"two datasets on worker {location.id!r}; concatenate them "
                                 f"there first")
            self.datasets[location.id] = ds

    @property
    def workers(self) -> list[str]:
        return list(self.datasets)

    def __getitem__(self, worker_id: str) -> BaseDataset:
        worker_id = getattr(worker_id, "id", worker_id)
        try:
            return self.datasets[worker_id]
        except KeyError:
            raise KeyError(f"no dataset on worker {worker_id!r}; workers: {self.workers}") \
                from None

    def get_dataset(self, worker: Any) -> BaseDataset:
        """Remove the dataset of `worker` from this federation and return it (PySyft)."""
        ds = self[worker]
        del self.datasets[getattr(worker, "id", worker)]
        return ds

    def lengths(self) -> dict[str, int]:
        return {w: len(ds) for w, ds in self.datasets.items()}

    def __len__(self) -> int:
        return sum(len(ds) for ds in self.datasets.values())

    def __repr__(self) -> str:
        return (f"FederatedDataset\n    Distributed accross: {', '.join(self.workers)}\n"
                f"    Number of datapoints: {len(self)}\n")


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, one per worker, sizes differing by at most one."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def dataset_federate(dataset: Dataset, workers: Sequence[Any]) -> FederatedDataset:
    """Split `dataset` into contiguous chunks, one per worker, send each and return the
    FederatedDataset. Works on a local BaseDataset (tensors sliced directly) and on any
    map-style Dataset whose items collate (torchvision MNIST-style datasets with ToTensor):
    items are read through the dataset, so its transforms are applied before sending."""
    if isinstance(workers, str) or not isinstance(workers, (list, tuple)):
        workers = [workers]
    workers = list(workers)
    if not workers:
        raise ValueError("federate needs at least one worker")
    n = len(dataset)
    if n < len(workers):
        raise ValueError(f"cannot federate {n} samples over {len(workers)} workers")
    datasets = []
    for worker, (start, stop) in zip(workers, _chunks(n, len(workers))):
        if isinstance(dataset, BaseDataset) and dataset.transform_ is None:
            if dataset.is_remote:
                raise PointerError("this BaseDataset is already on a worker")
            data, targets = dataset.data[start:stop], dataset.targets[start:stop]
        else:
            data, targets = _collate_range(dataset, start, stop)
        datasets.append(BaseDataset(data, targets).send(worker))
    return FederatedDataset(datasets)


def _collate_range(dataset: Dataset, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    subset = torch.utils.data.Subset(dataset, range(start, stop))
    loader = DataLoader(subset, batch_size=max(1, min(4096, stop - start)), shuffle=False)
    data_parts, target_parts = [], []
    try:
        batches = list(loader)
    except TypeError as exc:  # default_collate met PIL images or other non-tensors
        raise TypeError(f"federate: the items of {type(dataset).__name__} do not collate into "
                        f"tensors ({exc}); give the dataset a transform such as "
                        f"transforms.ToTensor()") from None
    for batch in batches:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise TypeError("federate needs a dataset whose items are (data, target) pairs")
        data, targets = batch
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"federate: items of {type(dataset).__name__} are "
                            f"{type(data).__name__}, not tensors; give the dataset a transform "
                            f"such as transforms.ToTensor()")
        data_parts.append(data)
        target_parts.append(torch.as_tensor(targets))
    return torch.cat(data_parts), torch.cat(target_parts)
