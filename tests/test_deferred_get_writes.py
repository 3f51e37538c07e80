"""No silently lost writes after a deferred `model.get()` (issue 15, Deliver 2).

`model.get()` is carried out lazily (fedmq/module.py): the parameters come home the first time
anything touches them. Every write must then act on the fetched values, exactly as in plain
PyTorch: each in-place method torch.Tensor has (enumerated from `dir(torch.Tensor)`, with
generated arguments), `.data =`, `p[i] = v`, `nn.init.*_`, `load_state_dict`, and an optimizer
built before `send` stepping the fetched model. Each is run on a just-fetched model and on a
plain copy that never left, and the parameters must be equal (bit for bit, NaNs included).
`Tensor.set_` is the one in-place method torch calls without `__torch_function__`; before the
fix it wrote the local placeholder and the fetch then overwrote it (the §10.2 cleanup trained
nothing, with no error).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fedmq as sy
from fedmq.errors import OpNotAllowedError


class Net(nn.Module):
    """Parameters of three ranks (in-place methods differ in the rank they accept) and a
    buffer."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w2 = nn.Parameter(torch.rand(4, 4, generator=g) * 0.8 + 0.1)
        self.w1 = nn.Parameter(torch.rand(4, generator=g) * 0.8 + 0.1)
        self.w3 = nn.Parameter(torch.rand(2, 4, 4, generator=g) * 0.8 + 0.1)
        self.register_buffer("running", torch.rand(4, generator=g))


PARAMS = ("w2", "w1", "w3")

# in-place methods that cannot apply to a float32 parameter, and why (the test checks that
# plain PyTorch indeed refuses each of them, so this list cannot hide a method that applies)
CANNOT_APPLY = {
    "bitwise_and_": "integer/bool dtypes only", "bitwise_or_": "integer/bool dtypes only",
    "bitwise_xor_": "integer/bool dtypes only", "bitwise_not_": "integer/bool dtypes only",
    "bitwise_left_shift_": "integer dtypes only", "bitwise_right_shift_": "integer dtypes only",
    "__iand__": "integer/bool dtypes only", "__ior__": "integer/bool dtypes only",
    "__ixor__": "integer/bool dtypes only", "__ilshift__": "integer dtypes only",
    "__irshift__": "integer dtypes only",
    "gcd_": "integer dtypes only", "lcm_": "integer dtypes only",
    "float_power_": "its result is float64, which a float32 tensor cannot hold in place",
    "resize_as_sparse_": "sparse tensors only", "sparse_resize_": "sparse tensors only",
    "sparse_resize_and_clear_": "sparse tensors only",
}


def inplace_methods() -> list[str]:
    """Every in-place method of torch.Tensor: `name_` and the `__i*__` operators."""
    names = []
    for name in dir(torch.Tensor):
        if name.startswith("__"):
            if name.startswith("__i") and name.endswith("__") and name not in (
                    "__init__", "__init_subclass__", "__index__", "__int__", "__invert__",
                    "__iter__"):
                names.append(name)
        elif name.endswith("_") and not name.startswith("_"):
            names.append(name)
    return sorted(names)


def _rand(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape) + len(shape))
    return torch.rand(*shape, generator=g) * 0.8 + 0.1


