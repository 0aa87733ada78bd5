"""Key rotation while the server reads and writes: `fhir-api keys rotate` moves every wrapped key to the
new KEK, nothing fails meanwhile, and `keys retire` is refused until no row uses the old key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from crypto.kms import generate_key_file
from fhir_api import create_app
from fhir_api.cli import main
from fhir_api.db import new_session
from resources.models import ResourceVersion
from resources.protection.models import IndexKey
from resources.search.indexer import blind_sets, blind_tables
from tests.helpers import authorized_client, created_id, patient


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    generate_key_file(path)
    return path


@pytest.fixture
def rotating_app(app, database_url, keyring, monkeypatch):
    """The test's app on a keyring of its own (rotation rewrites the file)."""
    monkeypatch.setenv("FHIR_CRYPTO_KEY_FILE", str(keyring))
    monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
    own = create_app({"DATABASE_URL": database_url, "TESTING": True, "CRYPTO_KEY_FILE": str(keyring)})
    yield own
    own.extensions["fhir_db"]["engine"].dispose()


def _kids_in_use(app) -> set[str]:
    with app.app_context(), new_session() as s:
        used = select(ResourceVersion.key_id).where(ResourceVersion.key_id.is_not(None))
        versions = s.execute(used).scalars()
        roots = s.execute(select(IndexKey.key_id)).scalars()
        return set(versions) | set(roots)


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_rotation_during_reads_and_writes(rotating_app):
    client = authorized_client(rotating_app)
    bodies = [patient(name=[{"family": f"Rot{i}"}], birthDate="1970") for i in range(40)]
    ids = [created_id(client.post("/fhir/R4/Patient", json=body)) for body in bodies]
    old = rotating_app.extensions["fhir_protection"].provider.current_kid()
    assert _kids_in_use(rotating_app) == {old}

    errors: list[str] = []
    written: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        c = authorized_client(rotating_app)
        while not stop.is_set():
            for pid in ids[:10]:
                resp = c.get(f"/fhir/R4/Patient/{pid}")
                if resp.status_code != 200 or resp.get_json()["name"][0]["family"] != f"Rot{ids.index(pid)}":
                    errors.append(f"read {pid}: {resp.status_code}")
            found = c.get("/fhir/R4/Patient?family=rot1&_count=100")
            if found.status_code != 200 or found.get_json().get("total", 11) < 11:
                errors.append(f"search: {found.status_code}")

    def writer() -> None:
        c = authorized_client(rotating_app)
        n = 0
        while not stop.is_set():
            resp = c.post("/fhir/R4/Patient", json=patient(name=[{"family": f"During{n}"}]))
            if resp.status_code != 201:
                errors.append(f"create: {resp.status_code} {resp.get_data(as_text=True)[:200]}")
            else:
                written.append(created_id(resp))
            n += 1

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        output = _cli("keys", "rotate", "--batch", "7", "--grace", "0.5")
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert not errors, errors[:5]
    new = rotating_app.extensions["fhir_protection"].provider.current_kid()
    assert new != old and f"current key: {new}" in output
    assert written, "the writer ran during the rotation"
    assert _kids_in_use(rotating_app) == {new}, "no row refers to the old key"
    # everything still reads, including what was written during the rotation
    client = authorized_client(rotating_app)
    for pid in ids + written[-5:]:
        assert client.get(f"/fhir/R4/Patient/{pid}").status_code == 200
    _cli("keys", "retire", old)
    assert old not in rotating_app.extensions["fhir_protection"].provider.kids()
    assert client.get(f"/fhir/R4/Patient/{ids[0]}").get_json()["name"][0]["family"] == "Rot0"


