"""The ``fhir-api`` console script: serve, db upgrade, seed (and Flask's routes/shell)."""

from __future__ import annotations

import sys
from typing import Any

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


@main.command("serve", with_appcontext=False)  # builds its app after preparing the metrics dir
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Default: 2 x CPUs + 1.")
@click.option("--threads", default=None, type=int, help="Per worker (default: FHIR_THREADS or 4; 1 = sync).")
def serve(host: str, port: int, workers: int | None, threads: int | None) -> None:
    """Serve the API under gunicorn."""
    from fhir_api.auth.keys import AuthConfigurationError, signing_key
    from fhir_api.ratelimit import serving_problem
    from fhir_api.serving import GunicornApp, default_workers, gunicorn_options, prepare_metrics_dir

    prepare_metrics_dir()  # before create_app imports prometheus_client
    app = create_app()
    workers = workers or default_workers()
    problem = serving_problem(app.config, workers)
    if problem:
        raise click.ClickException(problem)
    if app.config.get("AUTH_ENFORCE", True) in (False, "false", "0"):
        click.secho(
            "WARNING: FHIR_AUTH_ENFORCE=false: FHIR requests are served WITHOUT a token (benchmarks only)",
            fg="red",
            err=True,
        )
    try:
        if app.config.get("AUTH_MODE", "builtin") == "builtin":
            signing_key(app)  # refuse to start rather than fail every token request later
    except AuthConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    _check_encryption_keys(app)
    from audit.signing import AuditKeyError, app_key

    try:
        if app.config.get("AUDIT", True) and app_key(app) is None:
            raise AuditKeyError(
                "FHIR_AUDIT_SIGNING_KEY_FILE is not set: the audit log signs its checkpoints and exports "
                "with an Ed25519 key. `make demo` creates one under var/keys/; in production, provision one."
            )
    except AuditKeyError as exc:
        raise click.ClickException(str(exc)) from None

    GunicornApp(gunicorn_options(f"{host}:{port}", workers, threads=threads)).run()


def _local_base() -> str | None:
    """This server's FHIR base when configured: absolute references under it are indexed as local ones
    (the same ones requests index through their own base URL)."""
    public = current_app.config.get("PUBLIC_URL")
    return f"{public.rstrip('/')}/fhir/R4" if public else None


def _check_encryption_keys(app: Any) -> None:
    """Refuse to serve without usable KEKs, and create the first blind-index key before workers fork."""
    from fhir_api import db as database
    from fhir_api.errors import FhirError

    shield = app.extensions["fhir_protection"]
    if not shield.enabled:
        return
    try:
        with app.app_context():
            shield.provider.current_kid()
            with database.new_session() as s, database.write_transaction(s):
                shield.index_roots(s, create=True)
    except FhirError as exc:
        raise click.ClickException(str(exc)) from None


_CONFIG = ("110129", "Security Configuration")
_ROLES = ("110136", "Security Roles Changed")


def _audit_operation(subtype: tuple[str, str], detail: dict[str, str], entities: Any = ()) -> None:
    """Record a key operation in the audit log (who ran it, from where, what it changed). Keys live in a
    key file or a KMS, outside the database, so their record follows the change it reports."""
    import audit
    from fhir_api import db as database

    with database.new_session() as s:
        audit.record_operation(s, subtype, detail=detail, entities=entities)


def _register_audit_commands() -> None:
    from audit.cli import group as audit_group

    main.add_command(audit_group)


_register_audit_commands()


@main.group("keys")
def keys_group() -> None:
    """Encryption keys: key-encryption keys (KEKs) and the blind-index keys they wrap."""


@keys_group.command("init")
@click.argument("path", type=click.Path(dir_okay=False), default="var/keys/keyring.json")
def keys_init(path: str) -> None:
    """Create a key file with one random KEK (mode 0600); use it with FHIR_CRYPTO_KEY_FILE=PATH."""
    from pathlib import Path

    from crypto.kms import KeyConfigurationError, generate_key_file

    try:
        kid = generate_key_file(Path(path))
    except KeyConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {path} with key {kid}")


@keys_group.command("list")
@with_appcontext
def keys_list() -> None:
    """The KEKs, which one is current, and how many stored keys each still wraps."""
    from sqlalchemy import func, select

    from fhir_api import db as database
    from resources.models import ResourceVersion
    from resources.protection.models import IndexKey

    shield = current_app.extensions["fhir_protection"]
    current = shield.provider.current_kid()
    with database.new_session() as s:
        counts = dict(
            s.execute(
                select(ResourceVersion.key_id, func.count())
                .where(ResourceVersion.key_id.is_not(None))
                .group_by(ResourceVersion.key_id)
            ).all()
        )
        roots = s.execute(select(IndexKey.gen, IndexKey.state, IndexKey.key_id)).all()
    for kid in shield.provider.kids():
        mark = " (current)" if kid == current else ""
        click.echo(f"{kid}{mark}: wraps {counts.get(kid, 0)} data keys")
    for gen, state, kid in roots:
        click.echo(f"blind-index key {gen} ({state}) wrapped by {kid}")


