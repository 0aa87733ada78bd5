"""The console script: db upgrade creates the schema that readyz then accepts."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from fhir_api import create_app
from fhir_api.cli import main
from fhir_api.db import Base, make_engine
from fhir_api.migrate import head_revision, upgrade


def test_db_upgrade_command(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("FHIR_DATABASE_URL", url)
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"database at {head_revision()}" in result.output
    app = create_app()
    assert app.test_client().get("/readyz").status_code == 200
    app.extensions["fhir_db"]["engine"].dispose()


def test_migrations_match_the_models(tmp_path, database_url):
    """Autogenerate finds nothing to do: the ORM models and the migration scripts describe one schema."""
    create_app()  # imports every model module, whatever ran before this test

    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