def test_retire_is_refused_while_the_key_is_in_use(rotating_app):
    client = authorized_client(rotating_app)
    pid = created_id(client.post("/fhir/R4/Patient", json=patient(name=[{"family": "Kept"}])))
    provider = rotating_app.extensions["fhir_protection"].provider
    old = provider.current_kid()
    provider.rotate()  # a new current key, but nothing re-wrapped yet
    result = CliRunner().invoke(main, ["keys", "retire", old])
    assert result.exit_code != 0 and "still wraps" in result.output
    assert client.get(f"/fhir/R4/Patient/{pid}").status_code == 200
    # resume finishes the job; then retiring works
    _cli("keys", "rotate", "--resume", "--grace", "0")
    with rotating_app.app_context(), new_session() as s:
        stale = s.execute(select(func.count()).where(ResourceVersion.key_id == old)).scalar_one()
    assert stale == 0
    _cli("keys", "retire", old)
    current = provider.current_kid()
    refused = CliRunner().invoke(main, ["keys", "retire", current])
    assert refused.exit_code != 0


def test_keys_init_refuses_to_overwrite(tmp_path):
    path = tmp_path / "k.json"
    assert "created" in _cli("keys", "init", str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = CliRunner().invoke(main, ["keys", "init", str(path)])
    assert again.exit_code != 0 and "exists" in again.output


def test_blind_index_key_rotation_rebuilds_online(rotating_app):
    client = authorized_client(rotating_app)
    for i in range(12):
        phone = [{"system": "phone", "value": f"555-{i}"}]
        body = patient(name=[{"family": f"Idx{i}"}], birthDate=f"19{60 + i}-01-02", telecom=phone)
        client.post("/fhir/R4/Patient", json=body)
    before = {q: client.get(f"/fhir/R4/{q}").get_json().get("total") for q in QUERIES}
    assert list(before.values()) == [3, 5, 1]  # Idx1, Idx10, Idx11; 1965-1969; one phone

    output = _cli("keys", "rotate-index", "--settle", "0", "--batch", "5")
    assert "under key 2" in output
    shield = rotating_app.extensions["fhir_protection"]
    shield.forget_index_keys()  # a worker's refresh interval, without waiting for it
    with rotating_app.app_context(), new_session() as s:
        gens = {g for t in blind_tables(blind_sets(s)) for g in s.execute(select(t.gen).distinct()).scalars()}
        states = dict(s.execute(select(IndexKey.gen, IndexKey.state)).all())
    assert gens == {2}
    assert states == {1: "retired", 2: "active"}
    after = {q: client.get(f"/fhir/R4/{q}").get_json().get("total") for q in QUERIES}
    assert after == before


QUERIES = (
    "Patient?family=idx1&_total=accurate",
    "Patient?birthdate=ge1965&birthdate=lt1970&_total=accurate",
    "Patient?telecom=555-3&_total=accurate",
)


def test_reseal_after_the_policy_grows(app, client, database_url, monkeypatch):
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "free text"},
        "valueString": "Confidential-Remark-4711",
    }
    oid = created_id(client.post("/fhir/R4/Observation", json=obs))
    client.put(f"/fhir/R4/Observation/{oid}", json={**obs, "id": oid, "valueString": "Second-Remark-4712"})

    def raw() -> str:
        with app.app_context(), new_session() as s:
            bodies = s.execute(select(ResourceVersion.body).where(ResourceVersion.res_id == oid)).scalars()
            return "\n".join(bodies)

    assert "Confidential-Remark-4711" in raw()  # not protected by default

    monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
    monkeypatch.setenv("FHIR_PROTECTED_ELEMENTS", "Observation.valueString")
    output = _cli("keys", "reseal", "--type", "Observation")
    assert "resealed 2 versions" in output
    assert "Remark-47" not in raw()  # both versions, history included

    grown = create_app(
        {"DATABASE_URL": database_url, "TESTING": True, "PROTECTED_ELEMENTS": "Observation.valueString"}
    )
    try:
        http = authorized_client(grown)
        assert http.get(f"/fhir/R4/Observation/{oid}/_history/1").get_json()["valueString"].startswith("Conf")
        found = http.get("/fhir/R4/Observation?value-string=second-rem").get_json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [oid]
        with grown.app_context(), new_session() as s:
            from resources.search.models import StringIndex

            plain = s.execute(select(StringIndex.value_exact).where(StringIndex.res_id == oid)).scalars()
            assert not [v for v in plain if "Remark" in v]
    finally:
        grown.extensions["fhir_db"]["engine"].dispose()
