"""Privacy accounting: epsilon spent so far at the run's delta, from Opacus' accountants
(`opacus.accountants.RDPAccountant`, Mironov 2017 / Mironov, Talwar, Zhang 2019; or
`PRVAccountant`, Gopi, Lee, Wutschitz 2021). We never compute epsilon ourselves: an accountant
keeps Opacus' history, a list of (noise multiplier, sample rate, steps), and asks Opacus.

Two granularities (`fedmq train --dp central|local`):

- `CentralAccountant`: DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning
  differentially private recurrent language models"): user-level (here: worker-level) DP. One
  step per round, at sample rate q = workers sampled / workers in the run; the noise on the
  aggregate has std z * C / sampled on the mean (fedmq.privacy.central).
- `LocalAccountants`: DP-SGD (Abadi et al., 2016, "Deep learning with differential privacy")
  on each worker: example-level DP for that worker's data. One accountant per worker; each
  round adds `steps` (batches trained) at q = batch_size / the worker's examples.

Both assume Poisson subsampling (as Opacus does); fedmq samples workers (and fit samples
batches) without replacement, a common approximation that the reported epsilon inherits.
With z == 0 epsilon is inf after any step; before any step it is 0.
"""
from __future__ import annotations

import math
from typing import Any

KINDS = ("rdp", "prv")


def _opacus_accountant(kind: str) -> Any:
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[kind]()


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"accountant kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _check_z(noise_multiplier: Any) -> float:
    if type(noise_multiplier) not in (int, float) or not 0 <= noise_multiplier < math.inf:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got "
                         f"{noise_multiplier!r}")
    return float(noise_multiplier)


def _check_delta(delta: Any) -> float:
    if type(delta) not in (int, float) or not 0 < delta < 1:
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    return float(delta)


def _check_rate(sample_rate: Any) -> float:
    if type(sample_rate) not in (int, float) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def _check_steps(steps: Any) -> int:
    if type(steps) is not int or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    return steps


def _add(history: list, z: float, q: float, steps: int) -> None:
    """`steps` steps at (z, q) into an Opacus history, merged with the last entry when it
    has the same (z, q), as Opacus' own `step` does one at a time."""
    if not steps:
        return
    if history and history[-1][0] == z and history[-1][1] == q:
        history[-1] = (z, q, history[-1][2] + steps)
    else:
        history.append((z, q, steps))


def _epsilon(accountant: Any, delta: float) -> float:
    history = accountant.history
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):  # no noise: no privacy (Opacus' PRV cannot say)
        return math.inf
    import numpy as np

    with np.errstate(divide="ignore"):  # PRV at q = 1: log(1 - q), handled by Opacus
        return float(accountant.get_epsilon(delta=delta))


def _history_out(history: list) -> list:
    return [[float(z), float(q), int(n)] for z, q, n in history]


def _history_in(history: Any) -> list:
    """An Opacus history from plain values; ValueError for anything else."""
    if not isinstance(history, list):
        raise ValueError(f"accountant history must be a list, got {type(history).__name__}")
    out = []
    for entry in history:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise ValueError(f"accountant history entries are [noise_multiplier, "
                             f"sample_rate, steps], got {entry!r}")
        out.append((_check_z(entry[0]), _check_rate(entry[1]), _check_steps(entry[2])))
    return out


def _check_state(state: Any, kind: str, keys: tuple) -> dict:
    if not isinstance(state, dict) or set(state) != set(keys):
        raise ValueError(f"accountant state must be a dict with keys {', '.join(keys)}")
    if state["kind"] != kind:
        raise ValueError(f"accountant state is of kind {state['kind']!r}, this accountant is "
                         f"{kind!r}")
    return state


