"""Export jobs: kick-off, claim, run, cancel. Any app process takes queued jobs (a lease, renewed as it
works, lets another process take over a job whose process died); the work streams page by page through the
search engine under the requesting token's own access, so an insurer exports only its members."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, current_app
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from fhir_api import db
from resources.bulk.files import FileStore, LocalFiles
from resources.bulk.models import ExportJob
from resources.registry import supported_types
from resources.repository import ResourceRepository
from resources.search.compartments import compartments
from resources.search.query import SearchContext
from resources.search.results import parse_request
from resources.search.results import run as run_search

log = logging.getLogger("fhir_api.export")
LEASE = timedelta(seconds=60)
PAGE = 500


def store(app: Flask | None = None) -> FileStore:
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return LocalFiles(app.config.get("EXPORT_DIR") or os.path.join(os.getcwd(), "var", "exports"))


def kick_off(
    session: Session,
    *,
    principal: dict[str, Any],
    level: str,
    group_id: str | None,
    types: list[str],
    since: datetime | None,
    type_filters: dict[str, str],
    request_url: str,
) -> ExportJob:
    job = ExportJob(
        id=str(uuid.uuid4()),
        client_id=principal["client_id"],
        principal=json.dumps(principal),
        level=level,
        group_id=group_id,
        types=",".join(types),
        since=since,
        type_filters=json.dumps(type_filters),
        request_url=request_url,
        status="queued",
        progress=0,
        created=db.now(),
        files="[]",
    )
    with db.write_transaction(session):
        session.add(job)
    wake_runner(current_app._get_current_object())  # type: ignore[attr-defined]
    return job


def get(session: Session, job_id: str) -> ExportJob | None:
    session.expire_all()
    return session.get(ExportJob, job_id)


def cancel(session: Session, job: ExportJob, files: FileStore) -> None:
    with db.write_transaction(session):
        # The row as it is now, locked: a runner finishing at this moment waits, then sees "cancelled".
        locked = session.get(ExportJob, job.id, with_for_update=True, populate_existing=True)
        if locked is not None:
            locked.status = "cancelled"
            locked.finished = db.now()
    files.delete(job.id)


def claim(session: Session, owner: str) -> str | None:
    """Take the oldest queued job, or a running one whose lease ran out; None when there is none. One Core
    UPDATE ... RETURNING of the row a SKIP LOCKED subquery picks, built once: every worker polls, and an
    idle poll should cost next to nothing."""
    now = db.now()
    params = {"p_now": now, "p_owner": owner, "p_until": now + LEASE}
    with db.write_transaction(session):
        return session.connection().execute(_CLAIM, params).scalar_one_or_none()


_JOB = ExportJob.__table__.c
_NOW = bindparam("p_now", type_=_JOB.lease_until.type)
_CLAIM = (
    update(ExportJob.__table__)
    .where(
        _JOB.id
        == select(_JOB.id)
        .where(or_(_JOB.status == "queued", and_(_JOB.status == "running", _JOB.lease_until < _NOW)))
        .order_by(_JOB.created)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    .values(
        status="running",
        lease_owner=bindparam("p_owner", type_=_JOB.lease_owner.type),
        lease_until=bindparam("p_until", type_=_JOB.lease_until.type),
        progress=0,
    )
    .returning(_JOB.id)
)


def _renew(session: Session, job_id: str, owner: str, progress: int) -> bool:
    """Extend the lease and record progress; False when the job was cancelled or taken over."""
    with db.write_transaction(session):
        job = session.get(ExportJob, job_id, with_for_update=True, populate_existing=True)
        if job is None or job.status != "running" or job.lease_owner != owner:
            return False
        job.lease_until, job.progress = db.now() + LEASE, progress
        return True


def _access(principal: dict[str, Any]) -> Any:
    from fhir_api.auth.guard import Principal, access_for

    return access_for(Principal(**principal))


def _plan(job: ExportJob, session: Session) -> tuple[list[str], list[str] | None]:
    """The types to export and, for a Group, its member patients."""
    members = compartments()["Patient"]
    asked = [t for t in job.types.split(",") if t]
    if job.level == "system":
        types = asked or ResourceRepository(session).types_present()
    else:
        types = asked or ["Patient", *sorted(t for t in members if t != "Patient")]
    patients = None
    if job.level == "group":
        group = ResourceRepository(session).read("Group", job.group_id or "")
        body = json.loads(group.body or "{}") if group and not group.deleted else {}
        refs = [m.get("entity", {}).get("reference", "") for m in body.get("member", [])]
        patients = sorted(r.split("/", 1)[1] for r in refs if r.startswith("Patient/"))
    return [t for t in types if t in supported_types()], patients


def _pages(
    session: Session, ctx: SearchContext, res_type: str, criteria: list[tuple[str, str]], patient: str | None
) -> Iterator[list[str]]:
    cursor = None
    while True:
        args = [*criteria, ("_count", str(PAGE)), ("_sort", "_id")] + (
            [("_cursor", cursor)] if cursor else []
        )
        req = parse_request(res_type, args, default_count=PAGE, max_count=PAGE)
        if patient is not None:
            if res_type == "Patient":
                req.filters.append(("_id", patient))
            else:
                req.compartment = ("Patient", patient)
        page = run_search(session, req, ctx)
        yield [s.res_id for s in page.matches]
        if not page.next_cursor:
            return
        cursor = page.next_cursor


def run(app: Flask, job_id: str, owner: str) -> None:
    """Do one job; the files keep protected values sealed (``files``)."""
    files = store(app)
    with app.app_context(), db.new_session() as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        try:
            _run(session, job, owner, files)
        except Exception as exc:  # (a job fails; the process goes on)
            log.error("export job %s failed: %s", job_id, type(exc).__name__)
            session.rollback()
            with db.write_transaction(session):
                job = session.get(ExportJob, job_id)
                if job is not None and job.status == "running":
                    job.status, job.error, job.finished = "failed", type(exc).__name__, db.now()
            files.delete(job_id)


def _run(session: Session, job: ExportJob, owner: str, files: FileStore) -> None:
    principal = json.loads(job.principal)
    ctx = SearchContext(session=session, access=_access(principal))
    since = [("_lastUpdated", f"ge{db.format_instant(job.since)}")] if job.since else []
    filters = json.loads(job.type_filters)
    types, patients = _plan(job, session)
    access = ctx.access
    types = [t for t in types if access is None or access.permits(t, "s")]
    repo = ResourceRepository(session)
    outputs = []
    for i, res_type in enumerate(types):
        criteria = since + parse_qsl(filters.get(res_type, ""), keep_blank_values=True)
        name = f"{res_type}.ndjson"
        count = 0
        with files.writer(job.id, name) as out:
            for patient in patients if patients is not None else [None]:
                for ids in _pages(session, ctx, res_type, criteria, patient):
                    for line in repo.sealed_lines(res_type, ids):
                        out.write(line)
                        count += 1
                    if not _renew(session, job.id, owner, int(100 * i / max(len(types), 1))):
                        files.delete(job.id)
                        return  # cancelled, or another process took it over
        if count:
            outputs.append({"type": res_type, "name": name, "count": count})
    with db.write_transaction(session):
        current = session.get(ExportJob, job.id, with_for_update=True, populate_existing=True)
        if current is None or current.status != "running" or current.lease_owner != owner:
            files.delete(job.id)
            return
        current.status, current.progress, current.finished = "completed", 100, db.now()
        current.files = json.dumps(outputs)


def pending_once(app: Flask) -> bool:
    """Claim and run one job if there is one (the runner thread, ``fhir-api export-worker``, tests)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
    with app.app_context(), db.new_session() as session:
        job_id = claim(session, owner)
    if job_id is None:
        return False
    run(app, job_id, owner)
    return True