def candidate_args(name: str, p: torch.Tensor) -> list[tuple]:
    """Argument tuples to try for method `name` on a tensor shaped like `p` (first that plain
    PyTorch accepts wins): the structured ones by name, then generic shapes of call."""
    shape = tuple(p.shape)
    same = _rand(*shape)
    rows = shape[0] if shape else 1
    idx = torch.tensor([0, rows - 1])
    if p.dim() >= 1:
        src = _rand(2, *shape[1:])
        index = torch.zeros(shape, dtype=torch.long)
        index[..., 0] = rows - 1
    special: dict[str, list[tuple]] = {
        "index_add_": [(0, idx, src)] if p.dim() else [],
        "index_copy_": [(0, idx, src)] if p.dim() else [],
        "index_fill_": [(0, idx, 0.5)] if p.dim() else [],
        "index_put_": [((idx,), src)] if p.dim() else [],
        "index_reduce_": [(0, idx, src, "prod")] if p.dim() else [],
        "masked_fill_": [(same > 0.5, 0.25)],
        "masked_scatter_": [(same > 0.5, _rand(*shape) + 3)],
        "put_": [(torch.tensor([0, 3]), torch.tensor([7.0, 8.0]))],
        "scatter_": [(0, index, same)] if p.dim() else [],
        "scatter_add_": [(0, index, same)] if p.dim() else [],
        "scatter_reduce_": [(0, index, same, "amax")] if p.dim() else [],
        "renorm_": [(2, 0, 0.5)],
        "resize_": [((shape[0] * 2,) if shape else (2,),)],
        "resize_as_": [(_rand(3),)],
        "as_strided_": [((2, 2), (1, 2))],
        "addmv_": [(_rand(4, 4), _rand(4))],
        "addr_": [(_rand(4), _rand(4))],
        "addbmm_": [(_rand(2, 4, 4), _rand(2, 4, 4))],
        "baddbmm_": [(_rand(2, 4, 4), _rand(2, 4, 4))],
        "addmm_": [(_rand(4, 4), _rand(4, 4))],
        "addcmul_": [(_rand(*shape), _rand(*shape))],
        "addcdiv_": [(_rand(*shape), _rand(*shape))],
        "lerp_": [(_rand(*shape), 0.3)],
        "apply_": [(lambda x: x * 2 + 1,)],
        "map_": [(same, lambda a, b: a * b + 1)],
        "map2_": [(same, same, lambda a, b, c: a + b * c)],
        "fill_diagonal_": [(0.5,)],
        "polygamma_": [(1,)],
        "mvlgamma_": [(1,)],
        "clamp_": [(0.3, 0.6)],
        "clip_": [(0.3, 0.6)],
        "uniform_": [(-2.0, 2.0)],
        "normal_": [(1.0, 3.0)],
        "random_": [(0, 10)],
        "requires_grad_": [(False,)],
        "set_": [(_rand(3, 2),)],
        "copy_": [(same,)],
        "__ipow__": [(2,)],
    }
    generic = [(), (same,), (0.5,), (same, same), (same, 0.5), (0,), (1,), (0, 1)]
    return special.get(name, []) + generic


def _call(name: str, p: torch.Tensor, args: tuple, seed: int, via_data: bool) -> object:
    torch.manual_seed(seed)  # the random fills (normal_, bernoulli_, ...) draw the same
    with torch.no_grad():
        return getattr(p.data if via_data else p, name)(*args)


def find_call(name: str) -> tuple[str, tuple, bool] | None:
    """(parameter name, args, via_data) of the first call plain PyTorch accepts, or None:
    on the parameter itself, else on its `.data` (torch refuses `resize_`, `apply_`, `map_`...
    on a tensor that requires grad, and says to use the detached tensor)."""
    for via_data in (False, True):
        for pname in PARAMS:
            for args in candidate_args(name, getattr(Net(), pname)):
                p = getattr(Net(), pname)
                try:
                    out = _call(name, p, copy.deepcopy(args), 0, via_data)
                except Exception:
                    continue
                if out is NotImplemented:
                    continue
                return pname, args, via_data
    return None


def assert_same_model(fetched: nn.Module, plain: nn.Module) -> None:
    for (name, a), (_, b) in zip(list(fetched.named_parameters()) +
                                 list(fetched.named_buffers()),
                                 list(plain.named_parameters()) + list(plain.named_buffers())):
        assert type(a) is type(b), name
        assert a.requires_grad == b.requires_grad, name
        assert a.shape == b.shape, name
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0, equal_nan=True,
                                   msg=name)


def fetched_and_plain(worker) -> tuple[nn.Module, nn.Module]:
    """A model just fetched with a deferred `get()` and its plain twin that never left."""
    plain = Net()
    model = Net()
    model.send(worker)
    model.get()
    return model, plain


def check_method(name: str, worker) -> None:
    found = find_call(name)
    assert found is not None, f"no generated arguments fit {name}: add them to candidate_args"
    pname, args, via_data = found
    model, plain = fetched_and_plain(worker)
    out_plain = _call(name, getattr(plain, pname), copy.deepcopy(args), 1, via_data)
    out_fetched = _call(name, getattr(model, pname), copy.deepcopy(args), 1, via_data)
    assert_same_model(model, plain)
    if isinstance(out_plain, torch.Tensor):
        torch.testing.assert_close(out_fetched.detach(), out_plain.detach(), rtol=0, atol=0,
                                   equal_nan=True)
    if out_plain is getattr(plain, pname):
        assert out_fetched is getattr(model, pname), f"{name} must return its input"


APPLY = [n for n in inplace_methods() if n not in CANNOT_APPLY]


@pytest.fixture
def vbob(hook):
    return sy.VirtualWorker(hook, id="bob")


