"""The price of the audit log: read throughput, `audit verify` rate, export rate and memory.

One run measures:

1. **Read throughput**: ``GET /fhir/R4/Patient/<id>`` (the Patient of ``bench/crud.py``, many distinct ids,
   a fresh ``system/*.*`` token) on two app servers with the same settings on the same fresh PostgreSQL
   database, one recording every request (``FHIR_AUDIT=true``) and one where ``audit.record`` and the
   recorder are no-ops (``FHIR_AUDIT=false``), loaded alternately with wrk at 1 and 8 connections, best of
   ``--rounds``. Both run the defaults, so the audited server commits a read's record without waiting for
   its WAL flush (README: durability of read records; ``--flush-reads`` measures the other setting).
   Target: audited / unaudited >= 0.75 (the ratio within each round and its median are printed
   too, for information: on a noisy machine steadier than best against best). Checked on the way: one event
   per audited request and none per unaudited one, the chainers keeping up under load, and ``fhir-api audit
   verify`` on the log the load wrote. ``--sqlite`` repeats it on a SQLite file. When a PostgreSQL ratio fails
   (``--breakdown``), part 1b times an audited read in-process: the record split into building the event, the
   AuditEvent dict, canonical JSON, HMAC, link rows, patients lookup and the INSERT + COMMIT round trip, and
   the end of the read's transaction replayed (ROLLBACK vs INSERTs vs INSERTs + COMMIT vs the event row
   alone).
2. **A log of ``--events`` (1,000,000) events**, built quickly: about 1,000 real events are recorded
   in-process through the app (creates, reads, searches, updates, history, 404s, 401s, auditor searches),
   then replicated with new ids, request ids and times (and a valid MAC under the log's key) by ``COPY``
   into ``audit_event`` and ``audit_link``, one transaction per 1,000 events, and chained with
   ``audit.chain.catch_up`` every 20,000 (as the servers' chainers keep up). The log grows in two steps,
   ``--small-events`` (100,000) then ``--events``, and at each size it times:

   - ``fhir-api audit verify --no-chain`` (the whole chain, every MAC, every checkpoint), in events/s.
     Target at the full size: >= 50,000 events/s, wall time of the command (start-up included);
   - ``fhir-api audit export --format ndjson`` and ``--format csv``: events/s and the peak RSS of the
     exporting process (``/usr/bin/time -v``). Target: the full size's peak within 1.2x of the small one's
     (memory flat); each file's signed manifest must hold and count every event; the small NDJSON file
     must also pass ``fhir-api audit verify --export``;
   - ``GET /audit/export`` over HTTP (one gunicorn worker, an ``auditor`` token with
     ``system/AuditEvent.rs``): events/s, whether the whole stream arrived, and the worker's peak RSS.

A SUMMARY table ends the output with PASS/FAIL per target; the exit code is 1 when any fails. Every database
is created here (``fhir_bench_audit_<random>``) and dropped at the end, also on error or Ctrl-C.

    .venv/bin/python bench/audit.py [--quick] [--sqlite] [--events 1000000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import http.client
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _hand_over_to_the_audit_package() -> None:
    """Become the project's ``audit`` package.

    A script run from bench/ (crud.py, search.py) has bench/ first on sys.path, so the app's ``import audit``
    finds this file as ``audit``. The import system returns whatever sys.modules holds once the module has
    run, so putting the real package there hands over to it (as bench/crypto.py does for ``crypto``)."""
    import importlib.util

    package = ROOT / "audit"
    spec = importlib.util.spec_from_file_location(
        "audit", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit"] = module
    spec.loader.exec_module(module)


if __name__ == "audit":
    _hand_over_to_the_audit_package()  # the rest of this file only defines names, in a discarded module
else:
    # Run as a script: the repository root first, so that ``audit`` and ``crypto`` are the packages, and
    # bench/ last, for crud and search.
    sys.path[:] = [
        str(ROOT),
        *(p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)),
        str(HERE),
    ]

    import psycopg
    import psycopg.sql
    import simplejson
    from crud import (
        BIN,
        FHIR_JSON,
        PATIENT,
        LoadResult,
        Server,
        Target,
        bench_database,
        best_of,
        free_port,
        run_python,
        run_wrk,
        seed,
        token_minter,
    )
    from search import _conninfo, observation_body, server_env, upgrade, vacuum_analyze
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

READ_TARGET = 0.75  # audited req/s over unaudited req/s
VERIFY_TARGET = 50_000.0  # events/s of `fhir-api audit verify` on the full log
FLAT_TARGET = 1.2  # peak RSS exporting the full log over exporting the small one
NOISY = 1.2  # a read cell whose best round beats its worst by more than this is flagged
DB_PREFIX = "fhir_bench_audit"
NAMES = ("audited", "unaudited")
EVENTS_PER_TXN = 1000  # events per COPY transaction when building the log
CHAIN_STEP = 20_000  # events written between two catch_up runs when building the log
TIME_STEP_MS = 20  # synthetic events are spaced 20 ms apart, ending now
QUICK = {
    "events": 20_000,
    "small_events": 2_000,
    "seconds": 2.0,
    "rounds": 2,
    "warmup": 1.0,
    "seed_rows": 200,
    "templates": 200,
}
NORMAL = {
    "events": 1_000_000,
    "small_events": 100_000,
    "seconds": 5.0,
    "rounds": 2,
    "warmup": 2.0,
    "seed_rows": 1000,
    "templates": 1000,
}


# --------------------------------------------------------------------------------------------- helpers


def fhir_api_bin() -> Path:
    found = BIN / "fhir-api"
    return found if found.exists() else Path(shutil.which("fhir-api") or "fhir-api")


@dataclass(frozen=True)
class Keys:
    """The key files every server of the run shares (token-signing keys are per server: per audience)."""

    keyring: Path  # FHIR_CRYPTO_KEY_FILE
    audit: Path  # FHIR_AUDIT_SIGNING_KEY_FILE

    @staticmethod
    def create(work: Path) -> Keys:
        from audit.signing import generate_key_file as generate_audit_key
        from crypto.kms import generate_key_file as generate_keyring

        keys = Keys(work / "keyring.json", work / "audit-signing.jwk")
        generate_keyring(keys.keyring)
        generate_audit_key(keys.audit)
        return keys


def app_env(db_url: str, keys: Keys, signing: Path, port: int, audited: bool = True) -> dict[str, str]:
    """A server's environment: the same for both servers but FHIR_AUDIT."""
    return server_env(
        db_url,
        FHIR_CRYPTO_KEY_FILE=str(keys.keyring),
        FHIR_AUDIT_SIGNING_KEY_FILE=str(keys.audit),
        FHIR_AUTH_SIGNING_KEY_FILE=str(signing),
        FHIR_PUBLIC_URL=f"http://127.0.0.1:{port}",
        FHIR_AUDIT="true" if audited else "false",
    )


