"""Structured JSON logs without PHI, and Prometheus metrics (in process, and summed over gunicorn workers)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import requests

from fhir_api import create_app
from fhir_api.logs import JsonFormatter
from tests.helpers import created_id, mint_token, patient
from tests.live import live_server

SEARCHED = ("Quillfeather", "quillfeather", "1961-07-20", "MRN-778899", "urn:mrn", "0161 496 0000")


def test_json_log_lines_carry_request_facts_and_no_searched_values(client, caplog):
    caplog.set_level(logging.DEBUG)
    pid = created_id(
        client.put(
            "/fhir/R4/Patient/MRN-778899",  # a client-chosen id that is itself a record number
            json=patient(
                id="MRN-778899",
                name=[{"family": "Quillfeather"}],
                birthDate="1961-07-20",
                identifier=[{"system": "urn:mrn", "value": "MRN-778899"}],
                telecom=[{"system": "phone", "value": "0161 496 0000"}],
            ),
        )
    )
    client.get("/fhir/R4/Patient?family=Quillfeather&birthdate=1961-07-20")
    client.get("/fhir/R4/Patient?identifier=urn:mrn|MRN-778899")
    client.post("/fhir/R4/Patient/_search", data={"phone": "0161 496 0000", "name": "Quillfeather"})
    client.get(f"/fhir/R4/Patient/{pid}")
    client.get("/fhir/R4/Patient?family=Quillfeather&birthdate=not-a-date")  # a 400 quotes nothing either

    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    access = [
        json.loads(line) for line, r in zip(lines, caplog.records, strict=True) if r.name == "fhir_api.access"
    ]
    assert len(access) == 6
    search = access[1]
    assert search["route"] == "/fhir/R4/Patient"
    assert search["params"] == ["family", "birthdate"]
    assert search["interaction"] == "fhir.search_type"
    assert search["resource_type"] == "Patient"
    assert search["status"] == 200
    assert search["client_id"] == "test-client" and search["role"] == "clinical-system"
    assert isinstance(search["duration_ms"], float)
    assert len(search["request_id"]) >= 16
    assert access[4]["route"] == "/fhir/R4/Patient/{res_id}"
    assert access[5]["status"] == 400
    everything = "\n".join(lines)
    for value in SEARCHED:
        assert value not in everything, value


@pytest.mark.parametrize(
    "extra",
    [{"n": 2**70, "ok": "ünïcödé"}, {"when": date(2026, 11, 25), "raw": b"x"}],
    ids=["integer beyond 64 bits", "values json cannot write"],
)
def test_json_log_lines_hold_any_extra_field(extra):
    record = logging.makeLogRecord({"name": "fhir_api.test", "msg": "m %s", "args": ("é",), **extra})
    line = JsonFormatter().format(record)
    assert "\n" not in line and "\\u00" not in line  # one line, UTF-8 kept as is
    parsed = json.loads(line)
    assert parsed["message"] == "m é" and parsed["logger"] == "fhir_api.test"
    for key, value in extra.items():
        assert parsed[key] == (value if isinstance(value, (int, str)) else str(value))


def test_metrics_count_requests_by_interaction_type_and_status(client, anonymous):
    pid = created_id(client.post("/fhir/R4/Patient", json=patient()))
    client.get(f"/fhir/R4/Patient/{pid}")
    client.get("/fhir/R4/Patient/does-not-exist")
    body = anonymous.get("/metrics").get_data(as_text=True)
    assert 'fhir_requests_total{interaction="fhir.read",resource_type="Patient",status="200"}' in body
    assert 'fhir_requests_total{interaction="fhir.read",resource_type="Patient",status="404"}' in body
    assert 'fhir_requests_total{interaction="fhir.create",resource_type="Patient",status="201"}' in body
    assert 'fhir_request_duration_seconds_bucket{interaction="fhir.read",le="0.05"}' in body
    assert 'fhir_db_pool_connections{state="checked_out"}' in body
    assert "fhir_audit_chain_lag_events " in body
    assert "fhir_audit_chain_lag_seconds " in body
    assert pid not in body  # labels never carry ids


def test_pool_gauges_are_sampled_at_most_once_a_second_per_process(client, monkeypatch):
    from types import SimpleNamespace

    from fhir_api import metrics

    sets: list[str] = []
    fake = SimpleNamespace(labels=lambda state: SimpleNamespace(set=lambda _value: sets.append(state)))
    monkeypatch.setattr(metrics, "POOL", fake)
    monkeypatch.setattr(metrics, "_pool_sampled", [float("-inf")])
    client.get("/healthz")
    client.get("/healthz")
    assert sets == ["checked_out", "idle", "overflow"]
    monkeypatch.setattr(metrics, "POOL_SAMPLE_SECONDS", 0.0)
    client.get("/healthz")
    assert len(sets) == 6


def test_metrics_are_for_the_scraper_only(database_url):
    open_app = create_app({"DATABASE_URL": database_url})
    assert (
        open_app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.5"}).status_code == 403
    )
    tokened = create_app({"DATABASE_URL": database_url, "METRICS_TOKEN": "scrape-secret"})
    http = tokened.test_client()
    assert http.get("/metrics").status_code == 403  # even from loopback, once a token is configured
    assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = http.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    off = create_app({"DATABASE_URL": database_url, "METRICS": False})
    assert off.test_client().get("/metrics").status_code == 404
    for application in (open_app, tokened, off):
        application.extensions["fhir_db"]["engine"].dispose()


def _sum(body: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("workers", [2])
def test_metrics_sum_every_gunicorn_worker(database_url, workers):
    public = "http://metrics.test"
    app = create_app({"DATABASE_URL": database_url, "PUBLIC_URL": public})
    headers = {"Authorization": f"Bearer {mint_token(app)}"}
    app.extensions["fhir_db"]["engine"].dispose()
    with live_server(database_url, workers=workers, env={"FHIR_PUBLIC_URL": public}) as base:
        session = requests.Session()
        for _ in range(30):  # new connections: the kernel spreads them over the workers
            assert requests.get(f"{base}/fhir/R4/Patient?_count=1", headers=headers, timeout=10).ok
        del session
        body = requests.get(f"{base}/metrics", timeout=10).text
    searches = _sum(
        body, 'fhir_requests_total{interaction="fhir.search_type",resource_type="Patient",status="200"}'
    )
    assert searches == 30
    assert 'fhir_db_pool_connections{state="idle"}' in body


_METRICS_DIR_SCRIPT = """
import os, sys
from pathlib import Path
from fhir_api.serving import prepare_metrics_dir
path = Path(prepare_metrics_dir())
(path / "counter_1.db").write_bytes(b"x")
pid = os.fork()
if pid == 0:  # a worker that ends (recycled) exits through the same handlers
    sys.exit(0)
