"""The federated-training extension: every worker answers `Fit` and `Evaluate`
(fedmq.fl.training). Loaded by `TorchHook`, the worker service and `fedmq train` through
`fedmq.extensions.load_extensions`."""
from __future__ import annotations

from fedmq.extensions import Extension
from fedmq.fl import training
from fedmq.fl.messages import Evaluate, EvaluateRes, Fit, FitRes

EXTENSION = Extension("fl", handlers={Fit: training.fit, Evaluate: training.evaluate},
                      records=(Fit, FitRes, Evaluate, EvaluateRes))
