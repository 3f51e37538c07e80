"""PySyft 0.2's training API (seed §14): `TrainConfig`, `worker.fit`, `worker.async_fit`,
`worker.evaluate`, on fedmq's Fit / Evaluate messages.

    train_config = sy.TrainConfig(model=traced_model, loss_fn=loss_fn, batch_size=32,
                                  shuffle=True, max_nr_batches=10, epochs=1,
                                  optimizer="SGD", optimizer_args={"lr": 0.1})
    train_config.send(alice)
    loss = await alice.async_fit(dataset_key="mnist", return_ids=[0])
    model = train_config.model_ptr.get()
    result = testing.evaluate(dataset_key="mnist_testing", return_histograms=True, nr_bins=10,
                              return_loss=True, return_raw_accuracy=True)

What travels: PySyft sent the model and the loss as TorchScript, which the worker ran. fedmq
converts them on the client into a model plan (fedmq.plans.module_plan: allowlisted ops only,
no TorchScript or pickle on the wire), sent with the first Fit / Evaluate to a worker and then
named by its digest. The weights travel with every Fit and come back in its reply: the client
keeps the worker's trained copy, so `model_ptr.get()` needs no round trip, and a second `fit`
continues from it, as PySyft's model held on the worker did.

Who may: a worker answers Fit / Evaluate only for its data owner or a principal granted
`coordinator` (`fedmq worker --grant coordinator:NAME`); under `--release none` that is the only
way anything computed from its data leaves: the trained weights, the loss and the evaluation
counts (fedmq/fl/hooks.py).
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from fedmq.errors import ObjectNotFoundError
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.fl.utils import copy_model
from fedmq.plans import module_plan

#: PySyft optimizer names -> the names a worker knows (fedmq.fl.training.OPTIMIZERS)
OPTIMIZERS = {"sgd": "sgd", "adam": "adam", "adamw": "adamw"}


class TrainConfig:
    """How a worker trains a model on its own data (PySyft 0.2's `syft.TrainConfig`).

    model: an nn.Module, a fedmq Plan, or a `torch.jit.trace` result.
    loss_fn: a function of (output, target) returning the batch's mean loss, a fedmq Plan, or
        a `torch.jit.script`ed function.
    batch_size: samples per batch (PySyft's DataLoader drops the short last batch; so does
        this). epochs: passes over the data. max_nr_batches: stop after this many batches
        (-1: no limit). shuffle: shuffle each pass (seeded from torch's global RNG on this side,
        so `torch.manual_seed` makes a run reproducible).
    optimizer: "SGD", "Adam" or "AdamW"; optimizer_args: their keyword arguments (lr, momentum,
        weight_decay, betas, eps, ...).
    example_input: an input batch to trace an nn.Module with (a traced module knows its input
        shape); example_target: a target batch for the loss (default class indices).
    id, owner: PySyft's, kept as attributes. Other PySyft arguments (model_id, loss_fn_id)
        name objects on a worker, which fedmq does not use: passing them raises TypeError.
    Raises TypeError / ValueError for arguments it cannot use, before anything is sent."""

    def __init__(self, model: Any, loss_fn: Any, owner: Any = None, batch_size: int = 32,
                 epochs: int = 1, optimizer: str = "SGD", optimizer_args: dict | None = None,
                 id: Any = None, max_nr_batches: int = -1, shuffle: bool = True, *,
                 example_input: torch.Tensor | None = None,
                 example_target: torch.Tensor | None = None, **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"TrainConfig() got unexpected keyword argument(s) "
                            f"{sorted(unknown)} (fedmq keeps the model and the loss on this "
                            f"side until send(); model_id / loss_fn_id are not used)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, a fedmq Plan or a torch.jit.trace "
                            f"result, not {type(model).__name__}")
        for name, value in (("batch_size", batch_size), ("epochs", epochs)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if type(max_nr_batches) is not int or (max_nr_batches < 1 and max_nr_batches != -1):
            raise ValueError(f"max_nr_batches must be a positive int or -1, got "
                             f"{max_nr_batches!r}")
        if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of SGD, Adam, AdamW, got {optimizer!r}")
        if optimizer_args is not None and not isinstance(optimizer_args, dict):
            raise TypeError("optimizer_args must be a dict, e.g. {'lr': 0.1}")
        self.model, self.loss_fn, self.owner, self.id = model, loss_fn, owner, id
        self.batch_size, self.epochs, self.max_nr_batches = batch_size, epochs, max_nr_batches
        self.shuffle = bool(shuffle)
        self.optimizer = optimizer
        self.optimizer_args = dict(optimizer_args if optimizer_args is not None else {"lr": 0.1})
        self.example_input, self.example_target = example_input, example_target
        self.location: Any = None
        self.model_ptr: ModelPointer | None = None
        self._plan = None
        self._digest: str | None = None
        self.weights = _weights_of(model)

    # -- the plan -------------------------------------------------------------------------------
    @property
    def plan(self):
        """The model and loss as a `ModelPlanRecord`, built on first use."""
        if self._plan is None:
            self._plan = module_plan.model_plan(
                self.model, self.example_input, batch_size=self.batch_size,
                loss_fn=self.loss_fn, example_target=self.example_target)
            self._digest = module_plan.digest(self._plan)
        return self._plan

    def send(self, location: Any) -> "TrainConfig":
        """Make this the configuration `location.fit()` / `evaluate()` use; builds the plan
        (the model and loss are traced here, once). Returns self; `model_ptr` is then set."""
        _ = self.plan
        self.location = location
        location.train_config = self
        self.model_ptr = ModelPointer(self, location)
        return self

    def config(self, dataset_key: str) -> dict:
        """The Fit's `config` for `dataset_key`."""
        config = {"dataset": dataset_key, "batch_size": self.batch_size, "epochs": self.epochs,
                  "optimizer": OPTIMIZERS[self.optimizer.lower()],
                  "optimizer_args": dict(self.optimizer_args), "shuffle": self.shuffle,
                  "drop_last": True,
                  "seed": int(torch.randint(0, 2 ** 31 - 1, ()))}
        if self.max_nr_batches > 0:
            config["max_nr_batches"] = self.max_nr_batches
        return config

    def model_field(self, location: Any, resend: bool = False) -> Any:
        """The plan itself the first time it goes to `location` (or `resend`), then its
        digest."""
        sent = location.__dict__.setdefault("_fedmq_plans_sent", set())
        if self._digest in sent and not resend:
            return self._digest
        sent.add(self._digest)
        return self.plan

    def __repr__(self) -> str:
        return (f"<TrainConfig {getattr(self.plan, 'name', '?')} batch_size={self.batch_size} "
                f"epochs={self.epochs} optimizer={self.optimizer} {self.optimizer_args}>")


class ModelPointer:
    """`train_config.model_ptr`: the model as trained on its worker. `get()` returns a copy of
    the model given to the TrainConfig, with the weights of the last `fit` (or the original
    ones before any fit)."""

    def __init__(self, train_config: TrainConfig, location: Any) -> None:
        self.train_config, self.location = train_config, location

    def get(self) -> nn.Module:
        model = copy_model(self.train_config.model)
        with torch.no_grad():
            _load(model, self.train_config.weights)
        return model

    def __repr__(self) -> str:
        return f"[ModelPointer -> {self.location.id}: {self.train_config.plan.name}]"


def _weights_of(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(model: nn.Module, weights: dict) -> None:
    state = model.state_dict(keep_vars=True)
    for name, value in weights.items():
        state[name].data.copy_(value)


def _train_config(worker: Any) -> TrainConfig:
    config = getattr(worker, "train_config", None)
    if config is None:
        raise RuntimeError(f"no TrainConfig was sent to worker {worker.id!r}: call "
                           f"train_config.send({worker.id}) first")
    return config


def _fit_message(worker: Any, train_config: TrainConfig, dataset_key: str,
                 resend: bool = False) -> Fit:
    if not isinstance(dataset_key, str) or not dataset_key:
        raise ValueError("dataset_key must be the name a worker serves its data under")
    timeout = getattr(worker, "timeout", None)
    # a Fit left in the queue of a worker that died is not run once its caller gave up
    deadline = time.time() + timeout if timeout else 0.0
    return Fit(0, train_config.model_field(worker, resend), train_config.weights,
               train_config.config(dataset_key), deadline)


def _fit_result(train_config: TrainConfig, res: Any) -> torch.Tensor:
    if not isinstance(res, FitRes):
        raise TypeError(f"expected FitRes, got {type(res).__name__}")
    if res.status != "ok":
        raise TimeoutError(f"worker {res.worker!r} did not train: the Fit reached it after "
                           f"its deadline ({res.status})")
    train_config.weights = {k: v.detach().clone() for k, v in res.weights.items()}
    return torch.tensor(res.loss)


def fit(self: Any, dataset_key: str, device: str = "cpu", return_ids: Any = None,
        **unknown: Any) -> torch.Tensor:
    """Train the model of the TrainConfig sent to this worker on its data `dataset_key`;
    returns the mean training loss (a 0-dim tensor). The trained weights are kept for
    `train_config.model_ptr.get()` and the next fit. `return_ids` is PySyft's (unused: the
    loss comes back in the reply); device must be "cpu" (fedmq is CPU-only).
    Raises the worker's error (AccessDeniedError without the coordinator grant)."""
    _check_call(device, unknown, "fit")
    train_config = _train_config(self)
    try:
        res = self.call(_fit_message(self, train_config, dataset_key))
    except ObjectNotFoundError:  # it restarted and lost the cached plan: send it again
        res = self.call(_fit_message(self, train_config, dataset_key, resend=True))
    return _fit_result(train_config, res)


async def async_fit(self: Any, dataset_key: str, device: str = "cpu", return_ids: Any = None,
                    **unknown: Any) -> torch.Tensor:
    """`fit` for coroutines (PySyft's `await worker.async_fit(...)`): several workers train
    at once under `asyncio.gather`."""
    _check_call(device, unknown, "async_fit")
    train_config = _train_config(self)
    try:
        res = await self.engine.arequest(self.id, _fit_message(self, train_config, dataset_key),
                                         sender=self.sender, timeout=self.timeout)
    except ObjectNotFoundError:
        res = await self.engine.arequest(
            self.id, _fit_message(self, train_config, dataset_key, resend=True),
            sender=self.sender, timeout=self.timeout)
    return _fit_result(train_config, res)


def evaluate(self: Any, dataset_key: str, return_histograms: bool = False, nr_bins: int = -1,
             return_loss: bool = True, return_raw_accuracy: bool = True,
             device: str = "cpu", **unknown: Any) -> dict:
    """Evaluate the TrainConfig's model (its current weights) on this worker's data
    `dataset_key`, in eval mode. Returns PySyft's dict: "nr_predictions", and as asked
    "loss" (summed over samples / their number), "nr_correct_predictions",
    "histogram_predictions" and "histogram_target" (int64 tensors of `nr_bins` counts; -1:
    one per class)."""
    _check_call(device, unknown, "evaluate")
    if type(nr_bins) is not int or (nr_bins < 1 and nr_bins != -1):
        raise ValueError(f"nr_bins must be a positive int or -1, got {nr_bins!r}")
    train_config = _train_config(self)
    config = {"dataset": dataset_key, "batch_size": train_config.batch_size}
    if nr_bins > 0:
        config["nr_bins"] = nr_bins

    def message(resend: bool = False) -> Evaluate:
        return Evaluate(0, train_config.model_field(self, resend), train_config.weights, config)
    try:
        res = self.call(message())
    except ObjectNotFoundError:
        res = self.call(message(resend=True))
    if not isinstance(res, EvaluateRes):
        raise TypeError(f"expected EvaluateRes, got {type(res).__name__}")
    result: dict = {"nr_predictions": res.num_examples}
    if return_loss:
        result["loss"] = res.loss
    if return_raw_accuracy:
        result["nr_correct_predictions"] = res.correct
    if return_histograms:
        result["histogram_predictions"] = torch.tensor(res.prediction_hist, dtype=torch.long)
        result["histogram_target"] = torch.tensor(res.target_hist, dtype=torch.long)
    return result


def _check_call(device: Any, unknown: dict, name: str) -> None:
    if unknown:
        raise TypeError(f"{name}() got unexpected keyword argument(s) {sorted(unknown)}")
    if str(device) != "cpu":
        raise ValueError(f"{name}(device={device!r}): fedmq workers train on the CPU only")
