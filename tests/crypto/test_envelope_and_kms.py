"""Envelope encryption and the key providers, without the HTTP layer.

* ``crypto.envelope``: data keys wrapped for one resource version, field ciphertexts bound to their JSON
  pointer and version; anything moved, altered or opened elsewhere fails with TamperedData.
* ``crypto.kms.LocalKeyProvider``: the key file (mode, format, re-read on change), rotation, retirement.
* ``crypto.kms.VaultTransitProvider``: against a fake Transit engine served through ``requests_mock``; the
  fake really encrypts (AES-GCM, one key per version, ``vault:vN:<base64>`` ciphertexts), so the provider's
  binding of associated data and its version handling are exercised, not just its request shapes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
import requests
import requests_mock
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.blind import blind_hash, parameter_key
from crypto.envelope import Envelopes, FieldCipher, split_wrapped, version_aad, wrapped_text
from crypto.kms import (
    KEY_FILE_FORMAT,
    KeyConfigurationError,
    LocalKeyProvider,
    VaultTransitProvider,
    b64d,
    b64e,
    generate_key_file,
    provider_from_config,
)
from fhir_api.errors import KeyUnavailable, TamperedData

PLACE = version_aad("Patient", "p1", 1)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def flip_token(token: str, index: int) -> str:
    """A field ciphertext ``1|<b64>`` with one byte of its decoded payload flipped."""
    fmt, _, payload = token.partition("|")
    raw = b64d(payload)
    return f"{fmt}|{b64e(flip(raw, index % len(raw)))}"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    generate_key_file(path)
    return path


@pytest.fixture
def local(key_file: Path) -> LocalKeyProvider:
    return LocalKeyProvider(key_file)


# -- envelopes -----------------------------------------------------------------------------------------------
def test_version_aad_names_the_version() -> None:
    assert version_aad("Patient", "abc", 3) == b"Patient/abc/_history/3"


def test_envelope_round_trip(local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    cipher, wrapped, kid = env.new(PLACE)
    assert kid == local.current_kid()
    assert wrapped.startswith(f"1|{kid}|")
    assert split_wrapped(wrapped)[0] == kid
    token = cipher.seal(b'[{"family":"Mueller"}]', "/name")
    assert token.startswith("1|") and "Mueller" not in token
    # a fresh opening of the wrapped key (as a later read does) gives the same plaintext back
    assert env.open(wrapped, PLACE).open(token, "/name") == b'[{"family":"Mueller"}]'
    # random nonces: the same value sealed twice gives two ciphertexts, both valid
    again = cipher.seal(b'[{"family":"Mueller"}]', "/name")
    assert again != token
    assert cipher.open(again, "/name") == b'[{"family":"Mueller"}]'
    assert cipher.seal(b"", "/x") and cipher.open(cipher.seal(b"", "/x"), "/x") == b""


def test_field_opened_at_another_pointer_fails(local: LocalKeyProvider) -> None:
    cipher, _, _ = Envelopes(local).new(PLACE)
    token = cipher.seal(b'"1978-04-03"', "/birthDate")
    for other in ("/name", "/birthdate", "/birthDate/0", "", "/contained/0/birthDate"):
        with pytest.raises(TamperedData, match="failed authentication"):
            cipher.open(token, other)


def test_field_opened_with_another_versions_place_fails() -> None:
    data_key = AESGCM.generate_key(bit_length=256)
    token = FieldCipher(data_key, version_aad("Patient", "p1", 1)).seal(b'"x"', "/birthDate")
    assert FieldCipher(data_key, version_aad("Patient", "p1", 1)).open(token, "/birthDate") == b'"x"'
    for place in (
        version_aad("Patient", "p1", 2),
        version_aad("Patient", "p2", 1),
        version_aad("Person", "p1", 1),
    ):
        with pytest.raises(TamperedData):
            FieldCipher(data_key, place).open(token, "/birthDate")


def test_wrapped_data_key_opened_for_another_place_fails(local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    _, wrapped, _ = env.new(PLACE)
    env.open(wrapped, PLACE)  # fine where it belongs
    for place in (version_aad("Patient", "p1", 2), version_aad("Patient", "p2", 1)):
        with pytest.raises(TamperedData):
            env.open(wrapped, place)


def test_flipping_any_byte_fails(local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    cipher, wrapped, _ = env.new(PLACE)
    token = cipher.seal(b"secret value", "/name")
    length = len(b64d(token.partition("|")[2]))  # nonce + ciphertext + tag
    for i in range(length):
        with pytest.raises(TamperedData):
            cipher.open(flip_token(token, i), "/name")
    kid, raw = split_wrapped(wrapped)
    for i in (0, 11, 12, len(raw) // 2, len(raw) - 1):
        with pytest.raises(TamperedData):
            env.open(wrapped_text(kid, flip(raw, i)), PLACE)


def test_malformed_texts_fail_as_tampered(local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    cipher, wrapped, kid = env.new(PLACE)
    token = cipher.seal(b"v", "/name")
    with pytest.raises(TamperedData, match="unknown format"):
        cipher.open("2|" + token.partition("|")[2], "/name")
    with pytest.raises(TamperedData):
        cipher.open("1|", "/name")
    with pytest.raises(TamperedData):
        cipher.open("1|!!not base64!!", "/name")
    for bad in ("", "1|", f"1|{kid}|", f"2|{kid}|{wrapped.rsplit('|', 1)[1]}", "garbage"):
        with pytest.raises(TamperedData):
            env.open(bad, PLACE)


def test_unknown_kid_is_key_unavailable(local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    _, wrapped, kid = env.new(PLACE)
    with pytest.raises(KeyUnavailable, match="kek-nowhere"):
        env.open(wrapped.replace(kid, "kek-nowhere"), PLACE)
    with pytest.raises(KeyUnavailable):
        local.unwrap("kek-nowhere", b"\0" * 60, PLACE)


# -- local key file ------------------------------------------------------------------------------------------
def test_generated_key_file_is_private_and_well_formed(key_file: Path) -> None:
    assert key_file.stat().st_mode & 0o777 == 0o600
    doc = json.loads(key_file.read_text())
    assert doc["format"] == KEY_FILE_FORMAT
    assert [k["kid"] for k in doc["keys"]] == [doc["current"]]
    assert len(b64d(doc["keys"][0]["k"])) == 32
    with pytest.raises(KeyConfigurationError, match="exists"):
        generate_key_file(key_file)  # never overwrites a keyring


def test_key_file_readable_by_others_is_refused(key_file: Path) -> None:
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyConfigurationError, match="chmod 600"):
        LocalKeyProvider(key_file)
    os.chmod(key_file, 0o640)
    with pytest.raises(KeyConfigurationError):
        LocalKeyProvider(key_file)
    os.chmod(key_file, 0o600)
    LocalKeyProvider(key_file)


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    def write(doc: object) -> Path:
        path = tmp_path / f"k{time.monotonic_ns()}.json"
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        os.chmod(path, 0o600)
        return path

    good = {"kid": "kek-a", "k": b64e(b"\1" * 32)}
    cases = [
        "not json",
        {"format": "something/else", "current": "kek-a", "keys": [good]},
        {"format": KEY_FILE_FORMAT, "current": "kek-b", "keys": [good]},
        {"format": KEY_FILE_FORMAT, "current": "kek-a", "keys": [{"kid": "kek-a", "k": b64e(b"short")}]},
        {"format": KEY_FILE_FORMAT, "current": "a|b", "keys": [{"kid": "a|b", "k": good["k"]}]},
    ]
    for doc in cases:
        with pytest.raises(KeyConfigurationError):
            LocalKeyProvider(write(doc))
    with pytest.raises(KeyConfigurationError, match="does not exist"):
        LocalKeyProvider(tmp_path / "missing.json")


def test_local_wrap_round_trip_and_aad(local: LocalKeyProvider) -> None:
    kid, wrapped = local.wrap(b"k" * 32, b"place-a")
    assert kid == local.current_kid()
    assert local.unwrap(kid, wrapped, b"place-a") == b"k" * 32
    with pytest.raises(TamperedData):
        local.unwrap(kid, wrapped, b"place-b")


def test_rotate_keeps_old_data_and_wraps_with_new_kid(key_file: Path, local: LocalKeyProvider) -> None:
    env = Envelopes(local)
    cipher, wrapped_old, old = env.new(PLACE)
    token = cipher.seal(b"before rotation", "/name")
    new = local.rotate()
    assert new != old and local.current_kid() == new
    assert set(local.kids()) == {old, new}
    assert key_file.stat().st_mode & 0o777 == 0o600  # the rewritten file is still private
    assert env.open(wrapped_old, PLACE).open(token, "/name") == b"before rotation"
    _, wrapped_new, kid = env.new(version_aad("Patient", "p1", 2))
    assert kid == new and wrapped_new.startswith(f"1|{new}|")
    # rewrap moves the old wrapped key to the new KEK; it still opens, at the same place only
    [(moved_text, moved_kid)] = env.rewrap([(wrapped_old, PLACE)])
    assert moved_kid == new and moved_text.startswith(f"1|{new}|")
    assert env.open(moved_text, PLACE).open(token, "/name") == b"before rotation"
    with pytest.raises(TamperedData):
        env.open(moved_text, version_aad("Patient", "p1", 2))


def test_another_worker_sees_the_rotation(key_file: Path, local: LocalKeyProvider) -> None:
    """A second provider on the same file (another worker) re-reads it when it changes."""
    other = LocalKeyProvider(key_file)
    new = local.rotate()
    assert other.current_kid() == new
    kid, wrapped = other.wrap(b"s" * 32, b"aad")
    assert kid == new and local.unwrap(kid, wrapped, b"aad") == b"s" * 32


def test_retire(local: LocalKeyProvider) -> None:
    first = local.current_kid()
    with pytest.raises(KeyConfigurationError, match="current"):
        local.retire(first)
    kid_a, wrapped_a = local.wrap(b"a" * 32, b"x")
    second = local.rotate()
    with pytest.raises(KeyConfigurationError, match="current"):
        local.retire(second)
    with pytest.raises(KeyConfigurationError):
        local.retire("kek-never-existed")
    local.retire(first)
    assert local.kids() == [second]
    with pytest.raises(KeyUnavailable):
        local.unwrap(kid_a, wrapped_a, b"x")


def test_provider_from_config(tmp_path: Path, key_file: Path) -> None:
    with pytest.raises(KeyConfigurationError, match="No encryption keys"):
        provider_from_config({})
    with pytest.raises(KeyConfigurationError):
        provider_from_config({"KMS_PROVIDER": "hsm"})
    assert isinstance(provider_from_config({"CRYPTO_KEY_FILE": str(key_file)}), LocalKeyProvider)
    inline = provider_from_config({"CRYPTO_KEYRING": key_file.read_text()})
    kid, wrapped = inline.wrap(b"z" * 32, b"p")
    assert LocalKeyProvider(key_file).unwrap(kid, wrapped, b"p") == b"z" * 32
    with pytest.raises(KeyConfigurationError):
        inline.rotate()  # an inline keyring is edited at its source
    vault = provider_from_config(
        {
            "KMS_PROVIDER": "vault",
            "VAULT_ADDR": "http://vault.test",
            "VAULT_TOKEN": "t",
            "VAULT_TRANSIT_KEY": "k",
        }
    )
    assert isinstance(vault, VaultTransitProvider)
    with pytest.raises(KeyConfigurationError):
        provider_from_config({"KMS_PROVIDER": "vault", "VAULT_ADDR": "http://vault.test"})


# -- blind-index primitives ----------------------------------------------------------------------------------
def test_blind_hash_is_keyed_per_parameter() -> None:
    root = b"r" * 32
    k_name = parameter_key(root, "Patient", "name")
    assert blind_hash(k_name, "p", "mue") == blind_hash(k_name, "p", "mue")
    others = {
        blind_hash(parameter_key(root, "Patient", "family"), "p", "mue"),
        blind_hash(parameter_key(root, "Person", "name"), "p", "mue"),
        blind_hash(parameter_key(b"s" * 32, "Patient", "name"), "p", "mue"),
        blind_hash(k_name, "x", "mue"),
        blind_hash(k_name, "p", "muf"),
    }
    assert blind_hash(k_name, "p", "mue") not in others and len(others) == 5
    assert all(-(2**63) <= h < 2**63 for h in others)


def test_blind_hashes_are_keyed_blake2b_of_kind_and_value_as_stored_indexes_expect() -> None:
    """The definition every stored index was written with (computed here without the shortcuts: one keyed
    BLAKE2b per value; prefixes one hash each)."""
    import hashlib

    from crypto.blind import KeyedHash, prefix_hashes

    key = parameter_key(b"r" * 32, "Patient", "name")

    def reference(kind: str, value: str) -> int:
        digest = hashlib.blake2b(
            f"{kind}\x00{value}".encode(), key=key, digest_size=8, person=b"fhir-blind-v1"
        )
        return int.from_bytes(digest.digest(), "big", signed=True)

    keyed = KeyedHash(key)  # what index writes use: the same hashes
    for value in ("", "a", "chalmers", "ünï 😀", "x" * 300):
        assert blind_hash(key, "exact", value) == keyed("exact", value) == reference("exact", value)
        prefixes = [reference("prefix", value[:n]) for n in range(1, len(value) + 1)]
        assert prefix_hashes(key, "prefix", value) == keyed.prefixes("prefix", value) == prefixes


# -- Vault Transit (fake) ------------------------------------------------------------------------------------
VAULT = "http://vault.test:8200"
TOKEN = "s.test-token"


class FakeTransit:
    """Just enough of Vault's Transit engine: encrypt, decrypt, rewrap (batch), key info, rotate, config."""

    def __init__(self, key_name: str = "fhir") -> None:
        self.key_name = key_name
        self.versions: dict[int, bytes] = {1: AESGCM.generate_key(bit_length=256)}
        self.min_decryption_version = 1
        self.requests: list[tuple[str, str, dict | None]] = []

    @property
    def latest(self) -> int:
        return max(self.versions)

    def _encrypt(self, plaintext_b64: str) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(self.versions[self.latest]).encrypt(nonce, base64.b64decode(plaintext_b64), None)
        return f"vault:v{self.latest}:{base64.b64encode(nonce + ct).decode()}"

    def _decrypt(self, ciphertext: str) -> str:
        match = re.fullmatch(r"vault:v(\d+):(.+)", ciphertext)
        if not match:
            raise ValueError("invalid ciphertext: no prefix")
        version = int(match.group(1))
        if version < self.min_decryption_version:
            raise ValueError("ciphertext or signature version is disallowed by policy (too old)")
        if version not in self.versions:
            raise ValueError("invalid ciphertext: key version not found")
        raw = base64.b64decode(match.group(2))
        try:
            plain = AESGCM(self.versions[version]).decrypt(raw[:12], raw[12:], None)
        except Exception:
            raise ValueError("cipher: message authentication failed") from None
        return base64.b64encode(plain).decode()

    def install(self, adapter: requests_mock.Adapter) -> None:
        base = f"{VAULT}/v1/transit"
        k = self.key_name

        def guarded(fn):
            def handler(request, context):
                body = request.json() if request.body else None
                self.requests.append((request.method, request.path, body))
                if request.headers.get("X-Vault-Token") != TOKEN:
                    context.status_code = 403
                    return {"errors": ["permission denied"]}
                try:
                    return fn(body, context)
                except ValueError as exc:
                    context.status_code = 400
                    return {"errors": [str(exc)]}

            return handler

        def encrypt(body, context):
            return {"data": {"ciphertext": self._encrypt(body["plaintext"]), "key_version": self.latest}}

        def decrypt(body, context):
            return {"data": {"plaintext": self._decrypt(body["ciphertext"])}}

        def rewrap(body, context):
            results = []
            for item in body["batch_input"]:
                try:
                    results.append({"ciphertext": self._encrypt(self._decrypt(item["ciphertext"]))})
                except ValueError as exc:
                    results.append({"error": str(exc)})
            return {"data": {"batch_results": results}}

        def info(body, context):
            return {
                "data": {
                    "name": k,
                    "type": "aes256-gcm96",
                    "latest_version": self.latest,
                    "min_decryption_version": self.min_decryption_version,
                    "keys": {str(v): 1700000000 + v for v in self.versions},
                }
            }

        def rotate(body, context):
            self.versions[self.latest + 1] = AESGCM.generate_key(bit_length=256)
            context.status_code = 204
            return None

        def config(body, context):
            self.min_decryption_version = int(body["min_decryption_version"])
            context.status_code = 204
            return None

        for method, path, fn in (
            ("POST", f"encrypt/{k}", encrypt),
            ("POST", f"decrypt/{k}", decrypt),
            ("POST", f"rewrap/{k}", rewrap),
            ("GET", f"keys/{k}", info),
            ("POST", f"keys/{k}/rotate", rotate),
            ("POST", f"keys/{k}/config", config),
        ):
            handler = guarded(fn)
            adapter.register_uri(
                method,
                f"{base}/{path}",
                text=lambda request, context, h=handler: (
                    "" if (r := h(request, context)) is None else json.dumps(r)
                ),
            )


