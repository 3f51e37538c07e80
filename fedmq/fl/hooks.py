"""The federated-training extension: every worker answers `Fit` and `Evaluate`
(fedmq.fl.training). Loaded by `TorchHook`, the worker service and `fedmq train` through
`fedmq.extensions.load_extensions`.

Both run through the worker's execution primitive (fedmq.execution.execute), as commands,
plans and SMPC steps do: any failure is reported as the one ErrorInfo type, with the same codes.
"""
from __future__ import annotations

from typing import Any

from fedmq import errors
from fedmq.execution import execute
from fedmq.extensions import Extension
from fedmq.fl import secure_fit, train_config, training
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes


def fit(session: Any, msg: Fit) -> FitRes:
    """Train on the worker's own data (training.fit); the reply carries the update, or, in a
    securely aggregated round, only what its method makes of it (secure_fit). Only a
    principal granted `coordinator` (or the data owner) may ask (AccessDeniedError)."""
    session.require("coordinator", "send Fit")
    secure = isinstance(msg.config, dict) and "secure_aggregation" in msg.config
    if not secure and session.policy.require_secure_aggregation and \
            session.principal != session.policy.owner:
        raise errors.AccessDeniedError(
            f"worker {session.id!r} trains only in securely aggregated rounds (its owner "
            f"started it with --require-secure-aggregation): run fedmq train "
            f"--secure-aggregation secagg+", worker=session.id)
    owner = session.as_owner()
    res = execute(training.fit, (owner, msg), None, None, owner.store, session.id)
    if res.status != "ok" or not isinstance(msg.config, dict) or \
            "secure_aggregation" not in msg.config:
        return res
    # secure aggregation: the update leaves only encoded and protected (fedmq.fl.secure_fit)
    return execute(secure_fit.protect_result, (session, msg, res), None, None, owner.store,
                   session.id)


def evaluate(session: Any, msg: Evaluate) -> EvaluateRes:
    """Evaluate on the worker's own data (training.evaluate); coordinators only, as `fit`."""
    session.require("coordinator", "send Evaluate")
    owner = session.as_owner()
    return execute(training.evaluate, (owner, msg), None, None, owner.store, session.id)


EXTENSION = Extension("fl", handlers={Fit: fit, Evaluate: evaluate},
                      records=(Fit, FitRes, Evaluate, EvaluateRes),
                      worker_methods={"fit": train_config.fit,
                                      "async_fit": train_config.async_fit,
                                      "evaluate": train_config.evaluate})
