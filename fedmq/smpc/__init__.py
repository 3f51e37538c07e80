"""Secure multi-party computation for fedmq (PySyft 0.2's fixed precision and SPDZ-style
additive sharing, with the fixes listed in /work/shared/reference/pysyft-0.2-notes.md C1-C4).

    fixed_precision.py  FixedPrecisionTensor: fix_precision()/float_precision(), int64 ring
    additive.py         AdditiveSharingTensor: share()/get(), linear ops per share
    beaver.py           products (mul, matmul, conv2d) with Beaver triples, fused truncation
    truncation.py       division by a public int / fixed-point rescaling (ABY3 pairs)
    comparison.py       < > <= >= ==, relu, abs, max/argmax/min (edaBits + BIT-LT + B2A)
    local_steps.py      protocol rounds: one LocalStep message per party, its allowlist
    provider.py         the crypto provider (abc), its worker handler, the primitive store
    messages.py         wire records 90-99 (Deal, DealRequest, LocalStep)
    hooks.py            methods TorchHook installs; torch functions on these types
"""
from fedmq.smpc.additive import FIELD, AdditiveSharingTensor
from fedmq.smpc.fixed_precision import FixedPrecisionTensor
from fedmq.smpc.provider import CryptoProvider, PrimitiveStore, TrustedDealer, primitive_store

__all__ = ["FIELD", "AdditiveSharingTensor", "CryptoProvider", "FixedPrecisionTensor",
           "PrimitiveStore", "TrustedDealer", "primitive_store"]
