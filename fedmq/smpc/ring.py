"""The ring Z/2^64Z that shares and fixed-point values live in: int64 tensors, whose native
wraparound is the ring's arithmetic.

    FIELD, INT64_MIN, INT64_MAX   the ring's size and the int64 range
    uniform, random_bits          ring elements and bits from the OS CSPRNG
    additive_split, xor_split     n additive (mod 2^64) or bitwise-XOR shares of a value
    PRODUCTS, ring_op             the bilinear ops Beaver triples exist for, computed in the ring
    conv_args_of                  conv2d's keyword arguments as a wire-friendly list

Randomness comes from the operating system's CSPRNG (`os.urandom`), never from torch's
Mersenne Twister (PySyft drew shares from `torch.random_`, issue #2708 / notes C3).

Ring products are torch's own int64 kernels, which wrap around mod 2^64. (On torch 2.14 with
MKL the int64 matmul is ~2x a float64 dgemm of the same size; splitting operands into 22-bit
limbs for exact float64 BLAS needs six dgemms and was measured 5x slower, so it is not used.)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

#: the ring's size: shares and values live in Z/2^64Z
FIELD = 2 ** 64
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

#: the bilinear ops a Beaver triple can be dealt for
PRODUCTS = ("mul", "matmul", "conv2d")
_CONV_KEYS = ("stride", "padding", "dilation", "groups")


def uniform(shape) -> torch.Tensor:
    """Uniform int64 ring elements (the ring Z/2^64Z) from the OS CSPRNG."""
    shape = tuple(int(s) for s in shape)
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        return torch.zeros(shape, dtype=torch.int64)
    return torch.frombuffer(bytearray(os.urandom(8 * n)), dtype=torch.int64).reshape(shape)


def random_bits(shape) -> torch.Tensor:
    return uniform(shape) & 1


def additive_split(value: torch.Tensor, n: int) -> list[torch.Tensor]:
    """n additive shares of `value` in Z/2^64Z (int64 wraparound): n-1 uniform, one fixing up."""
    shares = [uniform(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for s in shares:
        last = last - s
    return shares + [last]


def xor_split(value: torch.Tensor, n: int, bits_only: bool = False) -> list[torch.Tensor]:
    """n XOR shares of `value` (bitwise, packed in int64 words)."""
    draw = random_bits if bits_only else uniform
    shares = [draw(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for s in shares:
        last = last ^ s
    return shares + [last]


def ring_op(op: str, x: torch.Tensor, y: torch.Tensor, conv_args: list | None = None
            ) -> torch.Tensor:
    """x op y in Z/2^64Z (int64 tensors; torch's integer kernels wrap around)."""
    if op == "mul":
        return x * y
    if op == "matmul":
        return torch.matmul(x, y)
    if op == "conv2d":
        return F.conv2d(x, y, None, *(conv_args or ()))
    raise ValueError(f"no Beaver product for op {op!r} (known: {PRODUCTS})")


def conv_args_of(kwargs: dict) -> list:
    """conv2d's stride, padding, dilation, groups as a positional list (wire-friendly)."""
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    out = []
    for key in _CONV_KEYS:
        value = kwargs.get(key, defaults[key])
        out.append(list(value) if isinstance(value, tuple) else value)
    return out