def test_the_enumeration_covers_torch():
    names = inplace_methods()
    assert len(names) > 150  # torch 2.x has about 180
    for must in ("set_", "copy_", "mul_", "add_", "zero_", "fill_", "clamp_", "__imul__",
                 "normal_", "uniform_", "index_put_", "masked_fill_", "resize_"):
        assert must in names


@pytest.mark.parametrize("name", sorted(CANNOT_APPLY))
def test_skipped_methods_really_cannot_apply_to_a_float_parameter(name):
    assert name in inplace_methods() or not hasattr(torch.Tensor, name)
    if hasattr(torch.Tensor, name):
        assert find_call(name) is None, f"{name} applies to float32: test it, do not skip it"


@pytest.mark.parametrize("name", APPLY)
def test_every_inplace_method_acts_on_the_fetched_values(name, vbob):
    check_method(name, vbob)


# -- writes that are not `Tensor.name_` methods ---------------------------------------------------

def _setitem(m):
    with torch.no_grad():
        m.w2[0] = 1.5
        m.w1[1:3] = torch.tensor([4.0, 5.0])
        m.w3[..., 0] = -1.0


def _imul_statement(m):  # the §10.2 cleanup
    with torch.no_grad():
        for p in m.parameters():
            p *= 0


def _data_assign(m):
    m.w2.data = torch.full((4, 4), 3.0)
    m.running.data = torch.arange(4.0)


def _data_then_inplace(m):
    m.w1.data.mul_(10)
    m.w2.data[0, 0] = 9.0


def _set_from_fetched_pointer_value(m):  # §10.2: params[i].set_(new_params[i])
    with torch.no_grad():
        for p in m.parameters():
            p.set_(torch.ones_like(p.detach()) * 2)


def _load_state_dict(m):
    m.load_state_dict({"w2": torch.full((4, 4), 9.0), "w1": torch.zeros(4),
                       "w3": torch.ones(2, 4, 4), "running": torch.full((4,), 0.5)})


def _load_state_dict_assign(m):
    m.load_state_dict({"w2": torch.full((4, 4), 9.0), "w1": torch.zeros(4),
                       "w3": torch.ones(2, 4, 4), "running": torch.full((4,), 0.5)},
                      assign=True)


def _init(fn, *args, params=("w2", "w3")):
    def run(m):
        torch.manual_seed(3)
        for name in params:
            fn(getattr(m, name), *args)
    run.__name__ = fn.__name__
    return run


def _functional_inplace(m):
    torch.relu_(m.w2.data)
    with torch.no_grad():
        torch.nn.functional.relu_(m.w1)
        torch.clamp_(m.w3, 0.2, 0.5)


def _foreach(m):
    with torch.no_grad():
        torch._foreach_mul_([m.w2, m.w1], 3.0)
        torch._foreach_add_([m.w2, m.w1], [torch.ones(4, 4), torch.ones(4)])


def _vector_to_parameters(m):
    n = sum(p.numel() for p in m.parameters())
    nn.utils.vector_to_parameters(torch.arange(float(n)), m.parameters())


def _module_conversion(m):
    m.double()


def _zero_grad_and_requires_grad(m):
    m.requires_grad_(False)
    m.zero_grad()


OTHER_WRITES = [_setitem, _imul_statement, _data_assign, _data_then_inplace,
                _set_from_fetched_pointer_value, _load_state_dict, _load_state_dict_assign,
                _functional_inplace, _foreach, _vector_to_parameters, _module_conversion,
                _zero_grad_and_requires_grad,
                *(_init(fn, *args) for fn, args in (
                    (nn.init.uniform_, (-1, 1)), (nn.init.normal_, (0, 2)),
                    (nn.init.constant_, (0.7,)), (nn.init.ones_, ()), (nn.init.zeros_, ()),
                    (nn.init.xavier_uniform_, ()), (nn.init.xavier_normal_, ()),
                    (nn.init.kaiming_uniform_, ()), (nn.init.kaiming_normal_, ()),
                    (nn.init.trunc_normal_, ()), (nn.init.orthogonal_, ()))),
                _init(nn.init.eye_, params=("w2",)), _init(nn.init.dirac_, params=("w3",)),
                _init(nn.init.sparse_, 0.5, params=("w2",))]


@pytest.mark.parametrize("write", OTHER_WRITES, ids=lambda w: w.__name__)
def test_other_writes_act_on_the_fetched_values(write, vbob):
    model, plain = fetched_and_plain(vbob)
    write(plain)
    write(model)
    assert_same_model(model, plain)


