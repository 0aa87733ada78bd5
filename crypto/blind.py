"""Blind indexes: keyed hashes of normalised protected values, so search finds them without clear text.

Each search parameter of each resource type gets its own HMAC-SHA256 key, derived with HKDF from the
blind-index root key, so equal values under two parameters hash differently and one parameter's index
says nothing about another's. A hash is kept as its first 8 bytes, a signed 64-bit integer: a narrow,
fast btree key, with a collision chance far below one in a billion for any realistic number of values.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


@lru_cache(maxsize=4096)
def parameter_key(root: bytes, res_type: str, param: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"fhir-blind-index|{res_type}|{param}".encode()
    ).derive(root)


def blind_hash(key: bytes, kind: str, value: str) -> int:
    """The keyed hash of ``value`` in the namespace ``kind`` (prefix, exact, token form, date bucket)."""
    digest = hmac.new(key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
