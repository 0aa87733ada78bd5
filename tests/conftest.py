"""Fixtures: one database per test session (SQLite file, or a fresh PostgreSQL database created on the
server named by FHIR_TEST_DATABASE_URL), emptied after every test; ``app`` and ``client`` per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from audit.signing import generate_key_file as generate_audit_key_file
from crypto.kms import generate_key_file
from fhir_api import create_app
from fhir_api.auth.keys import generate_signing_key_file
from tests.helpers import authorized_client, empty_tables, fresh_database

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fhir-r4"


@contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the duration, then what was there before."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One token-signing key for the run, given to every app through the environment."""
    path = tmp_path_factory.mktemp("keys") / "signing.jwk"
    generate_signing_key_file(path)
    with environment("FHIR_AUTH_SIGNING_KEY_FILE", str(path)):
        yield path


@pytest.fixture(scope="session", autouse=True)
def crypto_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One keyring (key-encryption keys) for the run, given to every app through the environment."""
    path = tmp_path_factory.mktemp("crypto") / "keyring.json"
    generate_key_file(path)
    with environment("FHIR_CRYPTO_KEY_FILE", str(path)):
        yield path


@pytest.fixture(scope="session", autouse=True)
def audit_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One audit signing key (Ed25519) for the run: checkpoints are signed and events carry MACs."""
    path = tmp_path_factory.mktemp("audit") / "audit-signing.jwk"
    generate_audit_key_file(path)
    with environment("FHIR_AUDIT_SIGNING_KEY_FILE", str(path)):
        yield path


@pytest.fixture(scope="session", autouse=True)
def subscription_workers_off() -> Iterator[None]:
    """No app built in a test (live servers in threads included) starts a subscription worker thread: one
    left running on the session's database would deliver with its own settings beside the tests' own
    steps. The end-to-end tests turn it on for the servers they start."""
    with environment("FHIR_SUBSCRIPTION_WORKER", "false"):
        yield


@pytest.fixture(scope="session", autouse=True)
def rate_limits_off() -> Iterator[None]:
    """Tests fire requests faster than any client should; tests/fhir_api/test_rate_limits.py turns the
    limits on for itself."""
    with environment("FHIR_RATE_LIMIT_ENABLED", "false"):
        yield


@pytest.fixture(scope="session")
def shared_fhir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/fhir-r4 is not present")
    return SHARED


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("db"), "fhir_test") as url:
        yield url


@pytest.fixture
def app(request: pytest.FixtureRequest, database_url: str):
    """The app on the session's database; ``@pytest.mark.unprotected`` tests get protection switched off
    (tests of the search engine's own semantics on elements that are protected by default)."""
    protected = request.node.get_closest_marker("unprotected") is None
    application = create_app({"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": protected})
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


@pytest.fixture
def client(app):
    """A client presenting a system/*.* token (tests of authorization build their own)."""
    return authorized_client(app)


@pytest.fixture
def anonymous(app):
    """A client without any token."""
    return app.test_client()
