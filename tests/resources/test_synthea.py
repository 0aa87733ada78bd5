"""The shared Synthea set loads as transaction bundles (hospital and practitioner bundles first) with zero
failures, every stored reference resolves, and a patient's $everything returns what their bundle held."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from fhir_api import create_app
from tests.helpers import FHIR, authorized_client, fresh_database


def load_order(directory: Path) -> list[Path]:
    def rank(p: Path) -> tuple[int, str]:
        name = p.name.lower()
        return (0 if name.startswith("hospital") else 1 if name.startswith("practitioner") else 2, p.name)

    return sorted(directory.glob("*.json"), key=rank)


@pytest.fixture(scope="module")
def loaded(shared_fhir, tmp_path_factory):
    with fresh_database(tmp_path_factory.mktemp("synthea"), "synthea") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        client = authorized_client(app)
        patients: dict[str, collections.Counter] = {}
        failures = []
        for path in load_order(shared_fhir / "synthea-r4"):
            raw = path.read_bytes()
            resp = client.post("/fhir/R4", data=raw, headers={"Content-Type": FHIR})
            if resp.status_code != 200:
                failures.append((path.name, resp.status_code, resp.get_data(as_text=True)[:300]))
                continue
            entries = resp.get_json()["entry"]
            assert all(e["response"]["status"] in ("200 OK", "201 Created") for e in entries)
            locations = [e["response"]["location"] for e in entries]
            pid = next((loc.split("/")[1] for loc in locations if loc.startswith("Patient/")), None)
            if pid:
                sent = json.loads(raw)["entry"]
                patients[pid] = collections.Counter(e["resource"]["resourceType"] for e in sent)
        yield app, client, patients, failures
        app.extensions["fhir_db"]["engine"].dispose()


def test_every_bundle_loads(loaded):
    _, _, patients, failures = loaded
    assert failures == []
    assert len(patients) == 40


def test_every_stored_reference_resolves(loaded):
    app, *_ = loaded
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        dangling = conn.execute(
            text(
                "SELECT r.res_type, r.param, r.target_type, r.target_id FROM search_reference r "
                "WHERE r.target_type IS NOT NULL AND NOT EXISTS (SELECT 1 FROM resource x "
                "WHERE x.res_type = r.target_type AND x.res_id = r.target_id) LIMIT 5"
            )
        ).all()
        urls = conn.execute(
            text("SELECT count(*) FROM search_reference WHERE url LIKE 'urn:%' OR url LIKE '%?%'")
        ).scalar()
    assert dangling == [] and urls == 0


def _everything(client, pid: str, count: int) -> collections.Counter:
    got: collections.Counter = collections.Counter()
    ids = set()
    url = f"/fhir/R4/Patient/{pid}/$everything?_count={count}"
    while url:
        page = client.get(url).get_json()
        for e in page.get("entry", []):
            key = (e["resource"]["resourceType"], e["resource"]["id"])
            assert key not in ids  # paging never repeats
            ids.add(key)
            got[key[0]] += 1
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = nxt[0].replace("http://localhost", "") if nxt else None
    return got


def test_everything_returns_what_each_bundle_held(loaded):
    _, client, patients, _ = loaded
    for i, (pid, sent) in enumerate(sorted(patients.items())[:6]):
        assert _everything(client, pid, count=(37, 200, 1000)[i % 3]) == sent, pid


def test_everything_narrowed_by_type_and_since(loaded):
    _, client, patients, _ = loaded
    pid, sent = sorted(patients.items())[0]
    only = client.get(f"/fhir/R4/Patient/{pid}/$everything?_type=Condition,Encounter&_count=1000").get_json()
    got = collections.Counter(e["resource"]["resourceType"] for e in only["entry"])
    assert got == {t: sent[t] for t in ("Condition", "Encounter") if sent[t]}
    future = client.get(f"/fhir/R4/Patient/{pid}/$everything?_since=2999-01-01").get_json()
    assert future.get("entry", []) == []
    assert client.get(f"/fhir/R4/Patient/{pid}/$everything?_type=Nonsense").status_code == 400
    assert client.get("/fhir/R4/Patient/nobody/$everything").status_code == 404


def test_everything_respects_the_patients_token(loaded):
    app, _, patients, _ = loaded
    (a, _), (b, _) = sorted(patients.items())[:2]
    own = authorized_client(app, role="patient", scope="patient/*.rs", patient=a)
    assert own.get(f"/fhir/R4/Patient/{b}/$everything").status_code == 404
    mine = own.get(f"/fhir/R4/Patient/{a}/$everything?_count=1000").get_json()
    types = {e["resource"]["resourceType"] for e in mine["entry"]}
    assert "Patient" in types and "Practitioner" not in types  # outside the patient's compartment
