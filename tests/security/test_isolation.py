"""The trust boundary, tried as an attacker would (issue: "Trust boundary"), on both transports:
a stranger with a valid login, a granted scientist and a coordinator against a worker holding
a data owner's private data (tests/security/conftest.py builds the world).

Every refusal is checked for what it says, and the owner's data is checked unchanged after
each attack.
"""
from __future__ import annotations

import secrets

import pytest
import torch

import fedmq
from fedmq import errors, messages as m, serde
from fedmq.fl.coordinator import initial_weights
from fedmq.fl.messages import Evaluate, Fit, FitRes


def owner_data(world) -> torch.Tensor:
    """The private data as the owner reads it now."""
    return world.client("owner").call(m.GetRequest([world.data_id], delete=False))[0]


def assert_data_intact(world) -> None:
    assert torch.equal(owner_data(world), world.data)


def refusal(world, who, message):
    """The ObjectNotFoundError text `who` gets for `message`."""
    with pytest.raises(errors.ObjectNotFoundError) as info:
        world.client(who).call(message)
    return str(info.value)


# -- a stranger --------------------------------------------------------------------------------

def test_a_stranger_finds_lists_and_counts_nothing(world):
    mallory = world.client("mallory")
    assert mallory.search([]) == []
    assert mallory.search(["#data"]) == []
    assert mallory.search([world.data_id]) == []
    assert mallory.call(m.ListObjects()) == {}
    assert mallory.objects_count() == 0
    assert mallory.call(m.WorkerStats())["objects"] == 0
    assert world.client("owner").objects_count() == 2


@pytest.mark.parametrize("message", [
    lambda i: m.GetRequest([i], delete=False),
    lambda i: m.GetRequest([i], delete=True),
    lambda i: m.GetRequest([m.Ref(i, "grad")]),
    lambda i: m.Command("Tensor.add", (m.Ref(i), 1), {}, [], reply=True),
    lambda i: m.Command("Tensor.fill_", (m.Ref(i), 9), {}, [secrets.randbits(64)]),
    lambda i: m.ForwardObjects([i], "sec_elsewhere"),
])
def test_a_stranger_cannot_get_use_or_modify_the_data_and_learns_nothing(world, message):
    """Known ids (leaked, guessed) do not help: the answer is word for word the one for an id
    never used, so existence does not leak either."""
    unused = secrets.randbits(127)
    said = refusal(world, "mallory", message(world.data_id))
    assert said == refusal(world, "mallory", message(unused)).replace(str(unused),
                                                                      str(world.data_id))
    assert_data_intact(world)


def test_a_stranger_cannot_replace_delete_or_clear_the_data(world):
    mallory = world.client("mallory")
    fake = torch.zeros(24, 1, 28, 28)
    mallory.call(m.ObjectMessage([m.StoredObject(world.data_id, fake, ["#data", "#train"])]))
    mallory.call(m.DeleteObjects([world.data_id, world.target_id]))
    mallory.call(m.ClearObjects())
    assert_data_intact(world)
    assert world.client("owner").objects_count() == 2
    # mallory's "replacement" is hers alone: the owner and the scientist never see it
    assert [p.id_at_location for p in world.client("sci").search(["#data"])] == [world.data_id]


def test_clients_are_isolated_from_each_other(world):
    sci, mallory = world.client("sci"), world.client("mallory")
    secret = torch.tensor([3.0, 1.0, 4.0]).tag("#mine").send(sci)
    sci.flush()
    assert mallory.search(["#mine"]) == [] and mallory.call(m.ListObjects()) == {}
    with pytest.raises(errors.ObjectNotFoundError):
        mallory.call(m.GetRequest([secret.id_at_location]))
    mallory.call(m.DeleteObjects([secret.id_at_location]))
    mallory.call(m.ClearObjects())
    assert torch.equal(secret.get(), torch.tensor([3.0, 1.0, 4.0]))