@keys_group.command("rotate")
@click.option("--batch", "batch_size", default=500, show_default=True, type=int)
@click.option("--grace", default=2.0, show_default=True, type=float, help="Seconds before the last sweep.")
@click.option("--resume", is_flag=True, help="Do not add a KEK: finish moving keys to the current one.")
@with_appcontext
def keys_rotate(batch_size: int, grace: float, resume: bool) -> None:
    """Add a KEK, make it current, and re-wrap every data key under it (online, resumable)."""
    from tqdm import tqdm

    from fhir_api import db as database
    from resources.protection.rotation import rewrap_all, stale_count

    shield = current_app.extensions["fhir_protection"]
    kid = shield.provider.current_kid() if resume else shield.provider.rotate()
    click.echo(f"current key: {kid}")
    with database.new_session() as s:
        total = stale_count(s, kid)
        with tqdm(total=total, unit="key", desc="re-wrapping", disable=None) as bar:
            done = rewrap_all(s, shield, batch=batch_size, grace=grace, progress=bar.update)
    _audit_operation(_CONFIG, {"operation": "keys rotate", "current-key": kid, "rewrapped": str(done)})
    click.echo(f"re-wrapped {done} keys under {kid}")


@keys_group.command("rotate-index")
@click.option("--batch", "batch_size", default=500, show_default=True, type=int)
@click.option(
    "--settle",
    default=None,
    type=float,
    help="Seconds to wait for every worker to see the new key before rebuilding (default: their refresh "
    "interval plus 2 s).",
)
@with_appcontext
def keys_rotate_index(batch_size: int, settle: float | None) -> None:
    """Replace the blind-index root key and rebuild the blind indexes online (resumable).

    Searches keep returning everything meanwhile: they look rows up under the old and the new key."""
    import time

    from fhir_api import db as database
    from resources import jsonio
    from resources.protection.rotation import begin_index_rotation, finish_index_rotation, stale_index_rows
    from resources.protection.service import INDEX_KEY_TTL
    from resources.registry import supported_types
    from resources.repository import ResourceRepository
    from resources.search.indexer import write_index
    from resources.search.reindex import reindex

    shield = current_app.extensions["fhir_protection"]
    with database.new_session() as s:
        gen = begin_index_rotation(s, shield)
    click.echo(f"blind-index key {gen} is being built")
    time.sleep(INDEX_KEY_TTL + 2 if settle is None else settle)
    local_base = _local_base()
    done = 0
    for res_type in supported_types():
        if shield.protected_params(res_type):
            done += reindex(database.new_session, res_type, batch_size, progress=True, local_base=local_base)
    with database.new_session() as s:  # rows a worker wrote under the old key before it saw the new one
        for _ in range(100):
            stragglers = stale_index_rows(s, gen)
            if not stragglers:
                break
            with database.write_transaction(s):
                repo = ResourceRepository(s)
                for res_type, res_id in stragglers:
                    current = repo.read(res_type, res_id)
                    body = (
                        None
                        if current is None or current.deleted
                        else jsonio.loads_trusted(current.body or "{}")
                    )
                    write_index(s, res_type, res_id, body, replace=True, local_base=local_base)
        finish_index_rotation(s, shield, gen)
    _audit_operation(_CONFIG, {"operation": "keys rotate-index", "index-key": str(gen), "rebuilt": str(done)})
    click.echo(f"rebuilt the blind indexes of {done} resources under key {gen}; older keys retired")


@keys_group.command("reseal")
@click.option("--type", "res_type", default=None, help="Only this resource type.")
@click.option("--batch", "batch_size", default=200, show_default=True, type=int)
@with_appcontext
def keys_reseal(res_type: str | None, batch_size: int) -> None:
    """After the protection policy grew: seal what it now protects in every stored version, then rebuild
    the search indexes (so no clear value of a newly protected element stays in storage)."""
    from tqdm import tqdm

    from fhir_api import db as database
    from resources.protection.rotation import reseal
    from resources.search.reindex import reindex

    shield = current_app.extensions["fhir_protection"]
    with database.new_session() as s, tqdm(unit="version", desc="resealing", disable=None) as bar:
        changed = reseal(s, shield, res_type=res_type, batch=batch_size, progress=bar.update)
    _audit_operation(_CONFIG, {"operation": "keys reseal", "resealed": str(changed)})
    click.echo(f"resealed {changed} versions")
    done = reindex(database.new_session, res_type, 500, progress=True, local_base=_local_base())
    click.echo(f"reindexed {done} resources")


