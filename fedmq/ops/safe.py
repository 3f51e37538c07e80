"""What a worker runs in place of a few allowlisted torch functions (see allowlist.py's audit).

The client still names the torch function (`torch.empty_like`, `Tensor.to`...) and computes
its result shape with it; the worker runs the function here, which has the same signature and
result but refuses or neutralises what would reach outside the caller's own data:

- `empty_like` returns zeros: torch's allocator hands back freed memory as it is, so an empty
  tensor would show whatever another principal's freed tensor held there (with fedmq's malloc
  tuning, fedmq/runtime.py, a freed 8 MB secret comes back byte for byte: tested).
- `*_like` and `Tensor.to` refuse any device but the CPU and `pin_memory=True`: those would
  initialise CUDA (a process-wide context, memory on a GPU other processes share) or produce
  tensors without storage (`meta`) that nothing else on a worker expects. A worker's tensors
  are all CPU tensors (the wire carries CPU tensors only).
- `Tensor.tolist` refuses more than `MAX_TOLIST` elements: a list of Python numbers costs
  ~30 bytes per element on the worker and ~9 in the reply, against 4 for the tensor itself
  (`.get()` moves the raw bytes).
"""
from __future__ import annotations

from typing import Any

import torch

#: the most elements `Tensor.tolist` turns into Python numbers on a worker
MAX_TOLIST = 1 << 20


class DeviceNotAllowed(ValueError):
    """An op asked for a device other than the CPU, or for pinned memory."""


def check_device(device: Any, op: str) -> None:
    """Raise DeviceNotAllowed unless `device` (a str, torch.device, int or None) is the CPU."""
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return  # not a device: torch itself says what is wrong with it
    if kind != "cpu":
        raise DeviceNotAllowed(f"{op}: a worker keeps its tensors on the CPU; device {device!r} "
                               f"is not allowed")


def _check_options(op: str, kwargs: dict) -> None:
    check_device(kwargs.get("device"), op)
    if kwargs.get("pin_memory"):
        raise DeviceNotAllowed(f"{op}: pinned memory is not allowed on a worker")


def empty_like(input: Any, *args: Any, **kwargs: Any) -> Any:
    """`torch.empty_like`, zero-filled (never another principal's freed memory)."""
    _check_options("torch.empty_like", kwargs)
    return torch.zeros_like(input, *args, **kwargs)


def _like(fn: Any, name: str) -> Any:
    def like(*args: Any, **kwargs: Any) -> Any:
        _check_options(name, kwargs)
        return fn(*args, **kwargs)
    like.__name__ = fn.__name__
    like.__doc__ = f"`{name}` on the CPU only (DeviceNotAllowed otherwise)."
    return like


def to(self: Any, *args: Any, **kwargs: Any) -> Any:
    """`Tensor.to` on the CPU only: a device argument (positional str, torch.device or int, or
    `device=`) other than the CPU raises DeviceNotAllowed."""
    for value in args:
        if isinstance(value, (str, torch.device)) or type(value) is int:
            check_device(value, "Tensor.to")
    _check_options("Tensor.to", kwargs)
    return self.to(*args, **kwargs)


def tolist(self: Any) -> Any:
    """`Tensor.tolist` up to MAX_TOLIST elements (ValueError beyond: fetch the tensor)."""
    n = self.numel()
    if n > MAX_TOLIST:
        raise ValueError(f"tolist of {n} elements: a worker turns at most {MAX_TOLIST} elements "
                         f"into Python numbers; fetch the tensor with .get() instead")
    return self.tolist()


#: wire name -> what the worker runs instead of the torch function of that name
REPLACEMENTS: dict[str, Any] = {
    "torch.empty_like": empty_like,
    "torch.full_like": _like(torch.full_like, "torch.full_like"),
    "torch.ones_like": _like(torch.ones_like, "torch.ones_like"),
    "torch.zeros_like": _like(torch.zeros_like, "torch.zeros_like"),
    "torch.rand_like": _like(torch.rand_like, "torch.rand_like"),
    "torch.randn_like": _like(torch.randn_like, "torch.randn_like"),
    "Tensor.to": to,
    "Tensor.tolist": tolist,
}
