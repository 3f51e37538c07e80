"""The worker's cache of model plans: a coordinator sends a model's plan once per run, then
names it by digest (`sha256:<hex>` of its wire encoding, fedmq.plans.module_plan.digest).

Entries are kept per (worker, principal): one principal cannot use, or learn of, a plan
another sent. At most `LIMIT` plans per principal (its own least recently used first out) and
`MAX_BYTES` of memory per worker (then the oldest of the principal holding the most); a plan
over
`MAX_PLAN_BYTES` is refused (QuotaExceededError). A worker that
restarted, or dropped a plan, answers a reference with ObjectNotFoundError and the sender sends
the whole plan again (fedmq.fl.coordinator does so by itself).
"""
from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any

from fedmq import serde
from fedmq.errors import ObjectNotFoundError, QuotaExceededError, RemoteExecutionError
from fedmq.plans import module_plan
from fedmq.plans.messages import ModelPlanRecord

#: model plans kept per (worker, principal), and bytes (their wire size) per worker
LIMIT = 8
MAX_BYTES = 512 << 20
#: memory per wire byte of a decoded plan (measured: 25 000 ops, 2.2 MB encoded, ~21 MB held)
COST_FACTOR = 10
#: the largest plan a worker accepts, encoded (its ops and constants; the weights travel apart)
MAX_PLAN_BYTES = 16 << 20

_lock = threading.Lock()
_plans: "collections.OrderedDict[tuple, tuple[ModelPlanRecord, int]]" = collections.OrderedDict()


def is_reference(model: Any) -> bool:
    return isinstance(model, str) and model.startswith("sha256:")


def resolve(model: Any, worker_id: str, principal: str) -> tuple[ModelPlanRecord, str]:
    """The model plan a Fit / Evaluate names, and its digest: a `ModelPlanRecord` (validated,
    then cached under its digest) or a digest reference (looked up). Raises
    ObjectNotFoundError for a reference this worker does not hold, RemoteExecutionError for a
    malformed plan, QuotaExceededError for one over MAX_PLAN_BYTES."""
    if is_reference(model):
        with _lock:
            held = _plans.get((worker_id, principal, model))
            if held is not None:
                _plans.move_to_end((worker_id, principal, model))
                return held[0], model
        raise ObjectNotFoundError(f"model plan {model[:19]}... is not cached on worker "
                                  f"{worker_id} (it restarted, or dropped it): send the plan "
                                  f"again", worker=worker_id)
    try:
        rec = module_plan.validate(model, worker_id)
    except ValueError as exc:
        raise RemoteExecutionError(str(exc), worker=worker_id) from None
    encoded = serde.encode(rec)
    if len(encoded) > MAX_PLAN_BYTES:
        raise QuotaExceededError(f"model plan {rec.name!r} takes {len(encoded)} bytes, more "
                                 f"than the {MAX_PLAN_BYTES} a worker keeps for one plan",
                                 worker=worker_id)
    key = (worker_id, principal, "sha256:" + hashlib.sha256(encoded).hexdigest())
    with _lock:
        _plans[key] = (rec, len(encoded))
        _plans.move_to_end(key)
        mine = [k for k in _plans if k[:2] == (worker_id, principal)]
        for old in mine[:max(len(mine) - LIMIT, 0)]:  # a principal evicts its own first
            del _plans[old]
        _evict(worker_id, keep=key)
    return rec, key[2]


def _evict(worker_id: str, keep: tuple) -> None:
    """Over MAX_BYTES (counted at COST_FACTOR x the wire size: a decoded op list takes ~8-10x
    its encoding), drop the oldest plans of the principal holding the most."""
    while True:
        here = [k for k in _plans if k[0] == worker_id]
        if sum(_plans[k][1] for k in here) * COST_FACTOR <= MAX_BYTES:
            return
        by_principal: dict[str, int] = collections.Counter()
        for k in here:
            by_principal[k[1]] += _plans[k][1]
        biggest = max(by_principal, key=by_principal.get)
        victims = [k for k in here if k[1] == biggest and k != keep]
        if not victims:
            return
        del _plans[victims[0]]


def clear(worker_id: str | None = None) -> None:
    """Forget cached plans (of one worker, or all)."""
    with _lock:
        for key in [k for k in _plans if worker_id is None or k[0] == worker_id]:
            del _plans[key]