@pytest.fixture
def transit() -> FakeTransit:
    return FakeTransit()


def vault_provider(transit: FakeTransit, token: str = TOKEN) -> VaultTransitProvider:
    session = requests.Session()
    adapter = requests_mock.Adapter()
    transit.install(adapter)
    session.mount("http://", adapter)
    return VaultTransitProvider(VAULT, token, transit.key_name, session=session)


def test_vault_wrap_unwrap_round_trip(transit: FakeTransit) -> None:
    vault = vault_provider(transit)
    secret = os.urandom(32)
    kid, wrapped = vault.wrap(secret, PLACE)
    assert kid == "vault-fhir-v1"
    assert wrapped.startswith(b"vault:v1:")
    assert secret not in wrapped and base64.b64encode(secret) not in wrapped
    assert vault.unwrap(kid, wrapped, PLACE) == secret
    assert vault.current_kid() == "vault-fhir-v1" and vault.kids() == ["vault-fhir-v1"]
    assert [(m, p) for m, p, _ in transit.requests[:2]] == [
        ("POST", "/v1/transit/encrypt/fhir"),
        ("POST", "/v1/transit/decrypt/fhir"),
    ]


def test_vault_through_envelopes(transit: FakeTransit) -> None:
    env = Envelopes(vault_provider(transit))
    cipher, wrapped, kid = env.new(PLACE)
    assert kid == "vault-fhir-v1" and wrapped.startswith("1|vault-fhir-v1|")
    token = cipher.seal(b"Mueller", "/name")
    assert env.open(wrapped, PLACE).open(token, "/name") == b"Mueller"
    assert env.open(wrapped, PLACE).open(token, "/name") == b"Mueller"  # from the cache this time
    # the cache is per place: another version's place goes to Vault and fails on the bound place
    with pytest.raises(TamperedData):
        env.open(wrapped, version_aad("Patient", "p1", 2))


