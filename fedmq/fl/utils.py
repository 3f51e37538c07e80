"""PySyft 0.2's `syft.frameworks.torch.fl.utils` (seed §14): model averaging on the client.

    from fedmq.fl import utils
    model = utils.federated_avg({"alice": model_a, "bob": model_b})
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn


def copy_model(model: nn.Module) -> nn.Module:
    """An independent copy of `model` whose parameters are leaf tensors (a deep copy of a
    TorchScript module, whose copied parameters would otherwise be non-leaf views)."""
    new = copy.deepcopy(model)
    if not isinstance(new, torch.jit.ScriptModule):
        return new
    params = {name for name, _ in new.named_parameters()}
    for name, value in list(new.state_dict(keep_vars=True).items()):
        *path, leaf = name.split(".")
        owner = new
        for part in path:
            owner = getattr(owner, part)
        fresh = value.detach().clone()
        setattr(owner, leaf, nn.Parameter(fresh) if name in params else fresh)
    return new


def federated_avg(models: Mapping[str, nn.Module] | list) -> nn.Module:
    """The unweighted mean of models of one architecture (PySyft's `federated_avg`: every
    floating-point entry of the `state_dict`, parameters and buffers such as BatchNorm's
    running statistics, is averaged; integer entries, `num_batches_tracked`, are the
    largest). Returns a new model (a copy of the first, a TorchScript module stays one); the
    given models are unchanged. Raises ValueError for no models or differing entries."""
    items = list(models.values()) if isinstance(models, Mapping) else list(models)
    if not items:
        raise ValueError("federated_avg needs at least one model")
    states = [m.state_dict() for m in items]
    names = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != names or any(state[k].shape != states[0][k].shape for k in names):
            raise ValueError(f"model {i} has other state entries or shapes than model 0")
    averaged = copy_model(items[0])
    target = averaged.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in names:
            values = [s[name] for s in states]
            if values[0].is_floating_point():
                mean = torch.stack([v.double() for v in values]).mean(0).to(values[0].dtype)
            else:
                mean = torch.stack(values).max(0).values
            target[name].data.copy_(mean)
    return averaged
