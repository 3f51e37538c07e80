"""Every PySyft 0.2 keyword of `send`, `move`, `get`, `copy` (tensors, pointers, models) is
honoured or refused with a TypeError that says why — none is silently ignored
(fedmq/pointers/keywords.py). And PySyft's `.location` / `.id_at_location` on sent
parameters and `.location` on sent models."""
from __future__ import annotations

import gc
import pathlib

import pytest
import torch
from torch import nn

import fedmq as sy

ROOT = pathlib.Path(sy.__file__).parent

# keyword -> a value other than PySyft's default, which fedmq refuses
REFUSED_SEND = {"inplace": True, "user": "alice", "local_autograd": True,
                "preinitialize_grad": True, "no_wrap": True}
DEFAULTS_SEND = {"inplace": False, "user": None, "local_autograd": False,
                 "preinitialize_grad": False, "no_wrap": False, "garbage_collect_data": True,
                 "requires_grad": False}


@pytest.fixture
def bob(hook):
    return sy.VirtualWorker(hook, id="bob")


@pytest.fixture
def alice(hook):
    return sy.VirtualWorker(hook, id="alice")


def test_no_keyword_catch_all_is_left():
    for path in [ROOT / "module.py", ROOT / "hook.py", *(ROOT / "pointers").glob("*.py"),
                 *(ROOT / "workers").glob("*.py")]:
        text = path.read_text()
        assert "**_ignored" not in text, path


@pytest.mark.parametrize("key", sorted(REFUSED_SEND))
@pytest.mark.parametrize("what", ["tensor", "pointer", "model"])
def test_send_refuses_non_default_values(key, what, bob, alice):
    target = {"tensor": lambda: torch.ones(2), "pointer": lambda: torch.ones(2).send(alice),
              "model": lambda: nn.Linear(2, 1)}[what]()
    with pytest.raises(TypeError, match=f"{key}=.* is refused") as err:
        target.send(bob, **{key: REFUSED_SEND[key]})
    assert f"{key}={DEFAULTS_SEND[key]!r}" in str(err.value)  # says what is accepted
    assert bob.objects_count() == 0  # refused before anything was sent


@pytest.mark.parametrize("what", ["tensor", "pointer", "model"])
def test_send_accepts_every_keyword_at_its_default(what, bob, alice):
    target = {"tensor": lambda: torch.ones(2), "pointer": lambda: torch.ones(2).send(alice),
              "model": lambda: nn.Linear(2, 1)}[what]()
    extra = {"force_send": False} if what == "model" else {}
    sent = target.send(bob, **DEFAULTS_SEND, **extra)
    assert bob.objects_count() == (2 if what == "model" else 1)
    assert sent is not None


@pytest.mark.parametrize("what", ["tensor", "pointer", "model"])
def test_unknown_keywords_raise_type_error(what, bob, alice):
    target = {"tensor": lambda: torch.ones(2), "pointer": lambda: torch.ones(2).send(alice),
              "model": lambda: nn.Linear(2, 1)}[what]()
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'.*accepts"):
        target.send(bob, colour="red")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        target.move(bob, colour="red")


def test_garbage_collect_data_false_is_honoured(bob, alice):
    kept = torch.ones(2).send(bob, garbage_collect_data=False)
    assert kept.garbage_collect_data is False
    dropped = torch.ones(3).send(bob)
    del kept, dropped
    gc.collect()
    assert bob.objects_count() == 1  # only the one sent with garbage_collect_data=False
    pointer = torch.ones(2).send(alice).send(bob, garbage_collect_data=False)
    assert pointer.garbage_collect_data is False
    del pointer
    gc.collect()
    assert bob.objects_count() == 2


def test_model_garbage_collect_data_false_is_honoured(bob):
    model = nn.Linear(2, 1).send(bob, garbage_collect_data=False)
    assert bob.objects_count() == 2
    del model
    gc.collect()
    assert bob.objects_count() == 2
    other = nn.Linear(2, 1).send(bob)
    del other
    gc.collect()
    assert bob.objects_count() == 2  # the default model's tensors were deleted


def test_model_send_refuses_requires_grad_and_force_send(bob):
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="requires_grad=True is refused"):
        model.send(bob, requires_grad=True)
    with pytest.raises(TypeError, match="force_send=True is refused"):
        model.send(bob, force_send=True)
    with pytest.raises(TypeError, match="requires_grad must be True or False"):
        model.send(bob, requires_grad=1)
    assert bob.objects_count() == 0


