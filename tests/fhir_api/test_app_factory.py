"""The application object itself (``fhir_api.create_app``)."""

from __future__ import annotations

import inspect

import pytest

from fhir_api import create_app
from tests.helpers import empty_tables


@pytest.fixture
def app(database_url):
    application = create_app({"DATABASE_URL": database_url, "TESTING": True})
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


def test_the_app_inspects_each_hook_once_and_still_refuses_coroutines(app, monkeypatch):
    """``ensure_sync`` runs for every hook of every request: the answer is remembered per function, and an
    ``async def`` view is refused as plain Flask refuses it (no async extra installed)."""
    calls = []
    real = inspect.iscoroutinefunction
    monkeypatch.setattr("flask.app.iscoroutinefunction", lambda f: calls.append(f) or real(f))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    first = len(calls)
    assert first > 0
    assert client.get("/healthz").status_code == 200
    assert len(calls) == first  # nothing inspected again

    async def view() -> str:
        return "never"

    with pytest.raises(RuntimeError, match="async"):
        app.ensure_sync(view)
