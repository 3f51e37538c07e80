"""What a worker tells about the datasets its data owner holds (`WorkerStats(datasets=True)`):
per targets tensor (tagged `#target`, as fedmq.data.worker_data stores them), its tags, the
number of samples and, for class labels, the count of each label. Aggregates, never values.

Who may see them is the policy's call (`Policy.shares_statistics`): the owner, a
coordinator (its Fit and Evaluate replies already carry sample counts and the targets'
per-label histogram, `EvaluateRes.target_hist`), a scientist where derived values are released.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

#: labels from this up are not counted one by one (ids, prices: not classes); as the
#: evaluation's histogram bound (fedmq.fl.training.MAX_BINS)
MAX_COUNTED_LABELS = 1 << 16


def label_counts(targets: Any) -> list[int] | None:
    """Samples per label 0 .. max label of integer class `targets` (1-D int64, no negative
    label, fewer than MAX_COUNTED_LABELS labels); None for anything else (float targets,
    regression)."""
    if not isinstance(targets, torch.Tensor) or targets.dtype != torch.int64 \
            or targets.dim() != 1:
        return None
    if len(targets) == 0:
        return []
    if int(targets.min()) < 0 or int(targets.max()) >= MAX_COUNTED_LABELS:
        return None
    return torch.bincount(targets).tolist()


def describe_datasets(entries: Iterable[tuple[int, Any]]) -> list[dict]:
    """One dict per `#target` tensor among the store `entries` ((id, Entry) pairs):
    {"tags": sorted tags, "samples": int, "label_counts": list[int] | None,
    "description": str | None}, in store order."""
    out = []
    for _, entry in entries:
        obj = entry.obj
        if "#target" not in entry.tags or not isinstance(obj, torch.Tensor) or obj.dim() < 1:
            continue
        out.append({"tags": sorted(entry.tags), "samples": int(obj.shape[0]),
                    "label_counts": label_counts(obj), "description": entry.description})
    return out
