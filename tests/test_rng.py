"""Randomness a principal asks a worker for comes from that principal's own generator
(fedmq.ops.rng): independent of other principals' draws, unpredictable by them, and never the
process-global RNG (issue 12, item 5)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fedmq
from fedmq import messages as m, ops, principals, serde
from fedmq.execution import execute
from fedmq.extensions import load_extensions
from fedmq.ops import rng
from fedmq.policy import Policy
from fedmq.store import ObjectStore
from fedmq.worker import Worker

load_extensions()

RANDOM_CALLS = [  # (op, args after the input, kwargs): every random op on the allowlist
    ("torch.rand_like", (), {}),
    ("torch.randn_like", (), {}),
    ("Tensor.normal_", (), {}),
    ("Tensor.uniform_", (-1.0, 1.0), {}),
    ("F.dropout", (0.5,), {}),
    *((f"torch.{kernel}", (), {}) for kernel in ("lstm", "gru", "rnn_tanh", "rnn_relu")),
]


def _recurrent_args(kernel: str, layers: int = 2, bidirectional: bool = False,
                    dropout: float = 0.5, train: bool = True) -> tuple:
    """(input, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first) of
    recurrent kernel `kernel` on a [batch 2, seq 3, 4] input with hidden size 5."""
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
              "rnn_relu": torch.nn.RNN}[kernel]
    extra = {"nonlinearity": "relu"} if kernel == "rnn_relu" else {}
    net = module(4, 5, num_layers=layers, dropout=dropout, bidirectional=bidirectional,
                 batch_first=True, **extra)
    rows = layers * (2 if bidirectional else 1)
    h = torch.rand(rows, 2, 5)
    hx = [h, torch.rand(rows, 2, 5)] if kernel == "lstm" else h
    return (torch.rand(2, 3, 4, requires_grad=True), hx,
            [w.detach().clone().requires_grad_() for w in net._flat_weights], True, layers,
            dropout, train, bidirectional, True)


#: op -> (its input, the number of tensors it returns) where not (torch.ones(n), 1)
INPUTS = {f"torch.{kernel}": (_recurrent_args(kernel), 3 if kernel == "lstm" else 2)
          for kernel in ("lstm", "gru", "rnn_tanh", "rnn_relu")}


def test_the_calls_cover_every_random_op():
    assert {op for op, _, _ in RANDOM_CALLS} == set(ops.RANDOM)


@pytest.fixture
def generators(monkeypatch):
    """A fresh registry, so that a test sees only its own generators."""
    fresh = rng.Generators()
    monkeypatch.setattr(rng, "GENERATORS", fresh)
    return fresh


def _call(worker, login, msg):
    env = m.Envelope(m.WIRE_VERSION, login, msg)
    reply = serde.decode(worker.respond(serde.decode(serde.encode(env)), login)[0])
    assert reply.error is None, reply.error
    return reply.value


def _draw(worker, login, op="torch.rand_like", n=6, args=(), kwargs=None):
    """`op` on a fresh tensor of `login`'s, run by `worker` for `login`; the values drawn."""
    oid = fedmq.ids.new_id()
    if op in INPUTS:  # a recurrent kernel: its input and other arguments
        (first, *args), results = INPUTS[op][0], INPUTS[op][1]
        first = first.detach()
    else:
        first, results = torch.ones(n), 1
    _call(worker, login, m.ObjectMessage([m.StoredObject(oid, first)]))
    rids = [fedmq.ids.new_id() for _ in range(results)]
    _call(worker, login, m.Command(op, (m.Ref(oid), *args), kwargs or {}, rids))
    return _call(worker, login, m.GetRequest(rids[:1]))[0]


@pytest.fixture
def worker():
    return Worker("bob", policy=Policy.open())


# -- independence -------------------------------------------------------------------------------

def test_a_principals_draws_do_not_depend_on_another_principals(generators, worker):
    _draw(worker, "alice")  # alice's generator exists from here
    start = generators.get("bob", "alice").get_state()
    interleaved = []
    for _ in range(3):
        interleaved.append(_draw(worker, "alice"))
        _draw(worker, "eve")  # eve draws in between, through every random op
        for op, args, kwargs in RANDOM_CALLS:
            _draw(worker, "eve", op, args=args, kwargs=kwargs)
    generators.get("bob", "alice").set_state(start)
    alone = [_draw(worker, "alice") for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(interleaved, alone))
    assert not torch.equal(interleaved[0], interleaved[1])  # the stream moves on


def test_two_principals_and_two_workers_draw_different_streams(generators, worker):
    other = Worker("carol", policy=Policy.open())
    draws = [_draw(worker, "alice"), _draw(worker, "eve"), _draw(other, "alice")]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert len(generators) == 3


