"""Secure multi-party computation for fedmq (PySyft 0.2's fixed precision and SPDZ-style
additive sharing, with the fixes listed in /work/shared/reference/pysyft-0.2-notes.md C1-C4).

The modules, bottom to top (each imports only modules listed before it; the `layers` contract
in pyproject.toml checks it):
    layers.py           F.dropout / F.batch_norm in eval mode on fixed-point values (by
                        their methods only; dispatch.py and autograd.py route to them)
    messages.py         wire records 90-99 (Deal, DealRequest, LocalStep,
                        ShareRequest, FixPrecision)
    ring.py             the ring Z/2^64Z: CSPRNG elements, additive/XOR splits, ring products
    keywords.py         PySyft 0.2's fix_precision/share keywords: honoured or refused
                        (TypeError naming what is accepted), never ignored
    dispatch.py         SmpcTensor, base of the two tensor types: size/dim/numel, and torch
                        functions on them (torch.add, F.linear, t - x, ...) -> their methods
    shares.py           the coordinator's pointers to shares: an op on every share (remote),
                        openings (open_shares), cat/stack, the round counter
    provider.py         the crypto provider (abc), its worker handler, the primitive store
    local_steps.py      protocol rounds: one LocalStep message per party, its allowlist
    truncation.py       division by a public int / fixed-point rescaling (two parties: local,
                        SecureML; more: ABY3 pairs; an exact variant for the approximations,
                        truncate_exact)
    beaver.py           products (mul, matmul, conv2d) with Beaver triples, fused truncation
    comparison.py       < > <= >= ==, relu, abs, max/argmax/min (edaBits + BIT-LT + B2A)
    additive.py         AdditiveSharingTensor: share()/get(), linear ops per share; its
                        products, divisions and comparisons call the protocols above
    approximations.py   exp, reciprocal, log, sigmoid, tanh, softmax, log_softmax of
                        fixed-point values (CrypTen's published approximations), by methods only
    fixed_precision.py  FixedPrecisionTensor: fix_precision()/float_precision(), int64 ring
    remote.py           pointers to encrypted values: ptr.fix_precision() / ptr.share() run
                        where the value lives (the holder splits and sends the shares)
    gradients.py        the graph's nodes (MulBackward, ...): each op's gradient on fixed point
    autograd.py         AutogradTensor: gradients over fixed-precision (shared) values
    optim.py            optimizer.fix_precision(): SGD steps on fixed-precision parameters
    hooks.py            the extension's table: methods TorchHook installs, worker handlers
The protocols (truncation, beaver, comparison) take and return AdditiveSharingTensors but use
only their methods, never the class. Independent of each other: messages, ring, dispatch and
keywords (dispatch uses layers); local_steps and truncation; beaver and comparison.
"""
from fedmq.smpc.additive import AdditiveSharingTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor
from fedmq.smpc.provider import CryptoProvider, PrimitiveStore, TrustedDealer, primitive_store
from fedmq.smpc.ring import FIELD

__all__ = ["FIELD", "AdditiveSharingTensor", "CryptoProvider", "FixedPrecisionTensor",
           "PrimitiveStore", "TrustedDealer", "primitive_store"]
