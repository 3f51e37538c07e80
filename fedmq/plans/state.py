"""A plan's state: the tensors it carries with it (weights, biases, constants it updates).

A function plan made with `@func2plan(state=(t1, t2))` receives a `State` as its last argument
and reads the tensors with `state.read()`; a class plan's state is its parameters and buffers.
State travels inside the plan, lives on the worker with it, and in-place updates made by the
plan (a training step) stay there between runs.
"""
from __future__ import annotations

import torch


class State:
    """The `state` argument of a function plan."""

    def __init__(self, tensors=()) -> None:
        tensors = tuple(tensors or ())
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"plan state holds tensors only: state[{i}] is a "
                                f"{type(t).__name__}")
        self.tensors = tensors

    def read(self) -> tuple:
        """The state tensors, in the order they were given."""
        return self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return f"<State [{shapes}]>"


def snapshot(tensors) -> list:
    """Values and gradients of `tensors`, to undo what tracing a training step did to them."""
    with torch.no_grad():
        return [(t, t.detach().clone(), None if t.grad is None else t.grad.detach().clone())
                for t in tensors]


def restore(saved: list) -> None:
    with torch.no_grad():
        for t, value, grad in saved:
            if t.shape == value.shape and t.dtype == value.dtype:
                t.copy_(value)
            else:  # the plan replaced it (`.data = ...`): put the original back
                t.data = value
            t.grad = grad
