"""Ingestion and Bulk Data export throughput on PostgreSQL: the Synthea bundles over HTTP, then $export.

One run measures, with encryption, search indexing and auditing on (the defaults):

1. **Ingestion**: every bundle of the shared Synthea set (``../shared/fhir-r4/synthea-r4``: 42 transaction
   bundles, 11,160 resources) is POSTed to ``/fhir/R4`` of a server started with ``fhir-api serve`` on a
   fresh database, first with 1 client, then on another fresh database with ``--clients`` parallel clients
   (threads each posting whole bundles). The two directory bundles (hospitals, practitioners) go first and
   alone, then the 40 patient bundles. Rate = entries / wall time of the patient bundles (and of all of
   them). Every response must be 200, every entry 200 or 201, and the database must hold every resource.
   Target: >= 1,000 resources/s with 4 clients. CPU seconds of the app workers, of PostgreSQL and of this
   client are read from /proc during the patient bundles, to show where the two cores went.
2. **Bulk export** of everything loaded (system ``$export``, ``Prefer: respond-async``) from a freshly
   started server: kick-off to the 200 manifest, then every file downloaded (streamed) and counted; the
   peak RSS (``VmHWM``) of the gunicorn workers. Then ``fhir-api import`` (in-process, ``--workers 2``)
   loads the set twice more and the export is repeated on the 3x database. Targets: every resource
   exported exactly once, opened (no sealed value left), and peak RSS at 3x within 1.2x of 1x (flat).
3. ``--compare``: the ingestion with the most clients again under other worker x thread settings (default
   2x4 and 4x1), each on its own database.
4. ``--profile``: when the 4-client target is missed (or always), where the time goes: patient bundles
   POSTed in-process (Flask test client, no HTTP) on a fresh PostgreSQL database, its steps clocked without
   a profiler (validation, sealing, index rows, audit rows, the write round trips, COMMIT), the rows
   written per resource, CPU of this process vs PostgreSQL, then a cProfile listing.

A SUMMARY table ends the output with PASS/FAIL per target; the exit code is 1 when any fails. Every database
is created here (``fhir_bench_ingest_<random>``) and dropped at the end, also on error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/ingest.py [--quick] [--workers 5] [--threads 4] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import importlib
import importlib.util
import io
import json
import os
import pstats
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

# The repository root before bench/, so that ``audit`` and ``crypto`` are the project's packages
# (bench/audit.py and bench/crypto.py would shadow them); bench/ after it, for crud and search.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

import psycopg
from crud import Server, bench_database, free_port, http_request, token_minter
from search import _conninfo, upgrade, vacuum_analyze
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _bench_module(name: str) -> ModuleType:
    """bench/<name>.py, imported as ``bench_<name>``: under its own name it would be the project's package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_audit = _bench_module("audit")  # Keys, app_env, run_cli, worker_hwm, fhir_api_bin, FLAT_TARGET

SYNTHEA = ROOT.parent / "shared" / "fhir-r4" / "synthea-r4"
TARGET_RPS = 1000.0  # resources/s ingesting the patient bundles with TARGET_CLIENTS clients
TARGET_CLIENTS = 4
FLAT_TARGET = bench_audit.FLAT_TARGET  # export peak RSS on 3x the data over 1x
NOISY = 0.25  # cores taken by other work on the machine above which an ingestion rate is flagged
LOADS = 3  # the export's memory is measured on 1x and on this many times the set
DB_PREFIX = "fhir_bench_ingest"
FHIR_JSON = "application/fhir+json"
QUICK = {"patients": 8, "compare": "", "profile_bundles": 2}
NORMAL = {"patients": 0, "compare": "2x4,4x1", "profile_bundles": 6}  # patients 0: all of them


# --------------------------------------------------------------------------------------------- bundles


@dataclass(frozen=True)
class Bundle:
    name: str
    body: bytes
    entries: int
    directory: bool


def read_bundles(folder: Path, patients: int) -> list[Bundle]:
    """Directory bundles first, then the patient bundles in name order (the order of ``fhir-api import``);
    ``patients`` > 0 keeps only that many patient bundles."""
    from resources.importer import expand, is_directory_bundle

    files = expand([str(folder)])
    if not files:
        raise SystemExit(f"no bundles under {folder}")
    out: list[Bundle] = []
    kept = 0
    for f in files:
        directory = is_directory_bundle(f)
        if not directory:
            if patients and kept >= patients:
                continue
            kept += 1
        raw = f.read_bytes()
        out.append(Bundle(f.name, raw, len(json.loads(raw).get("entry") or []), directory))
    return out


# --------------------------------------------------------------------------------------------- CPU


@dataclass
class Cpu:
    """CPU seconds by group between two /proc snapshots, and the machine's busy share."""

    app: float = 0.0  # the server's process group (master + workers)
    postgres: float = 0.0  # PostgreSQL backends connected to the bench's database
    pg_shared: float = 0.0  # PostgreSQL's own processes (postmaster, WAL writer, checkpointer, ...)
    client: float = 0.0  # this process
    busy: float = 0.0  # all CPUs, seconds busy (the rest: other work on the machine)
    wall: float = 0.0

    @property
    def other(self) -> float:
        """Cores used by other work on the machine (it competes with the bench for the CPUs)."""
        spent = self.busy - self.app - self.postgres - self.pg_shared - self.client
        return max(0.0, spent) / self.wall if self.wall else 0.0


