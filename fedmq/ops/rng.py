"""Randomness for remote ops: one generator per (worker, principal), never the process's.

A random op a principal asks a worker to run (the allowlist's `RANDOM` ops: `rand_like`,
`normal_`, `F.dropout`, ...) draws from a `torch.Generator` of that principal on that worker,
so that

- one principal cannot predict another's draws (each generator's whole Mersenne Twister
  state, 624 words, comes from `os.urandom`; a generator seeded with `manual_seed` would have
  only 2**32 possible streams), nor influence them (a principal's draws advance only its own
  generator);
- remote ops neither read nor advance the process-global RNG (`torch.default_generator`),
  which the worker process's own code and, in-process, the client's code use: a client's
  `torch.manual_seed` does not make a worker's draws predictable, and remote ops do not shift
  the client's stream.

How an op gets its generator (`seeded`): ops with a `generator=` keyword get it passed;
`F.dropout`, which has none, runs `dropout` below (the CPU kernel's own steps, with the
generator), and the recurrent kernels (`torch.lstm`, `gru`, `rnn_tanh`, `rnn_relu`: dropout
between layers) run `recurrent` below (layer by layer, `dropout` in between); any other
random op runs `forked`: the global state is swapped for the principal's around the call,
under a lock (correct, but another thread drawing from the global RNG at that moment would
draw from the principal's stream: so every op on today's list has a generator path, but for
a packed sequence or keyword arguments given to a recurrent kernel, which run `forked`).
Measured here (2 cores, a 100-element tensor): `rand_like` 1.7 us with the global RNG, 1.9 us
with a generator; `F.dropout` 7.2 us, 7.1 us through `dropout`, 10.6 us `forked`
(get_state 0.8 us, set_state 0.2 us, twice each). Through `fedmq.execution.execute` for a
principal, a random op costs 0.7-1.8 us more than with the global RNG (finding the generator,
under a lock); non-random ops pay nothing (execute only looks at `Op.random`).

Where the generators live: `GENERATORS`, a registry keyed by (worker id, principal), least
recently used first out beyond `LIMIT` pairs (a principal whose generator was dropped gets a
fresh unpredictable one). Two in-process workers of the same id acting for the same principal
(two hooks in one process) share a stream; they act for the same principal name.

An op whose input is not a plain tensor (a pointer a worker holds, an SMPC value) runs as it
is: it is forwarded to the worker holding the data, which draws from its own generator for the
same principal. Without a current principal (`fedmq.principals.current()` is None: local code,
a plan run locally, the shape engine) nothing changes: ops use the global RNG as in PyTorch.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import sys
import threading
from typing import Any, Callable

import torch

from fedmq import principals

#: (worker, principal) pairs whose generator is kept
LIMIT = 1024
#: the Mersenne Twister's state words
MT_WORDS = 624
#: layout of a CPU generator's state (`CPUGeneratorImplState`): initial seed (u64), left (i32),
#: seeded (i32), next (u64), then the 624 state words, each in a u64, then the normal caches
_MT_OFFSET = 24
_STATE_BYTES = 5056


def new_generator() -> torch.Generator:
    """A CPU generator whose whole state comes from `os.urandom` (19 968 bits, not a 64-bit
    seed of which the Mersenne Twister keeps 32). Falls back to `manual_seed` with 64 random
    bits if this torch build lays the state out otherwise."""
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(os.urandom(8), "little"))
    state = gen.get_state()
    if state.numel() != _STATE_BYTES or sys.byteorder != "little":
        return gen
    words = torch.frombuffer(bytearray(os.urandom(4 * MT_WORDS)), dtype=torch.int32)
    state[_MT_OFFSET:_MT_OFFSET + 8 * MT_WORDS].view(torch.int64).copy_(
        words.to(torch.int64) & 0xFFFFFFFF)
    gen.set_state(state)
    return gen


class Generators:
    """The per-(worker, principal) generators of this process (thread-safe)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._gens: collections.OrderedDict = collections.OrderedDict()

    def get(self, worker_id: str, principal: str) -> torch.Generator:
        """The generator `principal`'s random ops on `worker_id` draw from (made on first use)."""
        key = (worker_id, principal)
        with self._lock:
            gen = self._gens.get(key)
            if gen is None:
                gen = self._gens[key] = new_generator()
                while len(self._gens) > self.limit:
                    self._gens.popitem(last=False)
            else:
                self._gens.move_to_end(key)
            return gen

    def forget(self, worker_id: str) -> None:
        """Drop every generator of `worker_id` (a worker that stops)."""
        with self._lock:
            for key in [k for k in self._gens if k[0] == worker_id]:
                del self._gens[key]

    def __len__(self) -> int:
        return len(self._gens)


