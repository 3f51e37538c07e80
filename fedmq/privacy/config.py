"""The differential-privacy settings of a run (`fedmq train --dp ...`), validated.

    mode              "central": DP-FedAvg (McMahan et al., 2018), the coordinator clips each
                      update and adds Gaussian noise to the aggregate (or the workers add
                      their share of it under secure aggregation); "local": DP-SGD on each
                      worker (Abadi et al., 2016) through Opacus
    noise_multiplier  z >= 0: the noise std relative to the clipping norm (std = z * C)
    max_grad_norm     C > 0: the L2 clipping norm (of a worker's update in central mode, of a
                      per-sample gradient in local mode); inf (no clipping) only with z == 0
    delta             0 < delta < 1: epsilon is reported at this delta
    accountant        "rdp" (Rényi DP, Mironov 2017) or "prv" (privacy loss random
                      variables, Gopi et al., 2021): which of Opacus' accountants counts
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("central", "local")
ACCOUNTANTS = ("rdp", "prv")


def _real(value: Any) -> bool:
    return type(value) in (int, float) and not math.isnan(value)


@dataclass(frozen=True)
class DPConfig:
    """Validated on construction: ValueError naming the field for a bad value (see the
    module's docstring for the ranges)."""
    mode: str
    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"dp mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        z, c, delta = self.noise_multiplier, self.max_grad_norm, self.delta
        if not _real(z) or not 0 <= z < math.inf:
            raise ValueError(f"dp noise_multiplier must be a finite number >= 0, got {z!r}")
        if not _real(c) or not c > 0:
            raise ValueError(f"dp max_grad_norm must be a number > 0, got {c!r}")
        if c == math.inf and z != 0:
            raise ValueError(f"dp max_grad_norm inf (no clipping) is allowed only with "
                             f"noise_multiplier 0, got noise_multiplier {z!r}: the noise std "
                             f"is noise_multiplier * max_grad_norm")
        if not _real(delta) or not 0 < delta < 1:
            raise ValueError(f"dp delta must be a number in (0, 1), got {delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp accountant must be one of {', '.join(ACCOUNTANTS)}, got "
                             f"{self.accountant!r}")
        # plain floats from here on (an int from JSON or the command line is fine)
        for name in ("noise_multiplier", "max_grad_norm", "delta"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def as_dict(self) -> dict:
        """Plain values (str, float), for a Fit config or a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> "DPConfig":
        """The config `as_dict` gave, e.g. from the network: ValueError for anything but a
        dict with mode, noise_multiplier, max_grad_norm and optionally delta, accountant
        (unknown keys refused), or for a value out of range."""
        if not isinstance(values, dict):
            raise ValueError(f"dp config must be a dict, got {type(values).__name__}")
        fields = ("mode", "noise_multiplier", "max_grad_norm", "delta", "accountant")
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"dp config has unknown keys {sorted(map(str, unknown))} "
                             f"(known: {', '.join(fields)})")
        missing = [f for f in fields[:3] if f not in values]
        if missing:
            raise ValueError(f"dp config misses {', '.join(missing)}")
        return cls(**values)
