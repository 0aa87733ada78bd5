"""End to end against a real server process, driven by the Python ``fhirclient`` library."""

from __future__ import annotations

import pytest
import requests
from fhirclient import client as fhir_client
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException

from tests.live import live_server

pytestmark = pytest.mark.live


@pytest.fixture
def server(app, database_url):
    """``app`` is requested so the shared test database is emptied afterwards."""
    with live_server(database_url) as base:
        yield base


def test_fhirclient_create_read_update_delete(server):
    smart = fhir_client.FHIRClient(settings={"app_id": "e2e-test", "api_base": f"{server}/fhir/R4/"})
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"

    patient = Patient(
        {"name": [{"family": "Doe", "given": ["Jane"]}], "gender": "female", "birthDate": "1980-02-29"}
    )
    created = patient.create(smart.server)
    assert created["resourceType"] == "Patient" and created["meta"]["versionId"] == "1"
    pid = created["id"]

    read = Patient.read(pid, smart.server)
    assert read.name[0].family == "Doe" and read.birthDate.isostring == "1980-02-29"

    read.gender = "other"
    updated = read.update(smart.server)
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(pid, smart.server).gender == "other"

    read.delete(smart.server)
    with pytest.raises(requests.HTTPError) as gone:
        Patient.read(pid, smart.server)
    assert gone.value.response.status_code == 410
    assert gone.value.response.json()["resourceType"] == "OperationOutcome"
    with pytest.raises(FHIRNotFoundException):
        Patient.read("does-not-exist", smart.server)


def test_server_headers_over_real_http(server):
    resp = requests.post(
        f"{server}/fhir/R4/Observation",
        data='{"resourceType":"Observation","status":"final","code":{"text":"t"},"valueQuantity":{"value":1.50}}',
        headers={"Content-Type": "application/fhir+json", "Accept-Encoding": "gzip"},
        timeout=10,
    )
    assert resp.status_code == 201
    location = resp.headers["Location"]
    assert location.startswith(f"{server}/fhir/R4/Observation/")
    got = requests.get(location, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert '"value":1.50' in got.text
    assert got.headers["Cache-Control"] == "no-store"
    assert got.headers["ETag"] == 'W/"1"'


def test_concurrent_updates_never_lose_or_duplicate_a_version(server):
    """Racing PUTs across two gunicorn workers: each succeeds or is refused; versions stay gap-free."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{server}/fhir/R4/Patient/race-1"
    hdr = {"Content-Type": "application/fhir+json"}
    assert requests.put(url, json={"resourceType": "Patient", "id": "race-1"}, headers=hdr, timeout=10).ok

    def put(i: int) -> int:
        body = {"resourceType": "Patient", "id": "race-1", "birthDate": f"19{10 + i}-01-01"}
        return requests.put(url, json=body, headers=hdr, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(40)))
    assert set(statuses) <= {200, 409}, statuses
    ok = statuses.count(200)
    history = requests.get(f"{url}/_history?_count=100", timeout=10).json()
    versions = sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"])
    assert versions == list(range(1, ok + 2))