_TICK = os.sysconf("SC_CLK_TCK")
_PG_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication")


def _busy() -> float:
    """Seconds all CPUs were busy since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def cpu_snapshot(pgid: int | None, database: str) -> Cpu:
    """Now's CPU seconds of the app (``pgid``), of the PostgreSQL processes serving ``database`` or serving
    everyone, and of this process."""
    snap = Cpu(wall=time.monotonic())
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat.rsplit(")", 1)[1].split()
            seconds = (int(rest[11]) + int(rest[12])) / _TICK
            if int(entry.name) == me:
                snap.client += seconds
            elif pgid is not None and int(rest[2]) == pgid:
                snap.app += seconds
            elif comm == "postgres":
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if f" {database} " in title:
                    snap.postgres += seconds
                elif not title.startswith("postgres:") or any(t in title for t in _PG_SHARED):
                    snap.pg_shared += seconds
    snap.busy = _busy()
    return snap


def cpu_between(a: Cpu, b: Cpu) -> Cpu:
    return Cpu(
        b.app - a.app,
        b.postgres - a.postgres,
        b.pg_shared - a.pg_shared,
        b.client - a.client,
        b.busy - a.busy,
        b.wall - a.wall,
    )


def show_cpu(c: Cpu) -> str:
    w = c.wall or 1.0
    return (
        f"CPU in cores (of {os.cpu_count()}): all {c.busy / w:.2f} = app workers {c.app / w:.2f} + "
        f"PostgreSQL backends {c.postgres / w:.2f} + PostgreSQL's own {c.pg_shared / w:.2f} + this client "
        f"{c.client / w:.2f} + other work on the machine {c.other:.2f}"
    )


# --------------------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Setting:
    workers: int
    threads: int

    @property
    def label(self) -> str:
        kind = "gthread" if self.threads > 1 else "sync"
        return f"{self.workers} workers x {self.threads} thread{'s' if self.threads > 1 else ''} ({kind})"

    @staticmethod
    def parse(text: str) -> Setting:
        found = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
        if not found:
            raise argparse.ArgumentTypeError(f"{text!r}: want WORKERSxTHREADS, e.g. 2x4")
        return Setting(int(found.group(1)), int(found.group(2)))


@contextlib.contextmanager
def running_server(
    name: str, db_url: str, keys: Any, work: Path, setting: Setting, **extra: str
) -> Iterator[tuple[Server, Callable[[], str]]]:
    """``fhir-api serve`` on a free port with the run's keys, its own token-signing key and public URL;
    stopped at the end (also on error). Yields the server and a thread-safe minter of its tokens."""
    port = free_port()
    signing = work / f"{name}-signing.jwk"
    mint = token_minter(signing, f"http://127.0.0.1:{port}")
    env = {**bench_audit.app_env(db_url, keys, signing, port), **extra}
    argv = [str(bench_audit.fhir_api_bin()), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", str(setting.workers), "--threads", str(setting.threads)]
    srv = Server(name, argv, env, port, work)
    lock = threading.Lock()

    def token() -> str:
        with lock:
            return str(mint())

    try:
        srv.start()
        srv.wait_ready(setting.workers)
        yield srv, token
    finally:
        srv.stop()


def server_env(db_url: str, keys: Any, work: Path) -> dict[str, str]:
    """The environment of the CLI commands (import): the servers' keys, on ``db_url``."""
    signing = work / "cli-signing.jwk"
    if not signing.exists():
        from fhir_api.auth.keys import generate_signing_key_file

        generate_signing_key_file(signing)
    return bench_audit.app_env(db_url, keys, signing, 0)


def hwm(pids: list[int]) -> dict[int, float]:
    return {pid: mb for pid in pids if (mb := bench_audit.worker_hwm(pid)) is not None}


def stored_resources(db_url: str) -> int:
    with psycopg.connect(_conninfo(db_url)) as conn:
        row = conn.execute("SELECT count(*) FROM resource WHERE NOT deleted").fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------------------------- 1. ingestion


@dataclass
class Posted:
    """One bundle POSTed: its answer and how long it took."""

    name: str
    entries: int
    seconds: float
    status: int
    statuses: Counter[str] = field(default_factory=Counter)  # entry response codes ("201", "200", ...)
    error: str = ""

    @property
    def ok(self) -> bool:
        good = self.statuses.get("200", 0) + self.statuses.get("201", 0)
        return self.status == 200 and good == self.entries == sum(self.statuses.values())


