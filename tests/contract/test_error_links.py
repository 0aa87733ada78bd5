"""Every OperationOutcome links to a docs section that exists: a broad set of errors is provoked through HTTP,
every ``issue.details`` link is collected and followed (the page answers, the ``#anchor`` is an element id),
and every error class has its section whether or not a request here provoked it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from fhir_api import create_app
from fhir_api.errors import all_error_classes
from tests.helpers import (
    FHIR,
    authorized_client,
    create,
    created_id,
    empty_tables,
    fresh_database,
    patient,
    refuse_audit_inserts,
)

# Statuses the issue names, each of which must be provoked below (and 500 as well).
REQUIRED = {400, 401, 403, 404, 405, 406, 409, 410, 412, 413, 414, 415, 422, 429, 431, 500, 503}


class _Ids(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [v for k, v in attrs if k == "id" and v]


def _section_ids(client, path: str) -> list[str]:
    page = client.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html", path
    return _Ids(page.get_data(as_text=True)).ids


# -- apps with their own settings ---------------------------------------------------------------------------
@pytest.fixture
def make_app(database_url) -> Iterator[Callable[..., Any]]:
    """Apps on the session's database with extra settings (rate limits on, a sunset route...)."""
    made: list[Any] = []

    def make(**config: Any):
        application = create_app({"DATABASE_URL": database_url, "TESTING": True, **config})
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


def _execute(app, sql: str, **params: Any) -> None:
    with app.extensions["fhir_db"]["engine"].begin() as conn:
        conn.execute(text(sql), params)


def _version_row(app, res_type: str, res_id: str) -> Any:
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        return conn.execute(
            text("SELECT seq, body, data_key FROM resource_version WHERE res_type = :t AND res_id = :i"),
            {"t": res_type, "i": res_id},
        ).one()


