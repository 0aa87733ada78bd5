"""The ``fhir-api`` console script: serve, db upgrade, seed (and Flask's routes/shell)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from fhir_api import create_app


@click.group(cls=FlaskGroup, create_app=create_app, add_version_option=False, load_dotenv=False)
@click.pass_context
def main(ctx: click.Context) -> None:
    """FHIR R4 server."""
    ctx.call_on_close(_close_database)


def _close_database() -> None:
    """A command's app owns a connection pool: close it when the command ends (``serve`` builds its own)."""
    from flask.cli import ScriptInfo

    info = click.get_current_context().find_object(ScriptInfo)
    app = getattr(info, "_loaded_app", None) if info else None
    if app is not None and "fhir_db" in app.extensions:
        app.extensions["fhir_db"]["engine"].dispose()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Apply Alembic migrations."""
    from fhir_api import db as database
    from fhir_api import migrate

    migrate.upgrade(database.engine(), revision)
    click.echo(f"database at {migrate.current_revision(database.engine())} ({_safe_url()})")


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(current_app.config["DATABASE_URL"]).render_as_string(hide_password=True)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Default: 2 x CPUs + 1.")
def serve(host: str, port: int, workers: int | None) -> None:
    """Serve the API under gunicorn."""
    from fhir_api.serving import GunicornApp, default_workers, gunicorn_options

    GunicornApp(gunicorn_options(f"{host}:{port}", workers or default_workers())).run()


@main.group("search")
def search_group() -> None:
    """Search indexes."""


@search_group.command("reindex")
@click.option("--type", "res_type", default=None, help="Only this resource type.")
@click.option("--batch", "batch_size", default=500, show_default=True, type=int)
@with_appcontext
def search_reindex(res_type: str | None, batch_size: int) -> None:
    """Rebuild the search indexes of every current resource (online; batches lock only their rows)."""
    from fhir_api import db as database
    from resources.search.reindex import reindex

    public = current_app.config.get("PUBLIC_URL")
    local_base = f"{public.rstrip('/')}/fhir/R4" if public else None
    count = reindex(database.new_session, res_type, batch_size, progress=True, local_base=local_base)
    database.analyze(database.engine())
    click.echo(f"reindexed {count} resources")


@main.command("seed")
@click.option("--patients", default=10, show_default=True, type=int)
@click.option("--seed", "seed_value", default=42, show_default=True, type=int, help="Random seed.")
@with_appcontext
def seed_cmd(patients: int, seed_value: int) -> None:
    """Load a deterministic synthetic population through the API's own write path."""
    from fhir_api import db as database
    from seed.loader import load_population

    summary = load_population(patients=patients, seed=seed_value, progress=True)
    database.analyze(database.engine())
    click.echo(", ".join(f"{n} {t}" for t, n in sorted(summary.items())))
