"""Checks of a run's settings, before any slow work (no torch here): `TrainConfig` calls
`check_config` when it is made, and `fedmq train` checks its options with it before it
connects, loads data or traces a model, so a mistake is one line naming the option.

    check_config(fields) -> None        ValueError naming the setting and what is allowed
    OPTION                              setting -> the `fedmq train` option that sets it
"""
from __future__ import annotations

import math
from typing import Any, Mapping

#: a TrainConfig field -> the `fedmq train` option that sets it (for messages)
OPTION = {
    "rounds": "--rounds", "batch_size": "--batch-size", "num_batches": "--batches",
    "epochs": "--epochs", "lr": "--lr", "lr_decay": "lr_decay", "lr_floor": "lr_floor",
    "optimizer": "--optimizer", "loss": "--loss", "eval_every": "--eval-every",
    "eval_batch_size": "eval_batch_size", "round_timeout": "--round-timeout",
    "seed": "--seed", "momentum": "--momentum", "buckets": "--buckets",
    "input_dtype": "--input-dtype",
}

OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("nll", "cross_entropy")
INPUT_DTYPES = ("float32", "int64")


class SettingError(ValueError):
    """A run setting out of its range. `setting` is the TrainConfig field's name."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{OPTION.get(setting, setting)} {message}")
        self.setting = setting
        self.message = message

    def for_option(self, option: str) -> str:
        return f"{option} {self.message}"


def _int(name: str, value: Any, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(name, f"must be a whole number {what}, got {value!r}")
    if value < low:
        raise SettingError(name, f"must be {what}, got {value}")


def _positive(name: str, value: Any, *, high: float | None = None,
              allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(name, f"must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise SettingError(name, f"must be {'at least 0' if allow_zero else 'above 0'}, got "
                                 f"{value}")
    if high is not None and value > high:
        raise SettingError(name, f"must be at most {high}, got {value}")


def check_config(fields: Mapping[str, Any]) -> None:
    """Raise SettingError (a ValueError) for the first setting out of range:

    rounds, batch_size, num_batches (unless epochs), epochs (if given), eval_batch_size: >= 1
    eval_every: >= 0 (0: never); lr > 0 and finite; round_timeout > 0; lr_decay in (0, 1];
    lr_floor in [0, 1]; optimizer in OPTIMIZERS; loss in LOSSES; momentum in [0, 1);
    buckets: pairs (lo, hi) with 0 <= lo <= hi."""
    _int("rounds", fields.get("rounds"), 1, "at least 1")
    _int("batch_size", fields.get("batch_size"), 1, "at least 1")
    if fields.get("epochs") is not None:
        _int("epochs", fields["epochs"], 1, "at least 1")
    else:
        _int("num_batches", fields.get("num_batches"), 1, "at least 1 (local batches per round)")
    _int("eval_every", fields.get("eval_every", 0), 0, "at least 0 (0: never evaluate)")
    _int("eval_batch_size", fields.get("eval_batch_size", 1), 1, "at least 1")
    _int("seed", fields.get("seed", 0), 0, "at least 0")
    _positive("lr", fields.get("lr"))
    _positive("round_timeout", fields.get("round_timeout", 1.0))
    _positive("lr_decay", fields.get("lr_decay", 1.0), high=1.0)
    _positive("lr_floor", fields.get("lr_floor", 0.0), high=1.0, allow_zero=True)
    if fields.get("optimizer", "sgd") not in OPTIMIZERS:
        raise SettingError("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got "
                                        f"{fields.get('optimizer')!r}")
    if fields.get("loss", "nll") not in LOSSES:
        raise SettingError("loss", f"must be one of {', '.join(LOSSES)}, got "
                                   f"{fields.get('loss')!r}")
    if fields.get("input_dtype", "float32") not in INPUT_DTYPES:
        raise SettingError("input_dtype", f"must be one of {', '.join(INPUT_DTYPES)}, got "
                                          f"{fields.get('input_dtype')!r}")
    momentum = (fields.get("optimizer_args") or {}).get("momentum", 0.0)
    _positive("momentum", momentum, allow_zero=True)
    if momentum >= 1:
        raise SettingError("momentum", f"must be below 1, got {momentum}")
    for bucket in fields.get("buckets") or ():
        try:
            lo, hi = bucket
        except (TypeError, ValueError):
            raise SettingError("buckets", f"are label ranges such as 0-3, got {bucket!r}") \
                from None
        if not (isinstance(lo, int) and isinstance(hi, int)) or not 0 <= lo <= hi:
            raise SettingError("buckets", f"are label ranges lo-hi with 0 <= lo <= hi, got "
                                          f"{lo}-{hi}")