os.waitpid(pid, 0)
print(path, path.is_dir())
"""


def test_a_metrics_dir_made_by_the_server_is_removed_when_its_master_exits(tmp_path):
    """`fhir-api serve` without PROMETHEUS_MULTIPROC_DIR makes a temporary directory: a worker's exit leaves
    it to the master, the master's exit removes it; a configured directory stays."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", _METRICS_DIR_SCRIPT], env=env, capture_output=True, text=True
    )
    made, alive_after_worker_exit = done.stdout.split()
    assert done.returncode == 0 and alive_after_worker_exit == "True"
    assert not Path(made).exists()

    configured = tmp_path / "metrics"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(configured)
    done = subprocess.run(
        [sys.executable, "-c", _METRICS_DIR_SCRIPT], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.split()[0] == str(configured)
    assert configured.is_dir()


def test_an_access_record_formats_as_any_record_with_the_same_fields():
    """log_request names its record's fields for the formatter; the line is the one sifting the record's
    attributes gives."""
    from fhir_api import logs

    fields = {"request_id": "r1", "route": "/fhir/R4/Patient/{res_id}", "status": 200, "params": []}
    plain = logging.makeLogRecord({"name": "fhir_api.access", "msg": "GET %s", "args": ("x",), **fields})
    named = logging.makeLogRecord({**vars(plain), logs._FIELDS: fields})
    assert JsonFormatter().format(named) == JsonFormatter().format(plain)
    assert json.loads(JsonFormatter().format(named))["route"] == "/fhir/R4/Patient/{res_id}"
    named.trace_id = "t-1"  # what an operator's logging filter may add: still written
    assert json.loads(JsonFormatter().format(named))["trace_id"] == "t-1"


def test_the_logged_route_is_remembered_per_rule_and_resource_type(client, caplog):
    caplog.set_level(logging.INFO, logger="fhir_api.access")
    for res_type in ("Patient", "Observation", "Patient"):
        client.get(f"/fhir/R4/{res_type}/nope")
    routes = [r.route for r in caplog.records if r.name == "fhir_api.access"]
    assert routes == [
        "/fhir/R4/Patient/{res_id}",
        "/fhir/R4/Observation/{res_id}",
        "/fhir/R4/Patient/{res_id}",
    ]
