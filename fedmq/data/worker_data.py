"""What a `fedmq worker` holds for its data owner: a named dataset's partition
(`--dataset mnist5k|fashion-mnist --labels 0-3 | --testing [--key NAME]`, PySyft's websocket
servers, seed §3.2 in the notes) and the owner's own files (`--data PATH ...`, see
fedmq.data.spec), each as two tensors found by tag the way PySyft's tutorials find data:
    #<key> #data   #train|#test [tags]  inputs, float32 (images N x C x H x W)
    #<key> #target #train|#test [tags]  targets, int64 N (classes) or float32 (regression)
A named dataset's key is its name unless `--key` says otherwise. `--labels 0-3` keeps the
train samples with those labels (alice 0-3, bob 4-6, charlie 7-9 in the seed); `--testing`
holds the whole test set. One log line per split gives the per-label counts.
"""
from __future__ import annotations

import argparse
import logging

import torch

from fedmq.data import files, partition, prepare
from fedmq.data.spec import DataSpec, check_specs
from fedmq.data.vision import LOADERS, NORMALIZE, load_image_dataset

log = logging.getLogger("fedmq.data")

Holding = tuple[torch.Tensor, tuple, str]  # (tensor, search tags, description)


def partition_tensors(dataset: str, labels: list[int] | None = None,
                      testing: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) of the partition: normalised float images N x 1 x 28 x 28."""
    ds = load_image_dataset(dataset, train=not testing)
    index = torch.arange(len(ds))
    if labels is not None:
        present = sorted(int(t) for t in torch.unique(torch.as_tensor(ds.targets)))
        absent = [label for label in labels if label not in present]
        if absent:
            raise ValueError(f"--labels: {dataset} has labels {present[0]}-{present[-1]}; "
                             f"no sample has label {', '.join(map(str, absent))}")
        index = torch.from_numpy(partition.label_range(ds.targets, labels))
    mean, std = NORMALIZE[dataset]
    images = ds.data[index].float().div_(255).sub_(mean[0]).div_(std[0]).unsqueeze(1)
    return images, ds.targets[index].clone()


def named_dataset(args: argparse.Namespace) -> tuple[str, list[int] | None, bool, str] | None:
    """(dataset, labels, testing, key) that `args` asks for, or None without `--dataset`.
    ValueError for a combination that names no partition or an unknown dataset."""
    dataset = getattr(args, "dataset", None)
    testing = bool(getattr(args, "testing", False))
    label_text = getattr(args, "labels", None)
    if not dataset:
        if testing or label_text:
            raise ValueError("--testing and --labels need --dataset (mnist5k or fashion-mnist)")
        return None
    if dataset not in LOADERS:
        raise ValueError(f"unknown --dataset {dataset!r}; choose one of {sorted(LOADERS)}, or "
                         f"serve your own files with --data")
    if testing and label_text:
        raise ValueError("use either --labels (a train partition) or --testing (the test set)")
    labels = partition.parse_labels(label_text) if label_text else None
    return dataset, labels, testing, getattr(args, "key", None) or dataset


def checked_specs(args: argparse.Namespace) -> list[DataSpec]:
    """`args.data` checked together with the named dataset (fedmq.data.spec.check_specs),
    before anything is read. ValueError naming the option at fault."""
    named = named_dataset(args)
    taken = (named[3], "test" if named[2] else "train") if named else None
    return check_specs(getattr(args, "data", None), taken)


#: integer targets up to this are logged per label; above, only their range
MAX_COUNTED_LABELS = 1 << 16


def _counts(targets: torch.Tensor, classes: list[str] | None) -> str:
    if targets.dtype != torch.int64 or targets.dim() != 1 or len(targets) == 0:
        return (f"float targets, mean {targets.float().mean():.4g}, "
                f"std {targets.float().std(correction=0):.4g}") if len(targets) else "none"
    if int(targets.min()) < 0:
        values, counts = targets.unique(return_counts=True)
        return "per label: " + ", ".join(f"{v}: {n}" for v, n in zip(values.tolist(),
                                                                    counts.tolist()))
    top = int(targets.max())
    if not classes and top >= MAX_COUNTED_LABELS:  # ids, prices: not class labels to count
        return (f"integer targets from {int(targets.min())} to {top} "
                f"({len(targets.unique())} distinct)")
    counts = partition.label_counts(targets, len(classes) if classes else top + 1)
    names = [f"{i} {classes[i]}" if classes else str(i) for i in range(len(counts))]
    return "per label: " + ", ".join(f"{name}: {n}" for name, n in zip(names, counts))


def file_holdings(specs: list[DataSpec], holder: str) -> list[Holding]:
    """The tensors of the owner's files (`specs` checked by check_specs), per key: its files
    read (fedmq.data.files.read), their targets encoded together, a fractional split cut,
    `normalize` applied with the key's train statistics (or the given ones). Logs each
    split's per-label counts and a key's class names. ValueError naming the --data at fault."""
    out: list[Holding] = []
    for key in dict.fromkeys(spec.key for spec in specs):
        group = [spec for spec in specs if spec.key == key]
        raws = []
        for spec in group:
            try:
                raws.append(files.read(spec))
            except ValueError as exc:
                raise ValueError(f"--data {spec.path}: {exc}") from None
        try:
            targets, classes = prepare.encode_targets([raw.labels for raw in raws])
        except ValueError as exc:
            raise ValueError(f"--key {key}: {exc}") from None
        parts = []  # (spec, split, inputs, targets)
        for spec, raw, target in zip(group, raws, targets):
            if isinstance(spec.split, float):
                try:
                    train, test = prepare.split_fraction(len(target), spec.split, spec.seed)
                except ValueError as exc:
                    raise ValueError(f"--data {spec.path}: {exc}") from None
                parts += [(spec, "train", raw.inputs[train], target[train]),
                          (spec, "test", raw.inputs[test], target[test])]
            else:
                parts.append((spec, spec.split, raw.inputs, target))
        for spec, _, inputs, _ in parts[1:]:
            if inputs.shape[1:] != parts[0][2].shape[1:]:
                raise ValueError(f"--data {spec.path}: its inputs are {tuple(inputs.shape[1:])} "
                                 f"per sample, those of --data {parts[0][0].path} (key {key!r}) "
                                 f"{tuple(parts[0][2].shape[1:])}")
        norm = group[0].transform("normalize")
        if norm:
            train_inputs = next((x for _, split, x, _ in parts if split == "train"), None)
            try:
                mean, std = (prepare.given_statistics(parts[0][2], *norm.value) if norm.value
                             else prepare.statistics(train_inputs))
            except ValueError as exc:
                raise ValueError(f"--data {group[0].path}: {exc}") from None
            parts = [(s, split, prepare.normalize(x, mean, std), y) for s, split, x, y in parts]
            log.info("%s: normalised with mean %s, std %s", key,
                     [round(v, 4) for v in mean.flatten().tolist()[:8]],
                     [round(v, 4) for v in std.flatten().tolist()[:8]])
        if classes:
            log.info("%s: classes %s", key, ", ".join(f"{i} {c}" for i, c in enumerate(classes)))
        for spec, split, inputs, target in parts:
            how = (f", {spec.split} held out for testing with seed {spec.seed}"
                   if isinstance(spec.split, float) else "")
            description = (f"{key} {split} set: {len(target)} samples of {spec.path.name} "
                           f"({spec.format}{how}), held by {holder}")
            out.append((inputs, (f"#{key}", "#data", f"#{split}", *spec.tags), description))
            out.append((target, (f"#{key}", "#target", f"#{split}", *spec.tags), description))
            log.info("worker %s holds %d %s %s samples from %s, inputs %s; %s", holder,
                     len(target), key, split, spec.path, tuple(inputs.shape[1:]),
                     _counts(target, classes))
    return out


def named_holdings(named: tuple[str, list[int] | None, bool, str], holder: str,
                   label_text: str | None = None) -> list[Holding]:
    """The named dataset's partition `named` (from named_dataset) as two tagged tensors."""
    dataset, labels, testing, key = named
    images, targets = partition_tensors(dataset, labels, testing)
    split = "#test" if testing else "#train"
    description = (f"{dataset} {'test set' if testing else 'train set'}"
                   f"{f', labels {label_text}' if label_text else ''} held by {holder}")
    counts = partition.label_counts(targets)
    log.info("worker %s holds %d %s %s samples%s; per label: %s", holder, len(targets), dataset,
             split[1:], f" as #{key}" if key != dataset else "",
             ", ".join(f"{label}: {n}" for label, n in enumerate(counts)))
    return [(images, (f"#{key}", "#data", split), description),
            (targets, (f"#{key}", "#target", split), description)]


def holdings(args: argparse.Namespace) -> list[Holding]:
    """What a data owner's worker holds for `args` (id; dataset, labels or testing, key; data,
    a list of fedmq.data.spec.DataSpec): the named partition's images and labels, then every
    --data file's inputs and targets, each as (tensor, tags, description). Every option is
    checked before anything is read. Raises ValueError, one line naming the option at fault,
    also for arguments that name no data at all."""
    named = named_dataset(args)
    specs = checked_specs(args)
    if named is None and not specs:
        raise ValueError("no data to hold: give --dataset NAME or --data PATH")
    out = named_holdings(named, args.id, getattr(args, "labels", None)) if named else []
    return out + file_holdings(specs, args.id)
