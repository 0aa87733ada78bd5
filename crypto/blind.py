"""Blind indexes: keyed hashes of normalised protected values, so search finds them without clear text.

Each search parameter of each resource type gets its own key, derived with HKDF-SHA256 from the
blind-index root key, so equal values under two parameters hash differently and one parameter's index
says nothing about another's. The hash is keyed BLAKE2b (a PRF in its keyed mode, like HMAC, and about
three times faster here, which matters: a Patient has some 170 hashes, most of them name and address
prefixes, computed incrementally). It is kept as 8 bytes, a signed 64-bit integer: a narrow, fast btree
key, with a collision chance far below one in a billion for any realistic number of values.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DIGEST_BYTES = 8
_PERSON = b"fhir-blind-v1"


@lru_cache(maxsize=4096)
def parameter_key(root: bytes, res_type: str, param: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"fhir-blind-index|{res_type}|{param}".encode()
    ).derive(root)


@lru_cache(maxsize=4096)
def _keyed(key: bytes) -> hashlib._Hash:
    """BLAKE2b with ``key`` already absorbed: copying it skips the key block every hash would compress."""
    return hashlib.blake2b(key=key, digest_size=DIGEST_BYTES, person=_PERSON)


def blind_hash(key: bytes, kind: str, value: str) -> int:
    """The keyed hash of ``value`` in the namespace ``kind`` (prefix, exact, token form, date bucket)."""
    return KeyedHash(key)(kind, value)


def prefix_hashes(key: bytes, kind: str, value: str) -> list[int]:
    """``blind_hash(key, kind, value[:n])`` for n = 1 .. len(value), sharing the hashing work."""
    return KeyedHash(key).prefixes(kind, value)


class KeyedHash:
    """``blind_hash`` and ``prefix_hashes`` under one key, whose BLAKE2b state is made once. A Patient takes
    some hundred of them per write, so each is a few C calls and no Python call of its own."""

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = _keyed(key)

    def __call__(self, kind: str, value: str) -> int:
        h = self._base.copy()
        h.update(f"{kind}\x00{value}".encode())
        return _from_bytes(h.digest(), "big", signed=True)

    def prefixes(self, kind: str, value: str) -> list[int]:
        h = self._base.copy()
        h.update(f"{kind}\x00".encode())
        update, copy = h.update, h.copy
        out = []
        for ch in value:
            update(ch.encode())
            out.append(_from_bytes(copy().digest(), "big", signed=True))
        return out


_from_bytes = int.from_bytes