def post_bundles(
    port: int, token: Callable[[], str], bundles: list[Bundle], clients: int, prefer: str
) -> tuple[list[Posted], float]:
    """POST ``bundles`` to /fhir/R4 from ``clients`` threads (one keep-alive connection each, taking the next
    bundle as soon as they are free); (answers, wall seconds)."""
    results: list[Posted] = []
    lock = threading.Lock()
    queue = iter(bundles)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
        try:
            while True:
                with lock:
                    b = next(queue, None)
                if b is None:
                    return
                headers = {
                    "Content-Type": FHIR_JSON,
                    "Accept": FHIR_JSON,
                    "Prefer": f"return={prefer}",
                    "Authorization": f"Bearer {token()}",
                }
                t0 = time.monotonic()
                try:
                    conn.request("POST", "/fhir/R4", body=b.body, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                    posted = Posted(b.name, b.entries, time.monotonic() - t0, resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    posted = Posted(b.name, b.entries, time.monotonic() - t0, 0, error=repr(exc))
                    raw = b""
                if posted.status == 200:
                    try:
                        answer = json.loads(raw)
                        posted.statuses.update(
                            str(e.get("response", {}).get("status", ""))[:3] for e in answer.get("entry", [])
                        )
                    except ValueError:
                        posted.error = "the answer is not JSON"
                elif raw:
                    posted.error = raw[:300].decode(errors="replace")
                with lock:
                    results.append(posted)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # joins with a timeout: SIGTERM and Ctrl-C still reach the main thread
            t.join(0.5)
    return results, time.monotonic() - t0


@dataclass
class Ingest:
    """One ingestion run: directory bundles alone, then the patient bundles over ``clients`` threads."""

    clients: int
    setting: Setting
    directory: list[Posted]
    patients: list[Posted]
    directory_wall: float
    patient_wall: float
    cpu: Cpu
    stored: int  # resources in the database afterwards
    worker_hwm_mb: float  # the workers' peak RSS after the load

    @property
    def patient_entries(self) -> int:
        return sum(p.entries for p in self.patients)

    @property
    def entries(self) -> int:
        return self.patient_entries + sum(p.entries for p in self.directory)

    @property
    def rate(self) -> float:
        return self.patient_entries / self.patient_wall if self.patient_wall else 0.0

    @property
    def rate_all(self) -> float:
        wall = self.directory_wall + self.patient_wall
        return self.entries / wall if wall else 0.0

    @property
    def failed(self) -> list[Posted]:
        return [p for p in self.directory + self.patients if not p.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and self.stored == self.entries

    @property
    def busy(self) -> float:
        """Share of the patient phase the clients spent waiting for an answer (1.0: never idle)."""
        total = sum(p.seconds for p in self.patients)
        return total / (self.clients * self.patient_wall) if self.patient_wall else 0.0


def ingest(
    db_url: str,
    keys: Any,
    work: Path,
    bundles: list[Bundle],
    clients: int,
    setting: Setting,
    prefer: str,
    label: str,
) -> Ingest:
    upgrade(bench_audit.fhir_api_bin(), server_env(db_url, keys, work))
    with running_server(f"ingest-{label}", db_url, keys, work, setting) as (srv, token):
        assert srv.proc is not None
        directory = [b for b in bundles if b.directory]
        patients = [b for b in bundles if not b.directory]
        dir_posted, dir_wall = post_bundles(srv.port, token, directory, 1, prefer)
        database = make_url(db_url).database or ""
        before = cpu_snapshot(srv.proc.pid, database)
        pat_posted, pat_wall = post_bundles(srv.port, token, patients, clients, prefer)
        cpu = cpu_between(before, cpu_snapshot(srv.proc.pid, database))
        peak = max(hwm(srv.workers()).values(), default=0.0)
    return Ingest(
        clients, setting, dir_posted, pat_posted, dir_wall, pat_wall, cpu, stored_resources(db_url), peak
    )


def print_ingest(r: Ingest, label: str) -> None:
    dir_entries = sum(p.entries for p in r.directory)
    print(
        f"  {label}: {r.setting.label}, {r.clients} client{'s' if r.clients > 1 else ''}\n"
        f"    directory bundles ({len(r.directory)}, alone): {dir_entries:,} resources in "
        f"{r.directory_wall:.1f} s\n"
        f"    patient bundles ({len(r.patients)}): {r.patient_entries:,} resources in {r.patient_wall:.1f} s "
        f"= {r.rate:,.0f} resources/s; all {r.entries:,} in {r.directory_wall + r.patient_wall:.1f} s "
        f"= {r.rate_all:,.0f} resources/s",
        flush=True,
    )
    slowest = max(r.patients, key=lambda p: p.seconds, default=None)
    if slowest is not None:
        print(
            f"    per bundle: {sum(p.seconds for p in r.patients) / len(r.patients):.2f} s on average, "
            f"slowest "
            f"{slowest.seconds:.2f} s ({slowest.name[:30]}, {slowest.entries} entries); clients waiting "
            f"{100 * r.busy:.0f}% of the phase"
        )
    print(f"    {show_cpu(r.cpu)}")
    n = r.patient_entries or 1
    per = (r.cpu.app + r.cpu.postgres + r.cpu.pg_shared) / n
    ceiling = (os.cpu_count() or 1) / per if per else 0.0
    print(
        f"    CPU per resource: app {1000 * r.cpu.app / n:.2f} ms + PostgreSQL "
        f"{1000 * (r.cpu.postgres + r.cpu.pg_shared) / n:.2f} ms = {1000 * per:.2f} ms: "
        f"{os.cpu_count()} cores fully busy would ingest at most {ceiling:,.0f} resources/s"
    )
    if r.cpu.other > NOISY:
        print(f"    NOTE: other work took {r.cpu.other:.2f} cores during this phase: its rate is too low")
    codes = Counter[str]()
    for p in r.directory + r.patients:
        codes.update(p.statuses)
    print(
        f"    answers: {sum(1 for p in r.directory + r.patients if p.status == 200)}/"
        f"{len(r.directory) + len(r.patients)} bundles 200, entries "
        + ", ".join(f"{k} x{v:,}" for k, v in sorted(codes.items()))
        + f"; database holds {r.stored:,} resources; workers' peak RSS {r.worker_hwm_mb:.0f} MB"
    )
    for p in r.failed[:5]:
        print(f"    FAILED {p.name}: HTTP {p.status} {dict(p.statuses)} {p.error[:200]}")


# --------------------------------------------------------------------------------------------- 2. export


@dataclass
class Export:
    resources: int  # in the database
    kickoff_to_manifest: float
    queued: float  # until the status first said running (the runner threads poll every second)
    server_seconds: float | None  # export_job.finished - created
    manifest: dict[str, int]  # type -> count
    downloaded: dict[str, int]  # type -> lines
    download_seconds: float
    bytes: int
    sealed_left: int  # downloaded lines still holding {"$enc": ...}
    bad_lines: list[str]
    hwm_start: dict[int, float]
    hwm_job: dict[int, float]
    hwm_end: dict[int, float]
    job_pid: int | None
    errors: list[str] = field(default_factory=list)

    @property
    def exported(self) -> int:
        return sum(self.manifest.values())

    @property
    def job_rate(self) -> float:
        return self.exported / self.kickoff_to_manifest if self.kickoff_to_manifest else 0.0

    @property
    def download_rate(self) -> float:
        return sum(self.downloaded.values()) / self.download_seconds if self.download_seconds else 0.0

    @property
    def peak(self) -> float:
        return max(self.hwm_end.values(), default=0.0)

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and self.exported == self.resources
            and self.downloaded == self.manifest
            and self.sealed_left == 0
            and not self.bad_lines
        )


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def download(port: int, token: str, url: str) -> tuple[int, int, int, str]:
    """One NDJSON file, streamed: (lines, bytes, lines still sealed, first line)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    lines = size = sealed = 0
    first, tail = b"", b""
    try:
        conn.request("GET", _path(url), headers={"Authorization": f"Bearer {token}", "Accept": "*/*"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET {url} answered {resp.status}: {resp.read()[:300]!r}")
        while chunk := resp.read(1 << 20):
            size += len(chunk)
            lines += chunk.count(b"\n")
            if len(first) < 65536 and b"\n" not in first:
                first += chunk
            # a line with a sealed value; the marker may straddle two chunks
            sealed += (tail + chunk).count(b'{"$enc"') - tail.count(b'{"$enc"')
            tail = chunk[-16:]
    finally:
        conn.close()
    return lines, size, sealed, first.split(b"\n", 1)[0].decode(errors="replace")


def job_facts(db_url: str, job_id: str) -> tuple[int | None, float | None]:
    """(pid of the worker that ran the job, its seconds from kick-off to finished), from export_job."""
    with psycopg.connect(_conninfo(db_url)) as conn:
        row = conn.execute(
            "SELECT lease_owner, extract(epoch FROM finished - created) FROM export_job WHERE id = %s",
            (job_id,),
        ).fetchone()
    if row is None:
        return None, None
    owner, seconds = row
    found = re.match(r"[^:]*:(\d+):", owner or "")
    return (int(found.group(1)) if found else None), (float(seconds) if seconds is not None else None)


def export(db_url: str, keys: Any, work: Path, setting: Setting, label: str, timeout: float = 900) -> Export:
    """System $export from a freshly started server (fresh workers: their VmHWM is the export's), every
    file downloaded, the job deleted."""
    resources = stored_resources(db_url)
    out_dir = work / f"exports-{label}"
    with running_server(f"export-{label}", db_url, keys, work, setting, FHIR_EXPORT_DIR=str(out_dir)) as (
        srv,
        token,
    ):
        start = hwm(srv.workers())
        bearer = {"Authorization": f"Bearer {token()}", "Accept": FHIR_JSON}
        t0 = time.monotonic()
        status, headers, body = http_request(
            srv.port, "GET", "/fhir/R4/$export", headers={**bearer, "Prefer": "respond-async"}
        )
        if status != 202 or "Content-Location" not in headers:
            raise RuntimeError(f"$export kick-off answered {status}: {body[:300]!r}")
        status_path = _path(headers["Content-Location"])
        queued = 0.0
        while True:
            status, headers, body = http_request(srv.port, "GET", status_path, headers=bearer, timeout=30)
            if status == 200:
                break
            if status != 202:
                raise RuntimeError(f"$export-status answered {status}: {body[:300]!r}")
            if not queued and headers.get("X-Progress", "queued") != "queued":
                queued = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"$export not done after {timeout:.0f} s ({headers.get('X-Progress')})")
            time.sleep(0.1)
        kickoff_to_manifest = time.monotonic() - t0
        job = hwm(srv.workers())
        manifest_doc = json.loads(body)
        manifest: dict[str, int] = {}
        for item in manifest_doc.get("output", []):
            manifest[item["type"]] = manifest.get(item["type"], 0) + int(item["count"])
        downloaded: dict[str, int] = {}
        size = sealed = 0
        bad: list[str] = []
        t1 = time.monotonic()
        for item in manifest_doc.get("output", []):
            lines, got, sealed_here, first = download(srv.port, token(), item["url"])
            downloaded[item["type"]] = downloaded.get(item["type"], 0) + lines
            size += got
            sealed += sealed_here
            with contextlib.suppress(ValueError):
                if json.loads(first).get("resourceType") == item["type"]:
                    continue
            bad.append(f"{item['type']}: {first[:80]!r}")
        download_seconds = time.monotonic() - t1
        end = hwm(srv.workers())
        job_id = status_path.rstrip("/").rsplit("/", 1)[-1]
        pid, server_seconds = job_facts(db_url, job_id)
        status, _, body = http_request(srv.port, "DELETE", status_path, headers=bearer)
        errors = [] if status == 202 else [f"DELETE of the job answered {status}"]
    return Export(
        resources,
        kickoff_to_manifest,
        queued,
        server_seconds,
        manifest,
        downloaded,
        download_seconds,
        size,
        sealed,
        bad,
        start,
        job,
        end,
        pid,
        errors,
    )


def print_export(e: Export, label: str) -> None:
    job_worker = (
        f"the worker that ran the job ({e.job_pid}): {e.hwm_start.get(e.job_pid, 0):.0f} -> "
        f"{e.hwm_job.get(e.job_pid, 0):.0f} MB at the manifest -> {e.hwm_end.get(e.job_pid, 0):.0f} MB"
        if e.job_pid in e.hwm_end
        else "the worker that ran the job is not known"
    )
    print(
        f"  {label}: {e.resources:,} resources in the database\n"
        f"    kick-off -> 200 manifest: {e.kickoff_to_manifest:.1f} s = {e.job_rate:,.0f} resources/s "
        f"(queued {e.queued:.1f} s until a runner took it; the server's created -> finished "
        f"{e.server_seconds or 0:.1f} s); manifest: {e.exported:,} resources in {len(e.manifest)} files\n"
        f"    download (streamed, one file after the other): {sum(e.downloaded.values()):,} lines, "
        f"{e.bytes / 2**20:,.1f} MiB in {e.download_seconds:.1f} s = {e.download_rate:,.0f} resources/s; "
        f"lines still sealed: {e.sealed_left}\n"
        f"    peak RSS (VmHWM) of the workers: start max {max(e.hwm_start.values(), default=0):.0f} MB, "
        f"after the job {max(e.hwm_job.values(), default=0):.0f} MB, after the downloads {e.peak:.0f} MB; "
        f"{job_worker}",
        flush=True,
    )
    if e.downloaded != e.manifest:
        diff = {t: (e.manifest.get(t), e.downloaded.get(t)) for t in set(e.manifest) | set(e.downloaded)}
        print("    manifest vs downloaded differ: " + str({t: v for t, v in diff.items() if v[0] != v[1]}))
    for line in e.bad_lines[:3] + e.errors:
        print(f"    WRONG: {line}")


@dataclass
class Reload:
    """``fhir-api import`` of the set once more (in-process loaders)."""

    wall: float
    resources: int
    failed: int
    peak_mb: float | None
    output: str

    @property
    def rate(self) -> float:
        return self.resources / self.wall if self.wall else 0.0


def reload(env: dict[str, str], paths: list[str], workers: int) -> Reload:
    run = bench_audit.run_cli(env, "import", *paths, "--workers", str(workers), timeout=1800)
    last = run.output.strip().splitlines()[-1] if run.output.strip() else ""
    found = re.search(r"(\d+) resources: (\d+) created, (\d+) matched or updated, (\d+) failed", run.output)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"fhir-api import failed ({run.returncode}):\n{run.output[-2000:]}")
    return Reload(run.wall, int(found.group(1)), int(found.group(4)), run.peak_mb, last)


# --------------------------------------------------------------------------------------------- 4. profile

# Steps of a transaction POST, clocked without a profiler: (label, module, class or None, function).
STEPS = [
    ("parse the request body (JSON)", "resources.views", None, "_resource_body"),
    ("validate every entry (fhir.resources)", "resources.transactions", None, "_prevalidate"),
    ("assign ids", "resources.transactions", None, "_assign_ids"),
    ("rewrite urn:uuid references", "resources.transactions", None, "_rewrite"),
    ("store each version (repository.write)", "resources.repository", "ResourceRepository", "write"),
    ("  seal protected elements", "resources.protection.service", "Protection", "seal"),
    ("  blind-index key lookup (blind_context)", "resources.repository", None, "blind_context"),
    ("  index rows (plain + blind hashes)", "resources.repository", None, "index_batch"),
    ("  audit rows (event + links, HMAC)", "audit.recorder", None, "write_batch"),
    ("  the write's round trip (execute_batch)", "resources.repository", None, "execute_batch"),
    ("COMMIT (the WAL flush)", "psycopg", "Connection", "commit"),
    ("the transaction-response bundle", "resources.views", None, "_bundle_response"),
]


@dataclass
class Profile:
    bundles: int
    resources: int
    wall: float
    app_cpu: float  # this process
    pg_cpu: float
    steps: list[tuple[str, float, int, float]]  # label, seconds, calls, CPU seconds (this thread)
    rows: Counter[str]  # table -> rows written
    statements: int  # statements in the write batches
    round_trips: int  # write batches (one round trip each) + other statements
    listing: str


@contextlib.contextmanager
def clocked(spent: dict[str, list[float]], rows: Counter[str]) -> Iterator[None]:
    """The STEPS wrapped with clocks (``spent[label] = [seconds, calls, CPU seconds of this thread]``); the
    write batches' rows counted
    per table. Restored afterwards."""
    saved = []
    active: set[str] = set()  # steps being clocked now: a recursive step (_rewrite) counts its outer call
    for label, module_name, cls_name, name in STEPS:
        owner: Any = importlib.import_module(module_name)
        if cls_name:
            owner = getattr(owner, cls_name)
        original = getattr(owner, name)
        spent[label] = [0.0, 0, 0.0]

        def wrapper(*a: Any, _f: Any = original, _label: str = label, **kw: Any) -> Any:
            if _label.endswith("(execute_batch)"):
                for stmt, params in a[1]:
                    table = getattr(getattr(stmt, "table", None), "name", "?")
                    rows[table] += len(params)
                    rows["(statements)"] += 1 if params else 0
            if _label in active:
                return _f(*a, **kw)
            active.add(_label)
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return _f(*a, **kw)
            finally:
                active.discard(_label)
                spent[_label][0] += time.perf_counter() - t0
                spent[_label][1] += 1
                spent[_label][2] += time.thread_time() - c0

        setattr(owner, name, wrapper)
        saved.append((owner, name, original))
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def profile_inprocess(
    db_url: str, keys: Any, work: Path, bundles: list[Bundle], count: int, top: int
) -> Profile:
    """Patient bundles POSTed in-process (Flask test client) on a fresh database: clocked, then profiled."""
    from sqlalchemy import event

    from fhir_api import create_app
    from fhir_api.auth import tokens

    env = server_env(db_url, keys, work)
    upgrade(bench_audit.fhir_api_bin(), env)
    app = create_app(
        {
            "DATABASE_URL": db_url,
            "AUTH_SIGNING_KEY_FILE": env["FHIR_AUTH_SIGNING_KEY_FILE"],
            "CRYPTO_KEY_FILE": env["FHIR_CRYPTO_KEY_FILE"],
            "AUDIT_SIGNING_KEY_FILE": env["FHIR_AUDIT_SIGNING_KEY_FILE"],
            "PUBLIC_URL": "http://127.0.0.1:8000",
            "EXPORT_POLL_INTERVAL": 0,  # no runner thread
            "AUDIT_CHAIN_INTERVAL": 0,  # no chainer thread: only the request's own work is measured
            "LOG_LEVEL": "WARNING",
        }
    )
    with app.test_request_context():
        token, _ = tokens.issue(client_id="bench-ingest", role="clinical-system", scope="system/*.*")
    client = app.test_client()
    headers = {"Content-Type": FHIR_JSON, "Prefer": "return=minimal", "Authorization": f"Bearer {token}"}
    engine = app.extensions["fhir_db"]["engine"]
    other = [0]

    def count_statement(*_a: Any) -> None:
        other[0] += 1

    def post(b: Bundle) -> None:
        resp = client.post("/fhir/R4", data=b.body, headers=headers)
        if resp.status_code != 200:
            raise RuntimeError(f"{b.name} answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")

    try:
        directory = [b for b in bundles if b.directory]
        patients = [b for b in bundles if not b.directory]
        for b in directory + patients[:2]:  # the directory, and a warm-up: imports, caches, connections
            post(b)
        measured = patients[2 : 2 + count] or patients[:count]
        spent: dict[str, list[float]] = {}
        rows: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", count_statement)
        database = make_url(db_url).database or ""
        before = cpu_snapshot(None, database)
        app_cpu = time.process_time()
        t0 = time.perf_counter()
        with clocked(spent, rows):
            for b in measured:
                post(b)
        wall = time.perf_counter() - t0
        app_cpu = time.process_time() - app_cpu
        pg_cpu = cpu_between(before, cpu_snapshot(None, database)).postgres
        event.remove(engine, "before_cursor_execute", count_statement)
        batches = spent["  the write's round trip (execute_batch)"][1]
        # the profile: the first measured bundle again (a new copy of its resources)
        prof = cProfile.Profile()
        prof.enable()
        post(measured[0])
        prof.disable()
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf).strip_dirs()
        for order in ("tottime", "cumulative"):
            buf.write(f"\ntop {top} by {order} ({measured[0].name[:40]}, {measured[0].entries} entries):\n")
            stats.sort_stats(order).print_stats(top)
        listing = "\n".join(
            "    " + line
            for line in buf.getvalue().splitlines()
            if line.strip()
            and not line.lstrip().startswith(("List reduced", "Ordered by"))
            and "function calls" not in line
        )
        return Profile(
            len(measured),
            sum(b.entries for b in measured),
            wall,
            app_cpu,
            pg_cpu,
            [(label, s, int(n), cpu) for label, (s, n, cpu) in spent.items()],
            rows,
            rows["(statements)"],
            batches + other[0] + int(spent["COMMIT (the WAL flush)"][1]),
            listing,
        )
    finally:
        engine.dispose()


def print_profile(p: Profile) -> None:
    n = p.resources or 1
    print(
        f"  {p.bundles} patient bundles, {p.resources:,} resources, one after the other in-process: "
        f"{p.wall:.2f} s = {p.resources / p.wall:,.0f} resources/s, {1000 * p.wall / n:.2f} ms per resource\n"
        f"  CPU per resource: this process (app) {1000 * p.app_cpu / n:.2f} ms, PostgreSQL "
        f"{1000 * p.pg_cpu / n:.2f} ms; round trips {p.round_trips:,} "
        f"({p.round_trips / n:.1f} per resource), "
        f"statements in the write batches {p.statements:,} ({p.statements / n:.1f} per resource)"
    )
    print(
        f"  {'step (clocked, no profiler)':<46}{'wall ms/res':>12}{'CPU ms/res':>11}{'% of wall':>10}"
        f"{'calls':>8}"
    )
    for label, seconds, calls, cpu in p.steps:
        print(
            f"  {label:<46}{1000 * seconds / n:>12.3f}{1000 * cpu / n:>11.3f}{100 * seconds / p.wall:>10.1f}"
            f"{calls:>8,}"
        )
    written = {t: c for t, c in p.rows.items() if t != "(statements)"}
    print(
        f"  rows written per resource: {sum(written.values()) / n:.1f} in all: "
        + ", ".join(f"{t} {c / n:.1f}" for t, c in sorted(written.items(), key=lambda kv: -kv[1]))
    )
    print(p.listing)


# --------------------------------------------------------------------------------------------- summary


@dataclass
class Results:
    ingests: dict[int, Ingest] = field(default_factory=dict)  # by clients, main setting
    compared: list[Ingest] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    reloads: list[Reload] = field(default_factory=list)
    profile: Profile | None = None


def summary(r: Results, quick: bool) -> bool:
    rows: list[tuple[str, str, str]] = []
    for clients, ing in sorted(r.ingests.items()):
        if clients == TARGET_CLIENTS:
            verdict = "PASS" if ing.rate >= TARGET_RPS else "FAIL"
            if quick:
                verdict = "n/a"
            rows.append(
                (
                    f"ingest x{clients}: patient bundles resources/s >= {TARGET_RPS:,.0f}",
                    f"{ing.rate:,.0f}/s (all {ing.rate_all:,.0f}/s)",
                    verdict,
                )
            )
        else:
            rows.append(
                (
                    f"ingest x{clients}: patient bundles resources/s",
                    f"{ing.rate:,.0f}/s (all {ing.rate_all:,.0f}/s)",
                    "info",
                )
            )
        rows.append(
            (
                f"ingest x{clients}: every answer 200, entries 200/201, all stored",
                f"{len(ing.failed)} failed, {ing.stored:,}/{ing.entries:,}",
                "PASS" if ing.ok else "FAIL",
            )
        )
    for ing in r.compared:
        rows.append(
            (
                f"  compare x{ing.clients}, {ing.setting.label}",
                f"{ing.rate:,.0f}/s (all {ing.rate_all:,.0f}/s)",
                "info" if ing.ok else "FAIL",
            )
        )
    for i, e in enumerate(r.exports):
        times = "1x" if i == 0 else f"{LOADS}x"
        rows.append(
            (
                f"$export {times}: {e.resources:,} resources, all exported once, opened",
                f"{e.exported:,} / {sum(e.downloaded.values()):,}, {e.sealed_left} sealed",
                "PASS" if e.ok else "FAIL",
            )
        )
        rows.append(
            (
                f"  $export {times}: job / download resources/s",
                f"{e.job_rate:,.0f} / {e.download_rate:,.0f}",
                "info",
            )
        )
    if len(r.exports) == 2:
        a, b = r.exports
        ratio = b.peak / a.peak if a.peak else float("inf")
        rows.append(
            (
                f"$export peak worker RSS {LOADS}x / 1x <= {FLAT_TARGET}",
                f"{b.peak:.0f} / {a.peak:.0f} MB = {ratio:.2f}",
                "PASS" if ratio <= FLAT_TARGET else "FAIL",
            )
        )
    for rl in r.reloads:
        rows.append(
            (
                "fhir-api import (in-process) resources/s, 0 failed",
                f"{rl.rate:,.0f}/s ({rl.resources:,} in {rl.wall:.0f} s)",
                "info" if rl.failed == 0 else "FAIL",
            )
        )
    print("\nSUMMARY")
    width = max((len(x[0]) for x in rows), default=40)
    print(f"{'target':<{width}}  {'measured':<34}result")
    print("-" * (width + 42))
    for name, measured, result in rows:
        print(f"{name:<{width}}  {measured:<34}{result}")
    if quick:
        print("(quick run: a few patient bundles, so the rate is not judged; every other check is)")
    noisy = [i for i in [*r.ingests.values(), *r.compared] if i.cpu.other > NOISY]
    for i in noisy:
        print(
            f"(ingest x{i.clients}, {i.setting.label}: other work on the machine took {i.cpu.other:.2f} "
            "cores of the phase, so its rate is low; run again on a quiet machine)"
        )
    return all(x[2] != "FAIL" for x in rows)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from fhir_api.serving import default_threads, default_workers

    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own databases there",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 8 patient bundles, no comparison")
    p.add_argument("--workers", type=int, default=default_workers(), help="gunicorn workers (2 x CPUs + 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="threads per worker (FHIR_THREADS or 4; 1: sync)",
    )
    p.add_argument("--clients", default="1,4", help="parallel clients, comma-separated (default 1,4)")
    p.add_argument(
        "--compare",
        default=None,
        help="other WORKERSxTHREADS settings to ingest with the most clients, e.g. 2x4,5x1 (quick: none)",
    )
    p.add_argument("--patients", type=int, default=None, help="patient bundles to load (default all 40)")
    p.add_argument("--synthea", type=Path, default=SYNTHEA, help=f"the bundles (default {SYNTHEA})")
    p.add_argument(
        "--prefer",
        choices=("minimal", "representation"),
        default="minimal",
        help="Prefer: return=... of the bundle POSTs (minimal: answers without the resources)",
    )
    p.add_argument("--import-workers", type=int, default=2, help="fhir-api import --workers (default 2)")
    p.add_argument("--skip-export", action="store_true", help="ingestion only")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile patient bundles in-process (auto: when the 4-client target is missed)",
    )
    p.add_argument("--profile-bundles", type=int, default=None, help="patient bundles clocked in-process (6)")
    p.add_argument("--top", type=int, default=20, help="functions listed per cProfile order")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
        args.settings = [Setting.parse(s) for s in args.compare.split(",") if s.strip()]
    except (ValueError, argparse.ArgumentTypeError) as exc:
        p.error(str(exc))
    if not args.clients_list or min(args.clients_list) < 1:
        p.error("--clients needs positive client counts, e.g. 1,4")
    args.main = Setting(args.workers, args.threads)
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # finally blocks stop servers, drop databases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with psycopg.connect(_conninfo(args.database_url)) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    bundles = read_bundles(args.synthea, args.patients)
    patients = [b for b in bundles if not b.directory]
    print(
        f"PostgreSQL {row[0] if row else '?'}; {os.cpu_count()} cpus; "
        f"{'quick' if args.quick else 'full'} run; "
        f"{len(bundles)} bundles ({len(bundles) - len(patients)} directory, {len(patients)} patient), "
        f"{sum(b.entries for b in bundles):,} resources, "
        f"{sum(len(b.body) for b in bundles) / 2**20:.1f} MiB; "
        f"servers: fhir-api serve, {args.main.label}; Prefer: return={args.prefer}; "
        "encryption, indexing and audit on"
    )
    started = time.monotonic()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="fhir-bench-ingest-") as tmp:
        work = Path(tmp)
        keys = bench_audit.Keys.create(work)
        print("\n1. ingestion over HTTP, each client count on a fresh database")
        for clients in args.clients_list:
            keep = clients == max(args.clients_list) and not args.skip_export
            with bench_database(args.database_url, DB_PREFIX) as db_url:
                ing = ingest(db_url, keys, work, bundles, clients, args.main, args.prefer, f"x{clients}")
                results.ingests[clients] = ing
                print_ingest(ing, f"x{clients}")
                if keep:
                    run_exports(args, db_url, keys, work, bundles, results)
        if args.settings:
            most = max(args.clients_list)
            print(f"\n3. ingestion with {most} clients under other settings, each on a fresh database")
            for setting in args.settings:
                with bench_database(args.database_url, DB_PREFIX) as db_url:
                    ing = ingest(
                        db_url,
                        keys,
                        work,
                        bundles,
                        most,
                        setting,
                        args.prefer,
                        f"{setting.workers}x{setting.threads}",
                    )
                    results.compared.append(ing)
                    print_ingest(ing, "compare")
        target = results.ingests.get(TARGET_CLIENTS)
        missed = target is not None and target.rate < TARGET_RPS
        if args.profile == "always" or (args.profile == "auto" and missed):
            print("\n4. where the time goes: patient bundles POSTed in-process (Flask test client)")
            with bench_database(args.database_url, DB_PREFIX) as db_url:
                results.profile = profile_inprocess(
                    db_url, keys, work, bundles, args.profile_bundles, args.top
                )
            print_profile(results.profile)
    ok = summary(results, args.quick)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def run_exports(
    args: argparse.Namespace, db_url: str, keys: Any, work: Path, bundles: list[Bundle], results: Results
) -> None:
    """Part 2 on the database the last ingestion filled: export, load the set twice more, export again."""
    print(f"\n2. bulk export of everything loaded (system $export), {args.main.label}")
    t0 = time.monotonic()
    seconds = vacuum_analyze(db_url)
    print(f"  VACUUM (ANALYZE) + CHECKPOINT first: {seconds:.1f} s")
    e = export(db_url, keys, work, args.main, "1x")
    results.exports.append(e)
    print_export(e, "1x")
    env = server_env(db_url, keys, work)
    paths = [str(args.synthea / b.name) for b in bundles]
    for _ in range(LOADS - 1):
        rl = reload(env, paths, args.import_workers)
        results.reloads.append(rl)
        print(
            f"  fhir-api import --workers {args.import_workers} (in-process loaders): {rl.resources:,} "
            f"resources in {rl.wall:.1f} s = {rl.rate:,.0f} resources/s (start-up and ANALYZE included), "
            f"peak RSS of the command {rl.peak_mb or 0:.0f} MB: {rl.output}",
            flush=True,
        )
    seconds = vacuum_analyze(db_url)
    print(f"  VACUUM (ANALYZE) + CHECKPOINT: {seconds:.1f} s")
    e = export(db_url, keys, work, args.main, f"{LOADS}x")
    results.exports.append(e)
    print_export(e, f"{LOADS}x")
    print(f"  (part 2 took {time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and databases dropped", file=sys.stderr)
        sys.exit(130)
