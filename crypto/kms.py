"""Key-encryption keys (KEKs) and where they live: a local key file, or HashiCorp Vault Transit.

A provider wraps and unwraps small secrets (data keys, blind-index keys) under its current KEK and says
which KEK a wrapped secret needs. Wrapping binds associated data (the secret's place), so a wrapped key
copied to another row does not unwrap. Rotation adds a KEK and makes it current; ``rewrap`` moves wrapped
secrets to the current KEK without the caller seeing them; ``retire`` drops a KEK nothing uses any more.

Local key file (JSON, mode 0600), written by ``generate_key_file`` and ``fhir-api keys rotate``::

    {"format": "fhir-keyring/1", "current": "kek-...", "keys": [{"kid": "kek-...", "k": "<base64url>",
     "created": "2026-11-24T05:00:00Z"}]}

Several hosts must share the file (a mounted secret) or use Vault. Every worker re-reads the file when it
changes, so a rotation reaches running workers on their next write.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhir_api.errors import KeyUnavailable, TamperedData

KEY_FILE_FORMAT = "fhir-keyring/1"
KEK_BYTES = 32
NONCE_BYTES = 12


class KeyConfigurationError(Exception):
    """The key configuration is missing or unusable: the server must not start."""


class KeyProvider(Protocol):
    name: str

    def current_kid(self) -> str: ...

    def kids(self) -> list[str]: ...

    def wrap(self, secret: bytes, aad: bytes) -> tuple[str, bytes]:
        """(the KEK id, the wrapped secret) under the current KEK."""
        ...

    def unwrap(self, kid: str, wrapped: bytes, aad: bytes) -> bytes: ...

    def rewrap(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes]]:
        """(kid, wrapped, aad) -> (current kid, wrapped again) for each item, in order."""
        ...

    def rotate(self) -> str:
        """Add a KEK, make it current, return its id."""
        ...

    def retire(self, kid: str) -> None: ...


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_kid() -> str:
    return f"kek-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


# -- local key file -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ring:
    current: str
    keys: dict[str, bytes]
    created: dict[str, str]


def _parse_ring(doc: Any, origin: str) -> _Ring:
    if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
        raise KeyConfigurationError(f"{origin} is not a key file of format {KEY_FILE_FORMAT}")
    keys: dict[str, bytes] = {}
    created: dict[str, str] = {}
    for entry in doc.get("keys") or []:
        kid, k = entry.get("kid"), entry.get("k")
        if not isinstance(kid, str) or not kid or "|" in kid or not isinstance(k, str):
            raise KeyConfigurationError(f"{origin} has a key entry without a usable kid and k")
        material = b64d(k)
        if len(material) != KEK_BYTES:
            raise KeyConfigurationError(f"{origin}: key {kid} is not {KEK_BYTES * 8} bits")
        keys[kid] = material
        created[kid] = str(entry.get("created", ""))
    current = doc.get("current")
    if current not in keys:
        raise KeyConfigurationError(f"{origin}: the current key {current!r} is not among its keys")
    return _Ring(current, keys, created)


def _ring_doc(ring: _Ring) -> dict[str, Any]:
    return {
        "format": KEY_FILE_FORMAT,
        "current": ring.current,
        "keys": [
            {"kid": kid, "k": b64e(k), "created": ring.created.get(kid, "")} for kid, k in ring.keys.items()
        ],
    }


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically with mode 0600 (a reader sees the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def generate_key_file(path: Path) -> str:
    """A new key file with one random KEK; returns its id. Refuses to overwrite an existing file."""
    if path.exists():
        raise KeyConfigurationError(f"{path} exists already; use `fhir-api keys rotate` to add a key")
    kid = _new_kid()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _write_private(path, _ring_doc(_Ring(kid, {kid: secrets.token_bytes(KEK_BYTES)}, {kid: now})))
    return kid


class LocalKeyProvider:
    """KEKs from a key file (re-read when it changes) or from one inline JSON document (environment)."""

    name = "local"

    def __init__(self, path: Path | None = None, inline: str | None = None) -> None:
        if path is None and inline is None:
            raise KeyConfigurationError("no key file and no inline keyring given")
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        if inline is not None:
            try:
                doc = json.loads(inline)
            except ValueError as exc:
                raise KeyConfigurationError("the inline keyring is not JSON") from exc
            self._ring = _parse_ring(doc, "the inline keyring")
        else:
            self._ring = self._read()

    def _read(self) -> _Ring:
        assert self._path is not None
        try:
            st = self._path.stat()
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise KeyConfigurationError(f"the key file {self._path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise KeyConfigurationError(f"the key file {self._path} cannot be read: {exc}") from exc
        if st.st_mode & 0o077:
            raise KeyConfigurationError(f"the key file {self._path} is readable by others: chmod 600 it")
        self._stamp = (st.st_mtime_ns, st.st_size)
        return _parse_ring(doc, str(self._path))

    def _fresh(self) -> _Ring:
        """The ring, re-read if the file changed (a stat per call: cheap, and rotation reaches us)."""
        if self._path is None:
            return self._ring
        try:
            st = self._path.stat()
        except OSError:
            return self._ring  # keep serving with what we have; the next call tries again
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            # a broken edit must not stop a running server: it keeps the last good ring
            with self._lock, contextlib.suppress(KeyConfigurationError):
                self._ring = self._read()
        return self._ring

    def current_kid(self) -> str:
        return self._fresh().current

    def kids(self) -> list[str]:
        return list(self._fresh().keys)

    def _kek(self, kid: str) -> bytes:
        ring = self._fresh()
        key = ring.keys.get(kid)
        if key is None:
            raise KeyUnavailable(f"The key-encryption key {kid} is not in the keyring")
        return key

    def wrap(self, secret: bytes, aad: bytes) -> tuple[str, bytes]:
        ring = self._fresh()
        nonce = os.urandom(NONCE_BYTES)
        return ring.current, nonce + AESGCM(ring.keys[ring.current]).encrypt(nonce, secret, aad)

    def unwrap(self, kid: str, wrapped: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(self._kek(kid)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        except InvalidTag:
            raise TamperedData("A wrapped data key failed authentication under its key and place") from None

    def rewrap(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes]]:
        return [self.wrap(self.unwrap(kid, wrapped, aad), aad) for kid, wrapped, aad in items]

    def _save(self, ring: _Ring) -> None:
        if self._path is None:
            raise KeyConfigurationError("an inline keyring cannot be changed here: edit its source")
        _write_private(self._path, _ring_doc(ring))
        with self._lock:
            self._ring = self._read()

    def rotate(self) -> str:
        ring = self._fresh()
        kid = _new_kid()
        keys = {**ring.keys, kid: secrets.token_bytes(KEK_BYTES)}
        created = {**ring.created, kid: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        self._save(_Ring(kid, keys, created))
        return kid

    def retire(self, kid: str) -> None:
        ring = self._fresh()
        if kid not in ring.keys:
            raise KeyConfigurationError(f"there is no key {kid} in the keyring")
        if kid == ring.current:
            raise KeyConfigurationError(f"{kid} is the current key; rotate first")
        self._save(_Ring(ring.current, {k: v for k, v in ring.keys.items() if k != kid}, ring.created))


# -- HashiCorp Vault Transit ---------------------------------------------------------------------------------
class VaultTransitProvider:
    """KEKs that never leave Vault: wrap, unwrap and rewrap are Transit API calls.

    The kid of Transit key ``NAME`` version ``N`` is ``vault-NAME-vN``. The associated data is bound by
    wrapping the secret together with its SHA-256 (Transit's own associated data needs a recent Vault and
    an AEAD key type, this works with any). Unwrapped secrets are not cached here; callers cache data keys.
    """

    name = "vault"
    _CURRENT_TTL = 5.0  # seconds a worker trusts its idea of the latest key version

    def __init__(
        self,
        addr: str,
        token: str,
        key_name: str,
        *,
        mount: str = "transit",
        namespace: str | None = None,
        timeout: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        if not addr or not token or not key_name:
            raise KeyConfigurationError("Vault needs an address, a token and a Transit key name")
        self._base = f"{addr.rstrip('/')}/v1/{mount.strip('/')}"
        self._key = key_name
        self._timeout = timeout
        self._http = session or requests.Session()
        self._http.headers["X-Vault-Token"] = token
        if namespace:
            self._http.headers["X-Vault-Namespace"] = namespace
        self._latest: tuple[float, int] | None = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            resp = self._http.request(method, f"{self._base}/{path}", json=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise KeyUnavailable(f"Vault did not answer: {type(exc).__name__}") from None
        if resp.status_code >= 400:
            try:
                errors = "; ".join(resp.json().get("errors") or [])
            except ValueError:
                errors = ""
            raise KeyUnavailable(f"Vault refused {path.split('/')[0]} ({resp.status_code}): {errors[:200]}")
        if resp.status_code == 204 or not resp.content:
            return {}
        return resp.json().get("data") or {}

    def _kid(self, version: int) -> str:
        return f"vault-{self._key}-v{version}"

    def _version(self, kid: str) -> int:
        prefix = f"vault-{self._key}-v"
        if not kid.startswith(prefix) or not kid[len(prefix) :].isdigit():
            raise KeyUnavailable(f"The key-encryption key {kid} is not a version of Vault key {self._key}")
        return int(kid[len(prefix) :])

    def _info(self) -> dict[str, Any]:
        return self._call("GET", f"keys/{self._key}")

    def current_kid(self) -> str:
        now = time.monotonic()
        if self._latest is None or now - self._latest[0] > self._CURRENT_TTL:
            self._latest = (now, int(self._info()["latest_version"]))
        return self._kid(self._latest[1])

    def kids(self) -> list[str]:
        info = self._info()
        low = int(info.get("min_decryption_version") or 1)
        return [self._kid(int(v)) for v in sorted(info.get("keys", {}), key=int) if int(v) >= low]

    @staticmethod
    def _ciphertext_kid_version(ciphertext: str) -> int:
        parts = ciphertext.split(":")
        if len(parts) < 3 or parts[0] != "vault" or not parts[1].startswith("v"):
            raise TamperedData("A wrapped data key is not a Vault ciphertext")
        return int(parts[1][1:])

    def wrap(self, secret: bytes, aad: bytes) -> tuple[str, bytes]:
        plaintext = base64.b64encode(secret + hashlib.sha256(aad).digest()).decode("ascii")
        ct = self._call("POST", f"encrypt/{self._key}", {"plaintext": plaintext})["ciphertext"]
        return self._kid(self._ciphertext_kid_version(ct)), ct.encode("ascii")

    def unwrap(self, kid: str, wrapped: bytes, aad: bytes) -> bytes:
        ciphertext = wrapped.decode("ascii", "replace")
        if self._ciphertext_kid_version(ciphertext) != self._version(kid):
            raise TamperedData("A wrapped data key does not belong to the key version its row names")
        data = self._call("POST", f"decrypt/{self._key}", {"ciphertext": ciphertext})
        plain = base64.b64decode(data["plaintext"])
        secret, digest = plain[:-32], plain[-32:]
        if not secrets.compare_digest(digest, hashlib.sha256(aad).digest()):
            raise TamperedData("A wrapped data key failed authentication under its place")
        return secret

    def rewrap(self, items: Sequence[tuple[str, bytes, bytes]]) -> list[tuple[str, bytes]]:
        if not items:
            return []
        for kid, wrapped, _ in items:
            if self._ciphertext_kid_version(wrapped.decode("ascii", "replace")) != self._version(kid):
                raise TamperedData("A wrapped data key does not belong to the key version its row names")
        batch = [{"ciphertext": wrapped.decode("ascii")} for _, wrapped, _ in items]
        results = self._call("POST", f"rewrap/{self._key}", {"batch_input": batch})["batch_results"]
        out = []
        for result in results:
            if result.get("error"):
                raise KeyUnavailable(f"Vault could not rewrap a data key: {result['error'][:200]}")
            ct = result["ciphertext"]
            out.append((self._kid(self._ciphertext_kid_version(ct)), ct.encode("ascii")))
        return out

    def rotate(self) -> str:
        self._call("POST", f"keys/{self._key}/rotate")
        self._latest = None
        return self.current_kid()

    def retire(self, kid: str) -> None:
        """Raise the key's minimum decryption version past ``kid`` (Vault can only retire from the bottom)."""
        version = self._version(kid)
        info = self._info()
        low = int(info.get("min_decryption_version") or 1)
        if version != low:
            raise KeyConfigurationError(
                f"Vault retires versions oldest first: retire {self._kid(low)} before {kid}"
            )
        if version >= int(info["latest_version"]):
            raise KeyConfigurationError(f"{kid} is the current key; rotate first")
        self._call("POST", f"keys/{self._key}/config", {"min_decryption_version": version + 1})


