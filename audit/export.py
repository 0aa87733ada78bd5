"""Streaming exports of the chained log (NDJSON, CSV, FHIR Bundle), each ending in a signed manifest.

Rows stream from a server-side cursor in chunks, so memory stays flat for millions of events. Every event
carries its chain position in ``meta`` (``seq``, ``prev``, ``hash`` as tags), so each one can be re-hashed
on its own; the manifest (the last NDJSON line, the last CSV row, or ``Bundle.signature``) signs the
filter, count, first and last ``seq``, the chain head and a SHA-256 over every record before it.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from audit import signing
from audit.chain import head
from audit.models import AuditRow, ChainLink
from audit.search import linked
from fhir_api.db import format_instant

FORMATS = {"ndjson": "application/fhir+ndjson", "csv": "text/csv", "bundle": "application/fhir+json"}
CHAIN_TAG = "urn:fhir-api:audit-chain"
CHUNK = 1000
CSV_COLUMNS = (
    "seq",
    "recorded",
    "id",
    "type",
    "subtype",
    "action",
    "outcome",
    "client",
    "patients",
    "prev_hash",
    "hash",
    "event",
)


@dataclass
class Filter:
    start: datetime | None = None
    end: datetime | None = None
    patient: str | None = None  # Patient/id
    client: str | None = None

    def describe(self) -> dict[str, str]:
        out = {}
        if self.start:
            out["start"] = format_instant(self.start)
        if self.end:
            out["end"] = format_instant(self.end)
        if self.patient:
            out["patient"] = self.patient
        if self.client:
            out["client"] = self.client
        return out


@dataclass
class Tally:
    count: int = 0
    first: int | None = None
    last: int | None = None
    digest: Any = field(default_factory=hashlib.sha256)

    def add(self, seq: int, record: bytes) -> None:
        self.count += 1
        self.first = seq if self.first is None else self.first
        self.last = seq
        self.digest.update(record)


def _rows(engine: Engine, flt: Filter, upto: int) -> Iterator[tuple[int, str, str, str, str]]:
    c, e = ChainLink.__table__.c, AuditRow.__table__.c
    stmt = (
        select(c.seq, c.prev_hash, c.hash, e.body, e.client_id)
        .select_from(ChainLink.__table__.join(AuditRow.__table__, e.pos == c.pos))
        .where(c.seq <= upto)
        .order_by(c.seq)
    )
    if flt.start is not None:
        stmt = stmt.where(c.recorded >= flt.start)
    if flt.end is not None:
        stmt = stmt.where(c.recorded < flt.end)
    for kind, ref in (("patient", flt.patient), ("agent", flt.client)):
        if ref:
            stmt = stmt.where(linked(kind, [ref]))
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(stmt)
        yield from result  # type: ignore[misc]


def with_chain_meta(body: str, seq: int, prev: str, digest: str) -> str:
    """The stored JSON with its chain position in ``meta`` (spliced in: no re-serialising)."""
    tags = [
        {"system": CHAIN_TAG, "code": f"seq:{seq}"},
        {"system": CHAIN_TAG, "code": f"prev:{prev}"},
        {"system": CHAIN_TAG, "code": f"hash:{digest}"},
    ]
    meta = json.dumps({"versionId": "1", "tag": tags}, separators=(",", ":"))
    return '{"meta":' + meta + "," + body[1:]


def stored_form(event: dict[str, Any]) -> tuple[dict[str, Any], int, str, str]:
    """An exported AuditEvent back as it was stored, with its (seq, prev, hash)."""
    event = dict(event)
    meta = event.pop("meta", {}) or {}
    found = {}
    for tag in meta.get("tag", []):
        if tag.get("system") == CHAIN_TAG:
            name, _, value = str(tag.get("code", "")).partition(":")
            found[name] = value
    return event, int(found.get("seq", 0)), found.get("prev", ""), found.get("hash", "")


def _manifest(fmt: str, flt: Filter, tally: Tally, engine: Engine, key: Any) -> tuple[dict[str, Any], str]:
    with engine.connect() as conn:
        h = head(conn)
    manifest = {
        "format": fmt,
        "filter": flt.describe(),
        "count": tally.count,
        "first_seq": tally.first,
        "last_seq": tally.last,
        "head_seq": h.seq,
        "head_hash": h.hash,
        "sha256": tally.digest.hexdigest(),
        "time": format_instant(datetime.now().astimezone()),
    }
    return manifest, signing.sign(manifest, key)


def _patients(event: dict[str, Any]) -> str:
    refs = [
        str(ent.get("what", {}).get("reference", ""))
        for ent in event.get("entity", [])
        if ent.get("role", {}).get("code") == "1"
    ]
    return ";".join(r for r in refs if r)


def stream(
    engine: Engine, fmt: str, flt: Filter, key: Any, upto: int, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """The export as chunks of bytes, manifest last."""
    tally = Tally()
    buffer: list[bytes] = []
    if fmt == "bundle":
        yield b'{"resourceType":"Bundle","type":"collection","entry":['
    elif fmt == "csv":
        header = (",".join(CSV_COLUMNS) + "\r\n").encode()
        tally.digest.update(header)
        yield header
    for seq, prev, digest, body, client in _rows(engine, flt, upto):
        if fmt == "csv":
            event = json.loads(body)
            out = io.StringIO()
            csv.writer(out).writerow(
                [
                    seq,
                    event.get("recorded", ""),
                    event.get("id", ""),
                    event.get("type", {}).get("code", ""),
                    (event.get("subtype") or [{}])[0].get("code", ""),
                    event.get("action", ""),
                    event.get("outcome", ""),
                    client or "",
                    _patients(event),
                    prev,
                    digest,
                    body,
                ]
            )
            record = out.getvalue().encode()
        elif fmt == "bundle":
            record = (
                ("," if tally.count else "") + '{"resource":' + with_chain_meta(body, seq, prev, digest) + "}"
            ).encode()
        else:
            record = (with_chain_meta(body, seq, prev, digest) + "\n").encode()
        tally.add(seq, record)
        buffer.append(record)
        if len(buffer) >= CHUNK:
            yield b"".join(buffer)
            if progress:
                progress(len(buffer))
            buffer.clear()
    if buffer:
        yield b"".join(buffer)
        if progress:
            progress(len(buffer))
    manifest, token = _manifest(fmt, flt, tally, engine, key)
    if fmt == "bundle":
        signature = {
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14"}],
            "when": manifest["time"],
            "who": {"display": "fhir-api audit log"},
            "sigFormat": "application/jose",
            "data": base64.b64encode(token.encode()).decode(),
        }
        yield ('],"signature":' + json.dumps(signature, separators=(",", ":")) + "}").encode()
    elif fmt == "csv":
        yield csv_manifest_row(token)
    else:
        yield (json.dumps(manifest_resource(token), separators=(",", ":")) + "\n").encode()


def bundle_record(resource: str, *, first: bool) -> bytes:
    return (("" if first else ",") + '{"resource":' + resource + "}").encode()


def csv_manifest_row(token: str) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(["manifest", "", "", "", "", "", "", "", "", "", "", token])
    return out.getvalue().encode()


def manifest_resource(token: str) -> dict[str, Any]:
    """The NDJSON trailer: a FHIR Parameters resource holding the signed manifest."""
    return {
        "resourceType": "Parameters",
        "id": "audit-export-manifest",
        "parameter": [{"name": "manifest", "valueString": token}],
    }
