"""Bulk Data $export end to end against a live server: kick-off, polling, manifest, download, cancel, an
insurer seeing only its members, files on disk that keep protected values sealed, and the audit trail."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from fhir_api import create_app
from tests.helpers import fresh_database, mint_token, patient
from tests.live import live_server

PUBLIC_URL = "http://bulk-export.test"
pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    exports = tmp_path_factory.mktemp("exports")
    with fresh_database(tmp_path_factory.mktemp("bulk"), "bulk") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True, "PUBLIC_URL": PUBLIC_URL})
        tokens = {
            "system": mint_token(app, scope="system/*.*"),
            "other": mint_token(app, scope="system/*.*", client_id="someone-else"),
            "insurer": mint_token(
                app,
                role="insurer",
                scope="system/Patient.rs system/Coverage.rs",
                client_id="insurer-1",
                organization="ins-1",
            ),
        }
        env = {
            "FHIR_PUBLIC_URL": PUBLIC_URL,
            "FHIR_EXPORT_DIR": str(exports),
            "FHIR_EXPORT_POLL_INTERVAL": "0.2",
            "FHIR_LOG_LEVEL": "WARNING",
        }
        with live_server(url, workers=2, env=env) as base:
            yield base, tokens, exports, app
        app.extensions["fhir_db"]["engine"].dispose()


def _h(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json", **more}


def _local(base: str, url: str) -> str:
    return url.replace(PUBLIC_URL, base)


def _put(base: str, token: str, resource: dict) -> None:
    resp = requests.put(
        f"{base}/fhir/R4/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers=_h(token, **{"Content-Type": "application/fhir+json"}),
        timeout=10,
    )
    assert resp.status_code in (200, 201), resp.text


@pytest.fixture(scope="module")
def data(server):
    base, tokens, _, _ = server
    t = tokens["system"]
    _put(base, t, {"resourceType": "Organization", "id": "ins-1", "name": "Insurer"})
    for i in range(12):
        _put(base, t, {**patient(name=[{"family": f"Bulkfamily{i}"}]), "id": f"bp-{i}"})
    _put(
        base,
        t,
        {
            "resourceType": "Coverage",
            "id": "cov-1",
            "status": "active",
            "beneficiary": {"reference": "Patient/bp-1"},
            "payor": [{"reference": "Organization/ins-1"}],
        },
    )
    _put(
        base,
        t,
        {
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/bp-2"}}, {"entity": {"reference": "Patient/bp-3"}}],
        },
    )
    _put(
        base,
        t,
        {
            "resourceType": "Observation",
            "id": "bo-2",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/bp-2"},
        },
    )
    return base


def _kick_off(base: str, token: str, path: str) -> str:
    resp = requests.get(f"{base}/fhir/R4/{path}", headers=_h(token, Prefer="respond-async"), timeout=10)
    assert resp.status_code == 202, resp.text
    return _local(base, resp.headers["Content-Location"])


def _wait(status_url: str, token: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = requests.get(status_url, headers=_h(token), timeout=10)
        if resp.status_code == 200:
            return resp.json()
        assert resp.status_code == 202 and resp.headers["X-Progress"] and resp.headers["Retry-After"]
        time.sleep(0.2)
    raise AssertionError("the export did not finish in 30 s")


def _download(base: str, token: str, manifest: dict) -> dict[str, list[dict]]:
    out = {}
    for item in manifest["output"]:
        resp = requests.get(_local(base, item["url"]), headers=_h(token), timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/fhir+ndjson")
        rows = [json.loads(line) for line in resp.text.splitlines()]
        assert len(rows) == item["count"]
        out[item["type"]] = rows
    return out


def test_system_export_round_trip(server, data):
    base, tokens, exports, _ = server
    status = _kick_off(data, tokens["system"], "$export?_type=Patient,Observation")
    manifest = _wait(status, tokens["system"])
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    files = _download(base, tokens["system"], manifest)
    assert len(files["Patient"]) == 12 and len(files["Observation"]) == 1
    assert {r["name"][0]["family"] for r in files["Patient"]} == {f"Bulkfamily{i}" for i in range(12)}
    on_disk = b"".join(p.read_bytes() for p in Path(exports).rglob("*.ndjson"))
    assert b"Bulkfamily" not in on_disk and b'"$enc"' in on_disk  # sealed at rest, opened on download
    # another client cannot see it; the same token can delete it, after which it is gone
    assert requests.get(status, headers=_h(tokens["other"]), timeout=10).status_code == 404
    assert (
        requests.get(
            _local(base, manifest["output"][0]["url"]), headers=_h(tokens["other"]), timeout=10
        ).status_code
        == 404
    )
    assert requests.delete(status, headers=_h(tokens["system"]), timeout=10).status_code == 202
    assert requests.get(status, headers=_h(tokens["system"]), timeout=10).status_code == 404


def test_since_type_filter_and_group(server, data):
    base, tokens, _, _ = server
    t = tokens["system"]
    later = _wait(_kick_off(data, t, "$export?_type=Patient&_since=2999-01-01"), t)
    assert later["output"] == []
    filtered = _wait(_kick_off(data, t, "$export?_type=Patient&_typeFilter=Patient?family=Bulkfamily1"), t)
    names = {r["name"][0]["family"] for r in _download(base, t, filtered)["Patient"]}
    assert names == {"Bulkfamily1", "Bulkfamily10", "Bulkfamily11"}  # starts-with, as string search does
    group = _download(base, t, _wait(_kick_off(data, t, "Group/g1/$export"), t))
    assert sorted(r["id"] for r in group["Patient"]) == ["bp-2", "bp-3"]
    assert [r["id"] for r in group["Observation"]] == ["bo-2"]


def test_insurer_exports_only_its_members(server, data):
    base, tokens, _, _ = server
    t = tokens["insurer"]
    files = _download(base, t, _wait(_kick_off(data, t, "Patient/$export"), t))
    assert [r["id"] for r in files["Patient"]] == ["bp-1"]
    assert [r["id"] for r in files["Coverage"]] == ["cov-1"]
    assert (
        requests.get(
            f"{data}/fhir/R4/Group/g1/$export", headers=_h(t, Prefer="respond-async"), timeout=10
        ).status_code
        == 404
    )
    refused = requests.get(
        f"{data}/fhir/R4/$export?_type=Observation", headers=_h(t, Prefer="respond-async"), timeout=10
    )
    assert refused.status_code == 403


def test_cancel_while_queued_or_running(server, data):
    _, tokens, _, _ = server
    t = tokens["system"]
    status = _kick_off(data, t, "$export")
    assert requests.delete(status, headers=_h(t), timeout=10).status_code == 202
    time.sleep(1)
    assert requests.get(status, headers=_h(t), timeout=10).status_code == 404


def test_kick_off_needs_respond_async_and_a_token(server, data):
    _, tokens, _, _ = server
    assert (
        requests.get(f"{data}/fhir/R4/$export", headers=_h(tokens["system"]), timeout=10).status_code == 400
    )
    assert (
        requests.get(f"{data}/fhir/R4/$export", headers={"Prefer": "respond-async"}, timeout=10).status_code
        == 401
    )
    bad = requests.get(
        f"{data}/fhir/R4/$export?_outputFormat=text/csv",
        headers=_h(tokens["system"], Prefer="respond-async"),
        timeout=10,
    )
    assert bad.status_code == 400


def test_exports_are_audited(server, data):
    """Kick-off, each status poll and each download leave an event naming the export."""
    base, tokens, _, app = server
    from sqlalchemy import text

    t = tokens["system"]
    status = _kick_off(data, t, "$export?_type=Patient")
    job_id = status.rsplit("/", 1)[1]
    manifest = _wait(status, t)
    _download(base, t, manifest)
    with app.extensions["fhir_db"]["engine"].connect() as conn:
        bodies = conn.execute(text("SELECT body FROM audit_event WHERE body LIKE :j"), {"j": f"%{job_id}%"})
        events = [json.loads(b) for (b,) in bodies]
    kinds = {(e["subtype"][0]["code"], e["action"]) for e in events}
    assert ("operation", "E") in kinds  # the kick-off
    assert ("operation", "R") in kinds  # status polls
    assert ("export", "R") in kinds  # the download
    assert all(e["outcome"] == "0" for e in events)


def _queued_job(session, url: str = "http://x/$export"):
    from resources.bulk import jobs

    principal = {
        "client_id": "c",
        "role": "clinical-system",
        "scope": "system/*.rs",
        "jti": "j",
        "subject": "c",
    }
    return jobs.kick_off(
        session,
        principal=principal,
        level="system",
        group_id=None,
        types=["Patient"],
        since=None,
        type_filters={},
        request_url=url,
    )


def test_a_cancel_is_seen_by_the_runner_that_loaded_the_job_before_it(app, tmp_path):
    """The runner's session keeps objects across commits (expire_on_commit=False): its lease renewal and
    its final step must read the row as it is now, or a finished export would overwrite a cancel."""
    from fhir_api import db
    from resources.bulk import jobs

    app.config["EXPORT_DIR"] = str(tmp_path)
    with app.app_context(), db.new_session() as runner, db.new_session() as other:
        job = _queued_job(runner)
        assert jobs.claim(runner, "owner-1") == job.id
        runner.get(jobs.ExportJob, job.id)  # loaded as "running" in the runner's identity map
        jobs.cancel(other, jobs.get(other, job.id), jobs.store(app))
        assert jobs._renew(runner, job.id, "owner-1", 50) is False


def test_runners_take_the_oldest_queued_job_and_jobs_whose_lease_ran_out(app, tmp_path):
    from datetime import timedelta

    from fhir_api import db
    from resources.bulk import jobs

    app.config["EXPORT_DIR"] = str(tmp_path)
    with app.app_context(), db.new_session() as s:
        made = []
        for n in range(2):
            time.sleep(0.005)  # distinct creation times (milliseconds)
            made.append(_queued_job(s, f"http://x/$export?n={n}").id)
        assert jobs.claim(s, "w1") == made[0]
        assert jobs.claim(s, "w2") == made[1]
        assert jobs.claim(s, "w3") is None  # both leased
        with db.write_transaction(s):  # w1's process died: its lease runs out
            died = s.get(jobs.ExportJob, made[0], populate_existing=True)
            died.lease_until = db.now() - timedelta(seconds=1)
        assert jobs.claim(s, "w3") == made[0]
        job = s.get(jobs.ExportJob, made[0], populate_existing=True)
        assert (job.status, job.lease_owner, job.progress) == ("running", "w3", 0)
        assert job.lease_until > db.now()


def test_a_kick_off_wakes_its_own_process_runner_at_once(app, tmp_path, monkeypatch):
    """Runners poll every few seconds (FHIR_EXPORT_POLL_INTERVAL, 5 by default) for jobs left over by
    other processes; a job kicked off here is looked for at once, not at the next poll."""
    import os
    import threading

    from fhir_api import db
    from resources.bulk import jobs

    app.config["EXPORT_DIR"] = str(tmp_path)
    app.config["EXPORT_POLL_INTERVAL"] = 60
    looked = threading.Event()
    polls = []

    def pending_once(_app):
        polls.append(time.monotonic())
        if len(polls) > 1:
            looked.set()
        return False

    monkeypatch.setattr(jobs, "pending_once", pending_once)
    runner = jobs.Runner(app)
    app.extensions["fhir_export"] = {"pid": os.getpid(), "runner": runner}
    runner.thread.start()
    try:
        deadline = time.monotonic() + 5
        while not polls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(polls) == 1  # the first look, then a 60 s wait
        with app.app_context(), db.new_session() as s:
            _queued_job(s)
        assert looked.wait(2), "the kick-off did not wake the runner"
    finally:
        runner.stop()
        runner.thread.join(2)
        app.extensions.pop("fhir_export", None)
    assert not runner.thread.is_alive()
