"""Fixed-precision optimizers: `optim.SGD(params=model.parameters(), lr=0.1).fix_precision()`.

PySyft 0.2's `Optimizer.fix_precision()` encoded the hyper-parameters so that the update
W <- W - lr * grad runs on fixed-point shares. Here `fix_precision()` (added to every
torch.optim.Optimizer by the SMPC extension) returns a `FixedPrecisionSGD` over the same
parameter groups: its `step()` computes each update with the parameters' fixed-point methods
(shared values stay shared: a public-by-shared product is local on each share plus one
truncation) and replaces each AutogradTensor's child in place, so the model sees the new weights;
`zero_grad()` sets every `.grad` to None. The torch optimizer's own `step` and `zero_grad` become
these too (PySyft converted the optimizer in place), so calling `opt.fix_precision()` without
using its result works as well.

Supported: torch.optim.SGD with lr, momentum, dampening, weight_decay, nesterov and maximize
(the update of torch.optim.SGD, step for step). The hyper-parameters are public, encoded with
the parameters' base and precision_fractional, rounded to the nearest integer multiple of
base**-precision_fractional; one whose encoding differs from the requested value by more than
`TOLERANCE` (1%, relative) is refused with a ValueError naming the precision_fractional that
would represent it (at 3 digits lr=0.0019 would step with 0.002, lr=0.0004 with 0): checked at
fix_precision() and again at every step (a scheduler may change lr). Each update multiplies by
the encoded integer and truncates once (the same cost as a fixed-point product). Adam, RMSprop
and the others divide by a secret square root, which the fixed-point protocols here do not
compute: they are refused with a ValueError, as are SGD's `foreach=True`, `fused=True` and
`differentiable=True` (they choose torch kernels that do not exist for shares) and parameters
that are not AutogradTensors.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmq.errors import PointerError
from fedmq.smpc.additive import AdditiveSharingTensor
from fedmq.smpc.autograd import AutogradTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor

#: the largest relative difference accepted between a hyper-parameter and its encoding
TOLERANCE = 0.01

_SGD_KEYS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
             "differentiable", "fused", "params", "initial_lr"}


def _encoding(params: list) -> tuple[int, int]:
    encodings = {(p.child.base, p.child.precision_fractional) for p in params}
    if len(encodings) != 1:
        raise ValueError(f"the parameters use different fixed-point encodings {sorted(encodings)}"
                         f": fix_precision() them with one base and precision_fractional")
    return encodings.pop()


class FixedPrecisionSGD:
    """SGD on fixed-precision (shared) AutogradTensor parameters; see the module docstring.

    `param_groups` are the torch optimizer's groups (same dicts, hyper-parameters as given,
    floats); `encoded` holds each group's hyper-parameters as the integers the fixed-point
    arithmetic uses (value * base**precision_fractional, truncated)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base: int | None = None,
                 precision_fractional: int | None = None) -> None:
        if type(optimizer) is not torch.optim.SGD:
            raise ValueError(f"fix_precision() supports torch.optim.SGD only, not "
                             f"{type(optimizer).__name__}: its update divides by a secret "
                             f"(a square root of gradient moments), which fixed-point shares "
                             f"cannot compute here")
        self.param_groups = optimizer.param_groups
        self.state: dict[int, dict[str, Any]] = {}
        params = [p for g in self.param_groups for p in g["params"]]
        _check_not_replaced(params, type(optimizer).__name__)
        for p in params:
            if not isinstance(p, AutogradTensor):
                raise ValueError(f"fix_precision() needs fixed-precision parameters (model."
                                 f"fix_precision().share(..., requires_grad=True)), got a "
                                 f"{type(p).__name__}")
        if not params:
            raise ValueError("the optimizer has no parameters")
        self.base, self.precision_fractional = _encoding(params)
        if (base is not None and base != self.base) or \
                (precision_fractional is not None and
                 precision_fractional != self.precision_fractional):
            raise ValueError(f"the parameters are encoded with base={self.base}, "
                             f"precision_fractional={self.precision_fractional}; the "
                             f"optimizer's hyper-parameters must use the same encoding")
        self.scale = self.base ** self.precision_fractional
        self.encoded = [self._check_group(g) for g in self.param_groups]

    def _check_group(self, group: dict) -> dict:
        unknown = set(group) - _SGD_KEYS
        if unknown:
            raise ValueError(f"fix_precision() does not know SGD option(s) {sorted(unknown)}")
        for flag in ("foreach", "fused", "differentiable"):
            if group.get(flag):
                raise ValueError(f"SGD({flag}=True) is not available with fixed-precision "
                                 f"parameters: leave it unset")
        encoded = {}
        for key in ("lr", "momentum", "dampening", "weight_decay"):
            value = group.get(key, 0)
            if isinstance(value, torch.Tensor):
                value = float(value)
            if value < 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
            encoded[key] = self._encode(key, float(value))
        if not 0 <= encoded["dampening"] <= self.scale:
            raise ValueError(f"dampening must be in [0, 1], got {group.get('dampening')}")
        return encoded

    def _encode(self, key: str, value: float) -> int:
        """round(value * scale); ValueError if that is more than TOLERANCE off `value`."""
        encoded = round(value * self.scale)
        if abs(encoded / self.scale - value) <= TOLERANCE * abs(value):
            return encoded
        needed = self.precision_fractional + 1
        while needed < 18 and abs(round(value * self.base ** needed) / self.base ** needed
                                  - value) > TOLERANCE * abs(value):
            needed += 1
        raise ValueError(
            f"{key}={value} is {encoded / self.scale} at base={self.base}, precision_fractional="
            f"{self.precision_fractional} ({abs(encoded / self.scale - value) / value:.0%} off; "
            f"at most {TOLERANCE:.0%} is accepted): fix_precision(precision_fractional={needed}) "
            f"the model, data and optimizer, or choose a {key} that is a multiple of "
            f"{self.base}**-{self.precision_fractional}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (set_to_none=False is refused: a zero gradient
        would be one more shared value per parameter for nothing)."""
        if not set_to_none:
            raise ValueError("zero_grad(set_to_none=False) is not available on fixed-precision "
                             "parameters")
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _times(self, value: FixedPrecisionTensor, factor: int) -> FixedPrecisionTensor:
        """value * a public hyper-parameter given encoded (factor = hyper-parameter * scale):
        a product by a public int (local on shares) and one truncation (scale: the value
        itself)."""
        return value if factor == self.scale else value.mul(factor).div(self.scale)

    def step(self, closure: Any = None) -> None:
        """W <- W - lr * d_p, with d_p as torch.optim.SGD computes it (weight decay, momentum
        buffer, dampening, nesterov, maximize), on the parameters' fixed-point values."""
        if closure is not None:
            raise ValueError("step(closure) is not available on fixed-precision parameters")
        self.encoded = [self._check_group(g) for g in self.param_groups]
        _check_not_replaced([p for g in self.param_groups for p in g["params"]], "optimizer")
        self._check_nothing_fetched()  # before any parameter changes: all or none are updated
        for group, enc in zip(self.param_groups, self.encoded):
            lr, momentum = enc["lr"], enc["momentum"]
            dampening, weight_decay = enc["dampening"], enc["weight_decay"]
            nesterov, maximize = group.get("nesterov", False), group.get("maximize", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                value = p.child
                d_p = p.grad.child
                if maximize:
                    d_p = d_p.neg()
                if weight_decay:
                    d_p = d_p.add(self._times(value, weight_decay))
                if momentum:
                    state = self.state.setdefault(id(p), {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = d_p
                    else:
                        buf = self._times(buf, momentum).add(
                            self._times(d_p, self.scale - dampening))
                    state["momentum_buffer"] = buf
                    d_p = d_p.add(self._times(buf, momentum)) if nesterov else buf
                p.child = value.sub(self._times(d_p, lr))

    def _check_nothing_fetched(self) -> None:
        """PointerError if a parameter's or gradient's shares were consumed by `.get()` (which
        reconstructs and deletes them, as PySyft's did): found by review, a step after
        `param.grad.get()` updated the parameters before it and then failed on that one."""
        for group in self.param_groups:
            for p in group["params"]:
                for what, value in (("parameter", p), ("gradient", p.grad)):
                    if value is not None and _fetched(value):
                        raise PointerError(
                            f"the {what} of a parameter of shape {tuple(p.shape)} was fetched "
                            f"with .get(), which deletes its shares; nothing was updated. Read "
                            f"a shared value without consuming it with .copy().get()")

    def state_dict(self) -> dict:
        raise ValueError("the state of a fixed-precision optimizer holds shared values: it "
                         "cannot be saved as a state_dict")

    def __repr__(self) -> str:
        groups = ", ".join(f"lr={g['lr']}, momentum={g.get('momentum', 0)}"
                           for g in self.param_groups)
        return (f"FixedPrecisionSGD({groups}; base={self.base}, "
                f"precision_fractional={self.precision_fractional})")


def replaced_message(optimizer: str) -> str:
    """The error for an optimizer built before its model's parameters were replaced."""
    return (f"this {optimizer} was built before model.fix_precision()/.share()/"
            f".float_precision() replaced the model's parameters: it holds the old ones and "
            f"would train nothing. Build the optimizer after sharing, from the new parameters: "
            f"opt = optim.SGD(model.parameters(), lr=...).fix_precision()")


def _check_not_replaced(params: list, optimizer: str) -> None:
    """ValueError if a parameter was replaced in its model (marked by fedmq.smpc.hooks)."""
    if any(getattr(p, "_fedmq_replaced", False) for p in params):
        raise ValueError(replaced_message(optimizer))


def _fetched(value: Any) -> bool:
    """Whether the shares under `value` (AutogradTensor > FixedPrecisionTensor >
    AdditiveSharingTensor) were consumed by a `.get()`."""
    child = getattr(value, "child", None)
    while child is not None and not isinstance(child, AdditiveSharingTensor):
        child = getattr(child, "child", None)
    return child is not None and any(getattr(s, "_consumed", False) for s in child.shares)


def optimizer_fix_precision(self: torch.optim.Optimizer, base: int | None = None,
                            precision_fractional: int | None = None) -> FixedPrecisionSGD:
    """`optimizer.fix_precision()` (alias fix_prec): the optimizer for fixed-precision (shared)
    parameters; see the module docstring. Raises ValueError for an optimizer other than SGD,
    for options it cannot honour, or for parameters that are not fixed-precision."""
    fixed = FixedPrecisionSGD(self, base, precision_fractional)
    # as PySyft's (which converted the optimizer in place): the original's step and zero_grad
    # are the fixed-precision ones from now on, so `opt.fix_precision()` alone also works
    self.step = fixed.step
    self.zero_grad = fixed.zero_grad
    return fixed