class CentralAccountant:
    """Worker-level DP of DP-FedAvg (see the module's docstring): `step(sample_rate)` once
    per aggregated round, `epsilon()` at `delta`. `kind`: "rdp" or "prv". ValueError for a
    value out of range."""

    def __init__(self, noise_multiplier: float, delta: float, kind: str = "rdp") -> None:
        self.noise_multiplier = _check_z(noise_multiplier)
        self.delta = _check_delta(delta)
        self.kind = _check_kind(kind)
        self.accountant = _opacus_accountant(kind)

    @property
    def history(self) -> list:
        """Opacus' history: [(noise_multiplier, sample_rate, steps)]."""
        return self.accountant.history

    def step(self, sample_rate: float) -> None:
        """One round at q = sample_rate (workers sampled / workers in the run, in (0, 1])."""
        _add(self.accountant.history, self.noise_multiplier, _check_rate(sample_rate), 1)

    def epsilon(self) -> float:
        """Epsilon spent so far at `delta` (0.0 before any step; inf when z == 0)."""
        return _epsilon(self.accountant, self.delta)

    def state_dict(self) -> dict:
        """Plain values (for a checkpoint): kind, noise_multiplier, delta, history
        ([[z, q, steps], ...])."""
        return {"kind": self.kind, "noise_multiplier": self.noise_multiplier,
                "delta": self.delta, "history": _history_out(self.accountant.history)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s values (a resumed run). ValueError for a state of
        another kind or a malformed one. The history's own noise multipliers count; new
        steps use this accountant's."""
        state = _check_state(state, self.kind, ("kind", "noise_multiplier", "delta",
                                                "history"))
        self.accountant.history = _history_in(state["history"])


class LocalAccountants:
    """Example-level DP of each worker's DP-SGD (see the module's docstring): one Opacus
    accountant per worker. `step(worker, sample_rate, steps)` after each round the worker
    trained in (its FitRes.metrics "dp_sample_rate" and "dp_steps"), `epsilon(worker)`,
    `max_epsilon()` (what the run reports: the worst-off worker's data). ValueError for a
    value out of range."""

    def __init__(self, noise_multiplier: float, delta: float, kind: str = "rdp") -> None:
        self.noise_multiplier = _check_z(noise_multiplier)
        self.delta = _check_delta(delta)
        self.kind = _check_kind(kind)
        self.accountants: dict[str, Any] = {}

    def step(self, worker: str, sample_rate: float, steps: int) -> None:
        """`steps` DP-SGD steps of `worker` at q = sample_rate (batch size / its examples,
        in (0, 1]); steps: an int >= 0."""
        if not isinstance(worker, str) or not worker:
            raise ValueError(f"worker must be a non-empty name, got {worker!r}")
        q, steps = _check_rate(sample_rate), _check_steps(steps)
        if worker not in self.accountants:
            self.accountants[worker] = _opacus_accountant(self.kind)
        _add(self.accountants[worker].history, self.noise_multiplier, q, steps)

    def epsilon(self, worker: str) -> float:
        """Epsilon `worker` has spent at `delta` (0.0 for a worker that never trained)."""
        accountant = self.accountants.get(worker)
        return _epsilon(accountant, self.delta) if accountant is not None else 0.0

    def max_epsilon(self) -> float:
        """The largest epsilon over the workers (0.0 when none trained)."""
        return max((self.epsilon(w) for w in self.accountants), default=0.0)

    def state_dict(self) -> dict:
        """Plain values (for a checkpoint): kind, noise_multiplier, delta, workers
        ({worker: [[z, q, steps], ...]})."""
        return {"kind": self.kind, "noise_multiplier": self.noise_multiplier,
                "delta": self.delta,
                "workers": {w: _history_out(a.history) for w, a in self.accountants.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s values (ValueError for another kind or a
        malformed state)."""
        state = _check_state(state, self.kind, ("kind", "noise_multiplier", "delta",
                                                "workers"))
        workers = state["workers"]
        if not isinstance(workers, dict) or not all(isinstance(w, str) for w in workers):
            raise ValueError("accountant state: workers must map worker names to histories")
        accountants = {}
        for worker, history in workers.items():
            accountants[worker] = _opacus_accountant(self.kind)
            accountants[worker].history = _history_in(history)
        self.accountants = accountants
