"""The floor for ``bench/crud.py``: the least a Flask app on this stack can do for a read and an insert.

One table (id text primary key, body text), a primary-key select and a one-row insert (and, for the search
share of ``bench/load.py``'s mix, a page of rows after a key: one index range scan), on the same
SQLAlchemy 2 + psycopg 3 engine settings as the FHIR app (``fhir_api.db.make_engine`` with the app's
defaults) and served by the same gunicorn settings (``fhir_api.serving``). Whatever the FHIR app does
beyond this is its own cost, so ``app req/s / floor req/s`` measures the app, not the machine.

Run: ``python bench/floor_app.py --database-url postgresql://... --bind 127.0.0.1:8001 --workers 4``.
"""

from __future__ import annotations

import argparse
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, request
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    text,
)

from fhir_api.config import DEFAULTS, normalise_database_url
from fhir_api.db import make_engine
from fhir_api.serving import GunicornApp, gunicorn_options

metadata = MetaData()
rows = Table(
    "floor_row",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
)


# The least an audited read adds (informative in ``bench/crud.py``): one event row and one link row shaped and
# indexed like ``audit_event`` / ``audit_link``, in the read's transaction, committed without waiting for the
# WAL flush (as the app commits a read's record), sent with the read's COMMIT in one round trip.
audit_rows = Table(
    "floor_audit",
    metadata,
    Column("pos", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("txid", BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint")),
    Column("client_id", String(128)),
    Column("body", Text, nullable=False),
    Column("mac", String(64)),
    Index("ix_floor_audit_id", "event_id"),
    Index("ix_floor_audit_recorded", "recorded"),
    Index("ix_floor_audit_txid", "txid", "pos"),
    Index("ix_floor_audit_client", "client_id", "recorded"),
)
audit_links = Table(
    "floor_audit_link",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("ref", String(256), primary_key=True),
    Column("recorded", DateTime(timezone=True), primary_key=True),
    Index("ix_floor_audit_link_ref", "kind", "ref", "recorded"),
)
_AUDITED = (
    "SET LOCAL synchronous_commit TO off;"
    "INSERT INTO floor_audit (event_id, recorded, client_id, body, mac) "
    "VALUES (%(id)s, %(at)s, 'bench', %(body)s, %(mac)s);"
    "INSERT INTO floor_audit_link (event_id, kind, ref, recorded) "
    "VALUES (%(id)s, 'patient', %(ref)s, %(at)s);"
    "COMMIT"
)


def _event_body(event_id: str, row_id: str, at: datetime) -> str:
    """An AuditEvent of a read as long as the app's (~1.9 kB of JSON)."""
    event = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
        "action": "R",
        "recorded": at.isoformat(),
        "outcome": "0",
        "agent": [
            {
                "type": {"coding": [{"code": "110150", "display": "Application"}]},
                "who": {"display": "bench"},
                "requestor": True,
                "network": {"address": "127.0.0.1", "type": "2"},
                "policy": [str(uuid.uuid4())],
            },
            {
                "type": {"coding": [{"code": "110153", "display": "Source Role ID"}]},
                "requestor": False,
                "who": {"display": "http://127.0.0.1/fhir/R4"},
                "network": {"address": "127.0.0.1", "type": "2"},
            },
        ],
        "source": {"observer": {"display": "http://127.0.0.1/fhir/R4"}, "type": [{"code": "4"}]},
        "entity": [
            {
                "what": {"reference": f"Patient/{row_id}"},
                "type": {"code": "1", "display": "Person"},
                "role": {"code": "1", "display": "Patient"},
            },
            {
                "what": {"reference": f"Patient/{row_id}/_history/1"},
                "type": {"code": "2"},
                "role": {"code": "4"},
            },
            {"what": {"identifier": {"value": str(uuid.uuid4())}}, "type": {"code": "XrequestId"}},
        ],
    }
    text_ = json.dumps(event, sort_keys=True, separators=(",", ":"))
    return text_ + " " * max(0, 1900 - len(text_))  # padded to the app's event size


def create_floor_app(database_url: str) -> Flask:
    engine = make_engine(normalise_database_url(database_url), DEFAULTS)
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response('{"status":"ok"}', mimetype="application/json")

    @app.get("/row/<row_id>")
    def read(row_id: str) -> Response:
        with engine.connect() as conn:
            body = conn.execute(select(rows.c.body).where(rows.c.id == row_id)).scalar_one_or_none()
        if body is None:
            return Response('{"error":"not found"}', status=404, mimetype="application/json")
        return Response(body, mimetype="application/json")

    @app.get("/arow/<row_id>")
    def audited_read(row_id: str) -> Response:
        """The read of ``/row/<id>`` plus the audit rows an audited read must commit before answering."""
        import psycopg

        with engine.connect() as conn:
            body = conn.execute(select(rows.c.body).where(rows.c.id == row_id)).scalar_one_or_none()
            event_id, at = str(uuid.uuid4()), datetime.now(UTC)
            params = {"id": event_id, "at": at, "ref": f"Patient/{row_id}", "mac": uuid.uuid4().hex * 2}
            params["body"] = _event_body(event_id, row_id, at)
            with psycopg.ClientCursor(conn.connection.dbapi_connection) as cur:  # one round trip, as the app
                cur.execute(_AUDITED, params)
            conn.commit()
        if body is None:
            return Response('{"error":"not found"}', status=404, mimetype="application/json")
        return Response(body, mimetype="application/json")

    @app.post("/row")
    def create() -> Response:
        body = request.get_data(as_text=True)
        try:
            json.loads(body)  # accept only JSON, as any JSON API must
        except ValueError:
            return Response('{"error":"malformed JSON"}', status=400, mimetype="application/json")
        row_id = str(uuid.uuid4())
        with engine.begin() as conn:
            conn.execute(insert(rows).values(id=row_id, body=body))
        return Response(body, status=201, mimetype="application/json", headers={"Location": f"/row/{row_id}"})

    @app.get("/rows")
    def page() -> Response:
        """Up to ``count`` rows after the key ``after``, in key order: the floor of a search (one index range
        scan returning a few rows, as a JSON array of their bodies)."""
        after = request.args.get("after", "")
        count = min(max(request.args.get("count", 10, type=int) or 10, 1), 100)
        with engine.connect() as conn:
            query = select(rows.c.body).where(rows.c.id > after).order_by(rows.c.id).limit(count)
            bodies = conn.execute(query).scalars().all()
        return Response("[" + ",".join(bodies) + "]", mimetype="application/json")

    @app.after_request
    def echo_request_id(resp: Response) -> Response:
        """Echo a client's X-Request-Id, as the FHIR app does (``bench/wrk_mix.lua`` matches responses by it);
        without one, nothing changes."""
        incoming = request.headers.get("X-Request-Id")
        if incoming:
            resp.headers["X-Request-Id"] = incoming
        return resp

    return app


class FloorServer(GunicornApp):
    """The FHIR app's gunicorn runner, loading the floor app in each worker instead."""

    def load(self) -> Any:
        assert self.app_overrides is not None
        return create_floor_app(self.app_overrides["DATABASE_URL"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--bind", default="127.0.0.1:8001")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    engine = make_engine(normalise_database_url(args.database_url), DEFAULTS)
    metadata.create_all(engine)  # in the master, before any worker forks
    engine.dispose()
    FloorServer(gunicorn_options(args.bind, args.workers), {"DATABASE_URL": args.database_url}).run()


if __name__ == "__main__":
    main()
