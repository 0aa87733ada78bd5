"""Rate limits: per client by role, per address without a token, the token endpoint; 429 with Retry-After,
RateLimit-* headers and an OperationOutcome; counters shared by processes through Redis."""

from __future__ import annotations

import uuid

import pytest
import requests
from sqlalchemy import func, select

from audit.models import AuditRow
from fhir_api import create_app
from fhir_api.ratelimit import parse_role_limits, serving_problem
from tests.fhir_api.auth.test_token_endpoint import make_backend, token_form
from tests.helpers import issue, mint_token
from tests.live import live_server

REDIS_URL = "redis://127.0.0.1:6379/0"


def _app(database_url: str, **config):
    return create_app(
        {
            "DATABASE_URL": database_url,
            "TESTING": True,
            "RATE_LIMIT_ENABLED": True,
            "RATE_LIMITS": "clinical-system=3/minute, insurer=100/minute",
            "RATE_LIMIT_ANONYMOUS": "4/minute",
            "RATE_LIMIT_TOKEN": "2/minute",
            **config,
        }
    )


@pytest.fixture
def limited(database_url):
    application = _app(database_url)
    yield application
    application.extensions["fhir_db"]["engine"].dispose()
    from tests.helpers import empty_tables

    empty_tables(database_url)


def _bearer(app, client_id: str, role: str = "clinical-system") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(app, client_id=client_id, role=role)}"}


def _audit_count(app) -> int:
    engine = app.extensions["fhir_db"]["engine"]
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(AuditRow)).scalar_one()


def test_a_client_over_its_limit_gets_429_and_another_client_is_unaffected(limited):
    http = limited.test_client()
    noisy, quiet = _bearer(limited, "noisy-client"), _bearer(limited, "quiet-client")
    for remaining in (2, 1, 0):
        ok = http.get("/fhir/R4/Patient", headers=noisy)
        assert ok.status_code == 200
        assert ok.headers["RateLimit-Limit"] == "3"
        assert ok.headers["RateLimit-Remaining"] == str(remaining)
        assert ok.headers["RateLimit-Policy"] == "3;w=60"
    before = _audit_count(limited)
    refused = http.get("/fhir/R4/Patient", headers=noisy)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.mimetype == "application/fhir+json"
    problem = issue(refused)
    assert problem["code"] == "throttled"
    assert "noisy-client" in problem["diagnostics"] and "3 requests per minute" in problem["diagnostics"]
    assert "#too-many-requests" in problem["details"]["text"]
    assert _audit_count(limited) == before  # a throttled request reads nothing, and writes no audit row

    assert http.get("/fhir/R4/Patient", headers=quiet).status_code == 200


def test_limits_follow_the_role(limited):
    http = limited.test_client()
    insurer = _bearer(limited, "an-insurer", role="insurer")
    statuses = {http.get("/fhir/R4/metadata", headers=insurer).status_code for _ in range(10)}
    assert statuses == {200}


def test_requests_without_a_valid_token_are_limited_by_address(limited):
    http = limited.test_client()
    statuses = [http.get("/fhir/R4/Patient").status_code for _ in range(4)]
    assert statuses == [401] * 4
    assert http.get("/fhir/R4/Patient", headers={"Authorization": "Bearer forged"}).status_code == 429
    assert http.get("/fhir/R4/metadata").status_code == 429  # public documents share the address's budget
    other = http.get("/fhir/R4/metadata", environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 200


def test_the_token_endpoint_is_limited_per_client(limited):
    backend = make_backend(limited)
    http = limited.test_client()
    first = [http.post("/auth/token", data=token_form(backend.assertion())) for _ in range(2)]
    assert [r.status_code for r in first] == [200, 200]
    third = http.post("/auth/token", data=token_form(backend.assertion()))
    assert third.status_code == 429
    assert int(third.headers["Retry-After"]) >= 1
    assert issue(third)["code"] == "throttled"


def test_probes_and_preflights_are_never_limited(limited):
    http = limited.test_client()
    for _ in range(10):
        assert http.get("/healthz").status_code == 200


def test_an_unreachable_store_lets_traffic_through(database_url, caplog):
    app = _app(database_url, RATE_LIMIT_STORAGE="redis://127.0.0.1:1/0")
    http = app.test_client()
    headers = _bearer(app, "while-redis-is-down")
    assert [http.get("/fhir/R4/Patient", headers=headers).status_code for _ in range(5)] == [200] * 5
    assert any("unavailable" in r.getMessage() for r in caplog.records if r.name == "fhir_api.ratelimit")
    app.extensions["fhir_db"]["engine"].dispose()


def test_configuration_is_checked():
    assert parse_role_limits("clinician=5/second;100/minute, patient=1/second")["clinician"][1].amount == 100
    with pytest.raises(ValueError, match="role=limit"):
        parse_role_limits("clinician")
    with pytest.raises(ValueError, match="not a rate limit"):
        parse_role_limits("clinician=lots")
    problem = serving_problem({"RATE_LIMIT_ENABLED": True}, workers=4)
    assert problem and "FHIR_REDIS_URL" in problem
    assert serving_problem({"REDIS_URL": REDIS_URL}, workers=4) is None
    assert serving_problem({}, workers=1) is None
    assert serving_problem({"RATE_LIMIT_ENABLED": False}, workers=4) is None


def test_serve_refuses_per_process_counters_behind_several_workers(database_url, monkeypatch):
    from click.testing import CliRunner

    from fhir_api.cli import main

    monkeypatch.setenv("FHIR_RATE_LIMIT_ENABLED", "true")
    monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
    monkeypatch.delenv("FHIR_REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["serve", "--workers", "3", "--port", "1"])
    assert result.exit_code != 0
    assert "rate-limit counters" in result.output and "FHIR_REDIS_URL" in result.output


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        pytest.skip("Redis is not running on 127.0.0.1:6379 (CI has it)")


def test_counters_are_shared_between_two_app_processes(database_url):
    """Two servers (separate processes, one worker each) on one Redis: the limit holds across both."""
    _redis_or_skip()
    public = "http://fhir.shared.test"
    env = {
        "FHIR_RATE_LIMIT_ENABLED": "true",
        "FHIR_REDIS_URL": REDIS_URL,
        "FHIR_RATE_LIMITS": "clinical-system=6/minute",
        "FHIR_PUBLIC_URL": public,  # one audience for both, as behind a load balancer
    }
    token_app = create_app({"DATABASE_URL": database_url, "PUBLIC_URL": public})
    client_id = f"shared-{uuid.uuid4().hex[:8]}"  # a fresh counter whatever ran before on this Redis
    headers = _bearer(token_app, client_id)
    token_app.extensions["fhir_db"]["engine"].dispose()
    with (
        live_server(database_url, workers=1, env=env) as a,
        live_server(database_url, workers=1, env=env) as b,
    ):
        statuses = []
        for base in (a, b, a, b, a, b, a, b):
            statuses.append(requests.get(f"{base}/fhir/R4/Patient", headers=headers, timeout=10).status_code)
    assert statuses[:6] == [200] * 6
    assert statuses[6:] == [429, 429]
