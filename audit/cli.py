"""``fhir-api audit ...``: chain, checkpoint, verify and export the audit log from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from audit import chain, signing
from audit.events import EXPORT
from audit.verify import verify


@click.group("audit")
def group() -> None:
    """The append-only audit log."""


def _engine() -> Any:
    return current_app.extensions["fhir_db"]["engine"]


def _key() -> signing.OKPKey:
    try:
        return signing.load_key(current_app.config.get("AUDIT_SIGNING_KEY_FILE"))
    except signing.AuditKeyError as exc:
        raise click.ClickException(str(exc)) from None


@group.command("checkpoint")
@with_appcontext
def checkpoint_cmd() -> None:
    """Chain what has committed, sign a checkpoint of the head now, and print it (keep it elsewhere)."""
    engine = _engine()
    key = _key()
    chain.catch_up(engine, key=key, every=0)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT seq, hash, jws FROM audit_checkpoint ORDER BY seq DESC LIMIT 1"
        ).first()
    if row is None:
        raise click.ClickException("the audit log is empty: nothing to checkpoint")
    click.echo(json.dumps({"seq": row[0], "hash": row[1], "jws": row[2]}))


def _saved_checkpoints(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    """Checkpoints an auditor kept: JSON objects (one per file, a list, or NDJSON lines)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        text = Path(path).read_text()
        try:
            data = json.loads(text)
            items = data if isinstance(data, list) else data.get("checkpoints", [data])
        except ValueError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        out += [i for i in items if isinstance(i, dict)]
    return out


@group.command("verify")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A checkpoint saved earlier (JSON from /audit/checkpoints or `audit checkpoint`).",
)
@click.option("--no-chain", is_flag=True, help="Do not chain pending events first (read-only check).")
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Check an export file (its manifest, digest and chain hashes) instead of the database.",
)
@with_appcontext
def verify_cmd(checkpoints: tuple[str, ...], no_chain: bool, export_file: str | None) -> None:
    """Check the chain, every event's MAC and every checkpoint; exit 1 on any problem."""
    from tqdm import tqdm

    engine = _engine()
    key = _key()
    if export_file:
        _verify_export(Path(export_file), key, engine)
        return
    if not no_chain:
        chain.catch_up(engine, key=key, every=float(current_app.config["AUDIT_CHECKPOINT_INTERVAL"]))
    with tqdm(unit="event", desc="verifying", disable=None, file=sys.stderr) as bar:
        report = verify(
            engine,
            key=signing.public_key(key.as_dict(private=False)),
            mac_key=signing.derive_mac_key(key),
            saved=_saved_checkpoints(checkpoints),
            progress=bar.update,
        )
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if report.problem_count > len(report.problems):
        click.echo(f"... and {report.problem_count - len(report.problems)} more", err=True)
    status = "verified" if report.ok else "FAILED"
    click.echo(
        f"{status}: {report.checked} events, seq 1..{report.head_seq}, head {report.head_hash}, "
        f"{report.checkpoints} checkpoints, {report.unchained} not yet chained"
    )
    if not report.ok:
        sys.exit(1)


def _verify_export(path: Path, key: signing.OKPKey, engine: Any) -> None:
    from audit.export_check import check_file

    report, manifest = check_file(path, signing.public_key(key.as_dict(private=False)), engine)
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    status = "verified" if report.ok else "FAILED"
    span = f"seq {manifest.get('first_seq')}..{manifest.get('last_seq')}" if manifest else "no manifest"
    click.echo(f"{status}: export {path.name}: {report.checked} events, {span}")
    if not report.ok:
        sys.exit(1)


@group.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["ndjson", "csv", "bundle"]), default="ndjson", show_default=True
)
@click.option("--start", default=None, help="From this FHIR date or instant (inclusive).")
@click.option("--end", default=None, help="Up to this FHIR date or instant (exclusive).")
@click.option("--patient", default=None, help="Only events naming Patient/ID.")
@click.option("--client", default=None, help="Only events of this client id.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), required=True, help="File to write.")
@with_appcontext
def export_cmd(
    fmt: str, start: str | None, end: str | None, patient: str | None, client: str | None, output: str
) -> None:
    """Export the chained log with a signed manifest (what GET /audit/export serves), with progress."""
    from tqdm import tqdm

    import audit
    from audit import export
    from fhir_api import db as database
    from resources.dates import parse_range

    engine = _engine()
    key = _key()
    chain.catch_up(engine, key=key, every=float(current_app.config["AUDIT_CHECKPOINT_INTERVAL"]))
    flt = export.Filter(
        start=parse_range(start, "start").low if start else None,
        end=parse_range(end, "end").low if end else None,
        patient=(patient if not patient or "/" in patient else f"Patient/{patient}"),
        client=client,
    )
    with engine.connect() as conn:
        upto = chain.head(conn).seq
    with (
        open(output, "wb") as out,
        tqdm(total=upto, unit="event", desc="exporting", disable=None, file=sys.stderr) as bar,
    ):
        for chunk in export.stream(engine, fmt, flt, key, upto, progress=bar.update):
            out.write(chunk)
    with database.new_session() as s:
        detail = {"operation": "audit export", "format": fmt, **flt.describe()}
        audit.record_operation(s, ("110106", "Export"), detail=detail, event_type=EXPORT)
    click.echo(f"wrote {output}")
