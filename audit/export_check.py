"""Checking an export file offline: its signed manifest, its content digest, and each event's chain hash.

Works on NDJSON and CSV line by line (constant memory); a Bundle is read whole. With a database at hand,
the manifest's head is also checked against the chain (the export came from this log).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from audit import signing
from audit.chain import link_hash
from audit.events import canonical
from audit.export import CSV_COLUMNS, Tally, bundle_record, stored_form, with_chain_meta
from audit.models import ChainLink
from audit.verify import Report


def _detect(path: Path) -> str:
    with path.open("rb") as f:
        start = f.read(64)
    if start.startswith(b'{"resourceType":"Bundle"'):
        return "bundle"
    if start.startswith(",".join(CSV_COLUMNS[:2]).encode()):
        return "csv"
    return "ndjson"


def _check_event(event: dict[str, Any], report: Report, state: dict[str, Any]) -> int:
    stored, seq, prev, digest = stored_form(event)
    if not prev or link_hash(prev, seq, canonical(stored)) != digest:
        report.problem(f"exported event at seq {seq}: its content does not match its chain hash")
    last = state.get("last")
    if last is not None and seq == last[0] + 1 and prev != last[1]:
        report.problem(f"exported event at seq {seq}: does not follow the event before it")
    if last is not None and seq <= last[0]:
        report.problem(f"exported event at seq {seq}: out of order")
    state["last"] = (seq, digest)
    report.checked += 1
    return seq


def _ndjson(path: Path, tally: Tally, report: Report, state: dict[str, Any]) -> str | None:
    token = None
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("resourceType") == "Parameters" and item.get("id") == "audit-export-manifest":
                token = item["parameter"][0]["valueString"]
                continue
            if token is not None:
                report.problem("records follow the manifest (appended after signing)")
            seq = _check_event(item, report, state)
            tally.add(seq, line)
    return token


def _csv(path: Path, tally: Tally, report: Report, state: dict[str, Any]) -> str | None:
    token = None
    with path.open("rb") as f:
        header = f.readline()
        tally.digest.update(header)
        for line in f:
            row = next(csv.reader(io.StringIO(line.decode())))
            if row and row[0] == "manifest":
                token = row[-1]
                continue
            event = json.loads(row[-1])
            stored = link_hash(row[9], int(row[0]), row[-1]) == row[10]
            if not stored or canonical(event) != row[-1]:
                report.problem(f"exported event at seq {row[0]}: its content does not match its chain hash")
            last = state.get("last")
            if last is not None and int(row[0]) == last[0] + 1 and row[9] != last[1]:
                report.problem(f"exported event at seq {row[0]}: does not follow the event before it")
            state["last"] = (int(row[0]), row[10])
            report.checked += 1
            tally.add(int(row[0]), line)
    return token


def _bundle(path: Path, tally: Tally, report: Report, state: dict[str, Any]) -> str | None:
    bundle = json.loads(path.read_bytes())
    for i, entry in enumerate(bundle.get("entry", [])):
        event = entry["resource"]
        seq = _check_event(event, report, state)
        stored, _, prev, digest = stored_form(event)
        tally.add(seq, bundle_record(with_chain_meta(canonical(stored), seq, prev, digest), first=i == 0))
    signature = bundle.get("signature") or {}
    return base64.b64decode(signature["data"]).decode() if signature.get("data") else None


def check_file(path: Path, key: Any, engine: Engine | None = None) -> tuple[Report, dict[str, Any] | None]:
    """(report, manifest) for an export file; ``key`` is the audit log's public Ed25519 key."""
    report = Report()
    fmt = _detect(path)
    tally = Tally()
    state: dict[str, Any] = {}
    reader = {"ndjson": _ndjson, "csv": _csv, "bundle": _bundle}[fmt]
    token = reader(path, tally, report, state)
    if token is None:
        report.problem("the export has no manifest (cut short, or the manifest was removed)")
        return report, None
    try:
        manifest = signing.verify(token, key)
    except ValueError:
        report.problem("the manifest's signature does not hold")
        return report, None
    expected = {
        "format": fmt,
        "count": tally.count,
        "first_seq": tally.first,
        "last_seq": tally.last,
        "sha256": tally.digest.hexdigest(),
    }
    for name, value in expected.items():
        if manifest.get(name) != value:
            report.problem(f"the manifest says {name} {manifest.get(name)!r} but the file has {value!r}")
    if engine is not None and manifest.get("head_seq"):
        with engine.connect() as conn:
            at_head = conn.execute(
                select(ChainLink.hash).where(ChainLink.seq == manifest["head_seq"])
            ).scalar()
        if at_head != manifest.get("head_hash"):
            report.problem("the manifest's chain head is not this log's (another log, or a rewritten chain)")
    report.head_seq = manifest.get("head_seq") or 0
    report.head_hash = manifest.get("head_hash") or ""
    return report, manifest
