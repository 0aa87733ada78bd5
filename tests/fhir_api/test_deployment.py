"""docker-compose.yml, gunicorn.conf.py and docs/deployment.md agree: services, checks, secrets, variables."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest
import yaml

from fhir_api.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCS = (ROOT / "docs" / "deployment.md").read_text()
SERVING = {"FHIR_WORKERS", "FHIR_THREADS", "FHIR_BIND"}  # read by gunicorn.conf.py, not the app


def test_compose_names_the_services_the_docs_describe():
    assert set(COMPOSE["services"]) == {"db", "redis", "app"}
    for name, service in COMPOSE["services"].items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert f"| `{name}` |" in DOCS, f"docs/deployment.md does not describe {name}"
    app = COMPOSE["services"]["app"]
    assert app["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert "/readyz" in " ".join(app["healthcheck"]["test"])


def test_the_app_migrates_before_serving_and_has_time_to_finish_requests():
    app = COMPOSE["services"]["app"]
    command = " ".join(app["entrypoint"])
    assert command.index("fhir-api db upgrade") < command.index("gunicorn -c gunicorn.conf.py wsgi:app")
    grace = int(str(app["stop_grace_period"]).rstrip("s"))
    from fhir_api.serving import gunicorn_options

    assert grace > gunicorn_options("127.0.0.1:0", 1)["graceful_timeout"]


def test_secrets_come_from_files_and_every_variable_exists_and_is_documented():
    app = COMPOSE["services"]["app"]
    env = app["environment"]
    for name, value in env.items():
        assert name.startswith("FHIR_"), name
        assert name in SERVING or name[5:] in DEFAULTS, f"{name} is not a configuration key (typo?)"
        assert f"`{name}`" in DOCS, f"docs/deployment.md does not mention {name}"
        if name.endswith("_FILE"):
            assert str(value).startswith("/run/secrets/"), name
        assert not re.search(r"(?i)password|secret=", str(value)), f"{name} holds a secret inline"
    assert env["FHIR_REDIS_URL"].startswith("redis://redis:")
    for secret in app["secrets"]:
        assert COMPOSE["secrets"][secret]["file"].startswith("./secrets/")
        assert f"`{secret}`" in DOCS, f"docs/deployment.md does not describe the {secret} secret"
    assert "POSTGRES_PASSWORD" not in COMPOSE["services"]["db"]["environment"]  # only the _FILE form


def test_gunicorn_conf_refuses_per_process_rate_limit_counters_behind_several_workers(monkeypatch, tmp_path):
    monkeypatch.setenv("FHIR_WORKERS", "4")
    monkeypatch.setenv("FHIR_RATE_LIMIT_ENABLED", "true")
    monkeypatch.delenv("FHIR_REDIS_URL", raising=False)
    monkeypatch.delenv("FHIR_RATE_LIMIT_STORAGE", raising=False)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(SystemExit, match="FHIR_REDIS_URL"):
        runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    monkeypatch.setenv("FHIR_REDIS_URL", "redis://redis:6379/0")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert settings["workers"] == 4
    assert settings["graceful_timeout"] == 30
    assert settings["accesslog"] is None  # the app logs requests itself, without query values
