"""Loading the population through the API's write path: readable over HTTP, idempotent on re-run."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from fhir_api import db
from resources import jsonio
from resources.models import Resource, ResourceVersion
from resources.repository import ResourceRepository
from seed.loader import load_population
from seed.population import generate

PATIENTS = 2


def _without_server_meta(resource: dict) -> dict:
    meta = {k: v for k, v in resource["meta"].items() if k not in ("versionId", "lastUpdated")}
    return {**resource, "meta": meta}


def _row_counts(app) -> tuple[int, int]:
    with app.app_context(), db.new_session() as session:
        resources = session.scalar(select(func.count()).select_from(Resource))
        versions = session.scalar(select(func.count()).select_from(ResourceVersion))
    return resources, versions


def test_loaded_resources_read_back_over_http_as_generated(app, client):
    with app.app_context():
        counts = load_population(patients=PATIENTS, seed=42)
    generated = list(generate(PATIENTS, seed=42))
    assert counts == dict(sorted(Counter(r["resourceType"] for r in generated).items()))
    assert counts["Patient"] == PATIENTS and counts["Coverage"] == PATIENTS

    resp = client.get("/fhir/R4/Patient/pat-0001")
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"1"'
    assert (
        _without_server_meta(jsonio.loads(resp.data))
        == generated[[r["id"] for r in generated].index("pat-0001")]
    )

    # every resource is stored exactly as generated, decimals included (1.50 stays 1.50)
    for resource in generated:
        resp = client.get(f"/fhir/R4/{resource['resourceType']}/{resource['id']}")
        assert resp.status_code == 200, resource["id"]
        assert _without_server_meta(jsonio.loads(resp.data)) == resource
    creatinine = next(
        r
        for r in generated
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "38483-4"
    )
    body = client.get(f"/fhir/R4/Observation/{creatinine['id']}").get_data(as_text=True)
    assert f'"value":{creatinine["valueQuantity"]["value"]}' in body.replace(" ", "")

    with app.app_context(), db.new_session() as session:  # written as HTTP PUT (update-as-create) would
        stored = ResourceRepository(session).vread("Coverage", "cov-0001", 1)
        assert stored is not None and stored.method == "PUT"


def test_a_second_run_adds_versions_not_resources(app, client, capsys):
    with app.app_context():
        first = load_population(patients=PATIENTS, seed=42)
    resources, versions = _row_counts(app)
    assert resources == versions == sum(first.values())

    with app.app_context():
        second = load_population(patients=PATIENTS, seed=42, progress=True)
    assert second == first
    assert "patient" in capsys.readouterr().err  # the progress bar
    assert _row_counts(app) == (resources, 2 * versions)

    history = client.get("/fhir/R4/Patient/pat-0001/_history").get_json(force=True)
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    assert client.get("/fhir/R4/Patient/pat-0001").headers["ETag"] == 'W/"2"'


def test_seeding_goes_through_the_api_and_is_audited(app):
    from audit.models import AuditRow

    with app.app_context():
        with db.new_session() as session:  # the audit log is append-only: it outlives other tests' data
            start = session.scalar(select(func.coalesce(func.max(AuditRow.pos), 0)))
        counts = load_population(patients=PATIENTS, seed=42)
        with db.new_session() as session:
            events = session.execute(
                select(AuditRow.subtype, func.count())
                .where(AuditRow.client_id == "fhir-api-seed", AuditRow.pos > start)
                .group_by(AuditRow.subtype)
            ).all()
    by_subtype = dict(events)
    assert by_subtype.get("update", 0) == sum(counts.values())  # one event per resource written (PUT)
    assert by_subtype.get("transaction", 0) + by_subtype.get("batch", 0) >= 1  # and the bundles themselves


def test_worker_processes_load_the_same_population(app, client):
    with app.app_context():
        counts = load_population(patients=3, seed=42, workers=2, per_bundle=1)
    assert counts == dict(sorted(Counter(r["resourceType"] for r in generate(3, seed=42)).items()))
    assert _row_counts(app)[0] == sum(counts.values())
    assert client.get("/fhir/R4/Patient/pat-0003").status_code == 200