def test_a_write_to_a_sent_parameter_is_never_local_only(vbob):
    """Without a pending get, `set_` (which torch runs without __torch_function__) on a sent
    parameter or a pointer is refused instead of replacing the local placeholder."""
    model = Net().send(vbob)
    with torch.no_grad(), pytest.raises(OpNotAllowedError, match="set_"):
        model.w1.set_(torch.zeros(4))
    with pytest.raises(OpNotAllowedError, match="set_"):
        torch.ones(3).send(vbob).set_(torch.zeros(3))
    before = model.w1.copy().get()
    assert torch.equal(model.get().w1.detach(), before)


# -- an optimizer built before `send`, used on the fetched model (seed §4/§10) ----------------------

OPTIMIZERS = [
    ("SGD", lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("SGD momentum", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ("SGD nesterov", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", lambda ps: torch.optim.Adam(ps, lr=0.05)),
    ("AdamW", lambda ps: torch.optim.AdamW(ps, lr=0.05)),
    ("RMSprop", lambda ps: torch.optim.RMSprop(ps, lr=0.01)),
    ("Adagrad", lambda ps: torch.optim.Adagrad(ps, lr=0.1)),
]


def _loss(model, x):
    return ((model.w2 @ x).sum() * model.w1).pow(2).mean() + model.w3.sum()


def _step(model, opt, x):
    opt.zero_grad()
    _loss(model, x).backward()
    opt.step()


def run_optimizer_pattern(make_opt, worker, rounds: int = 2) -> None:
    """Per round: send the model, one remote step, get() it, then one local step on the
    just-fetched model with the optimizer built before the first send (and the same on a
    model that never left)."""
    x = _rand(4)
    plain, model = Net(), Net()
    opt_plain, opt = make_opt(plain.parameters()), make_opt(model.parameters())
    for _ in range(rounds):
        _step(plain, opt_plain, x)
        model.send(worker)
        _step(model, opt, x.send(worker))
        model.get()
        _step(plain, opt_plain, x)
        _step(model, opt, x)
        assert_same_model(model, plain)
    model.send(worker)
    model.get()
    opt.step()  # the first touch after get() is the step itself: it must use the grads
    opt_plain.step()
    assert_same_model(model, plain)


@pytest.mark.parametrize("make_opt", [f for _, f in OPTIMIZERS], ids=[n for n, _ in OPTIMIZERS])
def test_optimizer_built_before_send_steps_the_fetched_model(make_opt, vbob):
    run_optimizer_pattern(make_opt, vbob)


# -- over RabbitMQ worker services: a smaller set ------------------------------------------------

AMQP_METHODS = ["set_", "copy_", "mul_", "add_", "zero_", "fill_", "clamp_", "__imul__",
                "normal_", "index_put_", "masked_fill_", "resize_"]


@pytest.mark.amqp
@pytest.mark.parametrize("transport", ["amqp"])
@pytest.mark.parametrize("name", AMQP_METHODS)
def test_inplace_methods_over_rabbitmq(name, bob):
    check_method(name, bob)


@pytest.mark.amqp
@pytest.mark.parametrize("transport", ["amqp"])
@pytest.mark.parametrize("write", [_imul_statement, _data_assign, _set_from_fetched_pointer_value,
                                   _load_state_dict, _setitem], ids=lambda w: w.__name__)
def test_other_writes_over_rabbitmq(write, bob):
    model, plain = fetched_and_plain(bob)
    write(plain)
    write(model)
    assert_same_model(model, plain)


@pytest.mark.amqp
@pytest.mark.parametrize("transport", ["amqp"])
def test_optimizer_pattern_over_rabbitmq(bob):
    run_optimizer_pattern(OPTIMIZERS[1][1], bob)
    run_optimizer_pattern(OPTIMIZERS[3][1], bob)


# -- the seed's §10.2 loop (train remotely, average, cleanup) with a plain average --------------

def run_s10_2_cleanup(bob, alice, epochs: int = 3) -> None:
    """§10.2's train(): update each worker's model (optimizer built before send), average the
    parameters (here in the clear: the encrypted average is issue 15's item 1), then the
    listing's cleanup `param *= 0` / `model.get()` / `param.set_(new_param)`. The same loop in
    plain PyTorch must give the same weights every epoch (before the fix the set_ was lost,
    and the models never changed)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(6, 4, generator=g), torch.randn(6, generator=g)) for _ in range(2)]
    compute_nodes = [bob, alice]

    def make(seed):
        torch.manual_seed(seed)
        return nn.Linear(4, 1)

    models, plain = [make(1), make(2)], [make(1), make(2)]
    params = [list(mod.parameters()) for mod in models]
    plain_params = [list(mod.parameters()) for mod in plain]
    optimizers = [torch.optim.SGD(mod.parameters(), lr=0.1) for mod in models]
    plain_optimizers = [torch.optim.SGD(mod.parameters(), lr=0.1) for mod in plain]
    remote = [(d.send(w), t.send(w)) for (d, t), w in zip(batches, compute_nodes)]

    def update(data, target, model, optimizer):
        model.send(data.location)
        optimizer.zero_grad()
        loss = F.mse_loss(model(data).view(-1), target)
        loss.backward()
        optimizer.step()
        return model

    for _ in range(epochs):
        for i in range(2):
            models[i] = update(*remote[i], models[i], optimizers[i])
            plain_optimizers[i].zero_grad()
            F.mse_loss(plain[i](batches[i][0]).view(-1), batches[i][1]).backward()
            plain_optimizers[i].step()
        new_params = [(params[0][j].copy().get() + params[1][j].copy().get()) / 2
                      for j in range(len(params[0]))]
        plain_new = [(plain_params[0][j].detach() + plain_params[1][j].detach()) / 2
                     for j in range(len(params[0]))]
        with torch.no_grad():
            for model in params:
                for param in model:
                    param *= 0
            for model in models:
                model.get()
            for r in range(2):
                for j in range(len(params[r])):
                    params[r][j].set_(new_params[j])
                    # (the set_ makes both models share one tensor; sending each model
                    # copies it, so the plain twin gets a copy each)
                    plain_params[r][j].set_(plain_new[j].clone())
        for model, twin in zip(models, plain):
            torch.testing.assert_close(model.weight.detach(), models[0].weight.detach())
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    start = make(1).weight.detach()
    assert not torch.equal(models[0].weight.detach(), start)  # it trained


def test_s10_2_cleanup_trains(hook):
    run_s10_2_cleanup(sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice"))


@pytest.mark.amqp
@pytest.mark.parametrize("transport", ["amqp"])
def test_s10_2_cleanup_trains_over_rabbitmq(bob, alice):
    run_s10_2_cleanup(bob, alice)


# -- found by review ------------------------------------------------------------------------------

def _trained_on(worker, opt_class=torch.optim.SGD, **opt_kwargs):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    twin = copy.deepcopy(model)
    opt = opt_class(model.parameters(), **opt_kwargs)
    twin_opt = opt_class(twin.parameters(), **opt_kwargs)
    x = torch.randn(4, 3)
    model.send(worker)
    for m_, o_, x_ in ((model, opt, x.send(worker)), (twin, twin_opt, x)):
        o_.zero_grad()
        m_(x_).sum().backward()
        o_.step()
    return model, opt, twin, twin_opt


@pytest.fixture(scope="module")
def stoppable_service(worker_processes):
    """A worker service of our own, stopped by the test that uses it."""
    from worker_procs import delete_queue
    yield lambda: worker_processes.start("fd_stoppable", wait=True)
    worker_processes.procs.pop("fd_stoppable", None)
    delete_queue("fedmq.worker.fd_stoppable")


@pytest.mark.amqp
@pytest.mark.parametrize("transport", ["amqp"])
def test_found_by_review_get_then_worker_stops_loses_nothing(hook, worker_factory,
                                                             worker_processes,
                                                             stoppable_service, tmp_path):
    """found by review: `model.get()` returned, then the worker service stopped (SIGTERM)
    before the model was touched; the fetch used to be only recorded, so the trained model
    was lost. The GetRequest now goes out in get() and the reply is kept."""
    stoppable_service()
    worker = worker_factory(hook, id="fd_stoppable")
    model, opt, twin, _ = _trained_on(worker, torch.optim.Adam, lr=0.1)
    opt_state = opt.state_dict()  # (an optimizer's state lives with its model's worker)
    model.get()
    assert worker_processes.stop("fd_stoppable") == 0  # SIGTERM, a normal shutdown
    torch.testing.assert_close(model.weight.detach(), twin.weight.detach())
    torch.testing.assert_close(model.bias.detach(), twin.bias.detach())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt")["weight"].equal(twin.weight.detach())
    assert opt_state["state"][0]["exp_avg"].location.id == "fd_stoppable"


def test_found_by_review_fetched_values_and_released_copies(vbob):
    """The GetRequest reads without deleting (so a model sent straight back never travels);
    the worker's copies are released once the model is touched."""
    model, _, twin, _ = _trained_on(vbob, lr=0.5)
    model.get()
    assert model.weight.detach().equal(twin.weight.detach())
    assert vbob.objects_count() == 0  # released once touched (x was dropped too)
    model.send(vbob)
    model.get()
    before = vbob.engine.frames_sent[vbob.id]
    model.send(vbob)  # sent straight back: nothing travels
    assert vbob.engine.frames_sent[vbob.id] == before and vbob.objects_count() == 2


@pytest.mark.parametrize("opt_class,kwargs", [
    (torch.optim.Adam, {"lr": 0.05}), (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (torch.optim.RMSprop, {"lr": 0.01}), (torch.optim.Adagrad, {"lr": 0.1})],
    ids=["Adam", "SGD-momentum", "RMSprop", "Adagrad"])
def test_found_by_review_optimizer_state_comes_home_with_the_model(opt_class, kwargs, vbob):
    """found by review: after model.get() the optimizer's state stayed remote until the next
    step, so `torch.save(opt.state_dict())` raised PointerError (d5_optstate.py). state_dict()
    now brings home the state of parameters that came home."""
    model, opt, twin, twin_opt = _trained_on(vbob, opt_class, **kwargs)
    model.get()
    model.weight.sum()  # the get is carried out
    mine, plain = opt.state_dict(), twin_opt.state_dict()
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert not hasattr(value, "location"), key
    torch.save(mine, __import__("io").BytesIO())
    for index, st in plain["state"].items():
        for key, value in st.items():
            torch.testing.assert_close(mine["state"][index][key], value)
    assert vbob.objects_count() == 0


def test_found_by_review_state_dict_before_touch_brings_state_home(vbob):
    model, opt, _, twin_opt = _trained_on(vbob, torch.optim.Adam, lr=0.05)
    model.get()
    state = opt.state_dict()  # nothing touched the model: state_dict() carries the get out
    torch.testing.assert_close(state["state"][0]["exp_avg"],
                               twin_opt.state_dict()["state"][0]["exp_avg"])


def test_found_by_review_lbfgs_steps_locally_after_get(vbob):
    """found by review: LBFGS's list-valued state (old_dirs, old_stps, ro) stayed remote and
    its first local step after model.get() failed (d6_lbfgs.py)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    losses = []
    for m_, remote in ((model, True), (twin, False)):
        opt = torch.optim.LBFGS(m_.parameters(), lr=0.5, max_iter=3)

        def closure_for(xx, yy, m_=m_, opt=opt):
            def closure():
                opt.zero_grad()
                loss = ((m_(xx) - yy) ** 2).mean()
                loss.backward()
                return loss
            return closure
        if remote:
            m_.send(vbob)
            opt.step(closure_for(x.send(vbob), y.send(vbob)))
            m_.get()
        else:
            opt.step(closure_for(x, y))
        opt.step(closure_for(x, y))  # local
        losses.append(float(((m_(x) - y) ** 2).mean()))
        assert all(not hasattr(v, "location") for st in opt.state.values()
                   for v in st.values() if not isinstance(v, list))
    torch.testing.assert_close(model.weight.detach(), twin.weight.detach())
    assert abs(losses[0] - losses[1]) < 1e-6


def test_found_by_review_swap_tensors_on_a_just_fetched_model(vbob):
    """found by review: torch.utils.swap_tensors on a just-fetched model raised 'Cannot swap
    t1 because it has weakref associated with it' (d2_swap.py)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    model.send(vbob)
    model.get()
    new = nn.Parameter(torch.full((2, 3), 4.0))
    torch.utils.swap_tensors(model.weight, new)
    assert model.weight.detach().equal(torch.full((2, 3), 4.0))
    assert new.detach().equal(w0)  # the swapped-out object got the fetched values
    assert vbob.objects_count() == 0
    model.send(vbob)
    model.get()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    assert model.weight.dtype == torch.float64


def test_found_by_review_move_after_get_goes_worker_to_worker(hook, vbob):
    alice = sy.VirtualWorker(hook, id="alice")
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    model.send(vbob)
    model.get()
    model.move(alice)
    assert model.location is alice and vbob.objects_count() == 0
    model.get()
    assert model.weight.detach().equal(w0) and alice.objects_count() == 0
