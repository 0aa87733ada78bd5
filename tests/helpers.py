"""Small helpers shared by tests."""

from __future__ import annotations

from typing import Any

FHIR = "application/fhir+json"


def patient(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "Test", "given": ["Ann"]}]}
    body.update(fields)
    return body


def create(client, body: dict[str, Any], res_type: str | None = None):
    res_type = res_type or body["resourceType"]
    resp = client.post(f"/fhir/R4/{res_type}", json=body, headers={"Content-Type": FHIR})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp


def created_id(resp) -> str:
    return resp.headers["Location"].split("/_history/")[0].rsplit("/", 1)[1]


def issue(resp, index: int = 0) -> dict[str, Any]:
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][index]
