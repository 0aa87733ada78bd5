"""End to end against a real server process, driven by the Python ``fhirclient`` library."""

from __future__ import annotations

import pytest
import requests
from fhirclient import client as fhir_client
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException

from tests.helpers import client_assertion, new_client_key, register_client
from tests.live import live_server

pytestmark = pytest.mark.live


@pytest.fixture
def server(app, database_url):
    """``app`` is requested so the shared test database is emptied afterwards."""
    with live_server(database_url) as base:
        yield base


@pytest.fixture
def backend(app):
    """A registered clinical-system client and its private key."""
    key, jwks = new_client_key("ES384")
    return register_client(app, role="clinical-system", scope="system/*.cruds", jwks=jwks), key


def _token(server: str, backend) -> str:
    client_id, key = backend
    resp = requests.post(
        f"{server}/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.cruds",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(key, client_id, f"{server}/auth/token"),
        },
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def test_fhirclient_backend_services_then_create_read_update_delete(server, backend):
    client_id, key = backend
    smart = fhir_client.FHIRClient(
        settings={
            "app_id": client_id,
            "api_base": f"{server}/fhir/R4/",
            "scope": "system/*.cruds",
            "jwt_token": client_assertion(key, client_id, f"{server}/auth/token"),
        }
    )
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"
    smart.prepare()
    smart.authorize()  # SMART Backend Services: client_credentials with the signed assertion
    assert smart.ready

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


def test_fhirpy_with_the_token_fhirclient_would_get(server, backend):
    fhirpy = pytest.importorskip("fhirpy")
    token = _token(server, backend)
    api = fhirpy.SyncFHIRClient(f"{server}/fhir/R4", authorization=f"Bearer {token}")
    created = api.resource("Patient", name=[{"family": "Py", "given": ["Fhir"]}])
    created.save()
    assert created.id and api.reference("Patient", created.id).to_resource()["name"][0]["family"] == "Py"
    assert [p.id for p in api.resources("Patient").search(family="Py").fetch()] == [created.id]


def test_without_a_token_data_endpoints_answer_401_and_metadata_stays_open(server):
    resp = requests.get(f"{server}/fhir/R4/Patient", timeout=10)
    assert resp.status_code == 401 and resp.json()["resourceType"] == "OperationOutcome"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{server}/fhir/R4/metadata", timeout=10).status_code == 200


def test_server_headers_over_real_http(server, backend):
    auth = {"Authorization": f"Bearer {_token(server, backend)}"}
    resp = requests.post(
        f"{server}/fhir/R4/Observation",
        data='{"resourceType":"Observation","status":"final","code":{"text":"t"},"valueQuantity":{"value":1.50}}',
        headers={"Content-Type": "application/fhir+json", "Accept-Encoding": "gzip", **auth},
        timeout=10,
    )
    assert resp.status_code == 201
    location = resp.headers["Location"]
    assert location.startswith(f"{server}/fhir/R4/Observation/")
    got = requests.get(location, headers={"Accept-Encoding": "gzip", **auth}, timeout=10)
    assert '"value":1.50' in got.text
    assert got.headers["Cache-Control"] == "no-store"
    assert got.headers["ETag"] == 'W/"1"'


def test_concurrent_updates_never_lose_or_duplicate_a_version(server, backend):
    """Racing PUTs across two gunicorn workers: each succeeds or is refused; versions stay gap-free."""
    from concurrent.futures import ThreadPoolExecutor

    url = f"{server}/fhir/R4/Patient/race-1"
    hdr = {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {_token(server, backend)}"}
    assert requests.put(url, json={"resourceType": "Patient", "id": "race-1"}, headers=hdr, timeout=10).ok

    def put(i: int) -> int:
        body = {"resourceType": "Patient", "id": "race-1", "birthDate": f"19{10 + i}-01-01"}
        return requests.put(url, json=body, headers=hdr, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(40)))
    assert set(statuses) <= {200, 409}, statuses
    ok = statuses.count(200)
    history = requests.get(f"{url}/_history?_count=100", headers=hdr, timeout=10).json()
    versions = sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"])
    assert versions == list(range(1, ok + 2))
