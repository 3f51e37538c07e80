"""`fedmq worker` whose Fit also protects its update with additive-sharing aggregation, for
tests/test_secagg_additive.py over RabbitMQ: a stand-in for the coordinator's wiring of
`fedmq.secagg` into Fit (not written yet), doing what it will do. After the normal Fit, when
`config["secure_aggregation"]` holds an additive entry, the update (new weights minus the
global ones, in sorted entry order) is quantized (fedmq.secagg.quantize.encode, weight = the
examples trained on) and `fedmq.secagg.additive.protect` runs in the Fit's own session (acting
for the coordinator, on the worker's op thread). The FitRes still carries the weights, so the
test can check the aggregate against them.

Usage: python tests/secagg_fit_worker.py worker --id ... (the arguments of `fedmq worker`)."""
from __future__ import annotations

import sys

from fedmq import worker as fedmq_worker
from fedmq.cli import main
from fedmq.extensions import load_extensions
from fedmq.fl import hooks
from fedmq.fl.messages import Fit
from fedmq.secagg import additive, quantize


def update_vector(global_weights: dict, new_weights: dict, examples: int):
    """The int64 ring vector a worker protects (shape (L,))."""
    names = sorted(global_weights)
    update = quantize.flatten(new_weights, names) - quantize.flatten(global_weights, names)
    return quantize.encode(update, examples)[0]


def fit_then_protect(session, msg: Fit):
    res = hooks.fit(session, msg)
    entry = msg.config.get("secure_aggregation") if isinstance(msg.config, dict) else None
    if entry and res.status == "ok":
        additive.protect(session.as_owner(), entry,
                         update_vector(msg.weights, res.weights, res.num_examples))
    return res


if __name__ == "__main__":
    load_extensions()
    fedmq_worker.EXTRA_HANDLERS[Fit] = fit_then_protect
    sys.exit(main(sys.argv[1:]))