GENERATORS = Generators()

#: a generator the current message's random ops draw from instead of the principal's
_OVERRIDE: contextvars.ContextVar[torch.Generator | None] = contextvars.ContextVar(
    "fedmq_rng_override", default=None)


@contextlib.contextmanager
def drawing_from(generator: torch.Generator):
    """Within the block, random ops run for a principal draw from `generator` (the worker's
    training loop seeds one per Fit from the coordinator's seed, so that a round is
    reproducible: dropout masks are not secret, the data is)."""
    token = _OVERRIDE.set(generator)
    try:
        yield generator
    finally:
        _OVERRIDE.reset(token)


def dropout(generator: torch.Generator, input: torch.Tensor, p: float = 0.5,
            training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`F.dropout` drawing its mask from `generator`: the steps of PyTorch's CPU kernel
    (aten/src/ATen/native/Dropout.cpp, `_dropout_impl`): the same values, gradients and
    aliasing as `F.dropout` with the global RNG in that state (tested). Raises ValueError for
    p outside [0, 1] and TypeError for a `training` that is not a bool, as F.dropout does."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if type(training) is not bool:
        raise TypeError(f"dropout(): argument 'train' (position 3) must be bool, not "
                        f"{type(training).__name__}")
    if p == 0 or not training or input.numel() == 0:
        return input
    if p == 1:
        zero = torch.zeros((), dtype=input.dtype, device=input.device)
        return input.mul_(zero) if inplace else input * zero
    noise = torch.empty_like(input).bernoulli_(1 - p, generator=generator)
    noise.div_(1 - p)
    return input.mul_(noise) if inplace else input * noise


def _recurrent(name: str, pairs: bool) -> Callable[..., Any]:
    """The generator-taking equivalent of recurrent kernel `torch.<name>` (`pairs`: its hidden
    state is a list (h, c), as LSTM's; else one tensor)."""
    def run(generator: torch.Generator, *args: Any, **kwargs: Any) -> Any:
        return recurrent(getattr(torch, name), pairs, generator, args, kwargs)
    run.__name__ = name
    return run


def recurrent(fn: Callable[..., Any], pairs: bool, generator: torch.Generator, args: tuple,
              kwargs: dict) -> Any:
    """`torch.lstm` / `gru` / `rnn_tanh` / `rnn_relu` (`fn`) drawing the dropout between layers
    from `generator`. These kernels (what nn.LSTM, nn.GRU and nn.RNN call) draw random numbers
    only with `train`, `dropout > 0` and two layers or more, where ATen runs the layers one by
    one with `dropout` (its CPU kernel, as `dropout` above) on each output but the last: done
    here the same way, one layer per call of `fn` with no dropout, so the outputs, final
    states and gradients are those of `fn` with the global RNG in `generator`'s state
    (tested, bidirectional too).

    args: (input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
        batch_first) positionally, input [seq, batch, in] ([batch, seq, in] with batch_first),
        hx a list [h0, c0] (pairs) or a tensor, each [layers * directions, batch, hidden];
        params the flat weight list, layer by layer, direction by direction. Any other form
        (packed sequences, keyword arguments) runs `forked`: the same values, with the
        global RNG swapped. Errors: `fn`'s own."""
    if kwargs or len(args) != 9 or isinstance(args[1 if pairs else 2], torch.Tensor):
        return forked(fn, generator, args, kwargs)
    input, hx, params, has_biases, layers, p, train, bidirectional, batch_first = args
    if not isinstance(params, (list, tuple)) or type(p) not in (int, float) or \
            type(train) is not bool or type(layers) is not int:
        return forked(fn, generator, args, kwargs)
    if not train or not p or layers <= 1:
        return fn(*args)  # draws nothing
    directions = 2 if bidirectional else 1
    per_layer = len(params) // (layers * directions)
    hidden = list(hx) if pairs else [hx]
    finals: list[list] = [[] for _ in hidden]
    x = input
    for layer in range(layers):
        rows = slice(layer * directions, (layer + 1) * directions)
        layer_hx = [h[rows] for h in hidden]
        weights = params[layer * directions * per_layer:(layer + 1) * directions * per_layer]
        out = fn(x, layer_hx if pairs else layer_hx[0], weights, has_biases, 1, 0.0, train,
                 bidirectional, batch_first)
        x = out[0]
        for final, h in zip(finals, out[1:]):
            final.append(h)
        if layer < layers - 1:
            x = dropout(generator, x, p, True)
    return (x, *(torch.cat(final, 0) for final in finals))


#: random ops without a `generator=` keyword, run by an equivalent that takes one
WITH_GENERATOR_ARG: dict[str, Callable[..., Any]] = {
    "F.dropout": dropout,
    "torch.gru": _recurrent("gru", False),
    "torch.lstm": _recurrent("lstm", True),
    "torch.rnn_relu": _recurrent("rnn_relu", False),
    "torch.rnn_tanh": _recurrent("rnn_tanh", False),
}

_FORK_LOCK = threading.Lock()


def forked(fn: Callable[..., Any], generator: torch.Generator, args: tuple,
           kwargs: dict) -> Any:
    """Run `fn` with the global CPU RNG in `generator`'s state, then keep the state it left
    in `generator` and put the global one back (for a random op with no generator path).
    Serialised with other forked calls; not with other code using the global RNG."""
    default = torch.default_generator
    with _FORK_LOCK:
        saved = default.get_state()
        default.set_state(generator.get_state())
        try:
            return fn(*args, **kwargs)
        finally:
            generator.set_state(default.get_state())
            default.set_state(saved)


def takes_generator(fn: Callable[..., Any]) -> bool:
    """Whether torch's `fn` has a `generator=` keyword (by its documented signature)."""
    doc = getattr(fn, "__doc__", None) or ""
    return "generator=" in doc.split("\n\n", 1)[0]


def _plain(value: Any) -> bool:
    cls = type(value)
    return cls is torch.Tensor or cls is torch.nn.Parameter


def seeded(op: Any, worker_id: str) -> Callable[..., Any]:
    """The callable that runs random op `op` (a `fedmq.ops.Op` with `.random`) for the
    principal the current message acts for, on `worker_id`: `op.fn` drawing from that
    principal's generator. Without a current principal, `op.fn` itself."""
    acting, override = principals.current(), _OVERRIDE.get()
    if acting is None and override is None:
        return op.fn
    generator = override or GENERATORS.get(worker_id, acting.principal)
    fn, how = op.fn, op.random

    def run(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else kwargs.get("input")
        if isinstance(first, torch.Tensor) and not _plain(first):
            return fn(*args, **kwargs)  # a pointer, an SMPC value: dispatched where it lives
        if how == "generator":
            kwargs["generator"] = generator
            return fn(*args, **kwargs)
        if how == "equivalent":
            return WITH_GENERATOR_ARG[op.name](generator, *args, **kwargs)
        return forked(fn, generator, args, kwargs)
    return run