# -- the errors --------------------------------------------------------------------------------------------
def _provoke(app, make_app, monkeypatch, tmp_path) -> list[tuple[str, int, str, Any]]:
    """(what, expected status, expected slug, response) for every error provoked through HTTP."""
    client = authorized_client(app)
    anonymous = app.test_client()
    fhir = {"Content-Type": FHIR}
    pid = created_id(create(client, patient()))
    gone = created_id(create(client, patient()))
    assert client.delete(f"/fhir/R4/Patient/{gone}").status_code == 200
    out: list[tuple[str, int, str, Any]] = []

    def add(what: str, status: int, slug: str, resp: Any) -> None:
        out.append((what, status, slug, resp))

    add("bad parameter", 400, "bad-request", client.get("/fhir/R4/Patient?_count=many"))
    add(
        "bad If-Match",
        400,
        "bad-request",
        client.put(
            f"/fhir/R4/Patient/{pid}", json={**patient(), "id": pid}, headers={**fhir, "If-Match": "later"}
        ),
    )
    add("malformed JSON", 400, "malformed-json", client.post("/fhir/R4/Patient", data="{", headers=fhir))
    add(
        "invalid resource",
        400,
        "invalid-resource",
        client.post("/fhir/R4/Patient", json=patient(birthDate="1990-13-01"), headers=fhir),
    )
    add(
        "unknown search parameter",
        400,
        "unknown-search-parameter",
        client.get("/fhir/R4/Patient?no-such-param=1", headers={"Prefer": "handling=strict"}),
    )
    add("search on protected data", 400, "protected-search", client.get("/fhir/R4/Patient?name:contains=an"))
    add("no token", 401, "unauthorized", anonymous.get("/fhir/R4/Patient"))
    add(
        "bad token",
        401,
        "unauthorized",
        anonymous.get("/fhir/R4/Patient", headers={"Authorization": "Bearer not-a-token"}),
    )
    narrow = authorized_client(app, scope="system/Observation.rs")
    add("scope", 403, "forbidden", narrow.get(f"/fhir/R4/Patient/{pid}"))
    add("no such resource", 404, "not-found", client.get("/fhir/R4/Patient/nobody"))
    add("no such route", 404, "not-found", anonymous.get("/no/such/route"))
    add("unknown type", 404, "unknown-resource-type", client.get("/fhir/R4/Foo/1"))
    add("method", 405, "method-not-allowed", client.post("/fhir/R4/metadata", json={}))
    add("AuditEvent write", 405, "method-not-allowed", client.post("/fhir/R4/AuditEvent", json={}))
    add(
        "XML",
        406,
        "not-acceptable",
        client.get("/fhir/R4/metadata", headers={"Accept": "application/fhir+xml"}),
    )

    from resources import interactions

    def collide(*_args: Any, **_kwargs: Any) -> Any:
        raise IntegrityError("INSERT ...", {}, Exception("duplicate key"))

    with monkeypatch.context() as patched:  # a concurrent writer won the race: the real path to 409
        patched.setattr(interactions, "update_in", collide)
        add(
            "concurrent write",
            409,
            "conflict",
            client.put(f"/fhir/R4/Patient/{pid}", json={**patient(), "id": pid}, headers=fhir),
        )
    add("deleted", 410, "gone", client.get(f"/fhir/R4/Patient/{gone}"))
    add(
        "stale If-Match",
        412,
        "precondition-failed",
        client.put(
            f"/fhir/R4/Patient/{pid}", json={**patient(), "id": pid}, headers={**fhir, "If-Match": 'W/"9"'}
        ),
    )
    add("long URL", 414, "uri-too-long", client.get("/fhir/R4/Patient?family=" + "x" * 9000))
    add(
        "text body",
        415,
        "unsupported-media-type",
        client.post("/fhir/R4/Patient", data="x", headers={"Content-Type": "text/plain"}),
    )
    add(
        "R4 type without a model",
        422,
        "unsupported-resource-type",
        client.post("/fhir/R4/MedicinalProduct", json={"resourceType": "MedicinalProduct"}, headers=fhir),
    )
    failed_test = [{"op": "test", "path": "/gender", "value": "other"}]
    add(
        "JSON Patch test",
        422,
        "unprocessable",
        client.patch(
            f"/fhir/R4/Patient/{pid}",
            json=failed_test,
            headers={"Content-Type": "application/json-patch+json"},
        ),
    )
    add(
        "big headers",
        431,
        "headers-too-large",
        client.get("/fhir/R4/metadata", headers={"X-Padding": "x" * 20000}),
    )

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    with monkeypatch.context() as patched:
        patched.setattr(interactions, "read", fail)
        add("unexpected exception", 500, "internal-error", client.get(f"/fhir/R4/Patient/{pid}"))

    # stored data tampered with, or sealed under a key the keyring lacks (as tests/crypto does it)
    tampered = created_id(create(client, patient(birthDate="1961-02-03")))
    row = _version_row(app, "Patient", tampered)
    body = json.loads(row.body)
    body["name"], body["birthDate"] = body["birthDate"], body["name"]
    _execute(app, "UPDATE resource_version SET body = :b WHERE seq = :s", b=json.dumps(body), s=row.seq)
    add("tampered ciphertext", 500, "tampered-data", client.get(f"/fhir/R4/Patient/{tampered}"))
    lost = created_id(create(client, patient()))
    row = _version_row(app, "Patient", lost)
    version, _kid, payload = row.data_key.split("|")
    dead = "kek-20000101000000-dead00"
    _execute(
        app,
        "UPDATE resource_version SET data_key = :k, key_id = :kid WHERE seq = :s",
        k=f"{version}|{dead}|{payload}",
        kid=dead,
        s=row.seq,
    )
    add("unknown key", 503, "key-unavailable", client.get(f"/fhir/R4/Patient/{lost}"))

    # settings of their own: a small body limit, rate limits on, a route past its sunset
    small = make_app(MAX_CONTENT_LENGTH=1000)
    big = patient(text={"status": "generated", "div": "<div>" + "x" * 5000 + "</div>"})
    add("big body", 413, "payload-too-large", authorized_client(small).post("/fhir/R4/Patient", json=big))
    limited = make_app(RATE_LIMIT_ENABLED=True, RATE_LIMIT_ANONYMOUS="2/minute").test_client()
    throttled = [limited.get("/fhir/R4/metadata") for _ in range(3)][-1]
    add("rate limit", 429, "too-many-requests", throttled)
    sunset = [{"endpoint": "fhir.history_system", "deprecated": "2020-01-01", "sunset": "2021-01-01"}]
    add(
        "past its sunset",
        410,
        "retired",
        authorized_client(make_app(DEPRECATIONS=sunset)).get("/fhir/R4/_history"),
    )

    # the audit log refuses its record: the read fails closed; an unreachable database is not ready
    with fresh_database(tmp_path, "links") as url:
        broken = create_app({"DATABASE_URL": url, "TESTING": True})
        try:
            reader = authorized_client(broken)
            created = create(reader, patient())
            refuse_audit_inserts(broken)
            add("audit refuses", 503, "audit-unavailable", reader.get(created.headers["Location"]))
        finally:
            broken.extensions["fhir_db"]["engine"].dispose()
    missing = tmp_path / "no-such-dir" / "db.sqlite3"
    unready = create_app({"DATABASE_URL": f"sqlite:///{missing}", "TESTING": True})
    try:
        add("database unreachable", 503, "service-unavailable", unready.test_client().get("/readyz"))
    finally:
        unready.extensions["fhir_db"]["engine"].dispose()
    return out


