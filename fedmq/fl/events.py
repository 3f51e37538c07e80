"""Round events, published on the `fedmq.events` topic exchange (declared with the rest of the
topology in fedmq/transport/amqp.py) so the RabbitMQ management UI and any subscriber
(`#.result`, `round.*`) see a run's progress. Bodies are JSON objects."""
from __future__ import annotations

import json
import logging
from typing import Any

from fedmq.fl.metrics import json_safe

log = logging.getLogger("fedmq.fl")

ROUND_STARTED = "round.started"
FIT_RESULT = "fit.result"
FIT_FAILED = "fit.failed"
ROUND_FINISHED = "round.finished"
EVALUATE_RESULT = "evaluate.result"


class EventLog:
    """In-process runs: events are kept in a list (and logged at debug level)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def emit(self, routing_key: str, payload: dict) -> None:
        self.events.append((routing_key, json_safe(payload)))
        log.debug("event %s %s", routing_key, payload)


class AMQPEvents(EventLog):
    """Also publishes every event to `fedmq.events` (best effort: a lost event is logged)."""

    def __init__(self, amqp: Any) -> None:
        super().__init__()
        self.amqp = amqp

    def emit(self, routing_key: str, payload: dict) -> None:
        super().emit(routing_key, payload)
        try:
            self.amqp.publish_event(routing_key, json.dumps(json_safe(payload)).encode())
        except Exception as exc:  # events must never stop a run
            log.warning("event %s not published: %s", routing_key, exc)
VERSION_APPLIED = "version.applied"  # asynchronous runs: a new global model version
UPDATE_DROPPED = "fit.dropped"  # asynchronous runs: an update the strategy dropped (too stale)
