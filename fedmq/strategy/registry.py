"""Strategies by name, for the CLI: `fedmq train --strategy fedadam --strategy-arg eta=0.01`
calls `make_strategy("fedadam", eta="0.01")`."""
from __future__ import annotations

import inspect
from typing import Any

from fedmq.strategy.asynchronous import FedAsync, FedBuff
from fedmq.strategy.fedavg import FedAvg
from fedmq.strategy.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedmq.strategy.fedprox import FedProx
from fedmq.strategy.robust import FedMedian, FedTrimmedAvg, Krum

STRATEGIES: dict[str, type] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "fedasync": FedAsync,
    "fedbuff": FedBuff,
}


def strategy_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments `cls(...)` accepts, collected along its classes (subclasses pass
    the rest on to their base with **base; a class without **base ends the walk)."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        passes_on = False
        for name, param in inspect.signature(vars(klass)["__init__"]).parameters.items():
            if param.kind == param.VAR_KEYWORD:
                passes_on = True
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            params.setdefault(name, param)
        if not passes_on:
            break
    return params


def _coerce(name: str, value: Any, param: inspect.Parameter) -> Any:
    """CLI values arrive as strings: convert them to the type of the parameter's default
    ("none" for parameters that may be None)."""
    default = param.default
    if not isinstance(value, str) or default is inspect.Parameter.empty or isinstance(default, str):
        return value
    text = value.strip()
    if text.lower() == "none" and "None" in str(param.annotation):
        return None
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:  # optional int (max_staleness)
            return int(text)
    except ValueError:
        kind = {"bool": "a bool (true/false)", "int": "an int", "float": "a number"}.get(
            type(default).__name__, "an int or none")
        if default is None:
            kind = "an int or none"
        raise ValueError(f"strategy argument {name}={value!r} is not {kind}") from None
    return value


def make_strategy(name: str, **kwargs: Any):
    """The strategy called `name` (see STRATEGIES) built with `kwargs`; string values are
    converted to the parameter's type. Unknown names or arguments raise ValueError listing the
    valid ones."""
    key = name.strip().lower()
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    cls = STRATEGIES[key]
    params = strategy_parameters(cls)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"strategy {key} does not take {', '.join(unknown)}; valid: "
                         f"{', '.join(sorted(params))}")
    return cls(**{k: _coerce(k, v, params[k]) for k, v in kwargs.items()})