@keys_group.command("retire")
@click.argument("kid")
@with_appcontext
def keys_retire(kid: str) -> None:
    """Remove a KEK from the keyring; refused while any stored key still uses it."""
    from crypto.kms import KeyConfigurationError
    from fhir_api import db as database
    from resources.protection.rotation import in_use

    shield = current_app.extensions["fhir_protection"]
    with database.new_session() as s:
        if in_use(s, kid):
            raise click.ClickException(
                f"{kid} still wraps stored keys: run `fhir-api keys rotate --resume` first"
            )
    try:
        shield.provider.retire(kid)
    except KeyConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    _audit_operation(_CONFIG, {"operation": "keys retire", "key": kid})
    click.echo(f"retired {kid}")


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

    count = reindex(database.new_session, res_type, batch_size, progress=True, local_base=_local_base())
    database.analyze(database.engine())
    click.echo(f"reindexed {count} resources")


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--workers", default=None, type=int, help="Parallel loaders (default: CPUs, at most 4).")
@click.option("--chunk", default=500, show_default=True, type=int, help="NDJSON resources per transaction.")
def import_cmd(paths: tuple[str, ...], workers: int | None, chunk: int) -> None:
    """Load FHIR Bundles (transaction, batch, collection) and NDJSON files through the API's write path."""
    import multiprocessing

    from tqdm import tqdm

    from fhir_api import db as database
    from resources.importer import expand, run

    files = expand(list(paths))
    workers = workers or min(4, multiprocessing.cpu_count())
    with tqdm(total=len(files), unit="file", desc="importing", disable=None) as bar:
        results = run(files, workers, chunk, progress=lambda _r: bar.update(1))
    app = create_app()
    with app.app_context():
        database.analyze(database.engine())
    database.dispose(app)
    total = sum(r.resources for r in results)
    failed = [r for r in results if r.failed]
    click.echo(
        f"{len(files)} files, {total} resources: {sum(r.created for r in results)} created, "
        f"{sum(r.updated for r in results)} matched or updated, {sum(r.failed for r in results)} failed"
    )
    for r in failed:
        click.echo(f"FAILED {r.path}: {'; '.join(r.errors[:3])}", err=True)
    if failed:
        sys.exit(1)


@main.command("seed")
@click.option("--patients", default=10, show_default=True, type=int)
@click.option("--seed", "seed_value", default=42, show_default=True, type=int, help="Random seed.")
@click.option("--workers", default=1, show_default=True, type=int, help="Loader processes (PostgreSQL: 2+).")
@with_appcontext
def seed_cmd(patients: int, seed_value: int, workers: int) -> None:
    """Load a deterministic synthetic population through the API (transactions, audited as fhir-api-seed)."""
    from fhir_api import db as database
    from seed.loader import SeedError, load_population

    try:
        summary = load_population(patients=patients, seed=seed_value, progress=True, workers=workers)
    except (SeedError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    database.analyze(database.engine())
    click.echo(", ".join(f"{n} {t}" for t, n in sorted(summary.items())))


# -- authorization ----------------------------------------------------------------------------------------
@main.group("clients")
def clients_group() -> None:
    """SMART client registry."""


@clients_group.command("add")
@click.argument("name")
@click.option("--role", required=True, help="clinical-system, clinician, patient, insurer, auditor or admin.")
@click.option("--scope", "scopes", multiple=True, help="Registered scope(s); repeat or space-separate.")
@click.option("--jwks-url", default=None, help="The client's JWKS URL (private_key_jwt).")
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--organization", default=None, help="Organization/<id>: the payor identity of an insurer.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="App launch redirect URI(s).")
@click.option("--public", is_flag=True, help="A public app (PKCE, no client authentication).")
@click.option(
    "--allow-ip",
    "allowed_networks",
    multiple=True,
    help="Serve this client only from this address or CIDR block (repeat for several; default: anywhere).",
)
@with_appcontext
def clients_add(
    name: str,
    role: str,
    scopes: tuple[str, ...],
    jwks_url: str | None,
    jwks_file: str | None,
    organization: str | None,
    redirect_uris: tuple[str, ...],
    public: bool,
    allowed_networks: tuple[str, ...],
) -> None:
    """Register a client and print its client_id."""
    import json
    from pathlib import Path

    import audit
    from fhir_api import db as database
    from fhir_api.auth.clients import ClientError, Registration, add_client

    if jwks_url and jwks_file:
        raise click.UsageError("give --jwks-url or --jwks-file, not both")
    try:
        jwks = json.loads(Path(jwks_file).read_text()) if jwks_file else None
    except ValueError as exc:
        raise click.UsageError(f"--jwks-file is not JSON: {exc}") from None
    reg = Registration(
        name=name,
        role=role,
        scope=" ".join(scopes),
        jwks=jwks,
        jwks_url=jwks_url,
        organization=organization,
        redirect_uris=redirect_uris,
        public=public,
        allowed_networks=allowed_networks,
    )

    def recorded(session: Any, client: Any) -> None:
        detail = {
            "operation": "clients add",
            "client": client.client_id,
            "role": role,
            "scope": " ".join(scopes),
        }
        if client.allowed_networks:
            detail["networks"] = client.allowed_networks
        audit.record_operation(session, _ROLES, detail=detail, in_transaction=True)

    with database.new_session() as s:
        try:
            client = add_client(s, reg, audit=recorded)
        except ClientError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(client.client_id)


