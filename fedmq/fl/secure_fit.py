"""The worker side of a securely aggregated round (fedmq.secagg): after local training
(fedmq.fl.training.fit), the update, new weights minus the global ones, is encoded into the
ring Z_2^64 (fedmq.secagg.quantize: clipped element-wise, 2**frac_bits fixed point, times the
worker's weight) and handed to the round's method, whose answer replaces the weights in the
FitRes: SecAgg+ sends back the masked vector, additive sharing nothing (the shares went to the
aggregators). With distributed differential privacy the update's float entries are first clipped to an L2
norm and the worker adds its part of the Gaussian noise (fedmq.privacy.central).

What still travels in the clear, as in Flower's SecAgg+: the number of examples (FedAvg's
weight), the mean training loss and the timing metrics.

The Fit config's "secure_aggregation" entry (made by fedmq.fl.secure on the coordinator):
    method        "secagg+" or "additive"
    entry         the method's own dict (its `protect` reads it)
    clip, frac_bits   the encoding (fedmq.secagg.quantize)
    weighted      multiply by the examples (FedAvg) or not (DP-FedAvg's equal weights)
    dp_clip       L2 norm the update is clipped to (0: none)
    dp_noise_std  standard deviation of the Gaussian noise this worker adds (0: none)
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from fedmq.fl.messages import Fit, FitRes
from fedmq.secagg import additive, quantize, secaggplus
from fedmq.secagg.base import COMPUTE_LOCK

#: method name -> the worker side: protect(session, entry, int64 vector) -> FitRes weights
PROTECT = {"secagg+": secaggplus.protect, "additive": additive.protect}
log = logging.getLogger("fedmq.fl")
KEYS = {"method", "entry", "clip", "frac_bits", "weighted", "dp_clip", "dp_noise_std"}


def settings(secure: Any) -> dict:
    """The checked "secure_aggregation" entry of a Fit config (ValueError naming the fault)."""
    if not isinstance(secure, dict) or set(secure) != KEYS:
        raise ValueError(f"secure_aggregation must be a dict with keys {sorted(KEYS)}")
    if secure["method"] not in PROTECT:
        raise ValueError(f"unknown secure aggregation method {secure['method']!r} "
                         f"(known: {', '.join(sorted(PROTECT))})")
    if not isinstance(secure["entry"], dict):
        raise ValueError("secure_aggregation entry must be a dict")
    for key in ("clip", "dp_clip", "dp_noise_std"):
        value = secure[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value < 0:
            raise ValueError(f"secure_aggregation {key} must be a finite number >= 0, got "
                             f"{value!r}")
    if type(secure["weighted"]) is not bool:
        raise ValueError("secure_aggregation weighted must be true or false")
    quantize.check_range(float(secure["clip"]), secure["frac_bits"])
    return secure


def protect_result(session: Any, msg: Fit, res: FitRes) -> FitRes:
    """`res` (the worker's plain FitRes) with its weights replaced by what the round's
    method makes of the encoded update. ValueError for a malformed entry or update."""
    secure = settings(msg.config.get("secure_aggregation"))
    names = list(msg.weights)
    if set(res.weights) != set(names):
        raise ValueError("the trained weights do not match the global model's entries")
    with COMPUTE_LOCK:
        vector = _encode(secure, msg, res, names)
    carried = PROTECT[secure["method"]](session, secure["entry"], vector)
    return FitRes(res.round, res.worker, carried, res.num_examples, res.loss, res.status,
                  dict(res.metrics))


def _encode(secure: dict, msg: Fit, res: FitRes, names: list[str]) -> torch.Tensor:
    """The worker's update as an int64 ring vector (shape (L,)): DP-clipped and noised when
    the round asks, then encoded (fedmq.secagg.quantize)."""
    update = quantize.flatten(res.weights, names) - quantize.flatten(msg.weights, names)
    if secure["dp_clip"] or secure["dp_noise_std"]:
        # distributed DP: the float entries are clipped and noised; integer buffers (a
        # BatchNorm's batch count) are counts of the configured batches, passed exactly
        from fedmq.privacy import central
        floats = torch.cat([torch.full((msg.weights[n].numel(),),
                                       msg.weights[n].is_floating_point()) for n in names])
        part = update[floats]
        if secure["dp_clip"]:
            part, _ = central.clip_update(part, float(secure["dp_clip"]))
        if secure["dp_noise_std"]:
            part = part + central.noise(part.numel(), float(secure["dp_noise_std"]))
        update[floats] = part
    weight = int(res.num_examples) if secure["weighted"] else 1
    vector, clipped = quantize.encode(update, weight, float(secure["clip"]),
                                      secure["frac_bits"])
    if clipped:  # logged here, never sent: per worker, it would tell about the update
        log.warning("worker %s: %d update elements beyond the secure aggregation's clip %g "
                    "were clipped", res.worker, clipped, float(secure["clip"]))
    return vector
