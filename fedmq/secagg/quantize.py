"""Updates as vectors in the ring Z_2^64 (int64, wrapping), and back.

A worker's update is its new weights minus the global ones, flattened in the model's entry
order (`flatten`), clipped element-wise to [-clip, clip], scaled by 2**frac_bits and rounded to
the nearest integer, then multiplied by its weight (its number of training examples, FedAvg's
weight) in integers: y = weight * round(clamp(update) * 2**f). Sums of such vectors wrap in
int64 exactly as additions mod 2**64 do, so masks and additive shares cancel exactly; the true
sum is recovered as long as it stays inside (-2**63, 2**63), which `check_range` guarantees
for up to `max_weight_sum` total weight. Decoding divides by 2**f and by the total weight:
the weighted mean, to within 2**-(f+1) per element (rounding), plus whatever the clipping cut.

Defaults: frac_bits 32 (a step of 2.3e-10: fine enough that a server optimizer normalising the
mean update, FedAdam's, does not blow the rounding up), clip 64 (no real update moves a weight
that far in one round; a larger element is clipped, and counted: `encode` returns how many
were), at most 2**22 examples in a round's sum.
"""
from __future__ import annotations

import math

import torch

FRAC_BITS = 32
CLIP = 64.0
#: the largest total weight (sum of examples over a round's workers) `check_range` admits by
#: default
MAX_WEIGHT_SUM = 1 << 22


def check_range(clip: float, frac_bits: int, max_weight_sum: int = MAX_WEIGHT_SUM) -> None:
    """ValueError unless max_weight_sum * clip * 2**frac_bits < 2**62 (every sum fits int64,
    with a factor of 2 to spare), clip > 0 and 0 <= frac_bits <= 40."""
    if not (isinstance(frac_bits, int) and 0 <= frac_bits <= 40):
        raise ValueError(f"frac_bits must be an int in [0, 40], got {frac_bits!r}")
    if not (clip > 0 and clip < float("inf")):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if max_weight_sum * clip * 2.0 ** frac_bits >= 2.0 ** 62:
        raise ValueError(f"clip {clip} at {frac_bits} fractional bits overflows int64 for a "
                         f"total weight of {max_weight_sum}: lower one of them")


def flatten(weights: dict, names: list[str]) -> torch.Tensor:
    """The float64 vector of `weights[name]` for `names`, in that order (shape (n,))."""
    if not names:
        return torch.zeros(0, dtype=torch.float64)
    parts = [weights[n].detach().reshape(-1) for n in names]
    if all(p.dtype == parts[0].dtype for p in parts):  # one cast of the whole vector
        return torch.cat(parts).to(torch.float64)
    return torch.cat([p.to(torch.float64) for p in parts])


def unflatten(vector: torch.Tensor, like: dict, names: list[str]) -> dict:
    """`vector` cut back into tensors shaped and typed as `like[name]` (floats as their
    dtype; integer entries rounded)."""
    out, offset = {}, 0
    for n in names:
        ref = like[n]
        part = vector[offset:offset + ref.numel()].reshape(ref.shape)
        offset += ref.numel()
        out[n] = part.round().to(ref.dtype) if not ref.is_floating_point() else part.to(ref.dtype)
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the layout {offset}")
    return out


def encode(update: torch.Tensor, weight: int, clip: float = CLIP,
           frac_bits: int = FRAC_BITS) -> tuple[torch.Tensor, int]:
    """(the int64 ring vector weight * round(clamp(update, -clip, clip) * 2**frac_bits), the
    number of elements the clipping changed). `update`: a flat float tensor; `weight`: an int
    >= 0. ValueError for a non-finite element or a weight out of range."""
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT_SUM:
        raise ValueError(f"weight must be an int in [0, {MAX_WEIGHT_SUM}], got {weight!r}")
    check_range(clip, frac_bits)
    update = update.detach().to(torch.float64).reshape(-1)
    peak = float(update.abs().max()) if update.numel() else 0.0  # NaN and inf carry through
    if not math.isfinite(peak):
        raise ValueError("the update holds NaN or infinite values")
    clipped = 0
    if peak > clip:
        clipped = int((update.abs() > clip).sum())
        update = update.clamp(-clip, clip)
    q = (update * 2.0 ** frac_bits).round_().to(torch.int64)
    return (q.mul_(weight) if weight != 1 else q), clipped


def decode(total: torch.Tensor, weight_sum: int, frac_bits: int = FRAC_BITS) -> torch.Tensor:
    """The float64 weighted mean from the ring sum of encoded vectors and their total weight
    (ValueError for weight_sum <= 0)."""
    if weight_sum <= 0:
        raise ValueError(f"total weight must be > 0, got {weight_sum}")
    return total.to(torch.float64) / (2.0 ** frac_bits) / weight_sum
