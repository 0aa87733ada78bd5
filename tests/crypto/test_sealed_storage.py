"""Protected elements through the HTTP API: sealed at rest, served intact, and refused when tampered with.

Every test writes through the REST API (``client``, a system/*.* token) and then looks at the database with
plain SQL on the app's own engine: the stored body, the wrapped data key, and every search index table.
Tampering is done with SQL UPDATEs on ``resource_version`` as an attacker with database access would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from fhir_api import create_app
from fhir_api.db import Base
from tests.helpers import FHIR, authorized_client, create, created_id, empty_tables

BASE = "/fhir/R4"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Zyxwanda Quibbleton, Narrativemark clinic</div>',
    },
    "identifier": [{"system": "urn:oid:1.2.3.4", "value": "MRN-Q7731942"}],
    "name": [{"use": "official", "family": "Quibbleton", "given": ["Zyxwanda", "Marisolle"]}],
    "telecom": [
        {"system": "phone", "value": "555-867-5309", "use": "home"},
        {"system": "email", "value": "zyx.quibbleton@example.org"},
    ],
    "gender": "female",
    "birthDate": "1961-07-19",
    "address": [{"line": ["4417 Vexillology Lane"], "city": "Plainsborough", "postalCode": "08536"}],
}

# Every clear value of the Patient above that sits in a protected element (and the note below).
PATIENT_SECRETS = (
    "Quibbleton",
    "Zyxwanda",
    "Marisolle",
    "MRN-Q7731942",
    "555-867-5309",
    "5558675309",
    "zyx.quibbleton@example.org",
    "1961-07-19",
    "4417 Vexillology Lane",
    "Vexillology",
    "Plainsborough",
    "08536",
    "Narrativemark",
)
NOTE = "Confided xylophonic gambling debts to the night nurse"
VALUE_STRING = "Grumbleweed antibodies positive"


def observation(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8251-1"}], "text": "Service comment"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2020-02-03T04:05:06Z",
        "valueString": VALUE_STRING,
        "note": [{"text": NOTE}],
    }


# -- helpers -------------------------------------------------------------------------------------------------
class Recorder:
    """Keeps every response body the test saw, to check afterwards that none of them leaks storage."""

    def __init__(self, client) -> None:
        self.client = client
        self.bodies: list[str] = []

    def get(self, url: str, status: int = 200) -> dict[str, Any]:
        resp = self.client.get(url)
        body = resp.get_data(as_text=True)
        self.bodies.append(body)
        assert resp.status_code == status, (url, resp.status_code, body[:1000])
        return json.loads(body)

    def send(self, method: str, url: str, body: Any, status: int, content_type: str = FHIR) -> dict:
        resp = self.client.open(url, method=method, data=json.dumps(body), content_type=content_type)
        text_ = resp.get_data(as_text=True)
        self.bodies.append(text_ + json.dumps(dict(resp.headers)))
        assert resp.status_code == status, (method, url, resp.status_code, text_[:1000])
        return json.loads(text_) if text_ else {}


def engine_of(app):
    return app.extensions["fhir_db"]["engine"]


def rows(app, sql: str, **params: Any) -> list[Any]:
    with engine_of(app).connect() as conn:
        return list(conn.execute(text(sql), params))


def execute(app, sql: str, **params: Any) -> None:
    with engine_of(app).begin() as conn:
        conn.execute(text(sql), params)


def stored(app, res_type: str, res_id: str, version: int = 1) -> Any:
    [row] = rows(
        app,
        "SELECT seq, body, key_id, data_key FROM resource_version "
        "WHERE res_type = :t AND res_id = :i AND version = :v",
        t=res_type,
        i=res_id,
        v=version,
    )
    return row


def search_tables() -> list[str]:
    return [t.name for t in Base.metadata.sorted_tables if t.name.startswith("search_")]


def table_text(app, table: str) -> str:
    """Every row of a table as one lower-cased text (for substring checks). A blind row's hash is a random
    64-bit integer that cannot spell a value: left out, its decimal digits would hold a five-digit postal
    code by chance now and then."""
    columns = {"search_blind": "res_type, res_id, param, gen", "search_blind_set": "res_type, res_id, gen"}
    columns = columns.get(table, "*")
    return "\n".join(repr(tuple(r)) for r in rows(app, f"SELECT {columns} FROM {table}")).casefold()


def dialect(app) -> str:
    return app.extensions["fhir_db"]["engine"].dialect.name


def blind_hashes(app) -> set[str]:
    """Every keyed hash stored, from whichever table this database keeps them in."""
    found = {str(r[0]) for r in rows(app, "SELECT hash FROM search_blind")}
    if dialect(app) == "postgresql":
        found |= {str(r[0]) for r in rows(app, "SELECT unnest(hashes) FROM search_blind_set")}
    return found


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or [] if "resource" in e]


def found_ids(bundle: dict[str, Any], res_type: str = "Patient") -> set[str]:
    return {r["id"] for r in entries(bundle) if r["resourceType"] == res_type}


def strip_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def assert_outcome(body: dict[str, Any], slug: str, *needles: str) -> str:
    assert body["resourceType"] == "OperationOutcome", body
    [issue] = body["issue"]
    assert issue["details"]["coding"][0]["code"] == slug, issue
    for needle in needles:
        assert needle in issue["diagnostics"], issue
    dumped = json.dumps(body)
    assert "Traceback" not in dumped and 'File "' not in dumped
    return issue["diagnostics"]


# -- protected storage, read back intact --------------------------------------------------------------------
def test_protected_values_round_trip_and_never_reach_storage_in_clear(app, client) -> None:
    http = Recorder(client)
    created = http.send("POST", f"{BASE}/Patient", PATIENT, 201)
    pid = created["id"]
    assert strip_meta(created) == PATIENT
    obs = http.send("POST", f"{BASE}/Observation", observation(pid), 201)
    oid = obs["id"]

    # read, vread, searches by every protected parameter, history: all give the clear resource back
    assert strip_meta(http.get(f"{BASE}/Patient/{pid}")) == PATIENT
    assert strip_meta(http.get(f"{BASE}/Patient/{pid}/_history/1")) == PATIENT
    for query in (
        "name=quibb",
        "name=ZYXWANDA",
        "name:exact=Quibbleton",
        "family=Quibbleton",
        "given=marisol",
        "identifier=urn:oid:1.2.3.4|MRN-Q7731942",
        "identifier=MRN-Q7731942",
        "birthdate=1961-07-19",
        "birthdate=1961",
        "birthdate=ge1961-07&birthdate=lt1962",
        "birthdate=sa1961-07-18",
        "telecom=555-867-5309",
        "phone=555-867-5309",
        "email=zyx.quibbleton@example.org",
        "address-postalcode=08536",
        "address=4417 vex",
        "address-city=plainsb",
        "gender=female&family=quibbleton",
    ):
        bundle = http.get(f"{BASE}/Patient?{query}")
        assert found_ids(bundle) == {pid}, query
        assert [strip_meta(r) for r in entries(bundle)] == [PATIENT], query
    for query in ("name=quibz", "birthdate=1961-07-20", "birthdate=lt1961-07-19", "identifier=MRN-Q773194"):
        assert found_ids(http.get(f"{BASE}/Patient?{query}")) == set(), query
    obs_bundle = http.get(f"{BASE}/Observation?subject=Patient/{pid}&_include=Observation:subject")
    assert {(r["resourceType"], r["id"]) for r in entries(obs_bundle)} == {
        ("Observation", oid),
        ("Patient", pid),
    }
    [read_obs] = [r for r in entries(obs_bundle) if r["resourceType"] == "Observation"]
    assert read_obs["note"] == [{"text": NOTE}] and read_obs["valueString"] == VALUE_STRING
    assert found_ids(http.get(f"{BASE}/Observation?value-string=grumbleweed"), "Observation") == {oid}
    compartment = http.get(f"{BASE}/Patient/{pid}/Observation")
    assert [r["note"] for r in entries(compartment)] == [[{"text": NOTE}]]

    # a second version by PUT, one more by JSON Patch; history and vread keep every version intact
    v2 = {**PATIENT, "id": pid, "name": [{"family": "Quibbleton-Smythe", "given": ["Zyxwanda"]}]}
    http.send("PUT", f"{BASE}/Patient/{pid}", v2, 200)
    http.send(
        "PATCH",
        f"{BASE}/Patient/{pid}",
        [{"op": "replace", "path": "/birthDate", "value": "1961-07-20"}],
        200,
        content_type="application/json-patch+json",
    )
    v3 = {**v2, "birthDate": "1961-07-20"}
    assert strip_meta(http.get(f"{BASE}/Patient/{pid}")) == strip_meta(v3)
    history = http.get(f"{BASE}/Patient/{pid}/_history")
    by_version = {r["meta"]["versionId"]: strip_meta(r) for r in entries(history)}
    assert by_version == {"1": PATIENT, "2": strip_meta(v2), "3": strip_meta(v3)}
    for url in (f"{BASE}/Patient/_history", f"{BASE}/_history"):
        got = [strip_meta(r) for r in entries(http.get(url)) if r["resourceType"] == "Patient"]
        assert sorted(got, key=json.dumps) == sorted(by_version.values(), key=json.dumps), url
    assert strip_meta(http.get(f"{BASE}/Patient/{pid}/_history/1")) == PATIENT
    assert found_ids(http.get(f"{BASE}/Patient?birthdate=1961-07-20&family=quibbleton-s")) == {pid}
    assert found_ids(http.get(f"{BASE}/Patient?birthdate=1961-07-19")) == set()  # old version not current

    # storage: no clear protected value in any stored body, each sealed one carries its wrapped key
    secrets = [
        s.casefold() for s in (*PATIENT_SECRETS, "Quibbleton-Smythe", "1961-07-20", NOTE, "xylophonic")
    ]
    versions = rows(app, "SELECT res_type, res_id, version, body, key_id, data_key FROM resource_version")
    assert len(versions) == 4
    for res_type, _res_id, version, body, key_id, data_key in versions:
        folded = body.casefold()
        leaked = [s for s in secrets if s in folded]
        assert not leaked, (res_type, version, leaked)
        assert '"$enc"' in body
        assert re.fullmatch(r"1\|[^|]+\|[A-Za-z0-9_-]+", data_key), data_key
        assert data_key.split("|")[1] == key_id
        doc = json.loads(body)
        if res_type == "Patient":
            for element in ("text", "identifier", "name", "telecom", "birthDate", "address"):
                assert element in doc
            assert set(doc["name"]) == {"$enc"} and set(doc["birthDate"]) == {"$enc"}
            assert set(doc["telecom"]) == {"$enc"} and set(doc["address"]) == {"$enc"}
            assert set(doc["text"]["div"]) == {"$enc"} and doc["text"]["status"] == "generated"
            assert doc["identifier"][0]["system"] == "urn:oid:1.2.3.4"  # only identifier.value is sealed
            assert set(doc["identifier"][0]["value"]) == {"$enc"}
            assert doc["gender"] == "female"
        else:
            assert set(doc["note"][0]["text"]) == {"$enc"}
            assert doc["valueString"] == VALUE_STRING  # not protected by the default policy

    # the search indexes: no clear value, and no plain row for any protected parameter
    for table in search_tables():
        dump = table_text(app, table)
        leaked = [s for s in secrets if s in dump]
        assert not leaked, (table, leaked)
    shield = app.extensions["fhir_protection"]
    protected = shield.protected_params("Patient")
    assert {"name", "family", "given", "birthdate", "identifier", "telecom", "phone", "email"} <= protected
    for table in search_tables():
        if table in ("search_blind", "search_blind_set"):
            continue
        plain = {r[0] for r in rows(app, f"SELECT DISTINCT param FROM {table} WHERE res_type = 'Patient'")}
        assert not plain & protected, (table, plain & protected)
    blind_params = {
        r[0] for r in rows(app, "SELECT DISTINCT param FROM search_blind WHERE res_type = 'Patient'")
    }
    if dialect(app) == "postgresql":  # strings and tokens: one array per resource, dates: rows
        patients = rows(app, "SELECT COUNT(*) FROM resource WHERE res_type = 'Patient' AND NOT deleted")[0][0]
        sets = rows(
            app, "SELECT COUNT(*), MIN(cardinality(hashes)) FROM search_blind_set WHERE res_type = 'Patient'"
        )
        assert sets[0][0] == patients and sets[0][1] > 20
        assert blind_params == {"birthdate"}
    else:
        assert {"name", "birthdate", "identifier", "telecom"} <= blind_params

    # and no response ever showed a marker, a wrapped key, a KEK id or a blind hash
    hashes = blind_hashes(app)
    wrapped = {dk.rsplit("|", 1)[1] for *_, dk in versions} | {
        w.rsplit("|", 1)[1] for (w,) in rows(app, "SELECT wrapped FROM crypto_index_key")
    }
    kids = {k for *_, k, _ in versions}
    assert hashes and wrapped and kids
    for body in http.bodies:
        assert "$enc" not in body
        assert not [w for w in wrapped if w in body]
        assert not [k for k in kids if k in body]
        numbers = set(re.findall(r"-?\d{6,}", body))
        assert not numbers & hashes


def test_protected_elements_can_be_extended(database_url) -> None:
    """``PROTECTED_ELEMENTS`` adds paths: Observation.value[x] sealed, value-string searched blind."""
    extra = create_app(
        {
            "DATABASE_URL": database_url,
            "TESTING": True,
            "PROTECTED_ELEMENTS": "Observation.value, Patient.gender",
        }
    )
    try:
        client = authorized_client(extra)
        pid = created_id(create(client, PATIENT))
        oid = created_id(create(client, observation(pid)))
        for res_type, res_id in (("Patient", pid), ("Observation", oid)):
            body = stored(extra, res_type, res_id).body
            assert VALUE_STRING.casefold() not in body.casefold() and '"female"' not in body
        bundle = client.get(f"{BASE}/Observation?value-string=grumblew").get_json()
        assert found_ids(bundle, "Observation") == {oid}
        assert client.get(f"{BASE}/Observation/{oid}").get_json()["valueString"] == VALUE_STRING
        assert found_ids(client.get(f"{BASE}/Patient?gender=female").get_json()) == {pid}
        assert "grumbleweed" not in table_text(extra, "search_string")
    finally:
        extra.extensions["fhir_db"]["engine"].dispose()
        empty_tables(database_url)


# -- tampering -----------------------------------------------------------------------------------------------
def _patient_pair(client) -> tuple[str, str]:
    first = created_id(create(client, PATIENT))
    other = {**PATIENT, "name": [{"family": "Otherfamily", "given": ["Otto"]}], "birthDate": "1950-01-01"}
    return first, created_id(create(client, other))


def test_swapped_ciphertexts_fail_authentication(app, client) -> None:
    pid, _ = _patient_pair(client)
    row = stored(app, "Patient", pid)
    doc = json.loads(row.body)
    doc["name"], doc["birthDate"] = doc["birthDate"], doc["name"]
    execute(app, "UPDATE resource_version SET body = :b WHERE seq = :s", b=json.dumps(doc), s=row.seq)
    for url in (f"{BASE}/Patient/{pid}", f"{BASE}/Patient/{pid}/_history/1"):
        resp = client.get(url)
        assert resp.status_code == 500, resp.get_data(as_text=True)
        diagnostics = assert_outcome(resp.get_json(), "tampered-data", "failed authentication")
        assert "1961" not in diagnostics and "Quibbleton" not in resp.get_data(as_text=True)
    # a search or history that meets the tampered row fails the same way, never with half a resource
    for url in (f"{BASE}/Patient?family=quibbleton", f"{BASE}/Patient/{pid}/_history", f"{BASE}/Patient"):
        resp = client.get(url)
        assert resp.status_code == 500, (url, resp.get_data(as_text=True)[:500])
        assert_outcome(resp.get_json(), "tampered-data", "failed authentication")


def test_ciphertext_moved_within_a_list_fails(app, client) -> None:
    """A sealed value moved to another position (another JSON pointer) inside the same body."""
    pid = created_id(create(client, {**PATIENT, "identifier": [{"value": "A-1111"}, {"value": "B-2222"}]}))
    row = stored(app, "Patient", pid)
    doc = json.loads(row.body)
    first, second = doc["identifier"]
    first["value"], second["value"] = second["value"], first["value"]
    execute(app, "UPDATE resource_version SET body = :b WHERE seq = :s", b=json.dumps(doc), s=row.seq)
    resp = client.get(f"{BASE}/Patient/{pid}")
    assert resp.status_code == 500
    assert_outcome(resp.get_json(), "tampered-data", "/identifier/0/value")


def test_altered_ciphertext_fails(app, client) -> None:
    pid = created_id(create(client, PATIENT))
    row = stored(app, "Patient", pid)
    doc = json.loads(row.body)
    token = doc["birthDate"]["$enc"]
    last = token[-2]
    doc["birthDate"]["$enc"] = token[:-2] + ("A" if last != "A" else "B") + token[-1]
    execute(app, "UPDATE resource_version SET body = :b WHERE seq = :s", b=json.dumps(doc), s=row.seq)
    resp = client.get(f"{BASE}/Patient/{pid}")
    assert resp.status_code == 500
    assert_outcome(resp.get_json(), "tampered-data", "failed authentication")


def test_body_and_key_copied_to_another_patient_fail(app, client) -> None:
    source, target = _patient_pair(client)
    src = stored(app, "Patient", source)
    dst = stored(app, "Patient", target)
    execute(
        app,
        "UPDATE resource_version SET body = :b, data_key = :k, key_id = :kid WHERE seq = :s",
        b=src.body.replace(source, target),
        k=src.data_key,
        kid=src.key_id,
        s=dst.seq,
    )
    resp = client.get(f"{BASE}/Patient/{target}")
    assert resp.status_code == 500, resp.get_data(as_text=True)
    assert_outcome(resp.get_json(), "tampered-data", "failed authentication")
    assert "Quibbleton" not in resp.get_data(as_text=True)
    assert client.get(f"{BASE}/Patient/{source}").status_code == 200  # the original is untouched


def test_body_alone_copied_to_another_patient_fails(app, client) -> None:
    source, target = _patient_pair(client)
    src = stored(app, "Patient", source)
    dst = stored(app, "Patient", target)
    execute(app, "UPDATE resource_version SET body = :b WHERE seq = :s", b=src.body, s=dst.seq)
    resp = client.get(f"{BASE}/Patient/{target}")
    assert resp.status_code == 500
    assert_outcome(resp.get_json(), "tampered-data", "failed authentication")


def test_data_key_of_another_version_fails(app, client) -> None:
    pid = created_id(create(client, PATIENT))
    client.put(f"{BASE}/Patient/{pid}", json={**PATIENT, "id": pid, "gender": "other"}, content_type=FHIR)
    v1, v2 = stored(app, "Patient", pid, 1), stored(app, "Patient", pid, 2)
    execute(app, "UPDATE resource_version SET data_key = :k WHERE seq = :s", k=v1.data_key, s=v2.seq)
    resp = client.get(f"{BASE}/Patient/{pid}")
    assert resp.status_code == 500
    assert_outcome(resp.get_json(), "tampered-data", "failed authentication")
    assert client.get(f"{BASE}/Patient/{pid}/_history/1").status_code == 200


def test_data_key_under_an_unknown_kek_is_503(app, client) -> None:
    pid = created_id(create(client, PATIENT))
    row = stored(app, "Patient", pid)
    _, old_kid, payload = row.data_key.split("|")
    execute(
        app,
        "UPDATE resource_version SET data_key = :k, key_id = :kid WHERE seq = :s",
        k=f"1|kek-20000101000000-dead00|{payload}",
        kid="kek-20000101000000-dead00",
        s=row.seq,
    )
    resp = client.get(f"{BASE}/Patient/{pid}")
    assert resp.status_code == 503, resp.get_data(as_text=True)
    diagnostics = assert_outcome(resp.get_json(), "key-unavailable", "kek-20000101000000-dead00")
    assert resp.get_json()["issue"][0]["code"] == "transient"
    assert payload not in resp.get_data(as_text=True) and "Quibbleton" not in diagnostics
    assert old_kid not in resp.get_data(as_text=True)


# -- protection switched off ---------------------------------------------------------------------------------
@pytest.mark.unprotected
def test_without_protection_bodies_are_clear_and_search_works(app, client) -> None:
    assert app.extensions["fhir_protection"].enabled is False
    pid = created_id(create(client, PATIENT))
    oid = created_id(create(client, observation(pid)))
    row = stored(app, "Patient", pid)
    assert row.data_key is None and row.key_id is None
    assert "Quibbleton" in row.body and "1961-07-19" in row.body and "$enc" not in row.body
    assert NOTE in stored(app, "Observation", oid).body
    for query in (
        "name=quibb",
        "family=Quibbleton",
        "birthdate=1961-07-19",
        "identifier=MRN-Q7731942",
        "phone=555-867-5309",
        "name:contains=bble",
    ):
        resp = client.get(f"{BASE}/Patient?{query}")
        assert resp.status_code == 200, (query, resp.get_data(as_text=True)[:500])
        assert found_ids(resp.get_json()) == {pid}, query
    assert not blind_hashes(app)
    assert "quibbleton" in table_text(app, "search_string")
    assert client.get(f"{BASE}/Patient/{pid}").get_json()["name"] == PATIENT["name"]


@pytest.fixture
def second_app(database_url) -> Iterator[Any]:
    apps: list[Any] = []

    def make(**config: Any):
        made = create_app({"DATABASE_URL": database_url, "TESTING": True, **config})
        apps.append(made)
        return made

    yield make
    for made in apps:
        made.extensions["fhir_db"]["engine"].dispose()


def test_sealed_data_stays_readable_when_protection_is_turned_off(app, client, second_app) -> None:
    pid = created_id(create(client, PATIENT))
    clear = authorized_client(second_app(PROTECTION=False))
    resp = clear.get(f"{BASE}/Patient/{pid}")
    assert resp.status_code == 200
    assert strip_meta(resp.get_json()) == PATIENT
    assert "$enc" not in resp.get_data(as_text=True)


def test_opening_in_the_text_gives_what_parsing_and_reserialising_gives(tmp_path) -> None:
    """The read path replaces each sealed object in the stored text; the result must be exactly what the
    general path (Decimal-preserving parse, open, serialise) writes, for nested, listed and contained
    protected values, decimals, non-ASCII text and escapes. A body not in the writer's form (spaces) or
    that orjson cannot read (a number beyond a double) is left to the general path; numbers orjson reads
    only approximately (an integer beyond 64 bits) stay as written."""
    from crypto.envelope import Envelopes
    from crypto.kms import LocalKeyProvider, generate_key_file
    from resources import jsonio
    from resources.protection import sealing
    from resources.protection.policy import Policy

    generate_key_file(tmp_path / "keys.json")
    envelopes = Envelopes(LocalKeyProvider(tmp_path / "keys.json"))
    policy = Policy.build()
    place = b"Patient/p/1"
    resource = jsonio.loads_trusted(
        '{"resourceType":"Patient","id":"p","name":[{"family":"Ünïcødé \\"q\\" \\\\ /","given":["A","B"]}],'
        '"birthDate":"1974-12-25","telecom":[{"system":"phone","value":"+61 3 5555 6473"}],'
        '"address":[{"line":["534 Erewhon St"],"city":"Pleasant\\u2028Ville"}],'
        '"extension":[{"url":"http://x","valueDecimal":1.50}],'
        '"contained":[{"resourceType":"Patient","id":"c","name":[{"family":"Inner"}]}]}'
    )
    cipher, _wrapped, _kid = envelopes.new(place)
    sealed = sealing.seal(resource, policy, lambda: cipher)
    assert sealed is not None
    body = jsonio.dumps(sealed)
    assert body.count(sealing.MARKER_TEXT) >= 3
    general = jsonio.dumps(sealing.open_sealed(jsonio.loads_trusted(body), cipher))
    assert sealing.open_sealed_text(body, cipher) == general
    assert '"valueDecimal":1.50' in general and jsonio.loads_trusted(general) == resource
    assert sealing.open_sealed_text(body.replace('":', '": '), cipher) is None  # not the writer's form
    big = body[:-1] + ',"x":123456789012345678901234567890}'
    opened = sealing.open_sealed_text(big, cipher)
    assert opened == jsonio.dumps(sealing.open_sealed(jsonio.loads_trusted(big), cipher))
    assert opened.endswith(',"x":123456789012345678901234567890}')
    assert sealing.open_sealed_text(body[:-1] + ',"y":1e400}', cipher) is None
