"""A run's settings (`TrainConfig`) and its initial model: what both coordinators (rounds and
asynchronous) start from."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from fedmq.fl.validation import check_config
from fedmq.models import MODELS


@dataclass
class TrainConfig:
    """A run's settings (the seed §14 defaults: 40 rounds, batch 32, 10 batches, lr 0.1)."""
    rounds: int = 40
    model: str = "seed-cnn"
    dataset: str | None = None
    batch_size: int = 32
    num_batches: int | None = 10
    epochs: int | None = None
    lr: float = 0.1
    lr_decay: float = 0.98
    lr_floor: float = 0.01  # of the initial lr
    optimizer: str = "sgd"
    optimizer_args: dict = field(default_factory=dict)
    loss: str = "nll"
    eval_every: int = 10
    eval_batch_size: int = 128
    evaluate_updates: bool = True
    round_timeout: float = 120.0
    seed: int = 1
    buckets: list = field(default_factory=lambda: [(0, 3), (4, 6), (7, 9)])
    #: a user's model (`model` is module:Class or file.py:Class, fedmq/fl/user_model.py)
    model_args: list = field(default_factory=list)
    input_shape: str | None = None
    input_dtype: str = "float32"
    #: the key of the testing worker's data, when it is not `dataset` (PySyft's
    #: "mnist_testing" next to "mnist")
    testing_dataset: str | None = None

    def __post_init__(self) -> None:
        """ValueError (fedmq.fl.validation.SettingError) naming a setting out of range."""
        check_config({f.name: getattr(self, f.name) for f in fields(self)})

    def fit_config(self, lr: float) -> dict:
        """What a `Fit` tells the worker (before the strategy adds its own keys)."""
        config = {"batch_size": self.batch_size, "optimizer": self.optimizer, "loss": self.loss,
                  "optimizer_args": {**self.optimizer_args, "lr": lr}}
        if self.epochs:
            config["epochs"] = self.epochs
        else:
            config["num_batches"] = self.num_batches
        if self.dataset:
            config["dataset"] = self.dataset
        return config

    def is_eval_round(self, round: int) -> bool:
        """Rounds 1, 1 + every, 1 + 2 every, ... and the last (the seed: 1, 11, 21, 31, 40);
        never when `eval_every` is 0."""
        every = self.eval_every
        if every <= 0:
            return False
        return round % every == 1 % every or round == self.rounds


def initial_weights(model: str, seed: int) -> dict:
    """The state_dict of `MODELS[model]` built under `torch.manual_seed(seed)`."""
    return initial_model(model, seed)[0]


def initial_model(model: str, seed: int) -> tuple[dict, set[str]]:
    """`initial_weights` and the names of the model's trainable parameters (its
    `named_parameters()` with requires_grad; every other entry is a buffer)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = MODELS[model]()
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return weights, {n for n, p in net.named_parameters() if p.requires_grad}