def test_fit_and_evaluate_only_from_the_coordinator(world):
    weights = initial_weights("mnist-logreg", seed=1)
    config = {"batch_size": 8, "num_batches": 2, "optimizer": "sgd",
              "optimizer_args": {"lr": 0.1}, "loss": "nll", "seed": 1}
    for who in ("mallory", "sci"):
        with pytest.raises(fedmq.AccessDeniedError, match="may not send Fit"):
            world.client(who).call(Fit(1, "mnist-logreg", weights, config))
        with pytest.raises(fedmq.AccessDeniedError, match="may not send Evaluate"):
            world.client(who).call(Evaluate(1, "mnist-logreg", weights, {"batch_size": 8,
                                                                         "split": "train"}))
    res = world.client("coord").call(Fit(1, "mnist-logreg", weights, config))
    assert isinstance(res, FitRes) and res.status == "ok" and res.num_examples == 16
    # the coordinator got the update, and nothing else: it cannot see the data itself
    assert world.client("coord").search([]) == []
    with pytest.raises(errors.ObjectNotFoundError):
        world.client("coord").call(m.GetRequest([world.data_id]))


@pytest.mark.parametrize("claim,says", [("owner", "may not act on behalf of the data owner"),
                                         ("sci", "--grant worker:")])
def test_acting_for_another_principal_needs_a_peer_grant(world, claim, says):
    """A hand-made envelope claiming to forward for the owner, or for a scientist, from a
    stranger."""
    mallory = world.client("mallory")
    frame = serde.encode(m.Envelope(m.WIRE_VERSION, "sec", m.GetRequest([world.data_id]),
                                    on_behalf=world.names[claim]))
    reply = mallory.engine.start_frame(mallory.id, frame, "GetRequest").reply(30)
    assert reply.value is None and reply.error.code == "access_denied"
    assert "may not act on behalf of" in reply.error.message and says in reply.error.message
    assert_data_intact(world)


# -- a scientist ------------------------------------------------------------------------------

def test_a_scientist_finds_and_computes_but_release_none_keeps_everything_in(world):
    sci = world.client("sci")
    found = sci.search(["#data", "#train"])
    assert [p.id_at_location for p in found] == [world.data_id]
    data = found[0]
    mean = data.mean()  # runs on the worker
    assert mean.shape == torch.Size([])
    with pytest.raises(fedmq.AccessDeniedError, match="private data.*--release none"):
        data.copy().get()
    with pytest.raises(fedmq.AccessDeniedError, match="computed from private data"):
        mean.get()
    with pytest.raises(fedmq.AccessDeniedError, match="--release none"):
        mean.item()
    with pytest.raises(fedmq.AccessDeniedError, match="computed from private data"):
        (data * 0).sum().get()  # derived, whatever the arithmetic
    listed = sci.call(m.ListObjects())  # the data described, what was computed from it not
    assert isinstance(listed[world.data_id], m.PointerRef)
    assert all(isinstance(v, m.PointerRef) or v == "<private: computed from private data>"
               for v in listed.values())
    assert_data_intact(world)


@pytest.mark.parametrize("attack", [
    lambda d, own: d.add_(1),
    lambda d, own: d.fill_(0),
    lambda d, own: d.__setitem__(0, 0.0),
    lambda d, own: d[0].mul_(0),  # a view of the data
    lambda d, own: torch.add(own, 1, out=d),
    lambda d, own: torch.nn.functional.relu(d, inplace=True),
    lambda d, own: d.requires_grad_(),
    lambda d, own: setattr(own, "data", d) or own.zero_(),  # alias first, then write
])
def test_a_scientist_cannot_modify_the_data_in_place(world, attack):
    sci = world.client("sci")
    data = sci.search(["#data", "#train"])[0]
    own = torch.ones(24, 1, 28, 28).send(sci)
    with pytest.raises(fedmq.AccessDeniedError, match="data owner's private data|only the owner"):
        attack(data, own)
        sci.flush()
        sci.objects_count()  # a sync point: pipelined errors are raised here
    assert_data_intact(world)


def test_the_owner_keeps_full_control(world):
    owner = world.client("owner")
    data = owner.search(["#data", "#train"])[0]
    assert torch.equal((data * 2).get(), world.data * 2)


def test_quota_refuses_a_principal_past_its_bytes_and_disturbs_nobody(world):
    mallory, sci = world.client("mallory"), world.client("sci")
    keep = torch.zeros(512 * 1024).send(mallory)  # 2 MiB of the 4 MiB quota
    mallory.flush()
    with pytest.raises(fedmq.QuotaExceededError, match="quota"):
        big = torch.zeros(600 * 1024).send(mallory)  # 2.3 MiB more
        mallory.objects_count()
    assert mallory.objects_count() == 1
    # another principal's quota is its own
    other = torch.zeros(512 * 1024).send(sci)
    assert sci.objects_count() == 1 and other.shape == (512 * 1024,)
    del keep, big
