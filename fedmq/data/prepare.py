"""What happens to a key's files once read (fedmq.data.files): targets encoded together, a
fraction held out for testing, inputs normalised with the train split's statistics.

    encode_targets([labels, ...]) -> ([targets, ...], classes | None)
    split_fraction(n, fraction, seed) -> (train index, test index)
    statistics(x) -> (mean, std);  normalize(x, mean, std) -> x'
"""
from __future__ import annotations

import numpy as np
import torch


def encode_targets(labels: list[np.ndarray]) -> tuple[list[torch.Tensor], list[str] | None]:
    """Targets of one key's files, encoded alike: integer (or bool) labels -> int64 as they
    are; any float -> float32 (regression; N or N x K); strings -> int64 indices into
    `classes`, the sorted names over all the files (returned; None otherwise). ValueError:
    numbers in one file and strings in another, NaN or infinite float targets, class
    labels that are not one per sample (N)."""
    kinds = {a.dtype.kind for a in labels}
    if kinds <= set("biu"):
        out = [torch.from_numpy(np.array(a, dtype=np.int64)) for a in labels]
        classes = None
    elif kinds <= set("biuf"):
        if not all(np.isfinite(a).all() for a in labels):
            raise ValueError("the float targets hold NaN or infinite values")
        return [torch.from_numpy(np.array(a, dtype=np.float32)) for a in labels], None
    elif kinds <= set("OUS"):
        names = [a.astype(str) for a in labels]
        classes = sorted(set().union(*(set(n.tolist()) for n in names)))
        out = [torch.from_numpy(np.searchsorted(classes, n).astype(np.int64)) for n in names]
    else:
        raise ValueError("the targets are numbers in one file and strings in another")
    if any(t.dim() != 1 for t in out):
        raise ValueError(f"class labels need one value per sample, got shapes "
                         f"{[tuple(t.shape) for t in out]}")
    return out, classes


def split_fraction(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) int64 indices, each sorted: round(fraction * n) samples drawn at random
    (numpy's default_rng(seed)) for test, the rest for train. ValueError when either is empty."""
    n_test = int(round(fraction * n))
    if not 0 < n_test < n:
        raise ValueError(f"--split {fraction} of {n} samples leaves "
                         f"{'no test' if n_test == 0 else 'no train'} sample")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return torch.from_numpy(train), torch.from_numpy(test)


def _axes(x: torch.Tensor) -> tuple[int, ...]:
    """Reduced over for the statistics: N, H, W of images (per channel), else N (per feature)."""
    return (0, 2, 3) if x.dim() == 4 else (0,)


def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (N x C x H x W) or per-feature mean and population std of float `x`,
    float32 (C or x.shape[1:]); a std of 0 (a constant feature) becomes 1, as scikit-learn's
    StandardScaler does."""
    x64 = x.double()
    mean, std = x64.mean(_axes(x)), x64.std(_axes(x), correction=0)
    std[std == 0] = 1.0
    return mean.float(), std.float()


def given_statistics(x: torch.Tensor, means: tuple[float, ...], stds: tuple[float, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`normalize=M/S` values as tensors for `x`: one per channel (N x C x H x W), per
    feature (N x F) or a single one (N). ValueError when the count does not fit."""
    if x.dim() not in (1, 2, 4):
        raise ValueError(f"normalize=M/S needs inputs N, N x F or N x C x H x W, these are "
                         f"{tuple(x.shape)}; give normalize to use the train split's own")
    wanted = 1 if x.dim() == 1 else x.shape[1]
    if len(means) != wanted:
        what = "channels" if x.dim() == 4 else "features"
        raise ValueError(f"normalize= gives {len(means)} means and standard deviations, the "
                         f"inputs have {wanted} {what}")
    mean, std = torch.tensor(means), torch.tensor(stds)
    return (mean.reshape(()), std.reshape(())) if x.dim() == 1 else (mean, std)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std, broadcast per channel (N x C x H x W) or per feature; a new tensor."""
    if x.dim() == 4:
        mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
    return (x - mean) / std
