"""Local differential privacy: DP-SGD on the worker (Abadi, Chu, Goodfellow, McMahan, Mironov,
Talwar, Zhang, CCS 2016, "Deep learning with differential privacy", Algorithm 1) through
Opacus, so each worker's data is protected even from the coordinator.

For each batch of the worker's own loop (fedmq.fl.training.fit), Opacus'
`GradSampleModule` computes every sample's gradient and its `DPOptimizer`:
  1. clips each per-sample gradient to L2 norm at most C (max_grad_norm),
  2. sums them and adds Gaussian noise N(0, (z C)^2) (z: noise_multiplier),
  3. divides by the expected batch size (the configured batch_size; a short last batch is
     still divided by it, as Opacus does for Poisson-sampled batches),
then the wrapped optimizer steps. The accountant (fedmq.privacy.accountant.LocalAccountants)
counts `steps` at sample rate q = batch_size / examples (`sample_rate`).

Only torch.nn modules Opacus can compute per-sample gradients for are trained this way: a
model plan (an op list, not modules) or a layer Opacus refuses (BatchNorm mixes the samples of
a batch) gives a ValueError naming why (`check_model`). The noise comes from a generator seeded
from the OS's entropy (fedmq.privacy.central.secure_generator), not from the Fit's seed.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Callable

import torch

from fedmq.privacy.central import secure_generator

# Opacus' full backward hooks on the first layer, whose input (the data) needs no gradient:
# torch warns at every backward pass; the per-sample gradients are right all the same
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are "
                        "computed with respect to module outputs", category=UserWarning)

#: the most per-sample gradient elements (batch size x trainable parameters) one batch may
#: hold: 2**28 float32 values, 1 GiB
MAX_GRAD_SAMPLE_ELEMENTS = 1 << 28


def sample_rate(batch_size: int, examples: int) -> float:
    """DP-SGD's sampling rate q = batch_size / examples, at most 1. ValueError unless both
    are integers >= 1."""
    if type(batch_size) is not int or batch_size < 1 or type(examples) is not int \
            or examples < 1:
        raise ValueError(f"batch_size and examples must be integers >= 1, got {batch_size!r} "
                         f"and {examples!r}")
    return min(1.0, batch_size / examples)


def check_model(model: Any, batch_size: int = 1) -> torch.nn.Module:
    """`model` if Opacus can train it with per-sample gradients, else ValueError saying why:
    not a torch.nn.Module (a fedmq model plan), a layer Opacus' ModuleValidator refuses
    (BatchNorm, ...), or per-sample gradients for `batch_size` past
    MAX_GRAD_SAMPLE_ELEMENTS."""
    if not isinstance(model, torch.nn.Module):
        kind = "a model plan" if hasattr(model, "rec") else type(model).__name__
        raise ValueError(f"local differential privacy (DP-SGD through Opacus) trains a named "
                         f"model (torch.nn layers), not {kind}: Opacus computes per-sample "
                         f"gradients layer by layer, a model plan runs as a list of ops")
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ValueError("local differential privacy (Opacus) cannot train this model: " +
                         "; ".join(str(p) for p in problems))
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if batch_size * size > MAX_GRAD_SAMPLE_ELEMENTS:
        raise ValueError(f"local differential privacy: per-sample gradients of {batch_size} "
                         f"samples x {size} parameters pass {MAX_GRAD_SAMPLE_ELEMENTS} "
                         f"elements: use a smaller batch_size")
    return model


def make_private(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 noise_multiplier: float, max_grad_norm: float, batch_size: int,
                 generator: torch.Generator | None = None) -> tuple[Any, Any]:
    """(Opacus GradSampleModule wrapping `model`, DPOptimizer wrapping `optimizer`) for
    DP-SGD with noise multiplier z, per-sample clipping norm C (inf: no clipping, with z 0)
    and the loss's mean over `batch_size` samples (loss_reduction "mean"). `model`'s own
    parameters are trained (its state_dict keys stay as they are; the wrapper's have a
    "_module." prefix). Noise from `generator` (default: `secure_generator()`). ValueError
    from `check_model`; ValueError for z < 0 or C <= 0."""
    check_model(model, batch_size)
    if type(noise_multiplier) not in (int, float) or not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
    if type(max_grad_norm) not in (int, float) or not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be a number > 0, got {max_grad_norm!r}")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    try:
        wrapped = GradSampleModule(model, loss_reduction="mean")
    except NotImplementedError as exc:  # a layer without a per-sample gradient rule
        raise ValueError(f"local differential privacy (Opacus) cannot train this model: "
                         f"{exc}") from None
    if max_grad_norm == math.inf:  # no clipping (z is 0): Opacus' noise std z * C is NaN
        if noise_multiplier != 0:
            raise ValueError(f"max_grad_norm inf (no clipping) needs noise_multiplier 0, got "
                             f"{noise_multiplier!r}")
        max_grad_norm = sys.float_info.max  # clip factor C / norm clamps to 1: no clipping
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=float(noise_multiplier),
                               max_grad_norm=float(max_grad_norm),
                               expected_batch_size=batch_size, loss_reduction="mean",
                               generator=generator if generator is not None
                               else secure_generator())
    return wrapped, dp_optimizer


def step(optimizer: Any, penalty: Callable[[], torch.Tensor] | None = None) -> bool:
    """One DP-SGD step after `loss.backward()` on the wrapped model: clip, noise and scale
    the per-sample gradients (`optimizer.pre_step()`), add the gradient of `penalty()` (a
    data-independent term of the parameters, e.g. FedProx's proximal term: it gets no
    clipping and no noise, and costs no privacy), then step the wrapped optimizer. Returns
    whether a step was taken."""
    if not optimizer.pre_step():
        return False
    if penalty is not None:
        params = [p for p in optimizer.params if p.requires_grad]
        term = penalty()
        if term.requires_grad:
            for p, g in zip(params, torch.autograd.grad(term, params, allow_unused=True)):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
    optimizer.original_optimizer.step()
    return True