def test_every_outcome_links_to_a_section_that_exists(app, make_app, monkeypatch, tmp_path):
    provoked = _provoke(app, make_app, monkeypatch, tmp_path)
    reader = app.test_client()
    pages: dict[str, list[str]] = {}
    followed: set[str] = set()
    for what, status, slug, resp in provoked:
        where = f"{what}: expected {status} {slug}"
        assert resp.status_code == status, f"{where}, got {resp.status_code} {resp.get_data(as_text=True)}"
        assert resp.mimetype in ("application/fhir+json", "application/json"), where
        body = resp.get_json(force=True)
        assert body["resourceType"] == "OperationOutcome" and body["issue"], where
        assert body["issue"][0]["details"]["coding"][0]["code"] == slug, f"{where}: {body}"
        for item in body["issue"]:
            details = item.get("details")
            assert details, f"{where}: an issue without a docs link: {item}"
            text_ = details["text"]
            assert text_.startswith("See "), where
            url = text_.removeprefix("See ")
            parts = urlsplit(url)
            assert parts.scheme == "http" and parts.netloc == "localhost", f"{where}: {url}"
            assert parts.fragment == details["coding"][0]["code"], f"{where}: {url}"
            if parts.path not in pages:
                pages[parts.path] = _section_ids(reader, parts.path)
            assert parts.fragment in pages[parts.path], f"{where}: {url} has no section {parts.fragment}"
            followed.add(parts.fragment)
    statuses = {status for _, status, _, _ in provoked}
    assert statuses >= REQUIRED, f"not provoked: {sorted(REQUIRED - statuses)}"
    # every error class is provoked at least once: a new one fails here until a request above provokes it
    unprovoked = sorted({cls.slug for cls in all_error_classes()} - followed)
    assert not unprovoked, f"error classes no request here provokes (add one to _provoke): {unprovoked}"


def test_every_error_class_has_its_section(anonymous):
    ids = _section_ids(anonymous, "/docs/errors")
    assert len(ids) == len(set(ids)), "duplicate anchors"
    classes = all_error_classes()
    assert "retired" in {cls.slug for cls in classes}  # classes outside fhir_api/errors.py count too
    slugs = [cls.slug for cls in classes]
    assert len(slugs) == len(set(slugs)), "two error classes share a docs anchor"
    missing = [cls.__name__ for cls in classes if cls.slug not in ids]
    assert not missing, f"error classes without a section on /docs/errors: {missing}"