def provider_from_config(config: dict[str, Any]) -> KeyProvider:
    """The configured provider; KeyConfigurationError when keys are not configured (no default keys)."""
    kind = str(config.get("KMS_PROVIDER") or "local").lower()
    if kind == "vault":
        token = config.get("VAULT_TOKEN")
        token_file = config.get("VAULT_TOKEN_FILE")
        if not token and token_file:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        return VaultTransitProvider(
            str(config.get("VAULT_ADDR") or ""),
            str(token or ""),
            str(config.get("VAULT_TRANSIT_KEY") or ""),
            mount=str(config.get("VAULT_TRANSIT_MOUNT") or "transit"),
            namespace=config.get("VAULT_NAMESPACE") or None,
        )
    if kind != "local":
        raise KeyConfigurationError(f"FHIR_KMS_PROVIDER must be local or vault, not {kind!r}")
    inline = config.get("CRYPTO_KEYRING")
    if inline:
        return LocalKeyProvider(inline=str(inline))
    path = config.get("CRYPTO_KEY_FILE")
    if not path:
        raise KeyConfigurationError(
            "No encryption keys: set FHIR_CRYPTO_KEY_FILE (create one with `fhir-api keys init`), "
            "FHIR_CRYPTO_KEYRING, or FHIR_KMS_PROVIDER=vault with its settings"
        )
    return LocalKeyProvider(Path(path))


def describe(kids: Iterable[str], current: str) -> list[str]:
    return [f"{kid}{' (current)' if kid == current else ''}" for kid in kids]
