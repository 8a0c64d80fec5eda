"""Encryption at rest for personal data, and a keyed blind index to look it up.

Phones, names, unionids, ... are stored as AES-256-GCM tokens, so a leaked
backup or a stray `SELECT` does not expose them. Equality lookups ("find the
contact with this phone") go through `blind_index`, an HMAC that reveals
nothing without the index key but is deterministic, so it can carry a unique
index.

Token layout (all lengths in bytes)::

    1 version (0x01) | 1 len(key id) | key id (ascii) | 12 nonce | ciphertext || 16 tag

The key id lets keys rotate without a flag day: new values use the current
key, old ones keep decrypting until they are re-encrypted
(`needs_reencryption`). The header and the caller's `context` are
authenticated data, so neither can be altered nor the token moved to another
row or field without decryption failing.

Keys come from the installation secret (`shared.config.secret_key`); changing
that secret makes existing tokens (key "k1") and every blind index unreadable.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import re
from base64 import b64decode
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.config import Settings, secret_key

__all__ = ["CryptoError", "FieldCipher", "get_cipher"]

_VERSION: Final = 1
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_KEY_BYTES: Final = 32
_INDEX_BYTES: Final = 16
_SEPARATOR: Final = "\x1f"
_DERIVED_KEY_ID: Final = "k1"
# Distinct HKDF labels: the encryption key and the index key must be unrelated,
# and neither may equal anything else derived from the same installation secret.
_ENCRYPTION_INFO: Final = b"scrm/field-encryption/k1"
_INDEX_INFO: Final = b"scrm/blind-index/v1"
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_SETTING: Final = "SCRM_ENCRYPTION_KEYS"


class CryptoError(Exception):
    """A token cannot be decrypted: malformed, unknown key id, wrong context or tampered."""


class FieldCipher:
    """Encrypts field values with the current key, decrypts with any known key."""

    def __init__(self, keys: Mapping[str, bytes], current_key_id: str, index_key: bytes) -> None:
        if current_key_id not in keys:
            raise ValueError(f"current key id {current_key_id!r} is not among the keys")
        if len(index_key) != _KEY_BYTES:
            raise ValueError(f"the index key must be {_KEY_BYTES} bytes")
        # AESGCM objects are built once per key: construction is the costly part
        # on the hot path (imports, callbacks), not the encryption itself.
        self._aeads: dict[bytes, AESGCM] = {}
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise ValueError(f"key id {key_id!r} must be 1-32 of A-Z a-z 0-9 _ . -")
            if len(key) != _KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {_KEY_BYTES} bytes")
            self._aeads[key_id.encode("ascii")] = AESGCM(key)
        self._current_id = current_key_id
        self._current = self._aeads[current_key_id.encode("ascii")]
        self._header = bytes([_VERSION, len(current_key_id)]) + current_key_id.encode("ascii")
        # Keyed once; `copy()` per call skips re-hashing the key pads.
        self._index_mac = hmac.new(index_key, digestmod=hashlib.sha256)

    @classmethod
    def from_secret(cls, secret: bytes, extra_keys: str = "") -> FieldCipher:
        """The cipher of an installation: keys derived from its secret, plus rotated-in keys.

        `extra_keys` is the value of SCRM_ENCRYPTION_KEYS ("id:base64key,..."); its first
        entry becomes the current key, and the derived "k1" keeps decrypting older tokens.
        """
        keys = {_DERIVED_KEY_ID: _derive(secret, _ENCRYPTION_INFO)}
        extra = _parse_extra_keys(extra_keys)
        keys.update(extra)
        current = next(iter(extra), _DERIVED_KEY_ID)
        return cls(keys, current, _derive(secret, _INDEX_INFO))

    @property
    def current_key_id(self) -> str:
        return self._current_id

    def encrypt(self, plaintext: str, *, context: bytes) -> bytes:
        """A fresh token for `plaintext`; `context` (e.g. tenant id + field) must match on decrypt.

        Build `context` unambiguously (fixed-width ids or a separator that cannot occur
        in its parts), or two different places could share one.
        """
        # Random 96-bit nonces are safe for ~2**32 encryptions per key; rotate well before.
        return self._seal(os.urandom(_NONCE_BYTES), plaintext, context)

    def encrypt_many(self, values: Sequence[tuple[str, bytes]]) -> list[bytes]:
        """`encrypt` for each (plaintext, context): the same tokens, with one call to the
        system's random source for all their nonces instead of one each."""
        nonces = os.urandom(_NONCE_BYTES * len(values))
        return [
            self._seal(nonces[i * _NONCE_BYTES : (i + 1) * _NONCE_BYTES], plaintext, context)
            for i, (plaintext, context) in enumerate(values)
        ]

    def _seal(self, nonce: bytes, plaintext: str, context: bytes) -> bytes:
        header = self._header
        return header + nonce + self._current.encrypt(nonce, plaintext.encode(), header + context)

    def decrypt(self, token: bytes, *, context: bytes) -> str:
        """The plaintext of `token`; CryptoError for anything not produced here for `context`."""
        header_len, key_id = self._parse_header(token)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise CryptoError("token was encrypted with an unknown key id")
        nonce_end = header_len + _NONCE_BYTES
        try:
            data = aead.decrypt(
                token[header_len:nonce_end], token[nonce_end:], token[:header_len] + context
            )
            return data.decode()
        except (InvalidTag, UnicodeDecodeError):
            raise CryptoError("token is tampered or belongs to another context") from None

    def key_id(self, token: bytes) -> str:
        """The id of the key `token` was encrypted with (whether or not it is known here)."""
        return self._parse_header(token)[1].decode("ascii")

    def needs_reencryption(self, token: bytes) -> bool:
        """True when `token` is not under the current key, so a rotation job should rewrite it."""
        return self.key_id(token) != self._current_id

    def blind_index(self, value: str, *, kind: str, tenant: str) -> bytes:
        """A 16-byte lookup key for `value`, equal only for the same (kind, tenant, value).

        Per tenant and kind so equal phones in two tenants (or a phone equal to a
        unionid) cannot be linked. Normalise `value` first; it is hashed as given.
        """
        if _SEPARATOR in kind or _SEPARATOR in tenant:
            # Otherwise ("a\x1fb", "c") and ("a", "b\x1fc") would collide.
            raise ValueError("kind and tenant must not contain the \\x1f separator")
        mac = self._index_mac.copy()
        mac.update(f"{kind}{_SEPARATOR}{tenant}{_SEPARATOR}{value}".encode())
        return mac.digest()[:_INDEX_BYTES]

    @staticmethod
    def _parse_header(token: bytes) -> tuple[int, bytes]:
        """(header length, key id) of `token`; CryptoError if it cannot be one of ours."""
        if len(token) < 2 or token[0] != _VERSION:
            raise CryptoError("not an encrypted field value (unknown format version)")
        header_len = 2 + token[1]
        if token[1] == 0 or len(token) < header_len + _NONCE_BYTES + _TAG_BYTES:
            raise CryptoError("encrypted field value is truncated")
        key_id = token[2:header_len]
        if not key_id.isascii():
            raise CryptoError("encrypted field value has a malformed key id")
        return header_len, key_id


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(secret)