@clients_group.command("list")
@with_appcontext
def clients_list() -> None:
    """Registered clients, one per line (tab-separated)."""
    from fhir_api import db as database
    from fhir_api.auth.clients import list_clients

    with database.new_session() as s:
        for c in list_clients(s):
            state = "disabled" if c.disabled else "enabled"
            click.echo("\t".join([c.client_id, c.name, c.role, state, c.scope, c.allowed_networks or ""]))


@clients_group.command("disable")
@click.argument("client_id")
@with_appcontext
def clients_disable(client_id: str) -> None:
    """Refuse new tokens to a client (its tokens already issued expire within 5 minutes)."""
    import audit
    from fhir_api import db as database
    from fhir_api.auth.clients import ClientError, set_disabled

    def recorded(session: Any, _client: Any) -> None:
        detail = {"operation": "clients disable", "client": client_id}
        audit.record_operation(session, _ROLES, detail=detail, in_transaction=True)

    with database.new_session() as s:
        try:
            set_disabled(s, client_id, audit=recorded)
        except ClientError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"disabled {client_id}")


@main.group("subscriptions")
def subscriptions_group() -> None:
    """Subscriptions (rest-hook webhooks): their state, and a delivery worker of its own."""


@subscriptions_group.command("list")
@with_appcontext
def subscriptions_list() -> None:
    """Every subscription: id, owner, status, pending events, consecutive failures, criteria, error."""
    from fhir_api import db as database
    from resources.subscriptions import store

    with database.new_session() as s:
        for row in store.overview(s):
            click.echo("\t".join(str(v) if v is not None else "" for v in row))


@subscriptions_group.command("deliver")
@with_appcontext
def subscriptions_deliver() -> None:
    """Match and deliver in this process until stopped (SIGTERM/Ctrl-C finish the attempt under way).

    For hosts that deliver apart from the API processes (set FHIR_SUBSCRIPTION_WORKER=false there); any
    number may run, on any host: leases keep them from sending the same event twice."""
    import signal

    from resources.subscriptions.delivery import Worker

    worker = Worker(current_app._get_current_object())  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
    click.echo("delivering subscriptions (Ctrl-C to stop)")
    try:
        worker.run_here()
    except KeyboardInterrupt:
        worker.stop_event.set()
    click.echo("stopped")


@main.command("demo-setup")
@click.option("--key-dir", default="var/keys", show_default=True, type=click.Path(file_okay=False))
@with_appcontext
def demo_setup(key_dir: str) -> None:
    """Demo only: a token-signing key (if missing) and one registered client per role with its key."""
    from pathlib import Path

    from fhir_api import db as database
    from fhir_api.auth.demo import DEMO_REDIRECT, ensure_demo_apps, ensure_demo_clients, ensure_demo_users
    from fhir_api.auth.keys import generate_signing_key_file

    signing = Path(current_app.config.get("AUTH_SIGNING_KEY_FILE") or Path(key_dir, "signing.jwk"))
    if not signing.exists():
        generate_signing_key_file(signing)
        click.echo(f"created token-signing key {signing}")
    keyring = Path(current_app.config.get("CRYPTO_KEY_FILE") or Path(key_dir, "keyring.json"))
    if current_app.config.get("KMS_PROVIDER", "local") == "local" and not keyring.exists():
        from crypto.kms import generate_key_file

        click.echo(f"created encryption keyring {keyring} (key {generate_key_file(keyring)})")
    audit_key = Path(current_app.config.get("AUDIT_SIGNING_KEY_FILE") or Path(key_dir, "audit-signing.jwk"))
    if not audit_key.exists():
        from audit.signing import generate_key_file as generate_audit_key

        generate_audit_key(audit_key)
        click.echo(f"created audit signing key {audit_key}")
    with database.new_session() as s:
        for name, role, client_id in ensure_demo_clients(s, Path(key_dir, "clients")):
            click.echo(f"  {name:<18} {role:<16} {client_id}")
        for name, role, client_id in ensure_demo_apps(s):
            click.echo(f"  {name:<18} {role:<16} {client_id}  (public app, redirect {DEMO_REDIRECT})")
        for username, password in ensure_demo_users(s, Path(key_dir, "users.json")).items():
            click.echo(f"  user {username:<13} password {password}")


