"""The "secagg" extension: the handlers every worker gains for secure aggregation's stages
(fedmq.secagg.secaggplus, fedmq.secagg.additive) and their wire records. SecAgg+'s stage 3
(`SecAggUnmask`: a few dict lookups, no arithmetic) is light: a service answers it on its
event loop."""
from __future__ import annotations

from fedmq.extensions import Extension
from fedmq.secagg import additive, secaggplus

EXTENSION = Extension("secagg", handlers={**secaggplus.HANDLERS, **additive.HANDLERS},
                      light=secaggplus.LIGHT,
                      records=(*secaggplus.RECORDS, *additive.RECORDS))
