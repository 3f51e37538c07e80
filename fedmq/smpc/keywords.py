"""PySyft 0.2's keyword arguments to `fix_precision` and `share`: each honoured or refused
(TypeError naming the keyword and what is accepted), none silently ignored. Local values and
pointers (fedmq.smpc.remote) check them with the same tables.

PySyft 0.2 signatures (v0.2.9 native.py / precision.py; v0.2.4 in brackets):
    tensor.fix_precision(base=10, precision_fractional=3, dtype="long", field=None, kappa=1,
                         no_wrap=False)          alias fix_prec
                         [v0.2.4: storage="auto", field_type="int100", no_wrap=False]
    tensor.share(*owners, protocol="snn", field=None, dtype=None, crypto_provider=None,
                 requires_grad=False, no_wrap=False)
    module.fix_precision(**the tensor keywords), module.share(*workers, crypto_provider=,
                 protocol=, requires_grad=)

Honoured: `base`, `precision_fractional`, `crypto_provider`, `requires_grad` (by the callers).
Accepted at the values that describe what fedmq does, refused otherwise:
    dtype      "long" or None (PySyft's defaults) - fedmq has one ring, Z/2^64Z held in int64 with
               native wraparound, which is PySyft's dtype="long"; "int" (2**32, int32) is refused
    field      None or 2**64 - the same ring; PySyft 0.2.4's 2**62 or 0.2.9's 2**32 are refused
    protocol   "snn" - PySyft's default: additive shares, Beaver-triple products and a crypto
               provider dealing correlated randomness, the setting fedmq implements (its
               comparisons are edaBits + BIT-LT rather than SecureNN's, same semi-honest
               dealer model); "fss" (AriaNN function secret sharing) and "falcon" (replicated
               sharing) are other protocols and are refused
    kappa      1 (PySyft's default; a statistical parameter of PySyft's comparison, unused here)
    no_wrap    False - a fedmq FixedPrecisionTensor / AdditiveSharingTensor is its own wrapper
    storage    "auto" or "normal" - int64 storage; "crt" and "large" are refused
    field_type "int100" (its default; it only mattered with storage="crt")
Any other keyword (a typo such as `precison_fractional` or `crypto_provder`) raises TypeError
naming the accepted ones.
"""
from __future__ import annotations

from typing import Any

#: the ring's size (as ring.FIELD, repeated here to keep this module free of imports)
_RING = 2 ** 64

#: keyword -> (accepted values, why others are refused, what to do instead)
_AT_VALUES: dict[str, tuple[tuple, str, str]] = {
    "dtype": ((None, "long"), "fedmq computes in one ring, Z/2^64Z in int64 (PySyft's "
              "dtype='long'); there is no 32-bit ring", "leave dtype out"),
    "field": ((None, _RING), "fedmq computes in one ring, Z/2^64Z in int64 (field=2**64)",
              "leave field out; for more headroom lower precision_fractional"),
    "protocol": (("snn",), "fedmq implements one protocol, PySyft's default 'snn' setting "
                 "(additive shares, Beaver triples and comparisons dealt by a crypto "
                 "provider); 'fss' (AriaNN) and 'falcon' (replicated shares) are not it",
                 "leave protocol out"),
    "kappa": ((1,), "it parametrised PySyft's own comparison, which fedmq does not use",
              "leave it out"),
    "no_wrap": ((False,), "a fedmq FixedPrecisionTensor or AdditiveSharingTensor is its own "
                "wrapper, there is none to omit", "leave it out"),
    "storage": (("auto", "normal"), "fedmq stores fixed-point values as int64; there is no "
                "CRT or large-precision storage", "leave storage out; for more headroom lower "
                "precision_fractional"),
    "field_type": (("int100",), "it only mattered with storage='crt', which fedmq does not "
                   "have", "leave it out"),
}

#: the keywords of `fix_precision` besides base= and precision_fractional= (honoured)
FIX_PRECISION = ("dtype", "field", "kappa", "no_wrap", "storage", "field_type")
#: the keywords of `share` besides crypto_provider= and requires_grad= (honoured)
SHARE = ("protocol", "field", "dtype", "no_wrap")


def check(call: str, kwargs: dict[str, Any], accepted: tuple[str, ...],
          honoured: tuple[str, ...] = ()) -> None:
    """Raise TypeError for a keyword of `kwargs` not in `accepted` (naming `honoured` and
    `accepted`) or one given a value fedmq cannot honour (naming the values it takes).
    `call` names the method in messages, e.g. "FixedPrecisionTensor.share"."""
    for key, value in kwargs.items():
        if key not in accepted:
            raise TypeError(f"{call}() got an unexpected keyword argument {key!r}; it accepts "
                            f"{', '.join(f'{k}=' for k in (*honoured, *accepted))} (PySyft "
                            f"0.2's)")
        values, why, instead = _AT_VALUES[key]
        if not any(value is v or (type(value) is type(v) and value == v) for v in values):
            if key == "field" and isinstance(value, int) and not isinstance(value, bool) \
                    and value == _RING:
                continue  # e.g. x.child.field, an int subclass equal to 2**64
            shown = " or ".join("2**64" if v == _RING and v is not None else repr(v)
                                for v in values)
            raise TypeError(f"{call}(): {key}={value!r} is refused ({why}); {instead}. It "
                            f"accepts {key}={shown} only")