def test_a_generators_whole_state_is_random_not_a_seed():
    """A generator seeded with manual_seed has 2**32 possible streams (the Mersenne Twister
    keeps 32 bits of the seed): a principal could search them from draws it saw. Ours are not
    the stream of their recorded seed."""
    gen = rng.new_generator()
    reseeded = torch.Generator().manual_seed(gen.initial_seed())
    assert not torch.equal(torch.rand(8, generator=gen), torch.rand(8, generator=reseeded))
    assert not torch.equal(rng.new_generator().get_state(), rng.new_generator().get_state())


def test_the_client_seeding_the_global_rng_does_not_fix_a_workers_draws(generators, hook):
    bob = fedmq.VirtualWorker(hook, id="bob")
    x = torch.zeros(5).send(bob)
    torch.manual_seed(0)
    first = torch.rand_like(x).get()
    torch.manual_seed(0)
    second = torch.rand_like(x).get()
    assert not torch.equal(first, second)
    torch.manual_seed(0)
    assert not torch.equal(first, torch.rand_like(torch.zeros(5)))


def test_forgotten_generators_are_replaced_by_fresh_ones():
    registry = rng.Generators(limit=2)
    alice = registry.get("bob", "alice")
    eve = registry.get("bob", "eve")
    assert registry.get("bob", "alice") is alice  # used: eve's is now the oldest
    registry.get("carol", "alice")  # one pair too many: eve's goes
    assert len(registry) == 2 and registry.get("bob", "alice") is alice
    assert registry.get("bob", "eve") is not eve
    registry.forget("bob")
    assert len(registry) == 0 and registry.get("bob", "alice") is not alice


# -- the global RNG ----------------------------------------------------------------------------

def test_remote_random_ops_leave_the_global_rng_alone(generators, worker):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    for op, args, kwargs in RANDOM_CALLS:
        drawn = _draw(worker, "alice", op, args=args, kwargs=kwargs)
        assert not torch.equal(drawn, torch.ones(6)), op
    assert torch.equal(torch.get_rng_state(), before)
    # and the worker did draw: each op advanced alice's generator
    assert len(generators) == 1


def test_without_a_principal_random_ops_use_the_global_rng():
    """Local code (no message being handled) is plain PyTorch: the global RNG."""
    store = ObjectStore("bob")
    store.put(1, torch.zeros(4))
    assert principals.current() is None
    torch.manual_seed(7)
    value = execute(None, (m.Ref(1),), None, [2], store, "bob", op="torch.rand_like")
    torch.manual_seed(7)
    assert torch.equal(value, torch.rand(4))


def test_execute_for_a_principal_draws_from_its_generator(generators):
    store = ObjectStore("bob")
    store.put(1, torch.zeros(4))
    gen = generators.get("bob", "alice")
    state = gen.get_state()
    with principals.acting(principals.Acting("alice")):
        value = execute(None, (m.Ref(1),), None, [2], store, "bob", op="torch.rand_like")
    gen.set_state(state)
    assert torch.equal(value, torch.rand(4, generator=gen))


def test_a_plan_with_dropout_run_remotely_draws_from_the_principals_generator(generators, hook):
    bob = fedmq.VirtualWorker(hook, id="bob")

    @fedmq.func2plan(args_shape=[(64,)])
    def drop(x):
        return F.dropout(x, 0.5)

    assert [op.op for op in drop.ops] == ["F.dropout"]
    remote = drop.send(bob)
    x = torch.ones(64).send(bob)
    gen = generators.get("bob", principals.LOCAL)
    state = gen.get_state()
    torch.manual_seed(5)
    before = torch.get_rng_state()
    out = remote(x).get()
    assert torch.equal(torch.get_rng_state(), before)
    gen.set_state(state)
    assert torch.equal(out, rng.dropout(gen, torch.ones(64), 0.5))
    assert 0 < int((out == 0).sum()) < 64