def _parse_extra_keys(value: str) -> dict[str, bytes]:
    """Keys of SCRM_ENCRYPTION_KEYS, in order; errors name entries by position, never content."""
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for position, entry in enumerate(entries, start=1):
        key_id, colon, encoded = entry.partition(":")
        where = f"{_SETTING}: entry {position}"
        if not colon or not _KEY_ID.fullmatch(key_id):
            # The entry may be a bare key, so it is not echoed.
            raise ValueError(f"{where} must look like id:base64key (id of A-Z a-z 0-9 _ . -)")
        if key_id == _DERIVED_KEY_ID or key_id in keys:
            raise ValueError(f"{where}: key id {key_id!r} is reserved or repeated")
        encoded = encoded.strip().replace("-", "+").replace("_", "/")
        try:
            key = b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where} (id {key_id!r}): key is not valid base64") from None
        if len(key) != _KEY_BYTES:
            raise ValueError(f"{where} (id {key_id!r}): key must decode to {_KEY_BYTES} bytes")
        keys[key_id] = key
    return keys


def get_cipher(settings: Settings) -> FieldCipher:
    """The process's cipher; keep it rather than calling this per value on hot paths."""
    extra = settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
    return _cipher_for(secret_key(settings), extra)


@lru_cache(maxsize=4)
def _cipher_for(secret: bytes, extra_keys: str) -> FieldCipher:
    return FieldCipher.from_secret(secret, extra_keys)
