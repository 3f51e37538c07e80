"""The "secagg" extension: the handlers every worker gains for secure aggregation's stages
(fedmq.secagg.secaggplus, fedmq.secagg.additive) and their wire records."""
from __future__ import annotations

from fedmq.extensions import Extension
from fedmq.secagg import additive, secaggplus

EXTENSION = Extension("secagg", handlers={**secaggplus.HANDLERS, **additive.HANDLERS},
                      records=(*secaggplus.RECORDS, *additive.RECORDS))
