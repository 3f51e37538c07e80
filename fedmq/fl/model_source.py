"""What a coordinator's Fit and Evaluate say the model is: a built-in name
(`fedmq.models.MODELS`, built by each worker) or a user's model as a plan
(fedmq/fl/user_model.py), sent whole the first time it goes to a worker and then named by its
digest; a worker that lost it (it restarted) answers ObjectNotFoundError and gets it again.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import torch

from fedmq.errors import ObjectNotFoundError
from fedmq.fl import user_model
from fedmq.models import MODELS


class ModelSource:
    """The model of a run. `name` is what runs record (checkpoints compare it on resume);
    `trainable` the names of the trainable entries (None for a built-in model: the strategy
    tells parameters from buffers by name)."""

    def __init__(self, spec: str, *, seed: int, batch_size: int,
                 model_args: list[str] | None = None, input_shape: str | None = None,
                 input_dtype: str = "float32") -> None:
        self.name = spec
        self.seed = seed
        self.user: user_model.UserModel | None = None
        if user_model.is_user_model(spec):
            self.user = user_model.build(spec, model_args, batch_size=batch_size,
                                         input_shape=input_shape, input_dtype=input_dtype,
                                         seed=seed)
        elif spec not in MODELS:
            raise ValueError(f"unknown model {spec!r} (known: {sorted(MODELS)}, or "
                             f"module:Class / file.py:Class for your own)")
        self._sent: set[str] = set()

    @property
    def trainable(self) -> set[str] | None:
        return self.user.trainable if self.user is not None else None

    def initial_weights(self) -> dict:
        if self.user is not None:
            return self.user.initial_weights()
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            net = MODELS[self.name]()
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def field(self, worker_id: str) -> Any:
        """The `model` field of a message to `worker_id`: a name, the plan, or its digest."""
        if self.user is None:
            return self.name
        if worker_id in self._sent:
            return self.user.digest
        self._sent.add(worker_id)
        return self.user.plan

    async def request(self, worker_id: str, make: Callable[[Any], Any],
                      send: Callable[[Any], Awaitable[Any]]) -> Any:
        """`await send(make(field))`, sending the whole plan again once if the worker no
        longer holds it."""
        try:
            return await send(make(self.field(worker_id)))
        except ObjectNotFoundError:
            if self.user is None:
                raise
            self._sent.discard(worker_id)
            return await send(make(self.field(worker_id)))
