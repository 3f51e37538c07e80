"""The ring Z/2^64Z that shares and fixed-point values live in: int64 tensors, whose native
wraparound is the ring's arithmetic.

    FIELD, INT64_MIN, INT64_MAX   the ring's size and the int64 range
    uniform, random_bits          ring elements and bits from the OS CSPRNG
    additive_split, xor_split     n additive (mod 2^64) or bitwise-XOR shares of a value
    PRODUCTS, ring_op             the bilinear ops Beaver triples exist for, computed in the ring
    conv_args_of                  conv2d's keyword arguments as a wire-friendly list

Randomness comes from AES-256 in counter mode keyed with 32 bytes of the operating system's
CSPRNG (`os.urandom`; the CTR_DRBG construction of NIST SP 800-90A without reseeding, which
needs none for the at most 2^26 words one call draws), never from torch's Mersenne Twister
(PySyft drew shares from `torch.random_`, issue #2708 / notes C3). AES-CTR is 5-10x faster than
`os.urandom` here, and the same stream expands a dealt seed (`PRG`, `expand_shares`): a party
that gets a seed from the crypto provider derives its shares itself (SPDZ2k / CrypTen TTP
style, "PRG seeds instead of shares"), so only one party gets tensors (the correction).

Ring products are torch's own int64 kernels, which wrap around mod 2^64. (On torch 2.14 with
MKL the int64 matmul is ~2x a float64 dgemm of the same size; splitting operands into 22-bit
limbs for exact float64 BLAS needs six dgemms and was measured 5x slower, so it is not used.)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: the ring's size: shares and values live in Z/2^64Z
FIELD = 2 ** 64
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

#: the bilinear ops a Beaver triple can be dealt for
PRODUCTS = ("mul", "matmul", "conv2d")
_CONV_KEYS = ("stride", "padding", "dilation", "groups")


#: bytes of a PRG seed (an AES-256 key)
SEED_BYTES = 32
#: most elements one seed may be expanded to (as provider.MAX_ELEMENTS for a dealt tensor)
MAX_EXPANDED = 1 << 26


#: the counter block every stream starts from (a seed is used for one stream)
_CTR_ZERO = modes.CTR(bytes(16))


class PRG:
    """A stream of uniform int64 words: AES-256-CTR keyed by `seed` (32 bytes; a fresh one
    from `os.urandom` if None). Deterministic for a given seed: the party holding the seed and
    the provider draw the same tensors in the same order. `draws` records (shape, bits_only) of
    every draw, which is what a party needs to expand the same seed (`expand_shares`)."""

    def __init__(self, seed: bytes | None = None) -> None:
        self.seed = os.urandom(SEED_BYTES) if seed is None else seed
        if type(self.seed) is not bytes or len(self.seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {type(seed).__name__} "
                             f"of length {len(seed) if isinstance(seed, bytes) else '-'}")
        self._cipher = Cipher(algorithms.AES(self.seed), modes.CTR(bytes(16))).encryptor()
        self.draws: list = []
        #: id(tensor returned) -> its draw's index, and the tensors (kept alive for the ids)
        self.index: dict[int, int] = {}
        self._outputs: list = []

    def _record(self, out: torch.Tensor, bits_only: bool) -> torch.Tensor:
        self.draws.append([list(out.shape), bits_only])
        self.index[id(out)] = len(self.draws) - 1
        self._outputs.append(out)
        return out

    def uniform(self, shape) -> torch.Tensor:
        """Uniform int64 ring elements of `shape`, the next 8 * numel bytes of the stream."""
        return self._record(self._words(shape), False)

    def bits(self, shape) -> torch.Tensor:
        """Uniform 0/1 int64 elements (the low bit of `uniform`'s words)."""
        return self._record(self._words(shape) & 1, True)

    def stream_into(self, zeros: bytes, buf: bytearray) -> None:
        """The next len(zeros) bytes of the stream into `buf` (a bytearray at least that long;
        `zeros`: that many zero bytes, reusable), unrecorded: for callers that add many
        streams into one tensor through one buffer (fedmq.secagg.secaggplus)."""
        self._cipher.update_into(zeros, buf)

    @staticmethod
    def expand_into(seed: bytes, zeros: bytes, buf: bytearray) -> None:
        """`PRG(seed).stream_into(zeros, buf)` without the PRG: the first len(zeros) bytes
        of the stream of `seed` (32 bytes; ValueError otherwise) into `buf`."""
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes")
        Cipher(algorithms.AES(seed), _CTR_ZERO).encryptor().update_into(zeros, buf)

    def _words(self, shape) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        n = 1
        for s in shape:
            n *= s
        if n == 0:
            return torch.zeros(shape, dtype=torch.int64)
        buf = bytearray(8 * n)
        self._cipher.update_into(bytes(8 * n), buf)
        return torch.frombuffer(buf, dtype=torch.int64).reshape(shape)


def uniform(shape) -> torch.Tensor:
    """Uniform int64 ring elements (the ring Z/2^64Z) from a fresh OS-seeded AES-CTR stream."""
    return PRG().uniform(shape)


def random_bits(shape) -> torch.Tensor:
    return uniform(shape) & 1


def additive_split(value: torch.Tensor, n: int, prgs: list | None = None
                   ) -> list[torch.Tensor]:
    """n additive shares of `value` in Z/2^64Z (int64 wraparound): n-1 uniform (from `prgs`,
    one PRG per party but the last, when given), the last fixing up."""
    shares = [prgs[i].uniform(value.shape) if prgs else uniform(value.shape)
              for i in range(n - 1)]
    last = value.clone()
    for s in shares:
        last = last - s
    return shares + [last]


def xor_split(value: torch.Tensor, n: int, bits_only: bool = False, prgs: list | None = None
              ) -> list[torch.Tensor]:
    """n XOR shares of `value` (bitwise, packed in int64 words; 0/1 each if `bits_only`),
    n-1 of them from `prgs` when given."""
    if prgs:
        shares = [prgs[i].bits(value.shape) if bits_only else prgs[i].uniform(value.shape)
                  for i in range(n - 1)]
    else:
        draw = random_bits if bits_only else uniform
        shares = [draw(value.shape) for _ in range(n - 1)]
    last = value.clone()
    for s in shares:
        last = last ^ s
    return shares + [last]


def draw_elements(draws: list) -> int:
    """How many elements `draws` ([shape, bits_only] each) expand to; ValueError on a bad
    spec or past MAX_EXPANDED (checked before anything is drawn)."""
    total = 0
    for spec in draws:
        if (not isinstance(spec, (list, tuple)) or len(spec) != 2
                or not isinstance(spec[0], (list, tuple)) or type(spec[1]) is not bool
                or not all(type(d) is int and d >= 0 for d in spec[0])):
            raise ValueError(f"a prg_shares draw is [shape (non-negative ints), bits_only "
                             f"(bool)], got {spec!r}")
        n = 1
        for d in spec[0]:
            n *= d
        total += n
        if total > MAX_EXPANDED:
            raise ValueError(f"a seed expands to at most {MAX_EXPANDED} elements")
    return total


def expand_shares(seed: bytes, draws: list, layout: list | None = None,
                  given: list | None = None) -> tuple:
    """A party's shares from a seed the crypto provider dealt, as a LocalStep ("prg_shares")
    returns them (kept, opened): `PRG(seed)` draws `draws` ([shape, bits_only] each, in
    order); the shares are, in `layout` order, draw k for an entry k >= 0 and `given[-1 - k]`
    (a correction the provider sent) for k < 0; without `layout`, every draw in order.
    Raises ValueError on a bad seed, spec or layout, or past MAX_EXPANDED elements in all."""
    if not isinstance(draws, list) or (not draws and not given):
        raise ValueError("prg_shares needs a non-empty list of [shape, bits_only] draws")
    given = list(given or [])
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in given):
        raise ValueError("prg_shares' given shares are int64 tensors")
    draw_elements(draws)
    prg = PRG(seed)
    drawn = [prg.bits(spec[0]) if spec[1] else prg.uniform(spec[0]) for spec in draws]
    if layout is None:
        return tuple(drawn) + tuple(given), ()
    if not isinstance(layout, list) or not all(
            type(k) is int and -len(given) <= k < len(drawn) for k in layout):
        raise ValueError(f"a prg_shares layout holds draw indices (0..{len(drawn) - 1}) and "
                         f"given ones (-1..-{len(given)}), got {layout!r}")
    return tuple(drawn[k] if k >= 0 else given[-1 - k] for k in layout), ()


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
