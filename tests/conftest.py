"""Fixtures: one database per test session (SQLite file, or a fresh PostgreSQL database created on the
server named by FHIR_TEST_DATABASE_URL), emptied after every test; ``app`` and ``client`` per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from crypto.kms import generate_key_file
from fhir_api import create_app
from fhir_api.auth.keys import generate_signing_key_file
from fhir_api.config import normalise_database_url
from fhir_api.db import Base, make_engine
from fhir_api.migrate import upgrade
from tests.helpers import authorized_client

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fhir-r4"


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One token-signing key for the run, given to every app through the environment."""
    path = tmp_path_factory.mktemp("keys") / "signing.jwk"
    generate_signing_key_file(path)
    previous = os.environ.get("FHIR_AUTH_SIGNING_KEY_FILE")
    os.environ["FHIR_AUTH_SIGNING_KEY_FILE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FHIR_AUTH_SIGNING_KEY_FILE", None)
    else:
        os.environ["FHIR_AUTH_SIGNING_KEY_FILE"] = previous


@pytest.fixture(scope="session", autouse=True)
def crypto_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One keyring (key-encryption keys) for the run, given to every app through the environment."""
    path = tmp_path_factory.mktemp("crypto") / "keyring.json"
    generate_key_file(path)
    previous = os.environ.get("FHIR_CRYPTO_KEY_FILE")
    os.environ["FHIR_CRYPTO_KEY_FILE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("FHIR_CRYPTO_KEY_FILE", None)
    else:
        os.environ["FHIR_CRYPTO_KEY_FILE"] = previous


@pytest.fixture(scope="session")
def shared_fhir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/fhir-r4 is not present")
    return SHARED


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = os.environ.get("FHIR_TEST_DATABASE_URL")
    if not server:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    server = normalise_database_url(server)
    name = f"fhir_test_{uuid.uuid4().hex[:12]}"
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
        with admin.connect() as conn:  # only the database this session created
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def app(request: pytest.FixtureRequest, database_url: str):
    """The app on the session's database; ``@pytest.mark.unprotected`` tests get protection switched off
    (tests of the search engine's own semantics on elements that are protected by default)."""
    protected = request.node.get_closest_marker("unprotected") is None
    application = create_app({"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": protected})
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    _empty_tables(database_url)


@pytest.fixture
def client(app):
    """A client presenting a system/*.* token (tests of authorization build their own)."""
    return authorized_client(app)


@pytest.fixture
def anonymous(app):
    """A client without any token."""
    return app.test_client()