def test_vault_aad_mismatch_is_detected(transit: FakeTransit) -> None:
    vault = vault_provider(transit)
    kid, wrapped = vault.wrap(b"s" * 32, b"Patient/a/_history/1")
    with pytest.raises(TamperedData, match="place"):
        vault.unwrap(kid, wrapped, b"Patient/b/_history/1")
    # a ciphertext of one key version presented as another version's
    transit.versions[2] = AESGCM.generate_key(bit_length=256)
    with pytest.raises(TamperedData):
        vault.unwrap("vault-fhir-v2", wrapped, b"Patient/a/_history/1")
    with pytest.raises(KeyUnavailable):
        vault.unwrap("vault-otherkey-v1", wrapped, b"Patient/a/_history/1")
    with pytest.raises(TamperedData):
        vault.unwrap(kid, b"not a vault ciphertext", b"Patient/a/_history/1")
    # an altered ciphertext: Vault itself refuses it (reported as a key problem, nothing returned)
    prefix, _, payload = wrapped.decode().rpartition(":")
    raw = base64.b64decode(payload)
    altered = f"{prefix}:{base64.b64encode(flip(raw, len(raw) - 1)).decode()}".encode()
    with pytest.raises((TamperedData, KeyUnavailable)):
        vault.unwrap(kid, altered, b"Patient/a/_history/1")


