"""`fhir-api clients add|list|disable` and the demo set-up, through the console script."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fhir_api import create_app
from fhir_api.auth.demo import DEMO_APPS, DEMO_CLIENTS, DEMO_USERS, signed_assertion
from fhir_api.cli import main
from fhir_api.db import make_engine
from fhir_api.migrate import upgrade
from tests.helpers import new_client_key


@pytest.fixture
def cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'clients.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("FHIR_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(main, list(args))
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return run


def test_add_list_disable(cli, tmp_path):
    _, jwks = new_client_key("RS384")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    client_id = cli(
        "clients", "add", "Hospital A", "--role", "clinical-system", "--jwks-file", "jwks.json",
        "--scope", "system/*.rs", "--scope", "system/Observation.c",
    ).strip()  # fmt: skip
    assert len(client_id) >= 20
    listed = cli("clients", "list")
    assert f"{client_id}\tHospital A\tclinical-system\tenabled\tsystem/*.rs system/Observation.c" in listed
    assert f"disabled {client_id}" in cli("clients", "disable", client_id)
    assert f"{client_id}\tHospital A\tclinical-system\tdisabled" in cli("clients", "list")
    assert "no client" in cli("clients", "disable", "nope", ok=False)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--role", "wizard", "--jwks-url", "https://k.example.org/j"], "unknown role"),
        (["--role", "clinical-system"], "needs --jwks-file or --jwks-url"),
        (["--role", "insurer", "--jwks-url", "https://k.example.org/j"], "needs --organization"),
        (["--role", "clinician"], "needs at least one --redirect-uri"),
        (
            ["--role", "clinical-system", "--public", "--jwks-url", "https://k.example.org/j"],
            "cannot be public",
        ),
        (
            ["--role", "clinical-system", "--jwks-url", "https://k/j", "--scope", "system/Patient.sr"],
            "Invalid",
        ),
    ],
)
def test_add_refuses_bad_registrations(cli, args, reason):
    assert reason in cli("clients", "add", "x", *args, ok=False)


def test_a_private_key_in_the_jwks_is_refused(cli, tmp_path):
    key, _ = new_client_key("ES384")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    out = cli("clients", "add", "x", "--role", "clinical-system", "--jwks-file", "jwks.json", ok=False)
    assert "private key" in out


def test_demo_setup_is_idempotent_and_its_clients_get_tokens(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FHIR_AUTH_SIGNING_KEY_FILE", str(tmp_path / "var/keys/signing.jwk"))
    first = cli("demo-setup")
    assert "created token-signing key" in first
    second = cli("demo-setup")
    assert "created" not in second

    def backend_ids(output: str) -> dict[str, str]:
        return {w[0]: w[-1] for line in output.splitlines() if (w := line.split()) and w[0] in DEMO_CLIENTS}

    ids = backend_ids(second)
    assert set(ids) == set(DEMO_CLIENTS) and ids == backend_ids(first)
    for app_name in DEMO_APPS:
        assert app_name in second and "public app" in second
    passwords = json.loads((tmp_path / "var/keys/users.json").read_text())
    assert set(passwords) == set(DEMO_USERS)
    assert (tmp_path / "var/keys/users.json").stat().st_mode & 0o077 == 0  # owner-only
    for username, password in passwords.items():
        assert f"user {username}" in second and password in second
    app = create_app()
    client = app.test_client()
    _, assertion = signed_assertion(
        tmp_path / "var/keys/clients/demo-insurer.json", "http://localhost/auth/token"
    )
    resp = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["scope"].split() == [
        "system/Patient.rs",
        "system/Coverage.rs",
        "system/Claim.rs",
        "system/ClaimResponse.rs",
        "system/ExplanationOfBenefit.rs",
    ]
    app.extensions["fhir_db"]["engine"].dispose()


def test_serve_refuses_to_start_without_a_signing_key(cli, monkeypatch):
    monkeypatch.delenv("FHIR_AUTH_SIGNING_KEY_FILE", raising=False)
    assert "FHIR_AUTH_SIGNING_KEY_FILE is not set" in cli("serve", "--port", "1", ok=False)


def test_users_add_and_list(cli):
    password = cli("users", "add", "dr-lee", "--role", "clinician", "--fhir-user", "Practitioner/p1").strip()
    assert len(password) >= 12
    listed = cli("users", "list")
    assert "dr-lee\tclinician\tPractitioner/p1\tenabled" in listed
    assert "exists" in cli(
        "users", "add", "dr-lee", "--role", "clinician", "--fhir-user", "Practitioner/p1", ok=False
    )
    assert "Patient/<id>" in cli(
        "users", "add", "pat", "--role", "patient", "--fhir-user", "Practitioner/p1", ok=False
    )
    app = create_app()
    from fhir_api import db
    from fhir_api.auth.users import authenticate

    with app.app_context(), db.new_session() as s:
        assert authenticate(s, "dr-lee", password) is not None
        assert authenticate(s, "dr-lee", password + "x") is None
        assert authenticate(s, "nobody", password) is None
    app.extensions["fhir_db"]["engine"].dispose()


def test_client_ids_never_look_like_options():
    from fhir_api.auth.clients import new_client_id

    assert all(new_client_id()[0].isalnum() for _ in range(2000))  # ~1 in 32 raw ids starts with - or _
