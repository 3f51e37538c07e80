"""PySyft 0.2's keyword arguments of worker constructors, each honoured or refused, and
every other unknown keyword an error (a misspelled `timout=` must not pass silently).

    check_worker_options(cls_name, options, known)     TypeError / ValueError, or None

PySyft's `BaseWorker` / `WebsocketClientWorker` took `verbose`, `log_msgs`,
`is_client_worker`, `auto_add`, and `host`, `port`, `secure` (a websocket address):

    verbose=True          honoured: the `fedmq` logger logs at INFO (what PySyft printed)
    log_msgs=False, is_client_worker=False, auto_add=True
                          accepted: fedmq always behaves so
    log_msgs=True         refused: no in-memory message log; the `fedmq.engine` logger shows
                          each message at DEBUG
    is_client_worker=True, auto_add=False
                          refused: a fedmq worker always keeps its objects and joins the
                          hook's network
    host, port, secure    refused on AMQPClientWorker: it reaches its worker through a broker,
                          `url="amqp://user:password@host:5672/vhost"`
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Iterable

#: PySyft's option -> the one value fedmq's behaviour matches
_MATCHING = {"log_msgs": False, "is_client_worker": False, "auto_add": True}
_WHY = {
    "log_msgs": "fedmq keeps no in-memory message log; the 'fedmq.engine' logger shows each "
                "message at DEBUG",
    "is_client_worker": "a fedmq worker always keeps the objects sent to it",
    "auto_add": "a fedmq worker always joins its hook's network",
}
_ADDRESS = ("host", "port", "secure")


def check_worker_options(cls_name: str, options: dict[str, Any],
                         known: Iterable[str] = (), *, remote: bool = False) -> None:
    """Honour or refuse each of PySyft's options in `options`; TypeError for any other key
    (naming the closest of `known` and PySyft's), ValueError for a PySyft value fedmq cannot
    honour. `remote`: a client of a worker service (PySyft's host/port/secure are known)."""
    pysyft = {"verbose", *_MATCHING, *(_ADDRESS if remote else ())}
    for key, value in options.items():
        if key not in pysyft:
            close = difflib.get_close_matches(key, [*known, *pysyft], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{cls_name}() got an unexpected keyword argument {key!r}{hint}")
        if key == "verbose":
            if value:
                logger = logging.getLogger("fedmq")
                if logger.getEffectiveLevel() > logging.INFO:
                    logger.setLevel(logging.INFO)
        elif key in _ADDRESS:
            raise ValueError(f"{cls_name}({key}=...): a fedmq worker is reached through the "
                             f"broker, not a websocket address: give "
                             f"url='amqp://user:password@host:5672/vhost'")
        elif bool(value) != _MATCHING[key]:
            raise ValueError(f"{cls_name}({key}={value!r}) is not supported: {_WHY[key]}")