def test_vault_403_is_key_unavailable_with_a_clear_message(transit: FakeTransit) -> None:
    vault = vault_provider(transit, token="s.wrong")
    with pytest.raises(KeyUnavailable) as info:
        vault.wrap(b"s" * 32, PLACE)
    message = str(info.value)
    assert "Vault" in message and "403" in message and "permission denied" in message
    assert "s.wrong" not in message  # the token is never echoed
    assert info.value.status == 503


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError,
        requests.exceptions.ConnectTimeout,
        requests.exceptions.ReadTimeout,
    ],
)
def test_vault_unreachable_is_key_unavailable(exc: type[Exception]) -> None:
    session = requests.Session()
    adapter = requests_mock.Adapter()
    adapter.register_uri(requests_mock.ANY, requests_mock.ANY, exc=exc)
    session.mount("http://", adapter)
    vault = VaultTransitProvider(VAULT, TOKEN, "fhir", session=session)
    with pytest.raises(KeyUnavailable, match="Vault did not answer"):
        vault.wrap(b"s" * 32, PLACE)
    with pytest.raises(KeyUnavailable):
        vault.unwrap("vault-fhir-v1", b"vault:v1:AAAA", PLACE)
    with pytest.raises(KeyUnavailable):
        vault.current_kid()


