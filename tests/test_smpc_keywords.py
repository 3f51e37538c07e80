"""PySyft 0.2's keywords on `fix_precision`/`fix_prec`/`share`/`get` of local values, pointers
and modules: each honoured or refused with a TypeError naming it and what is accepted, none
ignored (fedmq/smpc/keywords.py); clear errors for parties and providers that are not workers;
`requires_grad` on a shared value; bools refused. Each case was found by review (repro scripts
/work/R1/repro/k2_share_kw.py, s1_inputs.py and /work/R2/repro/kw_ignored.py,
small_shape_api.py).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fedmq
from fedmq.smpc import AdditiveSharingTensor, FixedPrecisionTensor
from fedmq.smpc.autograd import AutogradTensor


@pytest.fixture
def parties(hook):
    return (fedmq.VirtualWorker(hook, id="bob"), fedmq.VirtualWorker(hook, id="alice"),
            fedmq.VirtualWorker(hook, id="james"))


X = torch.tensor([1.23456, -2.5])


# -- fix_precision ------------------------------------------------------------------------------

def test_found_by_review_a_misspelt_fix_precision_keyword_is_refused_not_ignored(hook):
    # fix_precision(precison_fractional=5) silently encoded at 3 digits
    for method in ("fix_precision", "fix_prec"):
        with pytest.raises(TypeError, match="unexpected keyword argument 'precison_fractional'; "
                                            "it accepts base=, precision_fractional=, dtype="):
            getattr(X, method)(precison_fractional=5)
    assert torch.allclose(X.fix_precision(precision_fractional=5).float_precision(), X,
                          atol=1e-5)
    assert X.fix_precision(base=2, precision_fractional=16).child.tolist() == [80908, -163840]


@pytest.mark.parametrize("keyword, value", [
    ("dtype", "long"), ("field", None), ("field", 2 ** 64), ("field", FixedPrecisionTensor.field),
    ("kappa", 1), ("no_wrap", False), ("storage", "auto"), ("storage", "normal"),
    ("field_type", "int100")])
def test_pysyft_fix_precision_keywords_at_fedmqs_values_are_accepted(hook, keyword, value):
    fp = X.fix_precision(**{keyword: value})
    assert torch.equal(fp.child, X.fix_precision().child)


@pytest.mark.parametrize("keyword, value, accepted", [
    ("dtype", "int", "dtype=None or 'long' only"),
    ("field", 2 ** 32, "field=None or 2\\*\\*64 only"),
    ("field", 2 ** 62, "field=None or 2\\*\\*64 only"), ("kappa", 2, "kappa=1 only"),
    ("kappa", True, "kappa=1 only"), ("no_wrap", True, "no_wrap=False only"),
    ("storage", "crt", "storage='auto' or 'normal' only"),
    ("storage", "large", "storage='auto' or 'normal' only"),
    ("field_type", "int64", "field_type='int100' only")])
def test_found_by_review_fix_precision_keywords_fedmq_cannot_honour_are_refused(
        hook, parties, keyword, value, accepted):
    bob = parties[0]
    # local tensor, pointer and module: the same refusal, before anything is encoded or sent
    for call in (lambda: X.fix_precision(**{keyword: value}),
                 lambda: X.send(bob).fix_precision(**{keyword: value}),
                 lambda: nn.Linear(2, 1).fix_precision(**{keyword: value})):
        with pytest.raises(TypeError, match=f"{keyword}={value!r} is refused .*It accepts "
                                            f"{accepted}"):
            call()
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError):
        model.fix_precision(**{keyword: value})
    assert all(type(p) is nn.Parameter for p in model.parameters())  # nothing was encoded


def test_found_by_review_a_module_fix_precision_typo_is_refused(hook):
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="Module.fix_precision\\(\\) got an unexpected keyword "
                                        "argument 'precison_fractional'"):
        model.fix_precision(precison_fractional=2)
    assert len(list(model.parameters())) == 2


# -- share ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword, value", [
    ("protocol", "snn"), ("field", 2 ** 64), ("field", None), ("dtype", "long"),
    ("dtype", None), ("no_wrap", False)])
def test_pysyft_share_keywords_at_fedmqs_values_are_accepted(hook, parties, keyword, value):
    bob, alice, james = parties
    s = X.fix_precision().share(bob, alice, crypto_provider=james, **{keyword: value})
    assert type(s.child) is AdditiveSharingTensor
    assert torch.allclose((s * s).get().float_precision(), X * X, atol=1e-2)
    ints = torch.tensor([5, -6]).share(bob, alice, crypto_provider=james, **{keyword: value})
    assert torch.equal(ints.get(), torch.tensor([5, -6]))


@pytest.mark.parametrize("keyword, value, accepted", [
    ("field", 2 ** 32, "field=None or 2\\*\\*64 only"), ("protocol", "fss", "protocol='snn'"),
    ("protocol", "falcon", "protocol='snn'"), ("dtype", "int", "dtype=None or 'long' only"),
    ("no_wrap", True, "no_wrap=False only")])
def test_found_by_review_share_keywords_fedmq_cannot_honour_are_refused(
        hook, parties, keyword, value, accepted):
    # share(field=2**32), protocol='fss', dtype=, no_wrap= were accepted and ignored
    bob, alice, james = parties
    fp_ptr = X.send(bob).fix_precision()
    for call in (lambda: X.fix_precision().share(bob, alice, crypto_provider=james,
                                                 **{keyword: value}),
                 lambda: torch.tensor([5]).share(bob, alice, crypto_provider=james,
                                                 **{keyword: value}),
                 lambda: X.fix_precision().share(bob, alice, crypto_provider=james,
                                                 requires_grad=True, **{keyword: value}),
                 lambda: fp_ptr.share(bob, alice, crypto_provider=james, **{keyword: value}),
                 lambda: nn.Linear(2, 1).fix_precision().share(
                     bob, alice, crypto_provider=james, **{keyword: value})):
        with pytest.raises(TypeError, match=f"{keyword}={value!r} is refused .*It accepts "
                                            f"{accepted}"):
            call()
    assert (bob.objects_count(), alice.objects_count()) == (1, 0)  # only fp_ptr's encoding


def test_found_by_review_a_misspelt_crypto_provider_is_refused(hook, parties):
    # share(crypto_provder=james) shared with no provider; the first product failed later
    bob, alice, james = parties
    model = nn.Linear(2, 1).fix_precision()
    for call in (lambda: X.fix_precision().share(bob, alice, crypto_provder=james),
                 lambda: torch.tensor([5, 6]).share(bob, alice, crypto_provider=james,
                                                    foo=1),
                 lambda: model.share(bob, alice, crypto_provder=james)):
        with pytest.raises(TypeError, match="unexpected keyword argument '(crypto_provder|foo)"
                                            "'; it accepts crypto_provider=, requires_grad=, "
                                            "protocol="):
            call()
    assert (bob.objects_count(), alice.objects_count()) == (0, 0)
    assert all(not v.is_shared for v in (model.weight, model.bias))


def test_found_by_review_shared_values_have_requires_grad(hook, parties):
    # share(..., requires_grad=False).requires_grad raised AttributeError
    bob, alice, james = parties
    plain = X.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=False)
    assert type(plain) is FixedPrecisionTensor and plain.requires_grad is False
    assert plain.child.requires_grad is False and X.fix_precision().requires_grad is False
    tracked = X.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
    assert type(tracked) is AutogradTensor and tracked.requires_grad is True
    with pytest.raises(TypeError, match="requires_grad must be True or False, got 1"):
        X.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=1)
    with pytest.raises(ValueError, match="integer tensors have no gradients"):
        torch.tensor([1]).share(bob, alice, crypto_provider=james, requires_grad=True)


def test_requires_grad_on_a_pointers_share_is_honoured(hook, parties):
    bob, alice, james = parties
    x = torch.tensor([0.5, -1.5])
    value = x.send(bob).fix_precision().share(bob, alice, crypto_provider=james,
                                              requires_grad=True).get()
    assert type(value) is AutogradTensor and value.requires_grad
    loss = (value * value).sum()
    loss.backward()
    assert torch.allclose(value.grad.get().float_precision(), 2 * x, atol=1e-2)
    plain = x.send(bob).fix_precision().share(bob, alice, crypto_provider=james,
                                              requires_grad=False).get()
    assert type(plain) is FixedPrecisionTensor and plain.requires_grad is False


def test_found_by_review_bools_are_refused_rather_than_coming_back_int64(hook, parties):
    bob, alice, james = parties
    flags = torch.tensor([True, False])
    for call in (lambda: flags.share(bob, alice, crypto_provider=james),
                 lambda: flags.send(bob).share(bob, alice, crypto_provider=james)):
        with pytest.raises(ValueError, match="cannot secret-share a torch.bool tensor.*"
                                             "t.long\\(\\)"):
            call()
    back = flags.long().share(bob, alice, crypto_provider=james).get().bool()
    assert torch.equal(back, flags)


def test_pointer_get_takes_pysyfts_pointer_keywords_at_their_defaults(hook, parties):
    bob, alice, james = parties
    shared = X.send(bob).fix_precision().share(bob, alice, crypto_provider=james)
    with pytest.raises(TypeError, match="SharedPointer.get\\(\\): reason='x' is refused"):
        shared.get(reason="x")
    assert type(shared.get(user=None, reason="")) is FixedPrecisionTensor
    fp = X.send(bob).fix_precision()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        fp.get(bogus=1)
    assert torch.equal(fp.get(deregister_ptr=True).child, X.fix_precision().child)


# -- parties --------------------------------------------------------------------------------------

def test_found_by_review_parties_that_are_not_workers_are_named(hook, parties):
    # a string provider raised AttributeError "'str' object has no attribute 'id'"; a
    # string/None/tensor party said only "share() needs distinct workers"
    bob, alice, james = parties
    fp, ptr = X.fix_precision(), X.send(bob).fix_precision()
    for share in (fp.share, ptr.share, torch.tensor([1, 2]).share):
        with pytest.raises(TypeError, match="got str 'alice' as party 2 of 2 \\(pass the worker "
                                            "object, not its id"):
            share(bob, "alice", crypto_provider=james)
        with pytest.raises(TypeError, match="got NoneType None as party 2 of 3"):
            share(bob, None, alice, crypto_provider=james)
        with pytest.raises(TypeError, match="got a Tensor of shape \\(1,\\) as party 1 of 2"):
            share(torch.ones(1), alice, crypto_provider=james)
        with pytest.raises(TypeError, match="crypto_provider is a worker that is none of the "
                                            "parties \\(or None\\), got str 'james' \\(pass the "
                                            "worker object"):
            share(bob, alice, crypto_provider="james")
        with pytest.raises(ValueError, match="distinct workers, got 'bob', 'alice', 'bob' "
                                             "\\('bob' more than once\\)"):
            share(bob, alice, bob, crypto_provider=james)
    with pytest.raises(TypeError, match="got str 'alice' as party 2 of 2"):
        nn.Linear(2, 1).fix_precision().share(bob, "alice", crypto_provider=james)
    assert (bob.objects_count(), alice.objects_count()) == (1, 0)  # only ptr's encoding
