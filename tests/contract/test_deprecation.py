"""The versioning policy's mechanism (docs/versioning.md): a deprecation announced in configuration shows as
Deprecation / Sunset / Link headers on the responses it concerns and nowhere else, is listed in the docs and
marked in the OpenAPI document, and after its sunset date the route answers 410 Gone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from werkzeug.http import parse_date

from fhir_api import create_app, deprecation, openapi
from tests.helpers import FHIR, authorized_client, create, created_id, empty_tables, issue, patient

ANNOUNCED = [
    {
        "endpoint": "fhir.history_system",
        "deprecated": "2025-01-01",
        "sunset": "2999-01-01",
        "note": "Use the history of one resource type, GET /fhir/R4/{type}/_history.",
    },
    {"endpoint": "fhir.search_type", "parameter": "_total", "deprecated": "2025-06-30T12:00:00Z"},
]
DEPRECATION_HEADERS = ("Deprecation", "Sunset")


def _app(database_url: str, entries: list[dict[str, Any]]):
    return create_app({"DATABASE_URL": database_url, "TESTING": True, "DEPRECATIONS": entries})


@pytest.fixture
def announced(database_url) -> Iterator[Any]:
    application = _app(database_url, ANNOUNCED)
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


@pytest.fixture
def retired(database_url) -> Iterator[Any]:
    past = [{**ANNOUNCED[0], "deprecated": "2020-01-01", "sunset": "2021-01-01T00:00:00Z"}]
    application = _app(database_url, past)
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


@pytest.fixture
def make_deprecated(database_url) -> Iterator[Any]:
    made: list[Any] = []

    def make(entries: list[dict[str, Any]]):
        made.append(_app(database_url, entries))
        return made[-1]

    yield make
    for application in made:
        application.extensions["fhir_db"]["engine"].dispose()


class _Ids(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids |= {v for k, v in attrs if k == "id" and v}


def _follow(client, url: str) -> None:
    """The link leads to a page of this server that has the section it names."""
    parts = urlsplit(url)
    assert parts.netloc == "localhost" and parts.fragment, url
    page = client.get(parts.path)
    assert page.status_code == 200 and page.mimetype == "text/html", url
    assert parts.fragment in _Ids(page.get_data(as_text=True)).ids, f"{url}: no section {parts.fragment}"


def _marked(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The operations the document marks deprecated."""
    return [
        (path, method, op)
        for path, item in sorted(doc["paths"].items())
        for method, op in sorted(item.items())
        if method != "parameters" and op.get("deprecated")
    ]


def _links(resp, rel: str) -> list[str]:
    return [
        value.split(">", 1)[0].lstrip("<")
        for value in resp.headers.getlist("Link")
        if f'rel="{rel}"' in value
    ]


def test_the_deprecated_route_announces_it(announced):
    client = authorized_client(announced)
    create(client, patient())
    resp = client.get("/fhir/R4/_history")
    assert resp.status_code == 200
    assert resp.headers["Deprecation"] == f"@{int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())}"
    assert resp.headers["Deprecation"] == "@1735689600"  # RFC 9745: a structured-field Date
    assert resp.headers["Sunset"] == "Tue, 01 Jan 2999 00:00:00 GMT"  # RFC 8594: an HTTP-date
    assert parse_date(resp.headers["Sunset"]) == datetime(2999, 1, 1, tzinfo=UTC)
    [link] = _links(resp, "deprecation")
    assert link == "http://localhost/docs/deprecations#fhir-history-system"
    assert _links(resp, "sunset") == [link]
    _follow(announced.test_client(), link)
    page = announced.test_client().get("/docs/deprecations").get_data(as_text=True)
    assert "Use the history of one resource type" in page and "2999-01-01" in page
    # errors on the route are announced too (the route is what is deprecated, not one answer)
    assert client.get("/fhir/R4/_history?_count=x").headers.get("Deprecation") == "@1735689600"


def test_a_deprecated_parameter_is_announced_only_when_used(announced):
    client = authorized_client(announced)
    create(client, patient())
    used = client.get("/fhir/R4/Patient?_total=accurate")
    assert used.status_code == 200
    assert used.headers["Deprecation"] == f"@{int(datetime(2025, 6, 30, 12, tzinfo=UTC).timestamp())}"
    assert "Sunset" not in used.headers  # announced, no date set yet
    [link] = _links(used, "deprecation")
    _follow(announced.test_client(), link)
    assert not _links(used, "sunset")
    assert "Deprecation" not in client.get("/fhir/R4/Patient").headers


def test_no_other_response_carries_the_headers(announced):
    client = authorized_client(announced)
    pid = created_id(create(client, patient()))
    anonymous = announced.test_client()
    others = [
        client.get("/fhir/R4/metadata"),
        client.get(f"/fhir/R4/Patient/{pid}"),
        client.get(f"/fhir/R4/Patient/{pid}/_history"),
        client.get("/fhir/R4/Patient/_history"),
        client.get("/fhir/R4/Patient?family=Test"),
        client.post("/fhir/R4/Patient", json=patient(), headers={"Content-Type": FHIR}),
        client.get("/fhir/R4/Observation?_count=1"),
        anonymous.get("/healthz"),
        anonymous.get("/docs"),
        anonymous.get("/docs/deprecations"),
        anonymous.get("/openapi.json"),
        anonymous.get("/no/such/route"),
    ]
    for resp in others[:-5]:
        assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    for resp in others:
        found = [h for h in DEPRECATION_HEADERS if h in resp.headers] + _links(resp, "deprecation")
        assert not found, (resp.request.path, found)


