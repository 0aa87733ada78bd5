"""The CapabilityStatement is generated from the registered routes and validates as R4B."""

from __future__ import annotations

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from resources.registry import supported_types


def test_metadata_validates_and_lists_what_is_implemented(client, app):
    resp = client.get("/fhir/R4/metadata")
    assert resp.status_code == 200
    body = resp.get_json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1"
    rest = body["rest"][0]
    assert [r["type"] for r in rest["resource"]] == list(supported_types())
    codes = {i["code"] for i in rest["resource"][0]["interaction"]}
    assert codes == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "create",
        "history-type",
        "search-type",
    }
    assert {i["code"] for i in rest["interaction"]} == {
        "transaction",
        "batch",
        "history-system",
        "search-system",
    }
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["name"] == "string" and params["birthdate"] == "date" and params["_id"] == "token"
    assert params["general-practitioner"] == "reference"
    assert patient["conditionalCreate"] is True and patient["conditionalUpdate"] is True
    assert patient["conditionalDelete"] == "single"


def test_metadata_follows_the_url_map(app, client):
    """Remove a route's mark and the statement stops claiming it: nothing is hand-maintained."""
    view = app.view_functions["fhir.patch"]
    mark = view.fhir_interactions
    try:
        del view.fhir_interactions
        codes = {
            i["code"]
            for i in client.get("/fhir/R4/metadata").get_json()["rest"][0]["resource"][0]["interaction"]
        }
        assert "patch" not in codes
    finally:
        view.fhir_interactions = mark
