"""Wire records of federated rounds (record codes 100-109, reserved for fedmq.fl).

Weights travel as a model's `state_dict()` (names to tensors) through the normal serde: the
tensors go out of band, zero copy in-process. The model itself never travels as code: `model`
names an architecture in `fedmq.models.MODELS` that the worker builds itself, or is a model plan
(`fedmq.plans.messages.ModelPlanRecord`: allowlisted ops, sent once per run) or the digest of one
the worker has cached (`"sha256:<hex>"`, fedmq/fl/plan_cache.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmq.serde import record


@record(100)
@dataclass(slots=True)
class Fit:
    """Train model `model` from `weights` on the worker's own data for one round.

    `config` (plain values only): batch_size, num_batches or epochs, optimizer ("sgd",
    "adam", "adamw"), optimizer_args (lr, momentum, ...), loss ("nll", "cross_entropy"),
    seed (the worker's shuffling), dataset (which partition, if it holds several),
    proximal_mu (FedProx: adds mu/2 * ||w - w_global||^2 to the loss), dp (local
    differential privacy: {"mode": "local", "noise_multiplier", "max_grad_norm", ...}, DP-SGD
    through Opacus), secure_aggregation (the round's method and its entry: the reply carries
    the protected update instead of the weights, fedmq.fl.secure_fit).
    `deadline` is a Unix time after which the round is over: a worker that only gets the
    message later (it was down, or busy) answers `FitRes(status="expired")` without training.
    """
    round: int
    model: Any
    weights: dict
    config: dict = field(default_factory=dict)
    deadline: float = 0.0


@record(101)
@dataclass(slots=True)
class FitRes:
    """A worker's answer to `Fit`: its weights after local training, how many samples it
    trained on (FedAvg's weight) and its mean training loss. `status` is "ok" or "expired"."""
    round: int
    worker: str
    weights: dict
    num_examples: int
    loss: float
    status: str = "ok"
    metrics: dict = field(default_factory=dict)


@record(102)
@dataclass(slots=True)
class Evaluate:
    """Evaluate model `model` with `weights` on the worker's data (`config["split"]`, default
    "test"; `config["batch_size"]`, default 128)."""
    round: int
    model: Any
    weights: dict
    config: dict = field(default_factory=dict)


@record(103)
@dataclass(slots=True)
class EvaluateRes:
    """Mean loss, correct predictions out of `num_examples`, and per-class histograms of the
    predictions and of the targets (what the seed prints as "Percentage numbers 0-3: ...")."""
    round: int
    worker: str
    loss: float
    correct: int
    num_examples: int
    prediction_hist: list
    target_hist: list

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_examples if self.num_examples else 0.0
