"""`fedmq worker --dataset mnist5k|fashion-mnist (--labels 0-3 | --testing)`: a worker that
starts holding its partition of a dataset (PySyft's websocket servers, seed §3.2 in the notes).

The partition is stored as two tensors, found by tag the way PySyft's tutorials find data:
    #<dataset> #data  #train|#test   images, float32 N x 1 x 28 x 28, normalised
    #<dataset> #target #train|#test  labels, int64 N
`--labels 0-3` keeps the train samples with those labels (alice 0-3, bob 4-6, charlie 7-9 in
the seed); `--testing` holds the whole test set. One log line gives the per-label counts.
"""
from __future__ import annotations

import argparse
import logging

import torch

from fedmq.data import partition
from fedmq.data.vision import NORMALIZE, load_image_dataset

log = logging.getLogger("fedmq.data")


def partition_tensors(dataset: str, labels: list[int] | None = None,
                      testing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) of the partition: normalised float images N x 1 x 28 x 28."""
    ds = load_image_dataset(dataset, train=not testing)
    index = torch.arange(len(ds))
    if labels is not None:
        index = torch.from_numpy(partition.label_range(ds.targets, labels))
    mean, std = NORMALIZE[dataset]
    images = ds.data[index].float().div_(255).sub_(mean[0]).div_(std[0]).unsqueeze(1)
    return images, ds.targets[index].clone()


def holdings(args: argparse.Namespace) -> list[tuple[torch.Tensor, tuple, str]]:
    """What a data owner's worker holds for `args` (id, dataset, labels or testing): the
    partition's images and labels, each with its search tags and description, as
    (tensor, tags, description). Logs the per-label counts. Raises ValueError for a
    combination that names no partition."""
    dataset = getattr(args, "dataset", None)
    testing = bool(getattr(args, "testing", False))
    label_text = getattr(args, "labels", None)
    if not dataset:
        raise ValueError("--testing needs --dataset (mnist5k or fashion-mnist)")
    if testing and label_text:
        raise ValueError("use either --labels (a train partition) or --testing (the test set)")
    labels = partition.parse_labels(label_text) if label_text else None
    images, targets = partition_tensors(dataset, labels, testing)
    split = "#test" if testing else "#train"
    description = (f"{dataset} {'test set' if testing else 'train set'}"
                   f"{f', labels {label_text}' if label_text else ''} held by {args.id}")
    counts = partition.label_counts(targets)
    log.info("worker %s holds %d %s %s samples; per label: %s", args.id, len(targets), dataset,
             split[1:], ", ".join(f"{label}: {n}" for label, n in enumerate(counts)))
    return [(images, (f"#{dataset}", "#data", split), description),
            (targets, (f"#{dataset}", "#target", split), description)]
