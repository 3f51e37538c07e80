"""A frame's bytes shown as data, for a person (`fedmq dead-letters show`): decoded with fedmq's
own wire decoder (fedmq.serde: msgpack with allowlisted types only, every size checked, never
pickle; nothing in it is run or adopted), records by their fields, tensors summarized as dtype
and shape (their values are not printed), long strings and containers cut short.

    view_frame(body) -> list[str]    the lines; a body that does not decode gives its size, the
                                     decoder's error and its first bytes in hex
    view_value(value) -> list[str]   the same for a value already decoded
    hex_head(body, n) -> str         the first n bytes as hex pairs
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedmq import serde
from fedmq.extensions import load_extensions

#: at most this many items of a list, tuple, set or dict are shown
MAX_ITEMS = 20
#: strings (and reprs) longer than this are cut
MAX_TEXT = 200
#: nesting deeper than this is shown as "..."
MAX_DEPTH = 12
INDENT = "  "


def view_frame(body: bytes, head: int = 64) -> list[str]:
    """`body` decoded and shown (see the module docstring), or, when it is no fedmq frame,
    `["not decoded: <error>", "<size> bytes, first <head>: <hex>"]`."""
    load_extensions()  # what makes the extensions' records (Fit, plans, SMPC) decodable
    try:
        value = serde.decode(body)
    except serde.SerdeError as exc:
        return [f"not decoded: {exc}",
                f"{len(body)} bytes, first {min(head, len(body))}: {hex_head(body, head)}"]
    return view_value(value)


def hex_head(body: bytes, n: int = 64) -> str:
    """The first `n` bytes of `body` as space-separated hex pairs ("" for none)."""
    return bytes(body[:n]).hex(" ")


def view_value(value: Any, depth: int = 0) -> list[str]:
    """`value` as indented lines: a record as its type name and then its fields, a container
    item by item (at most MAX_ITEMS), anything else on one line."""
    if depth > MAX_DEPTH:
        return ["..."]
    if isinstance(value, torch.Tensor) or _is_scalar(value):
        return [_short(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        lines = [type(value).__name__]
        for f in dataclasses.fields(value):
            lines += _entry(f.name, getattr(value, f.name), depth)
        return lines
    if isinstance(value, dict):
        lines = [f"dict of {len(value)}"]
        for i, (key, item) in enumerate(value.items()):
            if i == MAX_ITEMS:
                lines.append(f"{INDENT}... {len(value) - MAX_ITEMS} more")
                break
            lines += _entry(_short(key), item, depth)
        return lines
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        inline = _short(value) if all(_is_scalar(i) for i in items) else None
        if inline is not None and len(inline) <= MAX_TEXT:
            return [inline]
        lines = [f"{type(value).__name__} of {len(items)}"]
        for i, item in enumerate(items[:MAX_ITEMS]):
            lines += _entry(f"[{i}]", item, depth)
        if len(items) > MAX_ITEMS:
            lines.append(f"{INDENT}... {len(items) - MAX_ITEMS} more")
        return lines
    return [_cut(repr(value))]


def _entry(name: str, value: Any, depth: int) -> list[str]:
    first, *rest = view_value(value, depth + 1)
    return [f"{INDENT}{name}: {first}"] + [INDENT + line for line in rest]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, complex, str, bytes, bytearray,
                                                memoryview, torch.dtype, torch.device))


def _short(value: Any) -> str:
    """One line: a tensor as `tensor float32 [3, 4]`, bytes as their length, text cut."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        grad = " requires_grad" if value.requires_grad else ""
        return f"tensor {dtype} {list(value.shape)}{grad}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"bytes ({len(value)})"
    if isinstance(value, (list, tuple, set, frozenset)):
        return _cut(repr(type(value)(_Raw(_short(i)) for i in value))
                    if not isinstance(value, (set, frozenset))
                    else "{" + ", ".join(_short(i) for i in value) + "}")
    return _cut(repr(value))


class _Raw(str):
    """A string whose repr is itself (an item already shown)."""

    def __repr__(self) -> str:
        return str(self)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else f"{text[:MAX_TEXT]}... ({len(text)} chars)"
