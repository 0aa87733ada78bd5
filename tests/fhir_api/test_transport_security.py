"""Security headers, CORS as configured, request size limits, proxy trust and per-client IP allowlists."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from audit.models import AuditRow
from fhir_api import create_app
from tests.fhir_api.auth.test_token_endpoint import make_backend, token_form
from tests.helpers import authorized_client, created_id, empty_tables, issue, mint_token, patient

ORIGIN = "https://portal.example.org"


@pytest.fixture
def make_app(database_url):
    made = []

    def build(**config):
        application = create_app({"DATABASE_URL": database_url, "TESTING": True, **config})
        made.append(application)
        return application

    yield build
    for application in made:
        application.extensions["fhir_db"]["engine"].dispose()
    empty_tables(database_url)


def test_api_responses_carry_security_headers(client):
    resp = client.get("/fhir/R4/Patient")
    assert resp.status_code == 200
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert resp.headers["Cross-Origin-Resource-Policy"] == "same-site"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in resp.headers  # plain HTTP: HSTS would be ignored anyway
    names = [k.lower() for k, _ in resp.headers]
    assert len(names) == len(set(names))  # no field twice


def test_hsts_only_over_tls(client):
    resp = client.get("/fhir/R4/Patient", base_url="https://fhir.example.org")
    assert resp.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"


def test_html_pages_keep_their_own_stricter_policy(anonymous):
    resp = anonymous.get("/docs/errors")
    policy = "default-src 'none'; style-src 'unsafe-inline'"
    assert resp.headers.getlist("Content-Security-Policy") == [policy]
    assert resp.headers["X-Frame-Options"] == "DENY"  # the defaults it did not set itself are added


def test_cors_is_off_by_default(client):
    resp = client.get("/fhir/R4/Patient", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers
    pre = client.options(
        "/fhir/R4/Patient", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_cors_for_configured_origins(make_app):
    app = make_app(CORS_ORIGINS=f"{ORIGIN} https://other.example.org")
    http = authorized_client(app)
    resp = http.post("/fhir/R4/Patient", json=patient(), headers={"Origin": ORIGIN})
    assert resp.status_code == 201
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "etag", "x-request-id", "retry-after"} <= exposed
    assert resp.headers.getlist("Vary") == ["Accept-Encoding, Origin"]
    assert "Access-Control-Allow-Credentials" not in resp.headers

    with app.app_context():
        engine = app.extensions["fhir_db"]["engine"]
    with engine.connect() as conn:
        events_before = conn.execute(select(func.count()).select_from(AuditRow)).scalar_one()
    preflight = app.test_client().options(  # no token: a browser never sends one on a preflight
        "/fhir/R4/Patient/abc",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "Authorization, Content-Type, If-Match",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "if-match" in allowed
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditRow)).scalar_one() == events_before

    stranger = http.get("/fhir/R4/Patient", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_a_wildcard_origin_is_refused(database_url):
    with pytest.raises(ValueError, match="list the origins"):
        create_app({"DATABASE_URL": database_url, "CORS_ORIGINS": "*"})


def test_oversize_body_gets_413_operation_outcome(make_app):
    app = make_app(MAX_CONTENT_LENGTH=2000)
    resp = authorized_client(app).post(
        "/fhir/R4/Patient",
        json=patient(name=[{"family": "x" * 3000}]),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert resp.status_code == 413
    assert issue(resp)["code"] == "too-costly"


def test_oversize_headers_get_431_and_long_urls_414(make_app):
    app = make_app(MAX_HEADER_BYTES=4096, MAX_URL_BYTES=1000)
    http = authorized_client(app)
    resp = http.get("/fhir/R4/Patient", headers={"X-Padding": "p" * 5000})
    assert resp.status_code == 431
    assert issue(resp)["code"] == "too-long"
    long_url = http.get("/fhir/R4/Patient?family=" + "a" * 1200)
    assert long_url.status_code == 414
    assert "POST" in issue(long_url)["diagnostics"]


def test_count_above_the_maximum_is_capped_with_a_next_link(make_app):
    app = make_app(MAX_PAGE_SIZE=2)
    http = authorized_client(app)
    for _ in range(3):
        created_id(http.post("/fhir/R4/Patient", json=patient()))
    bundle = http.get("/fhir/R4/Patient?_count=500").get_json()
    assert len(bundle["entry"]) == 2
    assert any(link["relation"] == "next" for link in bundle["link"])


def test_client_addresses_come_from_trusted_proxies_only(make_app):
    direct = make_app()
    assert (
        direct.test_client()
        .get("/healthz", headers={"X-Forwarded-Proto": "https"})
        .headers.get("Strict-Transport-Security")
        is None
    )
    proxied = make_app(TRUSTED_PROXIES=1)
    resp = proxied.test_client().get("/healthz", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" in resp.headers


def test_a_client_with_an_allowlist_gets_tokens_only_from_there(make_app):
    app = make_app()
    inside = make_backend(app, allowed_networks=("10.20.0.0/16",))
    http = app.test_client()
    refused = http.post("/auth/token", data=token_form(inside.assertion()))
    assert refused.status_code == 400, refused.get_json()  # as every invalid_client here (RFC 6749 5.2)
    assert refused.get_json()["error"] == "invalid_client"
    assert "network address" in refused.get_json()["error_description"]
    granted = http.post(
        "/auth/token", data=token_form(inside.assertion()), environ_base={"REMOTE_ADDR": "10.20.3.4"}
    )
    assert granted.status_code == 200, granted.get_json()
    token = granted.get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        http.get("/fhir/R4/Patient", headers=headers, environ_base={"REMOTE_ADDR": "10.20.9.9"}).status_code
        == 200
    )
    stolen = http.get("/fhir/R4/Patient", headers=headers)  # the same token replayed from elsewhere
    assert stolen.status_code == 401
    assert "network address" in issue(stolen)["diagnostics"]


def test_an_allowlisted_client_behind_a_trusted_proxy(make_app):
    app = make_app(TRUSTED_PROXIES=1)
    token = mint_token(app, client_id="proxied", networks=("192.0.2.0/24",))
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "192.0.2.10"}
    assert app.test_client().get("/fhir/R4/Patient", headers=headers).status_code == 200
    spoofed = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "198.51.100.1"}
    assert app.test_client().get("/fhir/R4/Patient", headers=spoofed).status_code == 401


def test_an_allowlist_entry_must_be_an_address(make_app):
    from fhir_api.auth.clients import ClientError

    with pytest.raises(ClientError, match="CIDR"):
        make_backend(make_app(), allowed_networks=("not-an-ip",))
