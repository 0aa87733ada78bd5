"""Envelope encryption: one AES-256-GCM data key per resource version, wrapped by a key-encryption key.

Two text formats, both versioned by their first field:

* the version's wrapped data key, ``1|<kek id>|<base64url(wrapped)>``, stored beside the body with the KEK
  id in its own column (rotation and ``keys retire`` find rows by it); the wrap's associated data names
  the resource version, so a wrapped key copied to another row fails to unwrap;
* each protected value, ``1|<base64url(nonce || ciphertext || tag)>`` with a random 96-bit nonce and the
  associated data ``<type>/<id>/_history/<version>#<JSON pointer>``, so a ciphertext moved to another
  resource, version or element fails to decrypt.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from threading import Lock

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.kms import NONCE_BYTES, KeyProvider, b64d, b64e
from fhir_api.errors import TamperedData

FORMAT = "1"
DATA_KEY_BYTES = 32


def version_aad(res_type: str, res_id: str, version: int) -> bytes:
    return f"{res_type}/{res_id}/_history/{version}".encode()


def field_aad(version_place: bytes, pointer: str) -> bytes:
    return version_place + b"#" + pointer.encode()


class FieldCipher:
    """Encrypts and decrypts the protected values of one resource version with its data key."""

    __slots__ = ("_aead", "place")

    def __init__(self, data_key: bytes, place: bytes) -> None:
        self._aead = AESGCM(data_key)
        self.place = place

    def seal(self, plaintext: bytes, pointer: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        return (
            f"{FORMAT}|{b64e(nonce + self._aead.encrypt(nonce, plaintext, field_aad(self.place, pointer)))}"
        )

    def open(self, token: str, pointer: str) -> bytes:
        fmt, _, payload = token.partition("|")
        if fmt != FORMAT:
            raise TamperedData(f"A protected value has an unknown format at {pointer}")
        try:
            raw = b64d(payload)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], field_aad(self.place, pointer))
        except (InvalidTag, ValueError):
            raise TamperedData(
                f"The protected value at {pointer} of {self.place.decode()} failed authentication: it was "
                "altered or moved from another resource or element"
            ) from None


class Envelopes:
    """Creates and opens wrapped data keys through a KEK provider, caching opened ones (for remote KMSs)."""

    def __init__(self, provider: KeyProvider, cache_size: int = 4096) -> None:
        self.provider = provider
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size if provider.name != "local" else 0  # local unwrap costs microseconds
        self._lock = Lock()

    def new(self, place: bytes) -> tuple[FieldCipher, str, str]:
        """A fresh data key for a version: its cipher, the wrapped key text and the KEK id."""
        data_key = AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)
        kid, wrapped = self.provider.wrap(data_key, place)
        return FieldCipher(data_key, place), wrapped_text(kid, wrapped), kid

    def open(self, wrapped_text: str, place: bytes) -> FieldCipher:
        cache_key = wrapped_text + "#" + place.decode()
        if self._cache_size:
            with self._lock:
                hit = self._cache.get(cache_key)
            if hit is not None:
                return FieldCipher(hit, place)
        kid, wrapped = split_wrapped(wrapped_text)
        data_key = self.provider.unwrap(kid, wrapped, place)
        if self._cache_size:
            with self._lock:
                self._cache[cache_key] = data_key
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return FieldCipher(data_key, place)

    def rewrap(self, items: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
        """(wrapped key text, place) -> (new wrapped key text, new KEK id), all under the current KEK."""
        parts = [(*split_wrapped(text), place) for text, place in items]
        return [(wrapped_text(kid, w), kid) for kid, w in self.provider.rewrap(parts)]


def wrapped_text(kid: str, wrapped: bytes) -> str:
    return f"{FORMAT}|{kid}|{b64e(wrapped)}"


def split_wrapped(text: str) -> tuple[str, bytes]:
    fmt, _, rest = text.partition("|")
    kid, _, payload = rest.partition("|")
    if fmt != FORMAT or not kid or not payload:
        raise TamperedData("A wrapped data key has an unknown format")
    try:
        return kid, b64d(payload)
    except ValueError:
        raise TamperedData("A wrapped data key is not valid base64") from None


def generate_secret() -> bytes:
    return AESGCM.generate_key(bit_length=256)
