"""Central differential privacy of a round: DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR
2018, "Learning differentially private recurrent language models"), with fixed clipping as
Flower's `DifferentialPrivacyServerSideFixedClipping` / `...ClientSideFixedClipping` do it:

  1. each worker's update (its new weights minus the global ones, flattened: float64 of
     shape (n,)) is clipped to L2 norm at most C (`clip_update`);
  2. the aggregate, the MEAN of the `sampled` clipped updates, gets Gaussian noise of std
     z * C / sampled (`central_std`) — the sensitivity of that mean to one worker is C / sampled;
  3. or, with secure aggregation (the coordinator never sees one update, so it cannot add the
     noise after the fact), each worker adds its share, N(0, distributed_std^2), to its own
     clipped update, and the sum of the shares gives the mean the same noise (distributed DP).

The mean is unweighted (every sampled worker counts 1/sampled, as in DP-FedAvg with equal
weights): weighting by examples would change the sensitivity. The accountant for this is
fedmq.privacy.accountant.CentralAccountant (one step per round, q = sampled / all workers).
"""
from __future__ import annotations

import math
import secrets

import torch


def _check_norm(max_norm: float) -> float:
    if type(max_norm) not in (int, float) or not max_norm > 0:
        raise ValueError(f"max_norm must be a number > 0 (inf: no clipping), got {max_norm!r}")
    return float(max_norm)


def _check_sampled(sampled: int) -> int:
    if type(sampled) is not int or sampled < 1:
        raise ValueError(f"sampled must be an integer >= 1, got {sampled!r}")
    return sampled


def _check_z(noise_multiplier: float) -> float:
    if type(noise_multiplier) not in (int, float) or not 0 <= noise_multiplier < math.inf:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got "
                         f"{noise_multiplier!r}")
    return float(noise_multiplier)


def clip_update(update: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, float]:
    """Step 1: `update` (a tensor of floats, any shape; flattened to float64 of shape (n,))
    scaled by min(1, max_norm / ||update||_2), so its L2 norm is at most `max_norm`; an update
    already within the norm, and any update when max_norm is inf, is returned unchanged (as
    float64). Returns (the clipped update, the original L2 norm). ValueError for a
    non-finite element, a non-float tensor or max_norm <= 0."""
    if not isinstance(update, torch.Tensor) or not update.is_floating_point():
        raise ValueError(f"update must be a tensor of floats, got "
                         f"{getattr(update, 'dtype', type(update).__name__)}")
    max_norm = _check_norm(max_norm)
    flat = update.detach().reshape(-1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("update has non-finite elements (NaN or inf): it cannot be clipped")
    norm = float(torch.linalg.vector_norm(flat))
    if norm <= max_norm:
        return flat, norm
    return flat * (max_norm / norm), norm


def secure_generator() -> torch.Generator:
    """A torch generator seeded with 63 bits from the OS's entropy (`secrets`): noise nobody
    else can replay from a seed they know (a run's seed is known to the coordinator and the
    workers). The generator itself is torch's Mersenne Twister, not a CSPRNG."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def noise(n: int, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise N(0, std^2): float64 of shape (n,), drawn from `generator` (default:
    `secure_generator()`); zeros when std == 0. ValueError for n < 0 or std < 0 or not
    finite."""
    if type(n) is not int or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if type(std) not in (int, float) or not 0 <= std < math.inf:
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    if std == 0:
        return torch.zeros(n, dtype=torch.float64)
    return torch.normal(0.0, float(std), (n,), dtype=torch.float64,
                        generator=generator if generator is not None else secure_generator())


def central_std(noise_multiplier: float, max_norm: float, sampled: int) -> float:
    """Step 2: the std of the noise the coordinator adds to the MEAN of `sampled` updates
    clipped to `max_norm`: z * C / sampled (the mean's sensitivity C / sampled, times z).
    Same units as the updates. ValueError for z < 0, C <= 0 or sampled < 1; 0.0 when z == 0
    (C inf included)."""
    z, c, m = _check_z(noise_multiplier), _check_norm(max_norm), _check_sampled(sampled)
    return 0.0 if z == 0 else z * c / m


def distributed_std(noise_multiplier: float, max_norm: float, sampled: int) -> float:
    """Step 3: the std each of `sampled` workers adds to its own clipped update so that the
    mean of the `sampled` noisy updates carries the central noise N(0, (z*C/sampled)^2).

    Derivation: the sum of m = sampled independent N(0, s^2) is N(0, m s^2); divided by m it
    is N(0, s^2 / m). Setting s^2 / m = (z C / m)^2 gives s = z C / sqrt(m).

    This assumes all m workers' noise reaches the sum: if only k < m do (dropouts after
    masking), the mean of k has noise std z C / sqrt(m k), i.e. an effective noise multiplier
    z * sqrt(k / m) for the mean's sensitivity C / k — less privacy than accounted. Pass the
    number of workers expected to be aggregated. ValueError as `central_std`."""
    z, c, m = _check_z(noise_multiplier), _check_norm(max_norm), _check_sampled(sampled)
    return 0.0 if z == 0 else z * c / math.sqrt(m)
