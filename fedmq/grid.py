"""`PrivateGridNetwork`: a set of workers searched together (PySyft's grid).

    grid = fedmq.PrivateGridNetwork(*workers)
    boston_data = grid.search("#boston", "#data")     # {"bob": [ptr], "theo": [ptr], ...}

Each worker answers its own search (in-process or over its RabbitMQ queue); workers with no hits
are left out of the result, as in PySyft (`syft/grid/private_grid.py`).
"""
from __future__ import annotations

from typing import Any


class PrivateGridNetwork:
    def __init__(self, *workers: Any) -> None:
        if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
            workers = tuple(workers[0])  # PrivateGridNetwork(workers) also works
        ids = [w.id for w in workers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"a grid holds each worker once; got ids {ids}")
        self.workers = list(workers)

    def search(self, *query: Any) -> dict[str, list]:
        """{worker id: [pointers]} for every worker holding objects with all of `query`'s tags
        (tags as arguments or one list). Found pointers do not delete their objects."""
        results: dict[str, list] = {}
        for worker in self.workers:
            hits = worker.search(*query)
            if hits:
                results[worker.id] = hits
        return results

    def __repr__(self) -> str:
        return f"<PrivateGridNetwork workers: {', '.join(w.id for w in self.workers)}>"