@main.command("token")
@click.argument("name")
@click.option("--scope", default=None, help="Default: everything the demo client is registered for.")
@click.option("--server", default=None, help="Default: FHIR_PUBLIC_URL or http://127.0.0.1:8000.")
@click.option("--key-dir", default="var/keys", show_default=True, type=click.Path(file_okay=False))
def token_cmd(name: str, scope: str | None, server: str | None, key_dir: str) -> None:
    """Demo: get an access token for demo client NAME (SMART Backend Services, over HTTP) and print it."""
    import os
    from pathlib import Path

    import requests

    from fhir_api.auth.demo import DEMO_CLIENTS, signed_assertion

    base = (server or os.environ.get("FHIR_PUBLIC_URL") or "http://127.0.0.1:8000").rstrip("/")
    key_file = Path(key_dir, "clients", f"{name}.json")
    if not key_file.exists():
        raise click.UsageError(f"no demo client {name!r} under {key_dir}/clients (run `make demo` first)")
    _, assertion = signed_assertion(key_file, f"{base}/auth/token")
    wanted = scope or DEMO_CLIENTS.get(name, {}).get("scope") or "system/*.rs"
    resp = requests.post(
        f"{base}/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": wanted,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
        timeout=10,
    )
    if resp.status_code != 200:
        raise click.ClickException(f"token endpoint answered {resp.status_code}: {resp.text}")
    click.echo(resp.json()["access_token"])


@main.command("openapi")
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write the document (- for standard output).",
)
@click.option("--check", is_flag=True, help="Write nothing; fail when OUTPUT differs from the code.")
def openapi_cmd(output: str, check: bool) -> None:
    """Write the OpenAPI 3.1 document generated from the code (no database or keys needed)."""
    from pathlib import Path

    from fhir_api import openapi

    text = openapi.render(openapi.build())
    if check:
        current = Path(output).read_text(encoding="utf-8") if Path(output).is_file() else ""
        if current != text:
            raise click.ClickException(f"{output} differs from the code: run `{openapi.REGENERATE}`")
        click.echo(f"{output} is up to date")
    elif output == "-":
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


# -- App Launch users -------------------------------------------------------------------------------------
@main.group("users")
def users_group() -> None:
    """People who sign in to SMART apps (clinicians and patients)."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(["clinician", "patient"]))
@click.option(
    "--fhir-user", required=True, help="Practitioner/<id> for a clinician, Patient/<id> for a patient."
)
@click.option("--name", default=None, help="Display name.")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (else one is made)."
)
@with_appcontext
def users_add(username: str, role: str, fhir_user: str, name: str | None, password_stdin: bool) -> None:
    """Register a user; prints the generated password unless one was given on stdin."""
    import secrets

    import audit
    from fhir_api import db as database
    from fhir_api.auth.users import UserError, add_user

    password = sys.stdin.readline().rstrip("\n") if password_stdin else secrets.token_urlsafe(15)
    with database.new_session() as s:
        try:
            add_user(s, username, password, role, fhir_user, name)
        except UserError as exc:
            raise click.UsageError(str(exc)) from None
        audit.record_operation(
            s,
            _ROLES,
            detail={"operation": "users add", "user": username, "role": role, "fhirUser": fhir_user},
        )
    if not password_stdin:
        click.echo(password)


@users_group.command("list")
@with_appcontext
def users_list() -> None:
    """Registered users, one per line (tab-separated)."""
    from fhir_api import db as database
    from fhir_api.auth.users import list_users

    with database.new_session() as s:
        for u in list_users(s):
            click.echo("\t".join([u.username, u.role, u.fhir_user, "disabled" if u.disabled else "enabled"]))