def test_vault_rotate_and_rewrap_in_one_batch(transit: FakeTransit) -> None:
    vault = vault_provider(transit)
    secrets_ = [os.urandom(32) for _ in range(3)]
    places = [version_aad("Patient", f"p{i}", 1) for i in range(3)]
    items = [(*vault.wrap(s, p), p) for s, p in zip(secrets_, places, strict=True)]
    assert {kid for kid, _, _ in items} == {"vault-fhir-v1"}
    assert vault.rotate() == "vault-fhir-v2"
    assert vault.kids() == ["vault-fhir-v1", "vault-fhir-v2"]
    # old wrapped keys still open after rotation
    assert vault.unwrap(*items[0]) == secrets_[0]
    transit.requests.clear()
    moved = vault.rewrap(items)
    rewraps = [body for _, path, body in transit.requests if path == "/v1/transit/rewrap/fhir"]
    assert len(rewraps) == 1, transit.requests  # one batch call, not one call per key
    assert rewraps[0] == {"batch_input": [{"ciphertext": w.decode()} for _, w, _ in items]}
    assert [kid for kid, _ in moved] == ["vault-fhir-v2"] * 3
    assert all(w.startswith(b"vault:v2:") for _, w in moved)
    for (kid, wrapped), secret, place in zip(moved, secrets_, places, strict=True):
        assert vault.unwrap(kid, wrapped, place) == secret
    assert vault.rewrap([]) == []
    # the new kid is used for new wraps too
    assert vault.wrap(b"n" * 32, PLACE)[0] == "vault-fhir-v2"


def test_vault_retire(transit: FakeTransit) -> None:
    vault = vault_provider(transit)
    old = vault.wrap(b"o" * 32, PLACE)
    with pytest.raises(KeyConfigurationError, match="current"):
        vault.retire("vault-fhir-v1")
    vault.rotate()
    vault.rotate()
    with pytest.raises(KeyConfigurationError, match="oldest first"):
        vault.retire("vault-fhir-v2")
    vault.retire("vault-fhir-v1")
    assert transit.min_decryption_version == 2
    assert vault.kids() == ["vault-fhir-v2", "vault-fhir-v3"]
    with pytest.raises(KeyUnavailable, match="too old"):
        vault.unwrap(*old, PLACE)