def start_servers(servers: list[Server], workers: int) -> None:
    for srv in servers:
        srv.start()
    for srv in servers:
        srv.wait_ready(workers)


def stop_servers(servers: list[Server]) -> None:
    for srv in servers:
        with contextlib.suppress(Exception):
            srv.stop()


def count_rows(db_url: str, table: str) -> int:
    """Rows of one audit table (``table`` is one of this file's literals)."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(url.database or "", timeout=30)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    with psycopg.connect(_conninfo(db_url)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


@dataclass
class Run:
    """One command run: its wall time, its output, and the peak RSS of its process (when measured)."""

    wall: float
    output: str
    returncode: int
    peak_mb: float | None = None


def run_cli(env: dict[str, str], *argv: str, timeout: float = 3600) -> Run:
    """``fhir-api ARGV`` under ``/usr/bin/time -v`` (the peak RSS of the command's own process), or under a
    Python wrapper reading RUSAGE_CHILDREN when GNU time is missing (a fresh wrapper per run: the figure
    is that one child's)."""
    command = [str(fhir_api_bin()), *argv]
    gnu_time = Path("/usr/bin/time")
    fd, name = tempfile.mkstemp(prefix="fhir-bench-audit-rss-")
    os.close(fd)
    report = Path(name)
    try:
        if gnu_time.exists():
            wrapped = [str(gnu_time), "-v", "-o", str(report), *command]
        else:
            wrapped = [
                sys.executable,
                "-c",
                "import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
                "open(sys.argv[1], 'w').write("
                "'Maximum resident set size (kbytes): %d' % resource.getrusage(resource.RUSAGE_CHILDREN)"
                ".ru_maxrss); sys.exit(rc)",
                str(report),
                *command,
            ]
        t0 = time.monotonic()
        done = subprocess.run(wrapped, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - t0
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text())
        peak = int(found.group(1)) / 1024 if found else None
    finally:
        report.unlink(missing_ok=True)
    return Run(wall, done.stdout + done.stderr, done.returncode, peak)


def verified_count(output: str) -> int | None:
    found = re.search(r"^verified: (\d+) events", output, re.MULTILINE)
    return int(found.group(1)) if found else None


def auditor_minter(key_file: Path, public_url: str) -> Callable[[], str]:
    """Tokens of role ``auditor`` with ``system/AuditEvent.rs``, signed with the server's key (the key file
    exists already: ``token_minter`` made it)."""
    from fhir_api import create_app
    from fhir_api.auth import tokens

    app = create_app({"AUTH_SIGNING_KEY_FILE": str(key_file), "PUBLIC_URL": public_url})

    def token() -> str:
        with app.test_request_context():
            issued, _ = tokens.issue(client_id="bench-auditor", role="auditor", scope="system/AuditEvent.rs")
        return issued

    return token


# --------------------------------------------------------------------------------------------- 1. reads


@dataclass
class Reads:
    backend: str
    results: dict[tuple[int, str], LoadResult]
    clients: list[int]
    requests: dict[str, int]  # measured requests per server
    recorded: dict[str, int]  # audit events those measured runs added
    unchained: int  # events not chained a few seconds after the load stopped
    live_verify: Run | None
    live_events: int
    rounds: int
    spread: dict[tuple[int, str], float]  # best round over worst round, per cell
    paired: dict[int, list[float]]  # audited / unaudited within each round, per client count

    def ratio(self, clients: int) -> float:
        on, off = self.results[(clients, "audited")], self.results[(clients, "unaudited")]
        return on.rps / off.rps if off.rps else 0.0

    def ok(self, clients: int) -> bool:
        on, off = self.results[(clients, "audited")], self.results[(clients, "unaudited")]
        return self.ratio(clients) >= READ_TARGET and on.errors == 0 and off.errors == 0

    def recording_ok(self) -> bool:
        """Every audited request recorded (requests in flight when wrk stops add a few), none of the
        unaudited ones."""
        slack = sum(self.clients) * self.rounds
        asked = self.requests["audited"]
        return self.recorded["unaudited"] == 0 and asked <= self.recorded["audited"] <= asked + slack

    def live_ok(self) -> bool:
        run = self.live_verify
        return run is not None and run.returncode == 0 and verified_count(run.output) == self.live_events


def measure_reads(
    args: argparse.Namespace, work: Path, keys: Keys, backend: str, load: Callable[..., LoadResult]
) -> Reads:
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    body_file = work / "patient.json"
    body = json.dumps(PATIENT, separators=(",", ":")).encode()
    body_file.write_bytes(body)
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            db_url = stack.enter_context(bench_database(args.database_url, DB_PREFIX))
        else:
            db_url = f"sqlite:///{work / 'reads.sqlite3'}"
        ports = {name: free_port() for name in NAMES}
        envs = {
            name: app_env(db_url, keys, work / f"reads-{backend}-{name}.jwk", ports[name], name == "audited")
            | {"FHIR_AUDIT_FLUSH_READS": str(args.flush_reads).lower()}
            for name in NAMES
        }
        upgrade(fhir_api_bin(), envs["audited"])
        servers: list[Server] = []
        targets: dict[str, Target] = {}
        runs: dict[tuple[int, str], list[LoadResult]] = {}
        requests = dict.fromkeys(NAMES, 0)
        recorded = dict.fromkeys(NAMES, 0)
        try:
            for name in NAMES:
                port = ports[name]
                token = token_minter(work / f"reads-{backend}-{name}.jwk", f"http://127.0.0.1:{port}")
                argv = [str(fhir_api_bin()), "serve", "--host", "127.0.0.1", "--port", str(port)]
                servers.append(
                    Server(
                        f"reads-{backend}-{name}",
                        [*argv, "--workers", str(args.workers)],
                        envs[name],
                        port,
                        work,
                    )
                )
                targets[name] = Target(
                    name, port, "/fhir/R4/Patient", "/fhir/R4/Patient/", FHIR_JSON, token=token
                )
            start_servers(servers, args.workers)
            shown = make_url(db_url).database
            print(
                f"  servers: audited on :{ports['audited']}, unaudited (FHIR_AUDIT=false) on "
                f":{ports['unaudited']}, {args.workers} workers each (FHIR_THREADS threads), both on {shown}"
            )
            targets["audited"] = seed(targets["audited"], body, args.seed_rows, work)
            targets["unaudited"] = dataclasses.replace(
                targets["unaudited"], ids_file=targets["audited"].ids_file
            )  # the same Patients, read through the other server
            print(f"  created {args.seed_rows} Patients through the audited server; reads cycle through them")
            for name in NAMES:  # warm-up: imports, caches, pool connections, statement caches
                load(targets[name], "read", max(clients_list), args.warmup, body_file)
            for rnd in range(1, args.rounds + 1):
                for clients in clients_list:
                    for name in NAMES if rnd % 2 else tuple(reversed(NAMES)):
                        before = count_rows(db_url, "audit_event")
                        r = load(targets[name], "read", clients, args.seconds, body_file)
                        time.sleep(0.2)  # let the last in-flight requests finish and record
                        added = count_rows(db_url, "audit_event") - before
                        runs.setdefault((clients, name), []).append(r)
                        requests[name] += r.requests
                        recorded[name] += added
                        print(
                            f"    round {rnd}  read x{clients:<2} {name:<9} {r.rps:8,.0f} req/s "
                            f"({r.requests} requests, {r.errors} failed, {added} events recorded)",
                            flush=True,
                        )
            time.sleep(3)  # the chainers run every second
            events = count_rows(db_url, "audit_event")
            unchained = events - count_rows(db_url, "audit_chain")
        finally:
            stop_servers(servers)
        live = run_cli(envs["audited"], "audit", "verify")  # chains what is left, then checks it all
        live_events = count_rows(db_url, "audit_event")
        print(
            f"  fhir-api audit verify on this log ({live.wall:.1f} s): {live.output.strip().splitlines()[-1]}"
        )
    return Reads(
        backend,
        {k: best_of(v) for k, v in runs.items()},
        clients_list,
        requests,
        recorded,
        unchained,
        live,
        live_events,
        args.rounds,
        {k: max(r.rps for r in v) / max(min(r.rps for r in v), 1e-9) for k, v in runs.items()},
        {c: _within_rounds(runs[(c, "audited")], runs[(c, "unaudited")]) for c in clients_list},
    )


def _within_rounds(audited: list[LoadResult], unaudited: list[LoadResult]) -> list[float]:
    """audited / unaudited of the same round: on a noisy machine steadier than best against best."""
    return [a.rps / u.rps if u.rps else 0.0 for a, u in zip(audited, unaudited, strict=True)]


def print_reads(r: Reads) -> None:
    head = f"  {'clients':>7}{'audited/s':>12}{'unaudited/s':>13}{'ratio':>8}  target"
    print("\n" + head)
    print("  " + "-" * (len(head) + 12))
    for c in r.clients:
        on, off = r.results[(c, "audited")], r.results[(c, "unaudited")]
        print(
            f"  {c:>7}{on.rps:>12,.0f}{off.rps:>13,.0f}{r.ratio(c):>8.3f}"
            f"  >= {READ_TARGET}  {'PASS' if r.ok(c) else 'FAIL'}"
        )
    print("  latency p50 / p99 in ms (audited | unaudited):")
    for c in r.clients:
        on, off = r.results[(c, "audited")], r.results[(c, "unaudited")]
        print(
            f"    x{c:<2} {on.p50_ms or 0:6.2f} / {on.p99_ms or 0:6.2f} | {off.p50_ms or 0:6.2f} / "
            f"{off.p99_ms or 0:6.2f}"
            + (f"   failed requests: {on.errors} | {off.errors}" if on.errors or off.errors else "")
        )
    rounds = "; ".join(
        f"x{c} {' '.join(f'{x:.3f}' for x in r.paired[c])} (median {statistics.median(r.paired[c]):.3f})"
        for c in r.clients
        if r.paired.get(c)
    )
    print(f"  ratio within each round (the two servers loaded one after the other; informative): {rounds}")
    noisy = [f"{name} x{c} {x - 1:.0%}" for (c, name), x in sorted(r.spread.items()) if x > NOISY]
    if noisy:
        print(
            f"  NOISY: rounds of a cell differ by more than {NOISY - 1:.0%} ({', '.join(noisy)}): the "
            "machine was busy during some of them; take the ratios with care, or run again with more --rounds"
        )
    print(
        f"  events recorded by the measured runs: audited {r.recorded['audited']:,} for "
        f"{r.requests['audited']:,} requests, unaudited {r.recorded['unaudited']:,} for "
        f"{r.requests['unaudited']:,}; not yet chained 3 s after the load: {r.unchained:,}"
    )


# --------------------------------------------------------------------------------------------- breakdown

# (module, attribute, label): what the record of one read is timed by, in call order.
TIMED = (
    ("audit.recorder", "finish", "the whole record (recorder.finish)"),
    ("audit.recorder", "_event", "  build the Event (actor, query, outcome)"),
    ("audit.store", "patients_of", "  patients lookup (store.patients_of)"),
    ("audit.store", "event_batch", "  rows to insert (store.event_batch):"),
    ("audit.events:Event", "resource", "    the AuditEvent as a dict (Event.resource)"),
    ("audit.store", "canonical", "    JSON canonicalisation (canonical)"),
    ("audit.store", "event_mac", "    HMAC-SHA256 (event_mac)"),
    ("audit.events:Event", "links", "    link rows (Event.links)"),
    ("fhir_api.db", "execute_batch", "  INSERT event + links + COMMIT (one round trip)"),
)


@dataclass
class Breakdown:
    reads: int
    audited_us: float
    unaudited_us: float
    split_us: dict[str, float]
    round_trips_us: dict[str, float]  # how a read's transaction ends, replayed: median per variant


@contextlib.contextmanager
def timers(totals: dict[str, float]) -> Iterator[None]:
    """Wrap the TIMED functions with timers adding to ``totals`` (seconds); restored afterwards."""
    import importlib

    saved = []
    for where, attr, label in TIMED:
        module_name, _, cls = where.partition(":")
        owner = importlib.import_module(module_name)
        owner = getattr(owner, cls) if cls else owner
        original = getattr(owner, attr)

        def timed(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - t0

        saved.append((owner, attr, original))
        setattr(owner, attr, timed)
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


ROLLBACK_ONLY = "ROLLBACK (how an unaudited read's transaction ends)"
INSERT_ROLLBACK = "INSERT event + links, ROLLBACK"
INSERT_COMMIT = "INSERT event + links + COMMIT, no flush (how an audited read's ends)"
INSERT_FLUSH = "INSERT event + links + COMMIT, flushed (FHIR_AUDIT_FLUSH_READS)"
EVENT_COMMIT = "INSERT event alone + COMMIT, no flush (no audit_link rows)"


def replay_round_trips(app: Any, event: Any, n: int) -> dict[str, float]:
    """The end of a read's transaction replayed through the app's own ``execute_batch`` / ``commit_batch``
    with a real event (a new id each time), after a ``SELECT 1`` that opens the transaction as the read's
    query does; the variants take turns, median of ``n`` each, in microseconds."""
    from sqlalchemy import text

    from audit import signing, store
    from fhir_api import db as database

    def end(how: str) -> None:
        batch = store.event_batch([dataclasses.replace(event, event_id=str(uuid.uuid4()))], mac_key)
        with database.new_session() as s:
            s.execute(text("SELECT 1"))
            t0 = time.perf_counter()
            if how == ROLLBACK_ONLY:
                s.rollback()
            elif how == INSERT_ROLLBACK:
                database.execute_batch(s, batch)
                s.rollback()
            elif how == INSERT_COMMIT:
                database.commit_batch(s, batch, flush=False)
            elif how == INSERT_FLUSH:
                database.commit_batch(s, batch)
            else:
                database.commit_batch(s, batch[:1], flush=False)
            times[how].append(time.perf_counter() - t0)

    with app.app_context():
        mac_key = signing.mac_key()
        times: dict[str, list[float]] = {
            h: [] for h in (ROLLBACK_ONLY, INSERT_ROLLBACK, INSERT_COMMIT, INSERT_FLUSH, EVENT_COMMIT)
        }
        for i in range(n + 50):
            if i == 50:
                for values in times.values():
                    values.clear()  # the first 50 warm up (prepared statements, pool)
            for how in times:
                end(how)
    return {how: sorted(values)[len(values) // 2] * 1e6 for how, values in times.items()}


def read_breakdown(args: argparse.Namespace, work: Path, keys: Keys, reads: int = 1000) -> Breakdown:
    """Where an audited read's extra time goes: the app in-process (Flask test client: no HTTP, no gunicorn,
    no chainer) on a fresh PostgreSQL database, ``reads`` GET Patient/<id> per round, the audited and the
    unaudited app taking turns for 3 rounds, best of each; one more audited round with the TIMED functions
    timed; then how the read's transaction ends, replayed (``replay_round_trips``)."""
    from audit import store
    from fhir_api import create_app
    from fhir_api import db as database
    from fhir_api.auth import tokens
    from fhir_api.auth.keys import generate_signing_key_file

    signing = work / "breakdown-signing.jwk"
    generate_signing_key_file(signing)
    with bench_database(args.database_url, DB_PREFIX) as db_url:
        upgrade(fhir_api_bin(), app_env(db_url, keys, signing, 0))
        apps: list[Any] = []

        def build(audited: bool) -> Any:
            app = create_app(
                {
                    "DATABASE_URL": db_url,
                    "AUTH_SIGNING_KEY_FILE": str(signing),
                    "CRYPTO_KEY_FILE": str(keys.keyring),
                    "AUDIT_SIGNING_KEY_FILE": str(keys.audit),
                    "PUBLIC_URL": "http://127.0.0.1:8000",
                    "AUDIT": audited,
                    "AUDIT_CHAIN_INTERVAL": 0,
                    "RATE_LIMIT_ENABLED": False,  # one bench client: per-client limits are not measured
                    "LOG_LEVEL": "WARNING",
                }
            )
            apps.append(app)
            return app

        try:
            on, off = build(True), build(False)
            with on.test_request_context():
                token, _ = tokens.issue(client_id="bench", role="clinical-system", scope="system/*.*")
            h = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
            ids = []
            for _ in range(300):
                created = on.test_client().post("/fhir/R4/Patient", data=json.dumps(PATIENT), headers=h)
                ids.append(created.headers["Location"].split("/Patient/")[1].split("/")[0])

            def per_read(app: Any, n: int) -> float:
                client = app.test_client()
                t0 = time.perf_counter()
                for i in range(n):
                    resp = client.get(f"/fhir/R4/Patient/{ids[i % len(ids)]}", headers=h)
                    if resp.status_code != 200:
                        raise RuntimeError(f"read answered {resp.status_code}")
                return (time.perf_counter() - t0) / n * 1e6

            for app in (on, off):
                per_read(app, 200)  # warm-up
            best = {"audited": float("inf"), "unaudited": float("inf")}
            for _ in range(3):
                best["audited"] = min(best["audited"], per_read(on, reads))
                best["unaudited"] = min(best["unaudited"], per_read(off, reads))
            totals: dict[str, float] = {}
            captured: list[Any] = []
            original = store.commit_events

            def capture(session: Any, events: list[Any], mac_key: Any, **how: Any) -> None:
                captured[:] = events
                original(session, events, mac_key, **how)

            with timers(totals):
                per_read(on, reads)
                store.commit_events = capture  # type: ignore[assignment]
                try:
                    per_read(on, 1)
                finally:
                    store.commit_events = original  # type: ignore[assignment]
            trips = replay_round_trips(on, captured[0], reads)
        finally:
            for app in apps:
                with app.app_context():
                    database.engine().dispose()  # also stops the revocation listeners
    split = {label: seconds / reads * 1e6 for label, seconds in totals.items()}
    return Breakdown(reads, best["audited"], best["unaudited"], split, trips)


def print_breakdown(b: Breakdown) -> None:
    print(
        f"  per read, in-process (3 rounds of {b.reads:,} taking turns, best of each): audited "
        f"{b.audited_us:,.0f} us, unaudited {b.unaudited_us:,.0f} us: ratio "
        f"{b.unaudited_us / b.audited_us:.3f}, the record adds {b.audited_us - b.unaudited_us:,.0f} us"
    )
    print("  the record of one read, timed inside (one more audited round; timers add a little):")
    for _, _, label in TIMED:
        if label in b.split_us:
            print(f"    {label:<62}{b.split_us[label]:8,.0f} us")
    t = b.round_trips_us
    print(f"  the end of a read's transaction replayed through fhir_api.db, median of {b.reads:,} each:")
    for label, us in t.items():
        print(f"    {label:<62}{us:8,.0f} us")
    print(
        f"    so: the INSERTs and their COMMIT ~{t[INSERT_COMMIT] - t[ROLLBACK_ONLY]:,.0f} us more than the "
        f"ROLLBACK an unaudited read ends with (the audit_link rows "
        f"~{t[INSERT_COMMIT] - t[EVENT_COMMIT]:,.0f} of them); waiting for the WAL flush would add "
        f"~{t[INSERT_FLUSH] - t[INSERT_COMMIT]:,.0f} us"
    )


# --------------------------------------------------------------------------------------------- 2. the log


@dataclass(frozen=True)
class Template:
    """A real event, cut where a replica differs: its id, its time and its request id."""

    parts: tuple[str, ...]  # the canonical JSON between the holes
    holes: tuple[str, ...]  # "id" | "recorded" | "request", in body order
    columns: str  # type_code \t subtype \t action \t outcome \t client_id (COPY text format)
    links: tuple[tuple[str, str], ...]  # (kind, ref)


def _copy_text(value: str | None) -> str:
    if value is None:
        return r"\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def record_templates(db_url: str, keys: Keys, work: Path, count: int) -> dict[str, int]:
    """About ``count`` real events, recorded in-process through the app by a mix of requests."""
    from fhir_api import create_app
    from fhir_api import db as database
    from fhir_api.auth.keys import generate_signing_key_file

    signing = work / "templates-signing.jwk"
    generate_signing_key_file(signing)
    app = create_app(
        {
            "DATABASE_URL": db_url,
            "AUTH_SIGNING_KEY_FILE": str(signing),
            "CRYPTO_KEY_FILE": str(keys.keyring),
            "AUDIT_SIGNING_KEY_FILE": str(keys.audit),
            "PUBLIC_URL": "https://fhir.example.org",
            "AUDIT": True,
            "AUDIT_CHAIN_INTERVAL": 0,  # no background chainer: the bench chains the log itself
            "LOG_LEVEL": "WARNING",  # no access-log line per request
            "RATE_LIMIT_ENABLED": False,  # in-process requests outrun a client's limit (429s are unrecorded)
        }
    )
    try:
        return _template_requests(app, count)
    finally:
        with app.app_context():
            database.engine().dispose()  # also stops the revocation listener's thread


def _template_requests(app: Any, count: int) -> dict[str, int]:
    from audit.models import AuditRow
    from fhir_api import db as database
    from fhir_api.auth import tokens

    with app.test_request_context():
        clinical, _ = tokens.issue(client_id="ward-system", role="clinical-system", scope="system/*.*")
        auditor, _ = tokens.issue(client_id="bench-auditor", role="auditor", scope="system/AuditEvent.rs")
    client = app.test_client()
    h = {"Authorization": f"Bearer {clinical}", "Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    audit_h = {"Authorization": f"Bearer {auditor}", "Accept": FHIR_JSON}
    observation = observation_body(42)
    statuses: dict[str, int] = {}

    def call(method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
        data = simplejson.dumps(body) if body else None  # the seed Observation holds Decimals
        resp = client.open(path, method=method, headers=headers, data=data)
        statuses[f"{method} {resp.status_code}"] = statuses.get(f"{method} {resp.status_code}", 0) + 1
        return resp

    def events() -> int:
        with app.app_context(), database.new_session() as s:
            return int(s.query(AuditRow).count())

    k = 0
    while events() < count:
        k += 1
        patient = {**PATIENT, "name": [{"family": f"Chalmers{k}", "given": ["Peter", f"Jim{k}"]}]}
        created = call("POST", "/fhir/R4/Patient", h, patient)
        pid = created.headers["Location"].split("/Patient/")[1].split("/")[0]
        obs = call(
            "POST", "/fhir/R4/Observation", h, {**observation, "subject": {"reference": f"Patient/{pid}"}}
        )
        oid = obs.headers["Location"].split("/Observation/")[1].split("/")[0]
        for _ in range(6):
            call("GET", f"/fhir/R4/Patient/{pid}", h)
        call("GET", f"/fhir/R4/Patient/{pid}/_history/1", h)
        call("GET", f"/fhir/R4/Observation/{oid}", h)
        call("GET", f"/fhir/R4/Observation/{oid}", h)
        call("GET", f"/fhir/R4/Patient?name=Chalmers{k}", h)
        call("GET", f"/fhir/R4/Observation?patient={pid}&_count=10", h)
        call("PUT", f"/fhir/R4/Patient/{pid}", h, {**patient, "id": pid, "active": False})
        call("GET", f"/fhir/R4/Patient/{pid}/_history", h)
        call("GET", f"/fhir/R4/Patient/{uuid.uuid4()}", h)  # 404
        call("GET", f"/fhir/R4/Patient/{pid}", {"Accept": FHIR_JSON})  # 401, no token
        if k % 4 == 0:
            call("GET", f"/fhir/R4/AuditEvent?patient={pid}&_count=5", audit_h)
    return statuses


def load_templates(db_url: str) -> list[Template]:
    with psycopg.connect(_conninfo(db_url)) as conn:
        rows = conn.execute(
            "SELECT event_id, body, type_code, subtype, action, outcome, client_id FROM audit_event "
            "ORDER BY pos"
        ).fetchall()
        links: dict[str, list[tuple[str, str]]] = {}
        for event_id, kind, ref in conn.execute("SELECT event_id, kind, ref FROM audit_link"):
            links.setdefault(event_id, []).append((kind, ref))
    out = []
    for event_id, body, *columns in rows:
        event = json.loads(body)
        marks = [("id", '"id":"', event_id), ("recorded", '"recorded":"', event["recorded"])]
        request_id = next(
            (
                e["what"]["identifier"]["value"]
                for e in event.get("entity", [])
                if e.get("type", {}).get("code") == "XrequestId"
            ),
            None,
        )
        if request_id:
            marks.append(("request", '"value":"', request_id))
        spans = sorted(
            (body.index(f'{prefix}{value}"') + len(prefix), len(value), name) for name, prefix, value in marks
        )
        parts, holes, at = [], [], 0
        for value_at, length, name in spans:
            parts.append(body[at:value_at])
            holes.append(name)
            at = value_at + length
        parts.append(body[at:])
        out.append(
            Template(
                tuple(parts),
                tuple(holes),
                "\t".join(_copy_text(c) for c in columns),
                tuple(links.get(event_id, ())),
            )
        )
    return out


@dataclass
class Build:
    events: int = 0  # synthetic events written so far
    copy_seconds: float = 0.0
    link_rows: int = 0
    chain_seconds: float = 0.0
    chained: int = 0
    vacuum_seconds: float = 0.0


def write_events(
    db_url: str, templates: list[Template], first: int, stop: int, mac_key: bytes, start: datetime
) -> tuple[float, int]:
    """Synthetic events ``first`` .. ``stop - 1`` (event k is a replica of template k mod len, recorded at
    ``start + k * TIME_STEP_MS``), COPYed in transactions of EVENTS_PER_TXN. Returns (seconds, link rows)."""
    from audit.signing import event_mac

    escaped = [tuple(_copy_text(p) for p in t.parts) for t in templates]
    base_ms = int(start.timestamp() * 1000)
    seconds_cache: dict[int, str] = {}
    link_rows = 0
    t0 = time.monotonic()
    with psycopg.connect(_conninfo(db_url)) as conn:
        for lo in range(first, stop, EVENTS_PER_TXN):
            hi = min(stop, lo + EVENTS_PER_TXN)
            events, links = [], []
            for k in range(lo, hi):
                i = k % len(templates)
                t = templates[i]
                ms = base_ms + k * TIME_STEP_MS
                second = seconds_cache.get(ms // 1000)
                if second is None:
                    if len(seconds_cache) > 4096:
                        seconds_cache.clear()
                    second = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                    seconds_cache[ms // 1000] = second
                instant = f"{second}.{ms % 1000:03d}Z"
                event_id = str(uuid.uuid4())
                values = {"id": event_id, "recorded": instant, "request": str(uuid.uuid4())}
                filled = [values[h] for h in t.holes]
                raw, cooked = [t.parts[0]], [escaped[i][0]]
                for value, part, esc in zip(filled, t.parts[1:], escaped[i][1:], strict=True):
                    raw += (value, part)
                    cooked += (value, esc)
                body = "".join(raw)
                events.append(
                    f"{event_id}\t{instant}\t{t.columns}\t{''.join(cooked)}\t{event_mac(mac_key, body)}\n"
                )
                links += [f"{event_id}\t{kind}\t{_copy_text(ref)}\t{instant}\n" for kind, ref in t.links]
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(
                    "COPY audit_event (event_id, recorded, type_code, subtype, action, outcome, client_id, "
                    "body, mac) FROM STDIN"
                ) as copy:
                    copy.write("".join(events))
                with cur.copy("COPY audit_link (event_id, kind, ref, recorded) FROM STDIN") as copy:
                    copy.write("".join(links))
            link_rows += len(links)
    return time.monotonic() - t0, link_rows


def grow_log(
    db_url: str, templates: list[Template], build: Build, total: int, key: Any, start: datetime
) -> None:
    """Synthetic events up to ``total`` in the log, chained as they come (``catch_up`` after every
    CHAIN_STEP events, as the servers' chainers keep up with traffic), then VACUUM (ANALYZE) and CHECKPOINT
    (what autovacuum would have done by the time an auditor asks) so that reads find settled pages."""
    from audit.signing import derive_mac_key

    mac_key = derive_mac_key(key)
    want = total - len(templates)
    first, chained, copy_s, chain_s, links, shown = build.events, 0, 0.0, 0.0, 0, time.monotonic()
    while True:
        stop = min(want, build.events + CHAIN_STEP)
        if stop > build.events:
            seconds, rows = write_events(db_url, templates, build.events, stop, mac_key, start)
            copy_s += seconds
            links += rows
            build.events = stop
        n, seconds = chain_now(db_url, key)
        chained += n
        chain_s += seconds
        if build.events >= want or time.monotonic() - shown > 30:
            print(
                f"    {build.events - first:,} events and {links:,} link rows written by COPY in "
                f"{copy_s:.1f} s ({(build.events - first) / copy_s if copy_s else 0:,.0f} events/s); "
                f"{chained:,} chained in {chain_s:.1f} s ({chained / chain_s if chain_s else 0:,.0f} "
                f"events/s, catch_up every {CHAIN_STEP:,})",
                flush=True,
            )
            shown = time.monotonic()
        if build.events >= want:
            break
    build.copy_seconds += copy_s
    build.chain_seconds += chain_s
    build.link_rows += links
    build.chained += chained
    build.vacuum_seconds += vacuum_analyze(db_url)


@dataclass
class Export:
    fmt: str
    how: str  # "cli" | "http"
    events: int  # what the signed manifest counts (0: no valid manifest)
    manifest_ok: bool
    wall: float
    bytes: int
    peak_mb: float | None
    complete: bool = True
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.wall if self.wall else 0.0


def manifest_of(last_line: bytes, fmt: str, public: Any) -> dict[str, Any] | None:
    """The signed manifest at the end of an export, or None when it is missing or its signature fails."""
    from audit import signing

    try:
        if fmt == "csv":
            row = next(csv.reader(io.StringIO(last_line.decode())))
            token = row[-1] if row and row[0] == "manifest" else None
        else:
            item = json.loads(last_line)
            token = item["parameter"][0]["valueString"] if item.get("id") == "audit-export-manifest" else None
        return signing.verify(token, public) if token else None
    except (ValueError, KeyError, IndexError, StopIteration):
        return None


def last_line(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        return f.read().rstrip(b"\r\n").rsplit(b"\n", 1)[-1]


def export_cli(env: dict[str, str], fmt: str, out: Path, public: Any, expected: int) -> Export:
    run = run_cli(env, "audit", "export", "--format", fmt, "-o", str(out))
    if run.returncode != 0:
        raise RuntimeError(f"fhir-api audit export --format {fmt} failed:\n{run.output}")
    manifest = manifest_of(last_line(out), fmt, public)
    count = int(manifest["count"]) if manifest else 0
    return Export(fmt, "cli", count, count == expected, run.wall, out.stat().st_size, run.peak_mb)


def worker_hwm(pid: int) -> float | None:
    """Peak resident memory of a process so far (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def export_http(
    db_url: str, keys: Keys, work: Path, public: Any, expected: int, timeout: float
) -> tuple[Export, float | None]:
    """``GET /audit/export`` (NDJSON) from one gunicorn worker, read to the end; (result, the worker's peak
    RSS before the request)."""
    from fhir_api.auth.keys import generate_signing_key_file

    port = free_port()
    signing = work / "export-signing.jwk"
    generate_signing_key_file(signing)
    env = app_env(db_url, keys, signing, port)
    argv = [str(fhir_api_bin()), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    srv = Server("export-http", argv, env, port, work)
    try:
        srv.start()
        srv.wait_ready(1)
        token = auditor_minter(signing, f"http://127.0.0.1:{port}")()
        worker = srv.workers()[0]
        before = worker_hwm(worker)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        size, tail, note, complete = 0, b"", "", True
        t0 = time.monotonic()
        try:
            conn.request("GET", "/audit/export?format=ndjson", headers={"Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"GET /audit/export answered {resp.status}: {resp.read()[:300]!r}")
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                size += len(chunk)
                tail = (tail + chunk)[-65536:]
        except (OSError, http.client.HTTPException) as exc:
            complete, note = False, f"stream broke after {size:,} bytes: {type(exc).__name__}: {exc}"
        finally:
            conn.close()
        wall = time.monotonic() - t0
        peak = worker_hwm(worker)
        if worker not in srv.workers():
            complete = False
            note += (
                " (the worker is gone: "
                + " | ".join(
                    line for line in srv.log_tail(40).splitlines() if "TIMEOUT" in line or "Error" in line
                )[:300]
                + ")"
            )
        manifest = manifest_of(tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1], "ndjson", public)
        count = int(manifest["count"]) if manifest else 0
        if manifest is None:
            complete = False
            note = note or "no valid manifest at the end of the stream"
        result = Export("ndjson", "http", count, count == expected, wall, size, peak, complete, note)
        return result, before
    finally:
        srv.stop()


@dataclass
class Size:
    """What was measured on the log at one size."""

    events: int  # chained events when measured
    verify: Run
    verify_count: int | None
    exports: list[Export] = field(default_factory=list)
    http_before_mb: float | None = None
    export_check: Run | None = None

    @property
    def verify_rate(self) -> float:
        return (self.verify_count or 0) / self.verify.wall if self.verify.wall else 0.0

    def export(self, fmt: str, how: str) -> Export | None:
        return next((e for e in self.exports if e.fmt == fmt and e.how == how), None)


def chain_now(db_url: str, key: Any) -> tuple[int, float]:
    """Chain every finished event now, in this process: (events chained, seconds)."""
    from audit.chain import catch_up

    engine = create_engine(db_url)
    try:
        t0 = time.monotonic()
        chained = catch_up(engine, key=key, every=0)
        return chained, time.monotonic() - t0
    finally:
        engine.dispose()


def measure_size(
    args: argparse.Namespace,
    db_url: str,
    env: dict[str, str],
    keys: Keys,
    work: Path,
    key: Any,
    small: bool,
) -> Size:
    from audit import signing

    public = signing.public_key(key.as_dict(private=False))
    events = count_rows(db_url, "audit_chain")
    print(f"  log of {events:,} chained events:", flush=True)
    run = run_cli(env, "audit", "verify", "--no-chain")
    counted = verified_count(run.output)
    size = Size(events, run, counted)
    print(
        f"    fhir-api audit verify --no-chain: {run.wall:.1f} s = {size.verify_rate:,.0f} events/s, "
        f"peak RSS {run.peak_mb or 0:.0f} MB: {run.output.strip().splitlines()[-1]}",
        flush=True,
    )
    for fmt in ("ndjson", "csv"):
        out = work / f"export-{events}.{fmt}"
        expected = count_rows(db_url, "audit_event")  # the export first chains what is pending (the
        # previous export's own event); the event it records itself comes after its manifest
        exp = export_cli(env, fmt, out, public, expected)
        size.exports.append(exp)
        print(
            f"    fhir-api audit export --format {fmt}: {exp.wall:.1f} s = {exp.rate:,.0f} events/s, "
            f"{exp.bytes / 2**20:,.0f} MiB, peak RSS {exp.peak_mb or 0:.0f} MB; manifest "
            f"{'holds' if exp.manifest_ok else 'WRONG'} ({exp.events:,} events)",
            flush=True,
        )
        if small and fmt == "ndjson":
            size.export_check = run_cli(env, "audit", "verify", "--export", str(out))
            print(
                f"    fhir-api audit verify --export on it: {size.export_check.wall:.1f} s: "
                f"{size.export_check.output.strip().splitlines()[-1]}",
                flush=True,
            )
        out.unlink(missing_ok=True)
    if not args.no_http_export:
        chain_now(db_url, key)  # the server exports what is chained when the request comes
        expected = count_rows(db_url, "audit_event")
        exp, before = export_http(db_url, keys, work, public, expected, timeout=args.http_timeout)
        size.exports.append(exp)
        size.http_before_mb = before
        print(
            f"    GET /audit/export (ndjson, 1 worker): {exp.wall:.1f} s = {exp.rate:,.0f} events/s, "
            f"{exp.bytes / 2**20:,.0f} MiB, worker peak RSS {before or 0:.0f} -> {exp.peak_mb or 0:.0f} MB; "
            + ("complete, manifest holds" if exp.complete and exp.manifest_ok else f"INCOMPLETE {exp.note}"),
            flush=True,
        )
    return size


@dataclass
class LogReport:
    templates: int
    statuses: dict[str, int]
    build: Build
    sizes: list[Size]


def measure_log(args: argparse.Namespace, work: Path, keys: Keys) -> LogReport:
    from audit import signing

    key = signing.load_key(keys.audit)
    with bench_database(args.database_url, DB_PREFIX) as db_url:
        env = app_env(db_url, keys, work / "log-signing.jwk", 0)
        from fhir_api.auth.keys import generate_signing_key_file

        generate_signing_key_file(work / "log-signing.jwk")
        upgrade(fhir_api_bin(), env)
        t0 = time.monotonic()
        statuses = record_templates(db_url, keys, work, args.templates)
        templates = load_templates(db_url)
        print(
            f"  recorded {len(templates):,} real events through the app in {time.monotonic() - t0:.1f} s "
            f"(responses: {', '.join(f'{k} x{v}' for k, v in sorted(statuses.items()))})"
        )
        lengths = sorted(len("".join(t.parts)) for t in templates)
        print(
            f"  their canonical JSON: {lengths[0]:,}-{lengths[-1]:,} characters (median "
            f"{lengths[len(lengths) // 2]:,}) besides id, time and request id; "
            f"{sum(len(t.links) for t in templates) / len(templates):.1f} link rows per event"
        )
        build = Build()
        start = datetime.now(UTC) - timedelta(milliseconds=TIME_STEP_MS * args.events)
        sizes = []
        for total, small in ((args.small_events, True), (args.events, False)):
            print(f"\n  growing the log to {total:,} events:", flush=True)
            grow_log(db_url, templates, build, total, key, start)
            sizes.append(measure_size(args, db_url, env, keys, work, key, small))
    return LogReport(len(templates), statuses, build, sizes)


# --------------------------------------------------------------------------------------------- summary


def summary(reads: list[Reads], log: LogReport | None, quick: bool) -> bool:
    rows: list[tuple[str, str, str]] = []
    for r in reads:
        for c in r.clients:
            on, off = r.results[(c, "audited")], r.results[(c, "unaudited")]
            rows.append(
                (
                    f"{r.backend} read x{c}: audited / unaudited req/s >= {READ_TARGET}",
                    f"{on.rps:,.0f} / {off.rps:,.0f} = {r.ratio(c):.3f}",
                    "PASS" if r.ok(c) else "FAIL",
                )
            )
        rows.append(
            (
                f"{r.backend}: one event per audited read, none unaudited",
                f"{r.recorded['audited']:,}/{r.requests['audited']:,} | {r.recorded['unaudited']:,}",
                "PASS" if r.recording_ok() else "FAIL",
            )
        )
        rows.append(
            (
                f"{r.backend}: the log the load wrote verifies",
                f"{verified_count(r.live_verify.output) if r.live_verify else 0:,} of {r.live_events:,}",
                "PASS" if r.live_ok() else "FAIL",
            )
        )
    if log is not None and len(log.sizes) == 2:
        small, big = log.sizes
        verdict = "PASS" if big.verify_rate >= VERIFY_TARGET else "FAIL"
        if quick:
            verdict = "n/a"  # a smoke run's log is too small: the command's start-up is most of its time
        if big.verify.returncode != 0 or big.verify_count != big.events:
            verdict = "FAIL"
        rows.append(
            (
                f"audit verify, {big.events:,} events: events/s >= {VERIFY_TARGET:,.0f}",
                f"{big.verify_rate:,.0f}/s ({big.verify.wall:.1f} s)",
                verdict,
            )
        )
        for fmt, how in (("ndjson", "cli"), ("csv", "cli"), ("ndjson", "http")):
            a, b = small.export(fmt, how), big.export(fmt, how)
            if a is None or b is None:
                continue
            label = f"audit export --format {fmt}" if how == "cli" else "GET /audit/export (ndjson)"
            rows.append(
                (
                    f"{label}: {b.events:,} events, complete, manifest holds",
                    f"{b.rate:,.0f} events/s ({b.wall:.1f} s)",
                    "PASS" if b.complete and b.manifest_ok and a.complete and a.manifest_ok else "FAIL",
                )
            )
            if a.peak_mb and b.peak_mb:
                ratio = b.peak_mb / a.peak_mb
                rows.append(
                    (
                        f"  peak RSS {b.events:,} / {a.events:,} events <= {FLAT_TARGET}",
                        f"{b.peak_mb:.0f} / {a.peak_mb:.0f} MB = {ratio:.2f}",
                        "PASS" if ratio <= FLAT_TARGET else "FAIL",
                    )
                )
        check = small.export_check
        rows.append(
            (
                f"audit verify --export of the {small.events:,}-event NDJSON file",
                (check.output.strip().splitlines()[-1][:30] if check else "not run"),
                "PASS" if check is not None and check.returncode == 0 else "FAIL",
            )
        )
    print("\nSUMMARY")
    width = max((len(r[0]) for r in rows), default=40)
    print(f"{'target':<{width}}  {'measured':<32}result")
    print("-" * (width + 40))
    for name, measured, result in rows:
        print(f"{name:<{width}}  {measured:<32}{result}")
    if quick:
        print("(quick run: rates are not judged on so small a log; the read ratio still is)")
    return all(r[2] != "FAIL" for r in rows)


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own databases there",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 20,000 events, 2 s rounds")
    p.add_argument("--events", type=int, default=None, help="events in the full log (default 1,000,000)")
    p.add_argument(
        "--small-events", type=int, default=None, help="events at the first measurement (default 100,000)"
    )
    p.add_argument("--templates", type=int, default=None, help="real events recorded through the app (1,000)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per read measurement (default 5)")
    p.add_argument("--rounds", type=int, default=None, help="read measurements per cell, best counts (2)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of read warm-up per server (2)")
    p.add_argument("--seed-rows", type=int, default=None, help="Patients created before the reads (1,000)")
    p.add_argument("--clients", default="1,8", help="read connections, comma-separated (default 1,8)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of the read servers (4)")
    p.add_argument("--sqlite", action="store_true", help="also measure reads on a SQLite file")
    p.add_argument(
        "--flush-reads",
        action="store_true",
        help="servers with FHIR_AUDIT_FLUSH_READS=true: each read's record waits for the WAL flush",
    )
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto", help="read load")
    p.add_argument(
        "--breakdown",
        choices=("auto", "always", "never"),
        default="auto",
        help="time an audited read's record in-process (auto: when a PostgreSQL read ratio fails)",
    )
    p.add_argument("--skip-reads", action="store_true", help="only the log part")
    p.add_argument("--skip-log", action="store_true", help="only the read part")
    p.add_argument("--no-http-export", action="store_true", help="no GET /audit/export measurement")
    p.add_argument("--http-timeout", type=float, default=600.0, help="client timeout of GET /audit/export")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 < args.small_events < args.events or args.templates >= args.small_events:
        p.error("need --templates < --small-events < --events")
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # finally blocks stop servers, drop databases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    if args.loader == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    load = run_wrk if use_wrk else run_python
    with psycopg.connect(_conninfo(args.database_url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(
        f"PostgreSQL {version}; {os.cpu_count()} cpus; load generator "
        f"{'wrk' if use_wrk else 'python thread pool (wrk not found)'}; "
        f"{'quick run' if args.quick else 'full run'}: reads best of {args.rounds} x {args.seconds:g} s, "
        f"log of {args.small_events:,} then {args.events:,} events; peak RSS by "
        f"{'/usr/bin/time -v' if Path('/usr/bin/time').exists() else 'RUSAGE_CHILDREN'}"
    )
    started = time.monotonic()
    reads: list[Reads] = []
    log: LogReport | None = None
    with tempfile.TemporaryDirectory(prefix="fhir-bench-audit-") as tmp:
        work = Path(tmp)
        keys = Keys.create(work)
        if not args.skip_reads:
            for backend in ("postgresql", "sqlite") if args.sqlite else ("postgresql",):
                print(f"\n1. read throughput on {backend}, FHIR_AUDIT=true vs false (one database)")
                t0 = time.monotonic()
                r = measure_reads(args, work, keys, backend, load)
                print_reads(r)
                print(f"  ({time.monotonic() - t0:.0f} s)")
                reads.append(r)
            failed = any(not r.ok(c) for r in reads if r.backend == "postgresql" for c in r.clients)
            if args.breakdown == "always" or (args.breakdown == "auto" and failed):
                print("\n1b. where an audited read's time goes (PostgreSQL, in-process)")
                t0 = time.monotonic()
                print_breakdown(read_breakdown(args, work, keys))
                print(f"  ({time.monotonic() - t0:.0f} s)")
        if not args.skip_log:
            print(f"\n2. a log of {args.events:,} events: verify and export")
            t0 = time.monotonic()
            log = measure_log(args, work, keys)
            b = log.build
            print(
                f"\n  built: {b.events + log.templates:,} events ({b.link_rows:,} link rows) by COPY in "
                f"{b.copy_seconds:.0f} s, chained in {b.chain_seconds:.0f} s, VACUUM ANALYZE + CHECKPOINT "
                f"{b.vacuum_seconds:.0f} s; part 2 took {time.monotonic() - t0:.0f} s"
            )
    ok = summary(reads, log, args.quick)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and databases dropped", file=sys.stderr)
        sys.exit(130)
