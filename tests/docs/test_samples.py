"""Every code sample under docs/samples runs against a real server, so the samples cannot rot.

One live server for the module, a registered clinical-system client (private key as a JWK file) and an
auditor client (private key as a PEM file). The Python and curl samples run as subprocesses with only the
environment variables they document; the JavaScript samples run when ``node`` is installed, and are checked
statically otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from joserfc import jwt

from fhir_api import create_app
from fhir_api.cli import main
from resources.subscriptions import signing
from tests.helpers import empty_tables, new_client_key, register_client
from tests.live import live_server

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "docs" / "samples"
PY, CURL, JS = SAMPLES / "python", SAMPLES / "curl", SAMPLES / "js"
NODE = shutil.which("node")
HAS_CURL = shutil.which("curl") is not None and shutil.which("sh") is not None
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
# Every sample file, and the test that runs it (a new sample must get a test: see the last test).
EXERCISED = {
    "python/get_token.py": "test_python_token",
    "python/new_key.py": "test_python_new_key_then_register_with_the_cli",
    "python/create.py": "test_python_create_read_search",
    "python/read.py": "test_python_create_read_search",
    "python/search.py": "test_python_create_read_search",
    "python/transaction.py": "test_python_transaction",
    "python/fhirclient_backend.py": "test_python_fhirclient",
    "python/fhirpy_crud.py": "test_python_fhirpy",
    "python/audit_export.py": "test_python_audit_export",
    "python/verify_webhook.py": "test_documented_verification_matches_the_server",
    "curl/get_token.sh": "test_curl_samples",
    "curl/create.sh": "test_curl_samples",
    "curl/read.sh": "test_curl_samples",
    "curl/search.sh": "test_curl_samples",
    "curl/transaction.sh": "test_curl_samples",
    "curl/audit_export.sh": "test_curl_samples",
    "js/get_token.mjs": "test_js_samples",
    "js/create.mjs": "test_js_samples",
    "js/read.mjs": "test_js_samples",
    "js/search.mjs": "test_js_samples",
    "js/transaction.mjs": "test_js_samples",
    "js/audit_export.mjs": "test_js_samples",
}


@dataclass
class World:
    base: str  # the server's root URL
    fhir_base: str
    work: Path  # the samples' working directory (they write audit.ndjson there)
    clinical_id: str
    clinical_key: Path  # a private JWK
    auditor_id: str
    auditor_key: Path  # a PEM file


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("samples")
    app = create_app({"DATABASE_URL": database_url, "TESTING": True})
    clinical, clinical_jwks = new_client_key("ES384")
    auditor, auditor_jwks = new_client_key("ES384")
    clinical_key = work / "clinical.jwk"
    clinical_key.write_text(json.dumps(clinical.as_dict(private=True)))
    auditor_key = work / "auditor.pem"
    auditor_key.write_bytes(auditor.as_pem(private=True))
    clinical_id = register_client(app, role="clinical-system", scope="system/*.cruds", jwks=clinical_jwks)
    auditor_id = register_client(app, role="auditor", scope="system/AuditEvent.rs", jwks=auditor_jwks)
    try:
        with live_server(database_url, workers=1, env={"FHIR_AUDIT_CHAIN_INTERVAL": "0.2"}) as base:
            yield World(base, f"{base}/fhir/R4", work, clinical_id, clinical_key, auditor_id, auditor_key)
    finally:
        app.extensions["fhir_db"]["engine"].dispose()
        empty_tables(database_url)


def run(world: World, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """A sample as a user runs it: its own process, the documented variables, the samples' directory."""
    environment = {
        **os.environ,
        "FHIR_BASE": world.fhir_base,
        "PYTHON": sys.executable,  # the curl samples' assertion helper (python/get_token.py --assertion)
        **env,
    }
    done = subprocess.run(
        argv, cwd=world.work, env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def python(world: World, name: str, *args: str, **env: str) -> str:
    return run(world, [sys.executable, str(PY / name), *args], **env).stdout


def clinical_env(world: World) -> dict[str, str]:
    return {
        "CLIENT_ID": world.clinical_id,
        "PRIVATE_KEY_FILE": str(world.clinical_key),
        "SCOPE": "system/*.cruds",
    }


def auditor_env(world: World) -> dict[str, str]:
    return {
        "CLIENT_ID": world.auditor_id,
        "PRIVATE_KEY_FILE": str(world.auditor_key),
        "SCOPE": "system/AuditEvent.rs",
    }


@pytest.fixture(scope="module")
def token(world: World) -> str:
    return python(world, "get_token.py", **clinical_env(world)).strip()


@pytest.fixture(scope="module")
def auditor_token(world: World) -> str:
    return python(world, "get_token.py", **auditor_env(world)).strip()


def created_id(output: str) -> str:
    match = re.search(r"created Patient/([A-Za-z0-9.-]+)", output)
    assert match, output
    return match.group(1)


def wait_for_chained_events(world: World, auditor_token: str, patient: str) -> None:
    """Exports hold only hash-chained events; the chainer runs every 0.2 s here."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        resp = requests.get(
            f"{world.base}/audit/export",
            params={"format": "ndjson", "patient": patient},
            headers={"Authorization": f"Bearer {auditor_token}"},
            timeout=10,
        )
        if resp.status_code == 200 and '"resourceType":"AuditEvent"' in resp.text:
            return
        time.sleep(0.3)
    pytest.fail(f"no chained audit event about {patient} after 15 s")


# -- Python ------------------------------------------------------------------------------------------------
def test_python_token(world, token, auditor_token):
    assert JWT.match(token) and JWT.match(auditor_token)  # from a JWK file, and from a PEM file
    done = run(world, [sys.executable, str(PY / "get_token.py")], **clinical_env(world))
    assert "granted scope 'system/*.cruds' for 300 s" in done.stderr
    assertion = python(world, "get_token.py", "--assertion", **clinical_env(world)).strip()
    claims = jwt.decode(assertion, jwt_key(world.clinical_key), algorithms=["ES384"]).claims
    assert claims["iss"] == claims["sub"] == world.clinical_id
    assert claims["aud"] == f"{world.base}/auth/token"


def test_python_new_key_then_register_with_the_cli(world, database_url):
    """The walkthrough of docs/authentication.md: make a key pair, register its public half, get a token."""
    out = python(world, "new_key.py", "walkthrough")
    assert "private key: walkthrough.jwk" in out and (world.work / "walkthrough.jwks.json").is_file()
    assert (world.work / "walkthrough.jwk").stat().st_mode & 0o077 == 0  # owner-only
    # `fhir-api clients add`, in process: the command itself, without a second interpreter's start-up.
    args = ["clients", "add", "walkthrough", "--role", "clinical-system"]
    args += ["--scope", "system/Patient.rs system/Observation.rs"]
    args += ["--jwks-file", str(world.work / "walkthrough.jwks.json")]
    added = CliRunner().invoke(main, args, env={"FHIR_DATABASE_URL": database_url})
    assert added.exit_code == 0, added.output
    client_id = added.output.strip()
    env = {
        "CLIENT_ID": client_id,
        "PRIVATE_KEY_FILE": "walkthrough.jwk",
        "SCOPE": "system/Patient.rs system/Condition.rs",
    }
    got = run(world, [sys.executable, str(PY / "get_token.py")], **env)
    assert JWT.match(got.stdout.strip())
    assert "granted scope 'system/Patient.rs'" in got.stderr  # asked ∩ registered: no Condition


def jwt_key(path: Path):
    from joserfc.jwk import ECKey

    return ECKey.import_key(json.loads(path.read_text()))


def test_python_create_read_search(world, token):
    family = f"Sample{uuid.uuid4().hex[:8]}"
    first = python(world, "create.py", TOKEN=token, FAMILY=family)
    assert 'ETag W/"1"' in first and f"Location: {world.fhir_base}/Patient/" in first
    pid = created_id(first)
    second = created_id(python(world, "create.py", TOKEN=token, FAMILY=family))

    read = python(world, "read.py", TOKEN=token, PATIENT_ID=pid)
    assert read.splitlines() == [
        f'Patient/{pid} ETag W/"1"',
        f"name: Peter James {family}",
        "birthDate: 1974-12-25",
    ]

    found = python(world, "search.py", TOKEN=token, QUERY=f"Patient?family={family}&_count=1")
    assert "total: 2" in found and "pages: 2" in found  # one per page: the next link was followed
    assert f"Patient/{pid} (match)" in found and f"Patient/{second} (match)" in found


def test_python_transaction(world, token):
    mrn = uuid.uuid4().hex
    first = python(world, "transaction.py", TOKEN=token, MRN=mrn).splitlines()
    assert first[0] == "transaction-response: 2 entries"
    assert first[1].startswith("201 Created Patient/") and first[2].startswith("201 Created Observation/")
    again = python(world, "transaction.py", TOKEN=token, MRN=mrn).splitlines()
    assert again[1] == first[1].replace("201 Created", "200 OK")  # ifNoneExist found the same patient
    assert again[2].startswith("201 Created Observation/") and again[2] != first[2]


def test_python_fhirclient(world, token):
    family = f"Client{uuid.uuid4().hex[:8]}"
    pid = created_id(python(world, "create.py", TOKEN=token, FAMILY=family))
    env = {**clinical_env(world), "SCOPE": "system/Patient.rs", "PATIENT_ID": pid, "FAMILY": family}
    out = python(world, "fhirclient_backend.py", **env)
    assert "server: FHIR 4.0.1" in out and "authorized: True" in out
    assert f"read Patient/{pid}: Peter James {family}" in out
    assert f"search family={family}: 1 patients" in out and f"  Patient/{pid}" in out


def test_python_fhirpy(world, token):
    family = f"Fhirpy{uuid.uuid4().hex[:8]}"
    out = python(world, "fhirpy_crud.py", TOKEN=token, FAMILY=family)
    pid = created_id(out)
    assert f"updated Patient/{pid} version 2" in out
    assert f"read Patient/{pid}: {family} born 1980-02-29" in out
    assert f"search family={family}: 1 patients" in out


def ndjson_lines(path: Path) -> list[str]:
    """NDJSON records split on newlines only: str.splitlines would also split inside a record at U+2028 or
    U+0085, which JSON strings may hold unescaped (the audit log records what clients sent)."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_python_audit_export(world, token, auditor_token):
    pid = created_id(python(world, "create.py", TOKEN=token, FAMILY="Audited"))
    python(world, "read.py", TOKEN=token, PATIENT_ID=pid)
    wait_for_chained_events(world, auditor_token, f"Patient/{pid}")

    out = python(world, "audit_export.py", TOKEN=auditor_token, OUTPUT="python-audit.ndjson")
    count = int(re.search(r"exported (\d+) audit events", out).group(1))
    assert count > 0, out
    assert "manifest signature: ok" in out and "manifest count: ok" in out and "manifest sha256: ok" in out
    lines = ndjson_lines(world.work / "python-audit.ndjson")
    assert len(lines) == count + 1 and json.loads(lines[-1])["resourceType"] == "Parameters"
    assert all(json.loads(line)["resourceType"] == "AuditEvent" for line in lines[:-1])

    # The patient filter: this patient's create and read are in the log.
    about = python(
        world, "audit_export.py", TOKEN=auditor_token, PATIENT=f"Patient/{pid}", OUTPUT="one.ndjson"
    )
    events = [json.loads(line) for line in ndjson_lines(world.work / "one.ndjson")[:-1]]
    assert {e["action"] for e in events} >= {"C", "R"}, about

    # A clinical token may not export the log.
    refused = subprocess.run(
        [sys.executable, str(PY / "audit_export.py")],
        cwd=world.work,
        env={**os.environ, "FHIR_BASE": world.fhir_base, "TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "403" in refused.stderr


# -- curl --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CURL, reason="needs curl and sh")
def test_curl_samples(world, auditor_token):
    def sh(name: str, **env: str) -> str:
        return run(world, ["sh", str(CURL / name)], **env).stdout

    got = run(world, ["sh", str(CURL / "get_token.sh")], **clinical_env(world))
    curl_token = got.stdout.strip()
    assert JWT.match(curl_token) and "granted scope: system/*.cruds" in got.stderr

    family = f"Curl{uuid.uuid4().hex[:8]}"
    created = sh("create.sh", TOKEN=curl_token, FAMILY=family)
    assert created.startswith("HTTP/1.1 201") and 'ETag: W/"1"' in created
    pid = re.search(r"Location: \S+/Patient/([A-Za-z0-9.-]+)/_history/1", created).group(1)

    read = sh("read.sh", TOKEN=curl_token, PATIENT_ID=pid)
    assert (
        read.startswith("HTTP/1.1 200")
        and json.loads(read.split("\n\n", 1)[1])["name"][0]["family"] == family
    )

    bundle = json.loads(sh("search.sh", TOKEN=curl_token, QUERY=f"Patient?family={family}"))
    assert (
        bundle["type"] == "searchset" and bundle["total"] == 1 and bundle["entry"][0]["resource"]["id"] == pid
    )

    result = json.loads(sh("transaction.sh", TOKEN=curl_token, MRN=uuid.uuid4().hex))
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    observation = result["entry"][1]["resource"]
    assert (
        observation["subject"]["reference"]
        == result["entry"][0]["response"]["location"].split("/_history")[0]
    )

    audit_token = run(world, ["sh", str(CURL / "get_token.sh")], **auditor_env(world)).stdout.strip()
    wait_for_chained_events(world, auditor_token, f"Patient/{pid}")
    exported = sh("audit_export.sh", TOKEN=audit_token, PATIENT=f"Patient/{pid}", OUTPUT="curl-audit.ndjson")
    count = int(re.search(r"audit events: (\d+)", exported).group(1))
    assert count > 0 and '"id":"audit-export-manifest"' in exported
    assert len(ndjson_lines(world.work / "curl-audit.ndjson")) == count + 1


# -- JavaScript --------------------------------------------------------------------------------------------
# How a sample names an endpoint: "}/Patient" is f"{FHIR_BASE}/Patient..." in Python,
# `${FHIR_BASE}/Patient...` in JavaScript.
ENDPOINTS = (
    "}/.well-known/smart-configuration",
    "}/Patient",
    "}/audit/export",
    "}/audit/checkpoints",
    "_total=accurate",
    '"transaction"',
)


@pytest.mark.parametrize("name", sorted(p.name for p in JS.glob("*.mjs")))
def test_js_samples_need_no_packages_and_call_what_the_python_ones_call(name):
    text = (JS / name).read_text()
    imports = re.findall(r"""^import\s.*?from\s+["']([^"']+)["']""", text, flags=re.M)
    assert all(module.startswith("node:") for module in imports), imports  # built-ins only, no npm
    twin = PY / name.replace(".mjs", ".py")
    assert twin.is_file(), f"{name} has no Python counterpart"
    for endpoint in ENDPOINTS:
        if endpoint in twin.read_text():
            assert endpoint in text, f"{name} does not call {endpoint} as {twin.name} does"


@pytest.mark.skipif(
    NODE is None, reason="node is not installed: the JavaScript samples were checked statically only"
)
def test_js_samples(world, auditor_token):
    def node(name: str, **env: str) -> str:
        return run(world, [str(NODE), str(JS / name)], **env).stdout

    js_token = node("get_token.mjs", **clinical_env(world)).strip()
    assert JWT.match(js_token)
    js_auditor = node("get_token.mjs", **auditor_env(world)).strip()  # from the PEM file
    assert JWT.match(js_auditor)

    family = f"Node{uuid.uuid4().hex[:8]}"
    pid = created_id(node("create.mjs", TOKEN=js_token, FAMILY=family))
    read = node("read.mjs", TOKEN=js_token, PATIENT_ID=pid)
    assert read.splitlines() == [
        f'Patient/{pid} ETag W/"1"',
        f"name: Peter James {family}",
        "birthDate: 1974-12-25",
    ]
    found = node("search.mjs", TOKEN=js_token, QUERY=f"Patient?family={family}")
    assert "total: 1" in found and f"Patient/{pid} (match)" in found
    lines = node("transaction.mjs", TOKEN=js_token, MRN=uuid.uuid4().hex).splitlines()
    assert lines[0] == "transaction-response: 2 entries" and lines[1].startswith("201 Created Patient/")

    wait_for_chained_events(world, auditor_token, f"Patient/{pid}")
    out = node("audit_export.mjs", TOKEN=js_auditor, PATIENT=f"Patient/{pid}", OUTPUT="js-audit.ndjson")
    assert re.search(r"exported [1-9]\d* audit events", out), out
    assert "manifest signature: ok" in out and "manifest sha256: ok" in out


# -- the documented receiver code for signed subscription notifications --------------------------------------
BODY = b'{"resourceType":"Bundle","type":"history","entry":[{"resource":{"valueQuantity":{"value":1.50}}}]}'
VERIFIERS = [pytest.param([sys.executable, str(PY / "verify_webhook.py")], id="python")]
VERIFIERS.append(
    pytest.param(
        [NODE or "node", str(JS / "verify_webhook.js")],
        id="javascript",
        marks=pytest.mark.skipif(NODE is None, reason="node is not installed"),
    )
)


def _run_verifier(command: list[str], secret: str, headers: dict[str, str], body: bytes) -> bool:
    done = subprocess.run(
        [*command, secret, headers["X-Timestamp"], headers["X-Signature"]],
        input=body,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.parametrize("command", VERIFIERS)
def test_documented_verification_matches_the_server(command):
    secret, old = signing.new_secret(), signing.new_secret()
    headers = signing.headers([secret], BODY)
    assert _run_verifier(command, secret, headers, BODY)
    assert not _run_verifier(command, secret, headers, BODY.replace(b"1.50", b"1.5"))
    assert not _run_verifier(command, signing.new_secret(), headers, BODY)
    stale = signing.headers([secret], BODY, now=time.time() - 3600)
    assert not _run_verifier(command, secret, stale, BODY)
    rotating = signing.headers([secret, old], BODY)  # both secrets sign during a rotation
    assert _run_verifier(command, secret, rotating, BODY) and _run_verifier(command, old, rotating, BODY)


# -- coverage of the samples themselves --------------------------------------------------------------------
def test_every_sample_is_exercised():
    files = {str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.suffix in (".py", ".sh", ".mjs")}
    assert files == set(EXERCISED), "a sample without a test, or a test of a missing sample"
    names = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    assert set(EXERCISED.values()) <= names
