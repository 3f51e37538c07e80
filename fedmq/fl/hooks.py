"""Every worker answers `Fit` and `Evaluate` (fedmq.fl.training). Imported by `TorchHook` and
by the worker service through `fedmq.hook.EXTENSIONS`."""
from __future__ import annotations

from fedmq.fl import training
from fedmq.fl.messages import Evaluate, Fit
from fedmq.worker import EXTRA_HANDLERS, register_handler

if Fit not in EXTRA_HANDLERS:
    register_handler(Fit, training.fit)
    register_handler(Evaluate, training.evaluate)
