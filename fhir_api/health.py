"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from flask import jsonify
from flask_smorest import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from fhir_api import db, migrate
from fhir_api.errors import ServiceUnavailable

blp = Blueprint("health", __name__, description="Liveness and readiness")


@blp.route("/healthz", methods=["GET"])
def healthz():
    """The process is up (no dependency checks: restarting would not help them)."""
    return jsonify(status="ok")


@blp.route("/readyz", methods=["GET"])
def readyz():
    """Ready for traffic: the database answers and its schema is at the latest migration."""
    try:
        with db.engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        current = migrate.current_revision(db.engine())
    except SQLAlchemyError:
        raise ServiceUnavailable("The database is not reachable") from None
    head = migrate.head_revision()
    if current != head:
        raise ServiceUnavailable(
            f"Database schema is at {current or 'nothing'}, expected {head}; run 'fhir-api db upgrade'"
        )
    return jsonify(status="ready", database="ok", schema=current)
