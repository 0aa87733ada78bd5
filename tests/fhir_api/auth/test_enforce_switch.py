"""The benchmark-only switch that prices token checks: on by default, and off only when set explicitly."""

from __future__ import annotations

from fhir_api import create_app


def test_tokens_are_required_unless_enforcement_is_switched_off(database_url, anonymous):
    assert anonymous.get("/fhir/R4/Patient").status_code == 401
    bench = create_app({"DATABASE_URL": database_url, "AUTH_ENFORCE": False})
    try:
        resp = bench.test_client().get("/fhir/R4/Patient")
        assert resp.status_code == 200
        assert bench.test_client().get("/audit/status").status_code == 401  # the audit log still asks
    finally:
        bench.extensions["fhir_db"]["engine"].dispose()
