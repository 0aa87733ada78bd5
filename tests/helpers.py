"""Small helpers shared by tests."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fhir_api.config import normalise_database_url
from fhir_api.db import Base, make_engine
from fhir_api.migrate import upgrade

FHIR = "application/fhir+json"


def patient(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Test", "given": ["Ann"]}]}
    body.update(fields)
    return body


def create(client, body: dict[str, Any], res_type: str | None = None):
    res_type = res_type or body["resourceType"]
    resp = client.post(f"/fhir/R4/{res_type}", json=body, headers={"Content-Type": FHIR})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp


def created_id(resp) -> str:
    return resp.headers["Location"].split("/_history/")[0].rsplit("/", 1)[1]


def issue(resp, index: int = 0) -> dict[str, Any]:
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][index]


# -- access tokens -------------------------------------------------------------------------------------------
def mint_token(
    app,
    *,
    scope: str = "system/*.*",
    role: str = "clinical-system",
    client_id: str = "test-client",
    **context: Any,
) -> str:
    """An access token signed by the app's key, as its token endpoint would issue it (no client needed)."""
    from fhir_api.auth import tokens

    with app.test_request_context():
        token, _ = tokens.issue(client_id=client_id, role=role, scope=scope, **context)
    return token


class AuthorizedClient(FlaskClient):
    """A test client that presents a fresh access token on every request (explicit headers still win)."""

    def __init__(self, *args: Any, token_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token_kwargs = token_kwargs or {}
        self._token = ""
        self._minted = float("-inf")

    def open(self, *args: Any, **kwargs: Any):
        if time.monotonic() - self._minted > 120:  # tokens live 300 s; long fixtures outlive one
            self._token = mint_token(self.application, **self.token_kwargs)
            self._minted = time.monotonic()
        self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {self._token}"
        return super().open(*args, **kwargs)


def authorized_client(app, **token_kwargs: Any) -> AuthorizedClient:
    """A client with a ``system/*.*`` clinical-system token unless told otherwise."""
    return AuthorizedClient(app, app.response_class, use_cookies=True, token_kwargs=token_kwargs)


# -- registered backend clients (private_key_jwt) ------------------------------------------------------------
def new_client_key(alg: str = "ES384"):
    """A client key pair: (private JWK, public JWK Set) for RS384/ES384-style algorithms."""
    from joserfc.jwk import ECKey, RSAKey

    curves = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
    key = ECKey.generate_key(curves[alg]) if alg in curves else RSAKey.generate_key(2048)
    key.ensure_kid()
    return key, {"keys": [{**key.as_dict(private=False), "alg": alg}]}


def client_assertion(key, client_id: str, token_url: str, alg: str = "ES384", **overrides: Any) -> str:
    """A signed client assertion as SMART Backend Services clients send it; ``overrides`` edit claims
    (a None value removes the claim) or, under ``header``, the JOSE header."""
    import uuid

    from joserfc import jwt

    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    header: dict[str, Any] = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    header.update(overrides.pop("header", {}))
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return jwt.encode(header, claims, key, algorithms=[header["alg"]])


def register_client(app, *, role: str = "clinical-system", scope: str = "system/*.*", **fields: Any) -> str:
    """Register a client straight in the registry (as `fhir-api clients add` does); returns its id."""
    from fhir_api.auth.clients import Registration, add_client
    from fhir_api.db import new_session

    with app.app_context(), new_session() as s:
        return add_client(s, Registration(name=f"test {role}", role=role, scope=scope, **fields)).client_id


@contextmanager
def fresh_database(directory: Path, prefix: str) -> Iterator[str]:
    """A migrated database of its own: a SQLite file in ``directory``, or, when FHIR_TEST_DATABASE_URL names a
    PostgreSQL server, a database created there and dropped on exit (only the one created here)."""
    server = os.environ.get("FHIR_TEST_DATABASE_URL")
    if not server:
        url = f"sqlite:///{directory / f'{prefix}.sqlite3'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    server = normalise_database_url(server)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty_tables(url: str) -> None:
    """Every table emptied but the audit log's, which is append-only (it grows across tests)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            if not table.name.startswith("audit_"):
                conn.execute(table.delete())
    engine.dispose()


# -- fail-closed audit and browsers (shared by several test files) -------------------------------------------
def refuse_audit_inserts(app) -> None:
    """The audit table refuses every insert (a full disk, a revoked grant): requests must fail closed."""
    engine = app.extensions["fhir_db"]["engine"]
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER audit_refuse BEFORE INSERT ON audit_event "
                    "BEGIN SELECT RAISE(ABORT, 'audit_event refuses inserts'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'audit_event refuses inserts'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER audit_refuse BEFORE INSERT ON audit_event "
                    "FOR EACH ROW EXECUTE FUNCTION audit_refuse()"
                )
            )


@contextmanager
def headless_chromium(chromium: str, chromedriver: str) -> Iterator[Any]:
    """Debian's chromium under selenium, headless, with the browser console kept for CSP checks."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
