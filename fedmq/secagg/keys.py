"""The key material of SecAgg+ (Bell et al., CCS 2020, after Bonawitz et al., CCS 2017):

    KeyPair.generate()      an X25519 pair (RFC 7748), raw 32-byte public and private keys
    agree(sk, pk, info)     KA.agree: HKDF-SHA256 (RFC 5869) of the X25519 shared secret, 32 bytes;
                            symmetric (agree(a_sk, b_pk) == agree(b_sk, a_pk)); the HKDF is
                            the RFC's two HMACs (`hkdf`: the same bytes as `cryptography`'s
                            HKDF, a fifth of its cost, which counts at 14 agreements a round)
    seal / open_sealed      AE.enc / AE.dec: ChaCha20-Poly1305 (RFC 8439) with a random
                            12-byte nonce prefixed; the associated data binds the context
                            (session, round, sender, receiver), so a ciphertext replayed in
                            another context, or altered by the relay, is refused
    associated_data         that binding, unambiguously encoded

Nothing here is persisted; keys live in the workers' memory only (round states, the channel keys
of `fedmq.secagg.secaggplus`, and here the last 4 096 channel keys' AEADs, `_aead`).
"""
from __future__ import annotations

import functools
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          PublicFormat)

#: bytes of an X25519 key (public or private) and of a derived key
KEY_BYTES = 32
NONCE_BYTES = 12
#: HKDF `info` labels: one key for the AEAD channel (c keys), one for the pairwise mask seed
#: (s keys)
INFO_ENCRYPTION = b"fedmq secagg+ v1 encryption"
INFO_MASK = b"fedmq secagg+ v1 pairwise mask"


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw bytes (`sk`, `pk`: 32 bytes each), with the private key
    object (`private`: what `agree` takes without loading the bytes again, which costs as
    much as the agreement itself)."""
    sk: bytes
    pk: bytes
    private: X25519PrivateKey | None = field(default=None, compare=False, repr=False)

    @classmethod
    def generate(cls) -> "KeyPair":
        key = X25519PrivateKey.generate()
        return cls(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
                   key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), key)


def check_public_key(pk: object, what: str = "public key") -> bytes:
    """`pk` if it is 32 raw bytes, else ValueError naming `what`."""
    if type(pk) is not bytes or len(pk) != KEY_BYTES:
        raise ValueError(f"{what} must be {KEY_BYTES} raw bytes (X25519)")
    return pk


def private_key(sk: bytes) -> X25519PrivateKey:
    """The X25519 private key object of raw bytes `sk` (ValueError if not 32 bytes)."""
    return X25519PrivateKey.from_private_bytes(sk)


def agree(sk: "bytes | X25519PrivateKey", pk: bytes, info: bytes,
          salt: bytes | None = None) -> bytes:
    """HKDF-SHA256(X25519(sk, pk), salt, info) -> 32 bytes; `sk` raw bytes or a private key
    object (`KeyPair.private`, `private_key`). ValueError for a malformed key or a low-order
    public key (an all-zero shared secret)."""
    check_public_key(pk)
    try:
        key = X25519PrivateKey.from_private_bytes(sk) if type(sk) is bytes else sk
        shared = key.exchange(
            X25519PublicKey.from_public_bytes(pk))
    except ValueError as exc:  # low-order point
        raise ValueError(f"key agreement failed: {exc}") from None
    return hkdf(shared, salt, info)


def hkdf(secret: bytes, salt: bytes | None, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of `secret` with `salt` (None: 32 zero bytes) and `info`, 32
    bytes of output: Extract, PRK = HMAC(salt, secret), then one block of Expand,
    T(1) = HMAC(PRK, info || 0x01)."""
    prk = hmac.digest(bytes(KEY_BYTES) if salt is None else salt, secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _field(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


@functools.lru_cache(maxsize=4096)
def _name(name: str) -> bytes:
    return _field(name.encode())


@functools.lru_cache(maxsize=256)
def _context(session: str, round: int) -> bytes:
    return b"".join(_field(part) for part in (b"fedmq secagg+ shares", session.encode(),
                                              str(round).encode()))


def session_salt(session: str) -> bytes:
    """The HKDF salt of a channel key, which serves every round of `session`."""
    return _field(b"fedmq secagg+ channel") + _field(session.encode())


def associated_data(session: str, round: int, sender: str, receiver: str) -> bytes:
    """The AEAD associated data of a share ciphertext: length-prefixed UTF-8 fields."""
    return _context(session, round) + _name(sender) + _name(receiver)


@functools.lru_cache(maxsize=256)
def mask_salt(session: str, round: int) -> bytes:
    """The HKDF salt of the round's pairwise mask seeds: `associated_data` with no sender and
    no receiver."""
    return associated_data(session, round, "", "")


#: the AEAD of a channel key (one per neighbour, used every round: built once)
_aead = functools.lru_cache(maxsize=4096)(ChaCha20Poly1305)


def seal(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """nonce (12 random bytes) + ChaCha20-Poly1305(key, nonce, plaintext, ad)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _aead(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """The plaintext of `seal`'s output; ValueError if it was altered, is for another
    context (ad) or key, or is malformed."""
    if type(ciphertext) is not bytes or len(ciphertext) < NONCE_BYTES + 16:
        raise ValueError("malformed ciphertext")
    try:
        return _aead(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], ad)
    except InvalidTag:
        raise ValueError("ciphertext failed authentication") from None
