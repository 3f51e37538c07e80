"""Federated datasets (PySyft's `syft.frameworks.torch.fl`), rebuilt so data stays put.

    BaseDataset(data, targets)        a dataset, local or on a worker (`.send(w)`, `.location`)
    FederatedDataset([...])           remote BaseDatasets, one per worker
    dataset.federate((bob, alice))    any map-style Dataset -> FederatedDataset (hooks.py)
    FederatedDataLoader(fd, ...)      batches as (data_ptr, target_ptr), worker after worker,
                                      each batch one remote indexing op per tensor
"""
from fedmq.federated.dataloader import FederatedDataLoader
from fedmq.federated.dataset import BaseDataset, FederatedDataset, dataset_federate

__all__ = ["BaseDataset", "FederatedDataLoader", "FederatedDataset", "dataset_federate"]
