from __future__ import annotations

from fhir_api import create_app
from fhir_api.migrate import upgrade


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"


def test_readyz_503_when_schema_is_behind(tmp_path):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["issue"][0]["code"] == "transient"
    with app.app_context():
        from fhir_api import db

        upgrade(db.engine())
    assert app.test_client().get("/readyz").status_code == 200
    app.extensions["fhir_db"]["engine"].dispose()


def test_readyz_503_when_database_unreachable():
    app = create_app({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    try:
        resp = app.test_client().get("/readyz")
        assert resp.status_code == 503
    finally:
        app.extensions["fhir_db"]["engine"].dispose()  # stops the threads its request started


def test_config_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FHIR_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("FHIR_MAX_PAGE_SIZE", "77")
    app = create_app()
    assert app.config["DATABASE_URL"] == "postgresql+psycopg://u@h/db"
    assert app.config["MAX_PAGE_SIZE"] == 77
    app.extensions["fhir_db"]["engine"].dispose()
