"""How a labelled dataset is split over workers: each function returns index arrays.

* `label_range(targets, labels)`: the samples whose label is in `labels` (the seed's non-IID
  split: alice 0-3, bob 4-6, charlie 7-9; see `LABEL_RANGES`).
* `iid(n, parts, seed)`: a random permutation cut into `parts` near-equal pieces.
* `dirichlet(targets, parts, alpha, seed)`: per class, shares drawn from Dirichlet(alpha);
  small alpha gives skewed label mixes, large alpha approaches IID.
"""
from __future__ import annotations

import numpy as np
import torch

#: PySyft's websocket example: which digits each worker keeps
LABEL_RANGES = {"alice": range(0, 4), "bob": range(4, 7), "charlie": range(7, 10)}


def parse_labels(text: str) -> list[int]:
    """"0-3" -> [0, 1, 2, 3]; "1,4,7" -> [1, 4, 7]; "2-4,9" -> [2, 3, 4, 9]."""
    labels: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                labels.extend(range(lo, hi + 1))
            elif part:
                labels.append(int(part))
    except ValueError:
        raise ValueError(f"bad label range {text!r}: use e.g. 0-3 or 1,4,7") from None
    if not labels:
        raise ValueError(f"bad label range {text!r}: no labels")
    return sorted(set(labels))


def _np(targets) -> np.ndarray:
    return targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)


def label_range(targets, labels) -> np.ndarray:
    """Indices (sorted) of the samples whose label is in `labels`."""
    return np.flatnonzero(np.isin(_np(targets), list(labels)))


def iid(n: int, parts: int, seed: int = 0) -> list[np.ndarray]:
    """A shuffle of range(n) cut into `parts` pieces whose sizes differ by at most one."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, parts)]


def dirichlet(targets, parts: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Label-skewed split: class c's samples go to the parts in proportions ~ Dir(alpha)."""
    if parts < 1 or alpha <= 0:
        raise ValueError("need parts >= 1 and alpha > 0")
    y = _np(targets)
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in range(parts)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(parts, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).round().astype(int)
        for p, piece in enumerate(np.split(idx, cuts)):
            out[p].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.array([], dtype=np.int64) for p in out]


def label_counts(targets, n_labels: int = 10) -> list[int]:
    """How many samples of each label (for logs)."""
    return np.bincount(_np(targets).astype(np.int64), minlength=n_labels).tolist()
