"""Helpers for the hand-written search tests: build small fixtures through the REST API, run searches,
and read searchset bundles.

Most modules keep one small population per test class (``populated_client``): it is written once
through the API, searched read-only by every test of the class, and the tables are emptied when the
class ends, exactly as the function-scoped ``app`` fixture of tests/conftest.py does after each test.
A class using it must not also use ``client`` (whose teardown would empty the tables mid-class).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from fhir_api import create_app
from tests.helpers import authorized_client, empty_tables

FHIR = "application/fhir+json"
BASE = "http://localhost/fhir/R4"
ON_POSTGRES = bool(os.environ.get("FHIR_TEST_DATABASE_URL"))
ON_SQLITE = not ON_POSTGRES
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


# -- writing -------------------------------------------------------------------------------------------------
def put(client, resource: dict[str, Any]) -> dict[str, Any]:
    """Create or update ``resource`` at its own id (PUT); returns the stored body."""
    res_type, res_id = resource["resourceType"], resource["id"]
    resp = client.put(f"/fhir/R4/{res_type}/{res_id}", json=resource, headers={"Content-Type": FHIR})
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    return resp.get_json(force=True)


def put_all(client, resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [put(client, r) for r in resources]


def delete(client, ref: str) -> None:
    resp = client.delete(f"/fhir/R4/{ref}")
    assert resp.status_code == 200, resp.get_data(as_text=True)


@contextmanager
def populated_client(
    database_url: str, build: Callable[[Any], None], *, protected: bool = True
) -> Iterator[Any]:
    """A test client over a database that ``build`` fills once; emptied again on exit. ``protected``:
    field-level encryption on (the default) or every element stored and indexed in clear."""
    app = create_app({"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": protected})
    client = authorized_client(app)
    try:
        build(client)
        yield client
    finally:
        app.extensions["fhir_db"]["engine"].dispose()
        empty_tables(database_url)


# -- resources -----------------------------------------------------------------------------------------------
def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, **fields}


def observation(oid: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"text": "x"},
    }
    body.update(fields)
    return body


def coding(system: str | None, code: str | None, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if system is not None:
        out["system"] = system
    if code is not None:
        out["code"] = code
    if display is not None:
        out["display"] = display
    return out


def concept(*codings: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = list(codings)
    if text is not None:
        out["text"] = text
    return out


# -- searching -----------------------------------------------------------------------------------------------
def get(client, query: str, headers: dict[str, str] | None = None):
    """GET ``[base]/query`` (``query`` is e.g. ``Patient?name=eve``, already URL-encoded where needed)."""
    return client.get(f"/fhir/R4/{query.lstrip('/')}", headers=headers or {})


def bundle(client, query: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = get(client, query, headers)
    assert resp.status_code == 200, f"{query}: {resp.status_code} {resp.get_data(as_text=True)}"
    body = resp.get_json(force=True)
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset", body
    return body


def entries(body: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e for e in body.get("entry", []) if e.get("search", {}).get("mode") == mode]


def ids_of(body: dict[str, Any], mode: str = "match") -> list[str]:
    """Ids of the entries with the given search mode, in bundle order."""
    return [e["resource"]["id"] for e in entries(body, mode)]


def refs_of(body: dict[str, Any], mode: str = "match") -> list[str]:
    """``Type/id`` of the entries with the given search mode, in bundle order."""
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(body, mode)]


def found(client, query: str, headers: dict[str, str] | None = None) -> set[str]:
    """The ids a search matches (a set: for tests where the order does not matter)."""
    body = bundle(client, query, headers)
    matched = ids_of(body)
    assert len(matched) == len(set(matched)), f"duplicate matches for {query}: {matched}"
    return set(matched)


def link(body: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in body.get("link", []) if x["relation"] == relation), None)


def follow(client, url: str) -> dict[str, Any]:
    """GET a link of a bundle (an absolute URL on the test client's base)."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://localhost", url
    resp = client.get(f"{parts.path}?{parts.query}" if parts.query else parts.path)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json(force=True)


def bad_request(client, query: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Assert a 400 with an OperationOutcome; returns the first issue."""
    resp = get(client, query, headers)
    assert resp.status_code == 400, f"{query}: {resp.status_code} {resp.get_data(as_text=True)}"
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["severity"] in ("error", "fatal"), body
    return body["issue"][0]


def outcome_entries(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in entries(body, "outcome")]


STRICT = {"Prefer": "handling=strict"}
LENIENT = {"Prefer": "handling=lenient"}


def protected(client: Any) -> bool:
    return bool(client.application.config["PROTECTION"])


def refused_as_protected(client: Any, query: str) -> dict[str, Any]:
    """The single issue of a 400 that says the search cannot be served on protected (encrypted) data."""
    issue = bad_request(client, query)
    assert issue["details"]["coding"][0]["code"] == "protected-search", issue
    assert "protected" in issue["diagnostics"]
    return issue