def test_pointer_send_refuses_requires_grad(bob, alice):
    ptr = torch.ones(2).send(alice)
    with pytest.raises(TypeError, match="use ptr.move"):
        ptr.send(bob, requires_grad=True)


def test_tensor_send_requires_grad_is_honoured(bob):
    x = torch.ones(3)
    ptr = x.send(bob, requires_grad=True)
    assert ptr.requires_grad  # the worker's copy is a leaf that requires grad
    (ptr * 2).sum().backward()
    assert torch.equal(ptr.grad.get(), torch.full((3,), 2.0))


def test_get_keywords(bob):
    ptr = torch.ones(2).send(bob)
    for key, value in (("user", "alice"), ("reason", "please"), ("deregister_ptr", False),
                       ("inplace", True)):
        with pytest.raises(TypeError, match=f"{key}=.* is refused"):
            ptr.get(**{key: value})
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        ptr.get(colour="red")
    assert torch.equal(ptr.get(user=None, reason="", deregister_ptr=True, inplace=False),
                       torch.ones(2))


def test_model_get_move_copy_take_no_keywords(bob, alice):
    model = nn.Linear(2, 1).send(bob)
    with pytest.raises(TypeError):
        model.move(alice, requires_grad=True)
    with pytest.raises(TypeError):
        model.get(inplace=True)
    with pytest.raises(TypeError):
        model.copy(deep=True)
    with pytest.raises(TypeError):
        torch.ones(2).send(bob).copy(deep=True)
    assert model.location is bob  # nothing happened


def test_local_tensor_move_keywords(bob):
    with pytest.raises(TypeError, match="unexpected keyword argument 'inplace'"):
        torch.ones(2).move(bob, inplace=True)
    ptr = torch.ones(2).move(bob, requires_grad=True)
    assert ptr.requires_grad and ptr.location is bob


# -- .location / .id_at_location -----------------------------------------------------------------

def test_sent_parameters_have_location_and_id_at_location(bob, alice):
    model = nn.Linear(2, 1)
    assert not hasattr(model.weight, "location")  # a local tensor has none, as in PySyft
    assert not hasattr(model.weight, "id_at_location")
    assert not hasattr(model, "location")
    model.send(bob)
    assert model.location is bob
    assert model.weight.location is bob and model.bias.location is bob
    ids = {model.weight.id_at_location, model.bias.id_at_location}
    assert len(ids) == 2 and ids <= set(bob._objects)
    model.move(alice)
    assert model.location is alice and model.weight.location is alice
    assert ids <= set(alice._objects)
    model.get()  # deferred, but the model is home: no location any more
    assert not hasattr(model, "location") and not hasattr(model.weight, "location")
    assert not hasattr(model.weight, "id_at_location")


def test_sent_buffers_have_location(bob):
    model = nn.BatchNorm1d(3).send(bob)
    assert model.running_mean.location is bob
    assert model.running_mean.id_at_location in bob._objects


def test_a_model_attribute_named_location_is_kept(bob):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.location = "kitchen"
            self.fc = nn.Linear(2, 1)

    net = Net()
    assert net.location == "kitchen"
    net.send(bob)
    assert net.location == "kitchen" and net.fc.location is bob
    del net.location
    assert net.location is bob


def test_seed_pattern_model_send_data_location(bob):
    """Seed §4: `model.send(data.location)`."""
    data = torch.ones(1, 2).send(bob)
    model = nn.Linear(2, 1)
    model.send(data.location)
    assert model.location is data.location is bob


def test_model_garbage_collect_data_false_when_already_sent_and_after_move(bob, alice):
    model = nn.Linear(2, 1).send(bob)
    model.send(bob, garbage_collect_data=False)  # already there: the keyword still applies
    model.move(alice)
    assert alice.objects_count() == 2
    del model
    gc.collect()
    assert alice.objects_count() == 2


def test_models_still_trace_and_script_with_the_location_property(bob):
    """`nn.Module.location` is a property fedmq installs; TorchScript compiles every property of
    a module it traces or scripts, and this one (Python bookkeeping) failed to compile: every
    torch.jit.trace / torch.jit.script of a model broke once the hook was loaded."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 1, 6, 6)
    traced = torch.jit.trace(model, x)
    scripted = torch.jit.script(model)
    assert torch.equal(traced(x), model(x)) and torch.equal(scripted(x), model(x))
    model.send(bob)
    assert model.location is bob  # the property still works for Python
    model.get()
