"""A user's own model for `fedmq train --model`: built on the coordinator, traced into a model
plan (fedmq.plans.module_plan), trained by workers that have none of its code.

    fedmq train --model mypkg.models:Net --model-arg width=64 --input-shape 1,28,28
    fedmq train --model path/to/net.py:Net

`--model` is `module:Class` (an importable module) or `file.py:Class` (loaded from that file);
`--model-arg k=v` are keyword arguments of the class (ints, floats, booleans and strings);
`--input-shape` is one sample's shape (the batch dimension is added), or a class attribute
`input_shape`; `--input-dtype` float32 (default) or int64 (token ids for an Embedding).
The code runs here only, on the coordinator; workers receive allowlisted ops.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmq.plans import module_plan
from fedmq.plans.messages import ModelPlanRecord

DTYPES = {"float32": torch.float32, "int64": torch.int64}
#: the largest example batch traced (numbers)
MAX_EXAMPLE_ELEMENTS = 1 << 28


def is_user_model(spec: str) -> bool:
    """Whether `--model` names a user's class (`x:Class`) rather than a built-in model."""
    return ":" in spec


def parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_model_args(pairs: list[str] | None) -> dict[str, Any]:
    """`["width=64", "dropout=0.2"]` -> {"width": 64, "dropout": 0.2}. Raises ValueError."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg {pair!r}: expected NAME=VALUE")
        out[key] = parse_value(value)
    return out


def parse_shape(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        shape = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        shape = []
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"--input-shape {text!r}: expected positive ints, e.g. 1,28,28")
    return shape


def load_class(spec: str) -> type:
    """The class `spec` names (`module:Class` or `file.py:Class`). Raises ValueError with the
    reason (no such file or module, no such class, not an nn.Module)."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"--model {spec!r}: expected module:Class or path/to/file.py:Class")
    if where.endswith(".py"):
        path = pathlib.Path(where)
        if not path.is_file():
            raise ValueError(f"--model {spec!r}: no file {path}")
        module_name = f"fedmq_user_model_{abs(hash(str(path.resolve())))}"
        spec_obj = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # the user's code: any failure is theirs
            del sys.modules[module_name]
            raise ValueError(f"--model {spec!r}: {path} failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except (Exception, SystemExit) as exc:
            raise ValueError(f"--model {spec!r}: cannot import {where}: "
                             f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"--model {spec!r}: {where} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"--model {spec!r}: {name} is not an nn.Module class")
    return cls


@dataclass
class UserModel:
    """A user's model ready for rounds: the module (its initial weights), and its plan."""
    spec: str
    module: nn.Module
    plan: ModelPlanRecord
    digest: str

    @property
    def trainable(self) -> set[str]:
        return set(self.plan.parameters)

    def initial_weights(self) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


def build(spec: str, model_args: list[str] | None = None, *, batch_size: int = 32,
          input_shape: str | None = None, input_dtype: str = "float32", seed: int = 0,
          loss_fn: Any = None) -> UserModel:
    """Build and trace the user's model (weights initialised under `torch.manual_seed(seed)`).
    Raises ValueError for a spec, argument or shape it cannot use, before any round."""
    cls = load_class(spec)
    kwargs = parse_model_args(model_args)
    if input_dtype not in DTYPES:
        raise ValueError(f"--input-dtype {input_dtype!r}: one of {sorted(DTYPES)}")
    torch.manual_seed(seed)
    try:
        module = cls(**kwargs)
    except (Exception, SystemExit) as exc:
        raise ValueError(f"--model {spec!r}: {cls.__name__}({kwargs}) failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    shape = parse_shape(input_shape) or getattr(module, "input_shape", None)
    if not shape:
        raise ValueError(f"--model {spec!r}: give --input-shape (one sample's shape, e.g. "
                         f"1,28,28) or an input_shape attribute on {cls.__name__}")
    if math.prod(shape) * batch_size > MAX_EXAMPLE_ELEMENTS:
        raise ValueError(f"--input-shape {','.join(map(str, shape))}: a batch of "
                         f"{batch_size} would be over {MAX_EXAMPLE_ELEMENTS} numbers")
    example = torch.zeros([batch_size, *shape], dtype=DTYPES[input_dtype])
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    try:
        plan = module_plan.model_plan(module, example, loss_fn=loss_fn, name=cls.__name__)
    except (ValueError, NotImplementedError):  # PlanBuildError, OpNotAllowedError: clear
        raise
    except (Exception, SystemExit) as exc:  # the user's forward failed on the example
        raise ValueError(f"--model {spec!r}: its forward pass failed on an example batch "
                         f"of shape {tuple(example.shape)} ({type(exc).__name__}: {exc}); "
                         f"check --input-shape") from exc
    module.load_state_dict(state)
    return UserModel(spec, module, plan, module_plan.digest(plan))