class Runner:
    """A daemon thread per app process taking queued jobs; the jobs live in the database, so a restart
    loses none (their lease runs out and another process starts them over)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval = float(app.config.get("EXPORT_POLL_INTERVAL", 5.0))
        self.stopped = threading.Event()
        self.woken = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="export-runner", daemon=True)

    def stop(self) -> None:
        """Take no further job (the app's pool was closed); one under way keeps its lease until it ends."""
        self.stopped.set()
        self.woken.set()

    def wake(self) -> None:
        """Look for a job now (one was just kicked off in this process), not at the next poll."""
        self.woken.set()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            try:
                while not self.stopped.is_set() and pending_once(self.app):
                    pass
            except Exception as exc:
                if self.stopped.is_set():
                    return
                log.warning("export runner: %s", type(exc).__name__)
            self.woken.wait(self.interval)
            self.woken.clear()


def wake_runner(app: Flask) -> None:
    """Wake this process's runner, if it has one: a kick-off starts at once wherever it lands, and the
    runners of other processes only poll for jobs left over (their lease ran out) every few seconds."""
    state = app.extensions.get("fhir_export") or {}
    if state.get("pid") == os.getpid() and state.get("runner") is not None:
        state["runner"].wake()


def start_runner(app: Flask) -> Runner | None:
    """Start this process's runner once; it stops when the app's pool is closed."""
    if app.testing or float(app.config.get("EXPORT_POLL_INTERVAL", 5.0)) <= 0:
        return None
    state = app.extensions.setdefault("fhir_export", {})
    if state.get("pid") == os.getpid():
        return state["runner"]
    runner = Runner(app)
    state["pid"], state["runner"] = os.getpid(), runner
    db.on_dispose(app.extensions["fhir_db"]["engine"], runner.stop)
    runner.thread.start()
    return runner
