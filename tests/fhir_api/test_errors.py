"""Every failure is an OperationOutcome with the right status, issue code, expression and docs link."""

from __future__ import annotations

import pytest

from tests.helpers import FHIR, create, created_id, issue, patient


def _assert_outcome(resp, status: int, code: str | None = None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    first = issue(resp)
    assert first["severity"] == "error"
    assert first["diagnostics"]
    assert first["details"]["text"].startswith("See http://localhost/docs/errors#")
    if code:
        assert first["code"] == code
    assert "Traceback" not in resp.get_data(as_text=True)
    return first


def test_malformed_json_400(client):
    resp = client.post("/fhir/R4/Patient", data='{"resourceType": "Patient",', content_type=FHIR)
    _assert_outcome(resp, 400, "structure")
    resp = client.post("/fhir/R4/Patient", data="[1,2]", content_type=FHIR)
    _assert_outcome(resp, 400, "structure")
    resp = client.post("/fhir/R4/Patient", data="", content_type=FHIR)
    _assert_outcome(resp, 400, "structure")
    resp = client.post(
        "/fhir/R4/Patient", data='{"resourceType":"Patient","gender":"male","gender":"x"}', content_type=FHIR
    )
    _assert_outcome(resp, 400, "structure")
    resp = client.post("/fhir/R4/Patient", data=b"\xff\xfe", content_type=FHIR)
    _assert_outcome(resp, 400)


def test_invalid_resource_one_issue_per_problem_with_expression(client):
    body = patient(birthDate="1990-13-01", name=[{"given": [1]}], foo=1)
    resp = client.post("/fhir/R4/Patient", json=body)
    _assert_outcome(resp, 400)
    issues = resp.get_json()["issue"]
    by_expr = {i["expression"][0]: i for i in issues}
    assert set(by_expr) == {"Patient.birthDate", "Patient.name[0].given[0]", "Patient.foo"}
    assert by_expr["Patient.foo"]["code"] == "structure"
    assert all(i["details"]["coding"][0]["code"] == "invalid-resource" for i in issues)
    resp = client.post("/fhir/R4/Observation", json={"resourceType": "Observation", "status": "final"})
    first = _assert_outcome(resp, 400, "required")
    assert first["expression"] == ["Observation.code"]


def test_diagnostics_never_echo_submitted_values(client):
    secret = "Zebedee-Secret-Name-19"
    resp = client.post("/fhir/R4/Patient", json=patient(birthDate=secret))
    assert resp.status_code == 400
    assert secret not in resp.get_data(as_text=True)
    resp = client.post("/fhir/R4/Patient", json=patient(gender=["x", secret]))
    assert secret not in resp.get_data(as_text=True)


def test_type_mismatch_and_missing_resource_type(client):
    first = _assert_outcome(client.post("/fhir/R4/Patient", json={"resourceType": "Observation"}), 400)
    assert first["expression"] == ["resourceType"]
    _assert_outcome(client.post("/fhir/R4/Patient", json={"name": []}), 400)


def test_unknown_type_404_and_unsupported_r4_type_422(client):
    _assert_outcome(client.get("/fhir/R4/Foo/1"), 404, "not-supported")
    _assert_outcome(client.post("/fhir/R4/Foo", json={"resourceType": "Foo"}), 404)
    resp = client.post("/fhir/R4/MedicinalProduct", json={"resourceType": "MedicinalProduct"})
    _assert_outcome(resp, 422, "not-supported")
    _assert_outcome(client.get("/fhir/R4/nothing/here/at/all"), 404, "not-found")


def test_media_types(client):
    _assert_outcome(
        client.post("/fhir/R4/Patient", data="<Patient/>", content_type="application/fhir+xml"), 415
    )
    _assert_outcome(client.post("/fhir/R4/Patient", data="x", content_type="text/plain"), 415)
    resp = client.post(
        "/fhir/R4/Patient", json=patient(), headers={"Content-Type": f"{FHIR}; fhirVersion=3.0"}
    )
    _assert_outcome(resp, 415)
    resp = client.post(
        "/fhir/R4/Patient",
        data='{"resourceType":"Patient"}',
        content_type=f"{FHIR}; fhirVersion=4.0; charset=utf-8",
    )
    assert resp.status_code == 201
    _assert_outcome(client.get("/fhir/R4/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    _assert_outcome(client.get("/fhir/R4/metadata?_format=xml"), 406)
    _assert_outcome(client.get("/fhir/R4/metadata", headers={"Accept": f"{FHIR}; fhirVersion=5.0"}), 406)
    assert (
        client.get("/fhir/R4/metadata", headers={"Accept": "application/json"})
        .headers["Content-Type"]
        .startswith("application/json")
    )
    assert client.get("/fhir/R4/metadata?_format=json").status_code == 200
    assert client.get("/fhir/R4/metadata", headers={"Accept": "text/html,*/*;q=0.8"}).status_code == 200


def test_patch_media_types(client):
    rid = created_id(create(client, patient()))
    resp = client.patch(f"/fhir/R4/Patient/{rid}", json={"resourceType": "Parameters"}, content_type=FHIR)
    _assert_outcome(resp, 415)


def test_method_not_allowed_405_with_allow(client):
    resp = client.post("/fhir/R4/metadata", json={})
    _assert_outcome(resp, 405)
    assert "GET" in resp.headers["Allow"]
    _assert_outcome(client.delete("/fhir/R4/Patient/_history"), 405)


def test_oversize_body_413(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    big = patient(text={"status": "generated", "div": "<div>" + "x" * 5000 + "</div>"})
    _assert_outcome(client.post("/fhir/R4/Patient", json=big), 413, "too-costly")


def test_unexpected_exception_is_500_outcome_without_trace(app, client, monkeypatch):
    from resources import interactions

    def boom(*_a, **_k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(interactions, "read", boom)
    resp = client.get("/fhir/R4/Patient/x", headers={"X-Request-Id": "req-123"})
    first = _assert_outcome(resp, 500, "exception")
    assert "secret internals" not in resp.get_data(as_text=True)
    assert "req-123" in first["diagnostics"]


def test_request_id_echoed_or_generated(client):
    assert (
        client.get("/fhir/R4/metadata", headers={"X-Request-Id": "abc-1"}).headers["X-Request-Id"] == "abc-1"
    )
    generated = client.get("/fhir/R4/metadata", headers={"X-Request-Id": "bad id <x>"}).headers[
        "X-Request-Id"
    ]
    assert generated and generated != "bad id <x>"


def test_gzip_when_asked(client):
    for _ in range(3):
        create(client, patient())
    resp = client.get("/fhir/R4/_history", headers={"Accept-Encoding": "gzip"})
    assert resp.headers.get("Content-Encoding") == "gzip"
    import gzip
    import json

    assert json.loads(gzip.decompress(resp.data))["type"] == "history"
    assert client.get("/fhir/R4/_history").headers.get("Content-Encoding") is None


def test_pretty(client):
    rid = created_id(create(client, patient()))
    text = client.get(f"/fhir/R4/Patient/{rid}?_pretty=true").get_data(as_text=True)
    assert text.startswith('{\n  "resourceType": "Patient"')


@pytest.mark.parametrize("slug_status", [(404, "not-found"), (400, "bad-request")])
def test_docs_links_resolve_to_a_section(client, slug_status):
    _status, slug = slug_status
    page = client.get("/docs/errors").get_data(as_text=True)
    assert f'id="{slug}"' in page


def test_every_linked_section_exists(client):
    from fhir_api.errors import all_error_classes

    page = client.get("/docs/errors").get_data(as_text=True)
    for cls in all_error_classes():
        assert f'id="{cls.slug}"' in page


def test_pretty_must_be_true_or_false(client, anonymous):
    assert client.get("/fhir/R4/Patient?_pretty=true").status_code == 200
    assert client.get("/fhir/R4/Patient?_pretty=FALSE").status_code == 200
    for query in ("_pretty=4611816655199", "_pretty=yes", "_pretty=true&_pretty=false"):
        resp = anonymous.get(f"/fhir/R4/metadata?{query}")
        assert resp.status_code == 400, query
        assert resp.get_json()["issue"][0]["expression"] == ["_pretty"]
