"""Instance, type and system history with _since, _at, _count and keyset paging links."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from tests.helpers import create, created_id, patient


def _get(client, url: str):
    parts = urlsplit(url)
    resp = client.get(parts.path + ("?" + parts.query if parts.query else ""))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json(force=True)


def _link(bundle, rel):
    return next((link["url"] for link in bundle["link"] if link["relation"] == rel), None)


def test_instance_history_newest_first_with_deletes(client):
    rid = created_id(create(client, patient()))
    client.put(f"/fhir/R4/Patient/{rid}", json=patient(id=rid, gender="male"))
    client.delete(f"/fhir/R4/Patient/{rid}")
    bundle = _get(client, f"/fhir/R4/Patient/{rid}/_history")
    assert bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert "resource" not in entries[0]
    assert entries[1]["resource"]["gender"] == "male"
    assert entries[2]["fullUrl"].endswith(f"/fhir/R4/Patient/{rid}")
    assert client.get("/fhir/R4/Patient/unknown/_history").status_code == 404


def test_type_and_system_history(client):
    create(client, patient())
    create(client, {"resourceType": "Organization", "name": "O"})
    types = {e["resource"]["resourceType"] for e in _get(client, "/fhir/R4/_history")["entry"]}
    assert types == {"Patient", "Organization"}
    entries = _get(client, "/fhir/R4/Patient/_history")["entry"]
    assert {e["resource"]["resourceType"] for e in entries} == {"Patient"}
    assert client.get("/fhir/R4/Foo/_history").status_code == 404


def test_paging_visits_every_version_once_while_data_changes(client):
    ids = [created_id(create(client, patient())) for _ in range(23)]
    url = "/fhir/R4/Patient/_history?_count=5"
    seen: list[tuple[str, str]] = []
    bundle = _get(client, url)
    pages = 0
    while True:
        pages += 1
        seen += [(e["resource"]["id"], e["response"]["etag"]) for e in bundle["entry"]]
        if pages == 2:
            create(client, patient())  # new data arriving mid-paging does not shift pages
        nxt = _link(bundle, "next")
        if not nxt:
            break
        assert "_cursor=" in nxt and "_count=5" in nxt
        bundle = _get(client, nxt)
    assert pages == 5
    assert sorted(i for i, _ in seen) == sorted(ids)
    assert len(set(seen)) == 23


def test_previous_link_returns_the_previous_page(client):
    for _ in range(6):
        create(client, patient())
    first = _get(client, "/fhir/R4/_history?_count=2")
    assert _link(first, "previous") is None
    second = _get(client, _link(first, "next"))
    back = _get(client, _link(second, "previous"))
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in first["entry"]]


def test_count_validation_and_cap(client, app):
    assert client.get("/fhir/R4/_history?_count=abc").status_code == 400
    assert client.get("/fhir/R4/_history?_cursor=zzz").status_code == 400
    app.config["MAX_PAGE_SIZE"] = 2
    for _ in range(3):
        create(client, patient())
    bundle = _get(client, "/fhir/R4/_history?_count=100")
    assert len(bundle["entry"]) == 2 and _link(bundle, "next")


def test_since_and_at(client):
    rid = created_id(create(client, patient()))
    time.sleep(0.02)
    v1_time = client.get(f"/fhir/R4/Patient/{rid}").get_json()["meta"]["lastUpdated"]
    time.sleep(0.05)
    v2 = client.put(f"/fhir/R4/Patient/{rid}", json=patient(id=rid, gender="male")).get_json()
    v2_time = v2["meta"]["lastUpdated"]
    other = created_id(create(client, patient()))

    since = _get(client, f"/fhir/R4/_history?_since={v2_time}")["entry"]
    assert {(e["resource"]["id"], e["response"]["etag"]) for e in since} == {(rid, 'W/"2"'), (other, 'W/"1"')}

    # _at the time of version 1: version 1 was current then; version 2 and `other` did not yet exist
    at = _get(client, f"/fhir/R4/Patient/{rid}/_history?_at={v1_time}")["entry"]
    assert [e["response"]["etag"] for e in at] == ['W/"1"']
    at_now = _get(client, f"/fhir/R4/Patient/{rid}/_history?_at={v2_time}")["entry"]
    assert [e["response"]["etag"] for e in at_now] == ['W/"2"']
    year = v1_time[:4]
    assert len(_get(client, f"/fhir/R4/Patient/{rid}/_history?_at={year}")["entry"]) == 2
    assert client.get("/fhir/R4/_history?_since=yesterday").status_code == 400


def test_a_repeated_count_is_refused(client):
    for path in ("/fhir/R4/_history", "/fhir/R4/Patient/_history"):
        for query in ("_count=2&_count=x", "_count=2&_count=3"):
            resp = client.get(f"{path}?{query}")
            assert resp.status_code == 400, (path, query)
            assert resp.get_json()["issue"][0]["expression"] == ["_count"]
