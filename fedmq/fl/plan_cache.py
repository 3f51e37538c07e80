"""The worker's cache of model plans: a coordinator sends a model's plan once per run, then
names it by digest (`sha256:<hex>` of its wire encoding, fedmq.plans.module_plan.digest).

Entries are kept per (worker, principal): one principal cannot use, or learn of, a plan
another sent. At most `LIMIT` plans per worker, least recently used first out; a worker that
restarted, or dropped a plan, answers a reference with ObjectNotFoundError and the sender sends
the whole plan again (fedmq.fl.coordinator does so by itself).
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from fedmq.errors import ObjectNotFoundError, RemoteExecutionError
from fedmq.plans import module_plan
from fedmq.plans.messages import ModelPlanRecord

#: model plans kept per worker (all principals together)
LIMIT = 32

_lock = threading.Lock()
_plans: "collections.OrderedDict[tuple, ModelPlanRecord]" = collections.OrderedDict()


def is_reference(model: Any) -> bool:
    return isinstance(model, str) and model.startswith("sha256:")


def resolve(model: Any, worker_id: str, principal: str) -> ModelPlanRecord:
    """The model plan a Fit / Evaluate names: a `ModelPlanRecord` (validated, then cached
    under its digest) or a digest reference (looked up). Raises ObjectNotFoundError for a
    reference this worker does not hold, RemoteExecutionError for a malformed plan."""
    if is_reference(model):
        with _lock:
            rec = _plans.get((worker_id, principal, model))
            if rec is not None:
                _plans.move_to_end((worker_id, principal, model))
                return rec
        raise ObjectNotFoundError(f"model plan {model[:19]}... is not cached on worker "
                                  f"{worker_id} (it restarted, or dropped it): send the plan "
                                  f"again", worker=worker_id)
    try:
        rec = module_plan.validate(model, worker_id)
    except ValueError as exc:
        raise RemoteExecutionError(str(exc), worker=worker_id) from None
    key = (worker_id, principal, module_plan.digest(rec))
    with _lock:
        _plans[key] = rec
        _plans.move_to_end(key)
        mine = [k for k in _plans if k[0] == worker_id]
        for old in mine[:max(len(mine) - LIMIT, 0)]:
            del _plans[old]
    return rec


def clear(worker_id: str | None = None) -> None:
    """Forget cached plans (of one worker, or all)."""
    with _lock:
        for key in [k for k in _plans if worker_id is None or k[0] == worker_id]:
            del _plans[key]