def test_after_the_sunset_the_route_answers_410_with_links(retired):
    client = authorized_client(retired)
    resp = client.get("/fhir/R4/_history")
    assert resp.status_code == 410
    first = issue(resp)
    assert first["code"] == "not-supported"
    assert first["details"]["coding"][0]["code"] == "retired"
    catalogue = first["details"]["text"].removeprefix("See ")
    assert catalogue == "http://localhost/docs/errors#retired"
    notice = "http://localhost/docs/deprecations#fhir-history-system"
    assert first["diagnostics"].startswith("Retired on 2021-01-01") and notice in first["diagnostics"]
    for url in (catalogue, notice):
        _follow(retired.test_client(), url)
    assert resp.headers["Sunset"] == "Fri, 01 Jan 2021 00:00:00 GMT"
    assert _links(resp, "deprecation") == [notice]
    # other routes are untouched; a request without a token is refused before the route is looked at
    assert client.get("/fhir/R4/Patient/_history").status_code == 200
    assert retired.test_client().get("/fhir/R4/_history").status_code == 401


def test_the_openapi_document_marks_what_is_deprecated(announced):
    doc = openapi.document(announced)
    history = doc["paths"]["/fhir/R4/_history"]["get"]
    assert history["deprecated"] is True
    assert "Deprecated since 2025-01-01; sunset 2999-01-01, then 410 Gone." in history["description"]
    assert "/docs/deprecations#fhir-history-system" in history["description"]
    assert "410" in history["responses"]
    assert _marked(doc) == [("/fhir/R4/_history", "get", history)]
    search = doc["paths"]["/fhir/R4/{res_type}"]["get"]["parameters"]
    [total] = [p for p in search if p.get("name") == "_total"]
    assert total["deprecated"] is True and total["in"] == "query"
    others = [p for p in search if p.get("deprecated") and p is not total]
    assert not others
    validator = pytest.importorskip("openapi_spec_validator")
    validator.OpenAPIV31SpecValidator(doc).validate()
    # the committed document carries the code's deprecations only, never an operator's
    assert not _marked(openapi.build())


def test_operators_announce_through_the_environment(database_url, monkeypatch):
    entry = {"path": "/fhir/R4/Basic", "deprecated": "2026-03-01", "sunset": "2026-09-01", "id": "basic"}
    monkeypatch.setenv("FHIR_DEPRECATIONS", json.dumps([entry]))
    application = create_app({"DATABASE_URL": database_url, "TESTING": True})
    try:
        [found] = deprecation.entries(application)
        assert found.path == "/fhir/R4/Basic" and found.href == "/docs/deprecations#basic"
        assert found.sunset == datetime(2026, 9, 1, tzinfo=UTC)
        assert found.matches(None, "/fhir/R4/Basic/1", "GET", {})
        assert not found.matches(None, "/fhir/R4/BasicX", "GET", {})
    finally:
        application.extensions["fhir_db"]["engine"].dispose()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"endpoint": "fhir.no_such_view", "deprecated": "2026-01-01"}, "no route"),
        ({"deprecated": "2026-01-01"}, "exactly one of endpoint or path"),
        ({"endpoint": "fhir.read", "path": "/fhir/R4", "deprecated": "2026-01-01"}, "exactly one"),
        ({"path": "fhir/R4", "deprecated": "2026-01-01"}, "must start with /"),
        ({"path": "/fhir/R4/Basic"}, "needs a deprecated date"),
        ({"path": "/fhir/R4/Basic", "deprecated": "soon"}, "not an ISO 8601"),
        ({"path": "/fhir/R4/Basic", "deprecated": "2026-01-01", "sunset": "2025-01-01"}, "after"),
        ({"path": "/fhir/R4/Basic", "deprecated": "2026-01-01", "link": "javascript:x"}, "link"),
        ({"path": "/fhir/R4/Basic", "deprecated": "2026-01-01", "when": "x"}, "unknown field"),
    ],
)
def test_a_wrong_announcement_stops_the_start(database_url, entry, problem):
    with pytest.raises(ValueError, match=problem):
        _app(database_url, [entry])


def test_a_path_marks_the_operations_wholly_under_it(make_deprecated):
    doc = openapi.document(make_deprecated([{"path": "/audit", "deprecated": "2026-01-01"}]))
    marked = {path for path, method, _ in _marked(doc)}
    assert marked == {path for path in doc["paths"] if path.startswith("/audit/")}
    assert marked  # the auditor's export, checkpoints, page...
    partial = openapi.document(make_deprecated([{"path": "/fhir/R4/Basic", "deprecated": "2026-01-01"}]))
    assert not _marked(partial)