def test_an_op_on_a_stored_pointer_is_forwarded_without_the_generator(generators):
    """A worker holding a pointer runs the op by forwarding it (the generator cannot travel);
    the worker holding the data draws from its own generator for the same principal."""
    seen = []
    fn = ops.lookup("torch.rand_like")

    class Remote(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(dict(kwargs or {}))
            return torch.zeros(2)

    with principals.acting(principals.Acting("alice")):
        ops.seeded(fn, "bob")(torch.zeros(2).as_subclass(Remote))
        plain = ops.seeded(fn, "bob")(torch.zeros(2))
    assert seen == [{}] and plain.shape == (2,)


# -- how an op gets its generator ----------------------------------------------------------------

@pytest.mark.parametrize("op, args", [
    (ops.Op("torch.randperm", torch.randperm, "generator"), (10,)),
    (ops.Op("torch.bernoulli", torch.bernoulli, "generator"), (torch.full((10,), 0.5),)),
    (ops.Op("F.rrelu", F.rrelu, "fork"), (torch.randn(10), 0.1, 0.3, True)),
])
def test_random_ops_not_on_the_list_yet_would_get_the_generator(generators, op, args):
    """Whatever the first argument (randperm's is an int), and with no generator keyword."""
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with principals.acting(principals.Acting("alice")):
        ops.seeded(op, "bob")(*args)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(generators) == 1



@pytest.mark.parametrize("name", sorted(n for n in ops.RANDOM if ops.lookup(n).random ==
                                        "generator"))
def test_ops_marked_generator_take_one(name):
    op = ops.lookup(name)
    args = next(a for o, a, _ in RANDOM_CALLS if o == name)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = op.fn(torch.zeros(5), *args, generator=a)
    assert torch.equal(first, op.fn(torch.zeros(5), *args, generator=b))
    assert torch.equal(torch.get_rng_state(), before)


DROPOUT_CASES = [
    ((0.5,), {}), ((0.2, True), {}), ((0.0,), {}), ((1.0,), {}), ((True,), {}), ((0,), {}),
    ((0.5, False), {}), ((0.5,), {"inplace": True}), ((0.5, True, True), {}),
    ((), {"p": 0.7, "training": True}),
]


@pytest.mark.parametrize("args, kwargs", DROPOUT_CASES)
@pytest.mark.parametrize("shape", [(6, 5), (0, 3)])
def test_dropout_with_a_generator_is_f_dropout(args, kwargs, shape):
    """rng.dropout gives the values, gradients and aliasing F.dropout gives with the global
    RNG in the same state (it follows the CPU kernel's steps)."""
    base = torch.randn(*shape)
    gen = torch.Generator().manual_seed(11)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        x1 = base.clone().requires_grad_()
        y1 = F.dropout(x1 * 1, *args, **kwargs)
        x2 = base.clone().requires_grad_()
        inp = x2 * 1
        y2 = rng.dropout(gen, inp, *args, **kwargs)
    assert torch.equal(y1, y2)
    assert (y2 is inp) == _aliases(args, kwargs, base)
    y1.sum().backward()
    y2.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


def _aliases(args, kwargs, base):
    """Whether F.dropout returns its input itself for these arguments (measured, not assumed)."""
    inp = base.clone()
    with torch.random.fork_rng():
        return F.dropout(inp, *args, **kwargs) is inp


@pytest.mark.parametrize("args, error", [((-0.1,), ValueError), ((1.5,), ValueError),
                                         ((0.5, 1), TypeError)])
def test_dropout_with_a_generator_refuses_what_f_dropout_refuses(args, error):
    with pytest.raises(error):
        F.dropout(torch.ones(3), *args)
    with pytest.raises(error):
        rng.dropout(torch.Generator(), torch.ones(3), *args)


def test_forked_runs_with_the_principals_state_and_restores_the_global_one():
    gen = torch.Generator().manual_seed(21)
    twin = torch.Generator().manual_seed(21)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    out = rng.forked(F.dropout, gen, (torch.ones(50),), {"p": 0.5})
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(out, rng.dropout(twin, torch.ones(50), 0.5))
    assert torch.equal(gen.get_state(), twin.get_state())  # the principal's stream moved on


# -- recurrent kernels: dropout between layers ---------------------------------------------------

@pytest.mark.parametrize("kernel", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers, bidirectional", [(2, False), (3, True)])
def test_a_recurrent_kernel_with_a_generator_is_the_kernel(kernel, layers, bidirectional):
    """rng.recurrent (layer by layer, the dropout from the generator) gives the outputs, final
    states and gradients of the kernel run with the global RNG in the generator's state."""
    args = _recurrent_args(kernel, layers, bidirectional)
    fn, equivalent = getattr(torch, kernel), rng.WITH_GENERATOR_ARG[f"torch.{kernel}"]
    leaves = [args[0], *args[2]]
    torch.manual_seed(11)
    expected = fn(*args)
    expected_grads = torch.autograd.grad(sum(t.sum() for t in expected), leaves)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    got = equivalent(torch.Generator().manual_seed(11), *args)
    assert torch.equal(torch.get_rng_state(), before)
    grads = torch.autograd.grad(sum(t.sum() for t in got), leaves)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads))
    torch.manual_seed(12)
    assert not torch.equal(fn(*args)[0], expected[0])  # the kernel does draw: the test can fail


@pytest.mark.parametrize("change", [{"layers": 1}, {"dropout": 0.0}, {"train": False}])
def test_a_recurrent_kernel_that_draws_nothing_runs_as_it_is(change):
    args = _recurrent_args("lstm", **change)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    got = rng.WITH_GENERATOR_ARG["torch.lstm"](gen, *args)
    assert torch.equal(gen.get_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(got, torch.lstm(*args)))


def test_a_recurrent_kernel_called_otherwise_runs_forked():
    """Keyword arguments (or a packed sequence) take the forked path: the same values, the
    global RNG untouched, the generator advanced."""
    args = _recurrent_args("gru")
    names = ["input", "hx", "params", "has_biases", "num_layers", "dropout", "train",
             "bidirectional", "batch_first"]
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    got = rng.WITH_GENERATOR_ARG["torch.gru"](gen, **dict(zip(names, args)))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(got, torch.gru(*args)))
