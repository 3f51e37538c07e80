"""The worker side of a federated round: local training (`fit`) and evaluation (`evaluate`) on
the data the worker holds in its store (seed §14: PySyft's `fit_model_on_worker` /
`evaluate_model_on_worker`, run by the worker itself instead of op by op).

The data is found by tag, as `fedmq worker --dataset ...` stores it (fedmq/data/worker_data.py):
`#data #train` / `#target #train` (or `#test`), plus `#<dataset>` when the config names one.
Only names from the allowlists below become callables: the optimizer, the loss and the model
(`fedmq.models.MODELS`) are chosen by name, never sent as code.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from fedmq import errors, limits
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes
from fedmq.models import MODELS
from fedmq.fl.proximal import proximal_term

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_ARGS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps",
                  "amsgrad"}
LOSSES = {"nll": F.nll_loss, "cross_entropy": F.cross_entropy}
MAX_BATCHES = 1_000_000


def _fail(worker_id: str, text: str) -> errors.RemoteExecutionError:
    return errors.RemoteExecutionError(text, worker=worker_id)


def find_data(worker: Any, split: str, dataset: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) the worker holds for `split` ("train" or "test")."""
    found = {}
    for kind in ("data", "target"):
        query = [f"#{kind}", f"#{split}"] + ([f"#{dataset}"] if dataset else [])
        hits = worker.store.search(query)
        if len(hits) != 1:
            what = f"{dataset} " if dataset else ""
            raise _fail(worker.id, f"worker {worker.id} holds {len(hits)} {what}{kind} tensors "
                                   f"for the {split} split, expected 1 (tags {query})")
        found[kind] = hits[0][1].obj
    data, target = found["data"], found["target"]
    if not isinstance(data, torch.Tensor) or not isinstance(target, torch.Tensor) \
            or len(data) != len(target):
        raise _fail(worker.id, f"the {split} data and targets of worker {worker.id} do not match")
    return data, target


def build_model(name: str, weights: dict, worker_id: str) -> torch.nn.Module:
    cls = MODELS.get(name)
    if cls is None:
        raise _fail(worker_id, f"unknown model {name!r} (known: {sorted(MODELS)})")
    model = cls()
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor)
                                                for t in weights.values()):
        raise _fail(worker_id, "weights must be a dict of tensors (a state_dict)")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise _fail(worker_id, f"weights do not fit model {name!r}: {exc}") from None
    return model


def _int(config: dict, key: str, default: int | None, worker_id: str) -> int | None:
    value = config.get(key, default)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _fail(worker_id, f"{key} must be a positive integer, got {value!r}")
    return value


def make_optimizer(config: dict, params, worker_id: str) -> torch.optim.Optimizer:
    name = config.get("optimizer", "sgd")
    if name not in OPTIMIZERS:
        raise _fail(worker_id, f"unknown optimizer {name!r} (known: {sorted(OPTIMIZERS)})")
    args = dict(config.get("optimizer_args") or {})
    unknown = set(args) - OPTIMIZER_ARGS
    if unknown:
        raise _fail(worker_id, f"optimizer arguments not allowed: {sorted(unknown)}")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    args.setdefault("lr", 0.01)
    return OPTIMIZERS[name](params, **args)


def loss_function(config: dict, worker_id: str):
    name = config.get("loss", "nll")
    if name not in LOSSES:
        raise _fail(worker_id, f"unknown loss {name!r} (known: {sorted(LOSSES)})")
    return LOSSES[name]


def batch_indices(n: int, batch_size: int, num_batches: int, generator: torch.Generator):
    """`num_batches` index batches from shuffled passes over n samples (a new permutation per
    pass, the last batch of a pass may be short, as a shuffling DataLoader gives them)."""
    produced = 0
    while produced < num_batches:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield perm[start:start + batch_size]
            produced += 1
            if produced == num_batches:
                return


def fit(worker: Any, msg: Fit) -> FitRes:
    """Train on the worker's own data; answer with the new weights, samples seen, mean loss.
    Between two batches the message's budget is checked (fedmq.limits): past the worker's
    time limit it stops with TimeLimitError, once its sender cancels it with
    RemoteCancelledError."""
    if msg.deadline and time.time() > msg.deadline:  # the round is over: do not train on it
        return FitRes(msg.round, worker.id, {}, 0, float("nan"), status="expired")
    config = msg.config if isinstance(msg.config, dict) else {}
    data, target = find_data(worker, "train", config.get("dataset"))
    model = build_model(msg.model, msg.weights, worker.id)
    batch_size = _int(config, "batch_size", 32, worker.id)
    epochs = _int(config, "epochs", None, worker.id)
    num_batches = (epochs * math.ceil(len(data) / batch_size) if epochs
                   else _int(config, "num_batches", 10, worker.id))
    if num_batches > MAX_BATCHES or not len(data):
        raise _fail(worker.id, f"cannot train {num_batches} batches on {len(data)} samples")
    mu = float(config.get("proximal_mu", 0.0) or 0.0)
    if mu < 0:
        raise _fail(worker.id, f"proximal_mu must be non-negative, got {mu}")
    global_weights = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                      if mu else None)
    optimizer = make_optimizer(config, model.parameters(), worker.id)
    loss_fn = loss_function(config, worker.id)
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    started = time.perf_counter()
    model.train()
    total_loss, seen = 0.0, 0
    for index in batch_indices(len(data), batch_size, num_batches, generator):
        limits.check("Fit")
        optimizer.zero_grad()
        loss = loss_fn(model(data[index]), target[index])
        objective = loss
        if global_weights is not None:  # FedProx (Li et al., 2020): stay near the global model
            objective = loss + proximal_term(model, global_weights, mu)
        objective.backward()
        optimizer.step()
        total_loss += loss.item() * len(index)
        seen += len(index)
    weights = {name: t.detach() for name, t in model.state_dict().items()}
    return FitRes(msg.round, worker.id, weights, seen, total_loss / seen,
                  metrics={"fit_seconds": time.perf_counter() - started,
                           "num_batches": num_batches})


@torch.no_grad()
def evaluate(worker: Any, msg: Evaluate) -> EvaluateRes:
    """Mean loss, accuracy and prediction/target histograms on the worker's data (checking
    the message's time limit and cancellation between batches, as `fit`)."""
    config = msg.config if isinstance(msg.config, dict) else {}
    split = config.get("split", "test")
    if split not in ("train", "test"):
        raise _fail(worker.id, f"split must be 'train' or 'test', got {split!r}")
    data, target = find_data(worker, split, config.get("dataset"))
    model = build_model(msg.model, msg.weights, worker.id)
    batch_size = _int(config, "batch_size", 128, worker.id)
    loss_fn = loss_function(config, worker.id)
    model.eval()
    total_loss, correct = 0.0, 0
    predictions = []
    for start in range(0, len(data), batch_size):
        limits.check("Evaluate")
        out = model(data[start:start + batch_size])
        y = target[start:start + batch_size]
        total_loss += loss_fn(out, y, reduction="sum").item()
        pred = out.argmax(dim=1)
        correct += int((pred == y).sum())
        predictions.append(pred)
    n = len(data)
    bins = max(int(out.shape[1]) if n else 0, int(target.max()) + 1 if n else 0)
    pred_all = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)
    return EvaluateRes(msg.round, worker.id, total_loss / n if n else float("nan"), correct, n,
                       torch.bincount(pred_all, minlength=bins).tolist(),
                       torch.bincount(target, minlength=bins).tolist())
