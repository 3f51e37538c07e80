"""Encrypted-model API gaps found by review (helper D): an optimizer built before sharing,
conv2d on unbatched input, dropout and batch normalisation in eval mode, and clear errors for
sending a shared model, fix_precision() on a sent model, boolean-mask indexing of a shared
tensor and `.get().float_precision()` after `ptr.fix_precision().share(...)`. In-process
workers only."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

import fedmq
from smpc_helpers import make_parties


@pytest.fixture
def parties(hook):
    (bob, alice), provider = make_parties(hook, 2)
    return bob, alice, provider


def _share(value, parties, requires_grad=False):
    bob, alice, provider = parties
    return value.fix_precision().share(bob, alice, crypto_provider=provider,
                                       requires_grad=requires_grad)


def _decode(value):
    return value.copy().get().float_precision()


# -- 1. an optimizer built before sharing -----------------------------------------------------

def test_found_by_review_optimizer_built_before_share_refuses_to_step(parties):
    torch.manual_seed(11)
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.05)
    model.fix_precision().share(*parties[:2], crypto_provider=parties[2], requires_grad=True)
    x, y = _share(torch.randn(5, 3), parties), _share(torch.randn(5, 2), parties)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match=r"after sharing.*model\.parameters\(\).*"
                                         r"\.fix_precision\(\)"):
        opt.step()
    with pytest.raises(ValueError, match=r"after sharing"):
        opt.fix_precision()


def test_found_by_review_optimizer_built_between_fix_precision_and_share(parties):
    model = nn.Linear(2, 2).fix_precision(requires_grad=True)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.share(*parties[:2], crypto_provider=parties[2])
    with pytest.raises(ValueError, match=r"after sharing"):
        opt.fix_precision()


def test_found_by_review_optimizer_built_before_float_precision_round_trip():
    model = nn.Linear(2, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.fix_precision().float_precision()
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match=r"would train nothing"):
        opt.step()


def test_optimizer_built_after_share_trains_and_plain_training_is_untouched(parties):
    torch.manual_seed(12)
    net = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    model = copy.deepcopy(net).fix_precision().share(*parties[:2], crypto_provider=parties[2],
                                                     requires_grad=True)
    opt = optim.SGD(model.parameters(), lr=0.1).fix_precision()
    opt.zero_grad()
    F.mse_loss(model(_share(x, parties)), _share(y, parties)).backward()
    opt.step()
    ref = copy.deepcopy(net)
    ref_opt = optim.SGD(ref.parameters(), lr=0.1)  # the step pre-hook is installed by now
    ref_opt.zero_grad()
    F.mse_loss(ref(x), y).backward()
    ref_opt.step()
    assert (_decode(model.weight) - ref.weight.detach()).abs().max() < 0.01
    assert (ref.weight.detach() - net.weight.detach()).abs().max() > 0.01


# -- 2. conv2d on an unbatched (C, H, W) input ---------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_found_by_review_conv2d_unbatched_shape(parties, bias):
    torch.manual_seed(13)
    conv = nn.Conv2d(2, 3, 2, padding=1, bias=bias)
    x = torch.randn(2, 4, 4)
    ref = conv(x).detach()
    local = copy.deepcopy(conv).fix_precision()(x.fix_precision()).float_precision()
    shared_model = copy.deepcopy(conv).fix_precision().share(*parties[:2],
                                                             crypto_provider=parties[2])
    shared = shared_model(_share(x, parties)).get().float_precision()
    public_input = shared_model(x).get().float_precision()
    for out in (local, shared, public_input):
        assert out.shape == ref.shape == (3, 5, 5)
        assert (out - ref).abs().max() < 0.02


def test_found_by_review_conv2d_unbatched_gradients(parties):
    torch.manual_seed(14)
    conv = nn.Conv2d(1, 2, 3, stride=2)
    x = torch.randn(1, 7, 7)
    model = copy.deepcopy(conv).fix_precision().share(*parties[:2], crypto_provider=parties[2],
                                                      requires_grad=True)
    xs = _share(x, parties, requires_grad=True)
    out = model(xs)
    assert out.shape == (2, 3, 3)
    (out * out).sum().backward()
    ref_x = x.clone().requires_grad_()
    (conv(ref_x) ** 2).sum().backward()
    assert (_decode(xs.grad) - ref_x.grad).abs().max() < 0.05
    assert (_decode(model.weight.grad) - conv.weight.grad).abs().max() < 0.1
    assert (_decode(model.bias.grad) - conv.bias.grad).abs().max() < 0.05


# -- 3. dropout and batch normalisation in eval mode ----------------------------------------------

def test_found_by_review_dropout_eval_is_identity(parties):
    torch.manual_seed(15)
    net = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.4), nn.Dropout2d(0.2), nn.ReLU()).eval()
    x = torch.randn(3, 4)
    model = copy.deepcopy(net).fix_precision().share(*parties[:2], crypto_provider=parties[2])
    assert (model(_share(x, parties)).get().float_precision() - net(x)).abs().max() < 0.01
    local = copy.deepcopy(net).fix_precision(requires_grad=True)
    assert (local(x.fix_precision()).float_precision() - net(x)).abs().max() < 0.01
    fp = x.fix_precision()
    assert F.dropout(fp, p=0.0).float_precision().equal(fp.float_precision())


def test_found_by_review_dropout_training_is_refused_clearly(parties):
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    model.fix_precision().share(*parties[:2], crypto_provider=parties[2], requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"model\.eval\(\)"):
        model(_share(torch.randn(2, 4), parties, requires_grad=True))
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(torch.ones(2).fix_precision(), p=1.5, training=False)


def _trained_bn(bn_layer, first, shape):
    torch.manual_seed(16)
    net = nn.Sequential(first, bn_layer)
    for _ in range(3):
        net(torch.randn(*shape) * 2 + 0.5)
    return net.eval()


@pytest.mark.parametrize("layers,shape", [
    (lambda: (nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), (4, 1, 6, 6)),
    (lambda: (nn.Linear(4, 3), nn.BatchNorm1d(3)), (6, 4)),
])
def test_found_by_review_batch_norm_eval(parties, layers, shape):
    first, bn = layers()
    net = _trained_bn(bn, first, shape)
    with torch.no_grad():
        net[1].weight.mul_(1.5)
        net[1].bias.add_(0.25)
    x = torch.randn(2, *shape[1:])
    ref = net(x).detach()
    local = copy.deepcopy(net).fix_precision()(x.fix_precision()).float_precision()
    model = copy.deepcopy(net).fix_precision().share(*parties[:2], crypto_provider=parties[2])
    assert isinstance(model[1].running_var, torch.Tensor)  # buffers stay public
    shared = model(_share(x, parties)).get().float_precision()
    for out in (local, shared):
        assert out.shape == ref.shape
        assert (out - ref).abs().max() < 0.03


def test_found_by_review_batch_norm_eval_gradients(parties):
    net = _trained_bn(nn.BatchNorm2d(2), nn.Conv2d(1, 2, 3), (4, 1, 6, 6))
    x = torch.randn(2, 1, 6, 6)
    model = copy.deepcopy(net).fix_precision().share(*parties[:2], crypto_provider=parties[2],
                                                     requires_grad=True)
    model.eval()
    xs = _share(x, parties, requires_grad=True)
    model(xs).sum().backward()
    ref_x = x.clone().requires_grad_()
    net(ref_x).sum().backward()
    assert (_decode(xs.grad) - ref_x.grad).abs().max() < 0.05
    assert (_decode(model[1].bias.grad) - net[1].bias.grad).abs().max() < 0.05
    assert (_decode(model[1].weight.grad) - net[1].weight.grad).abs().max() < 0.15


def test_found_by_review_batch_norm_training_is_refused_with_the_fold_recipe(parties):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    net.fix_precision().share(*parties[:2], crypto_provider=parties[2], requires_grad=True)
    with pytest.raises(NotImplementedError, match=r"eval.*running_var"):
        net(_share(torch.randn(2, 1, 5, 5), parties, requires_grad=True))


# -- 4. clear errors ------------------------------------------------------------------------------

def test_found_by_review_send_shared_or_fixed_model_is_refused(hook, parties):
    dave = fedmq.VirtualWorker(hook, id="dave")
    model = nn.Linear(3, 2).fix_precision().share(*parties[:2], crypto_provider=parties[2],
                                                  requires_grad=True)
    with pytest.raises(ValueError, match="shares stay with"):
        model.send(dave)
    with pytest.raises(ValueError, match="shares stay with"):
        model.move(dave)
    with pytest.raises(ValueError, match=r"float_precision\(\) first"):
        nn.Linear(3, 2).fix_precision().send(dave)
    plain = nn.Linear(3, 2).send(dave)  # plain models still travel
    assert plain.get().weight.shape == (2, 3)


def test_found_by_review_fix_precision_of_a_sent_model_is_refused(hook, parties):
    dave = fedmq.VirtualWorker(hook, id="dave")
    model = nn.Linear(3, 2)
    model.send(dave)
    with pytest.raises(ValueError, match=r"sent to 'dave'.*model\.get\(\)"):
        model.fix_precision()
    with pytest.raises(ValueError, match=r"sent to 'dave'"):
        model.share(*parties[:2], crypto_provider=parties[2])
    model.get()
    model.fix_precision()  # back home: works
    assert model.weight.float_precision().shape == (2, 3)


def test_found_by_review_boolean_mask_index_of_shared_tensor(parties):
    x = torch.tensor([[0.5, -1.25, 2.0], [3.0, 0.75, -0.5]])
    shared = _share(x, parties)
    mask = torch.tensor([False, True, True])
    for index in (mask, (slice(None), mask), [True, False]):
        with pytest.raises(TypeError, match=r"nonzero\(as_tuple=True\)"):
            shared[index]
    out = shared[:, mask.nonzero(as_tuple=True)[0]].get().float_precision()
    assert torch.allclose(out, x[:, mask], atol=1e-3)


def test_found_by_review_pointer_share_get_float_precision_says_get_get(hook, parties):
    dave = fedmq.VirtualWorker(hook, id="dave")
    ptr = torch.tensor([1.5, -2.0]).send(dave)
    value = ptr.fix_precision().share(*parties[:2], crypto_provider=parties[2]).get()
    with pytest.raises(ValueError, match=r"ptr\.get\(\)\.get\(\)\.float_precision\(\)"):
        value.float_precision()
    assert value.get().float_precision().tolist() == [1.5, -2.0]
