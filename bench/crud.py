"""Create and read throughput of the FHIR API on PostgreSQL, as ratios to a floor measured in the same run.

The app runs under gunicorn (``fhir-api serve``) on a database this script creates and drops; the floor
(``bench/floor_app.py``) is a minimal Flask app doing the same primary-key read and the same one-row insert
with the same driver, pool settings and gunicorn settings. Both are loaded with wrk (or, without wrk, a
Python thread-pool client) at 1 and 8 concurrent clients. At the end the resident memory of each app
worker is read from /proc after at least 10,000 requests. For information (no target), the floor's read is
also measured with the audit rows every read of the app must commit (``GET /arow/<id>``: one event row and
one link row, indexed like ``audit_event`` and ``audit_link``, committed without the WAL flush in the read's
own round trip): the ceiling of any server on this stack that records every read.

    .venv/bin/python bench/crud.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
FHIR_JSON = "application/fhir+json"
JSON = "application/json"

TARGETS = {"read": 0.6, "create": 0.4}
RSS_TARGET_MB = 150.0
RSS_AFTER_REQUESTS = 10_000
AUDITED_FLOOR = "floor+audit"

# A typical small Patient (about 0.7 kB, under the 1 kB gzip threshold; wrk asks for no gzip anyway).
PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "identifier": [
        {
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
        }
    ],
    "active": True,
    "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
    "telecom": [
        {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
        {"system": "email", "value": "peter.chalmers@example.org", "use": "home"},
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [
        {
            "use": "home",
            "type": "both",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "district": "Rainbow",
            "state": "Vic",
            "postalCode": "3999",
            "period": {"start": "1974-12-25"},
        }
    ],
    "maritalStatus": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
    },
    "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-AU"}]}}],
}


# --------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """One server under test and how its two interactions are addressed."""

    name: str
    port: int
    create_path: str
    read_prefix: str
    media_type: str
    ids_file: Path = field(default=Path())
    token: Any = None  # () -> a fresh access token, for the app (every FHIR data request needs one)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"} if self.token else {}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A gunicorn master started in its own process group, so that it and its workers can be ended by id."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log_dir: Path) -> None:
        self.name, self.argv, self.env, self.port = name, argv, env, port
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_workers: list[int] = []

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, workers: int, timeout: float = 60.0) -> None:
        """Until /healthz answers and every worker has booted (bounded by ``timeout``)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = http_request(self.port, "GET", "/healthz", timeout=2)
                if status == 200 and len(self.workers()) >= workers:
                    self.start_workers = self.workers()
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        assert self.proc is not None
        return child_pids(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM to the master (graceful), then SIGKILL to whatever is left of its process group."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the master leads its own group
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for _ in range(50):  # workers normally exit with the master; make sure of it
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(p) for p in text.split())
    except OSError:
        pass
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


# --------------------------------------------------------------------------------------------- database


@contextlib.contextmanager
def bench_database(server_url: str, prefix: str = "fhir_bench") -> Iterator[str]:
    """A fresh database ``<prefix>_<random>``, dropped at the end; only ever the one created here."""
    server = make_url(server_url)
    if server.get_backend_name() != "postgresql":
        raise SystemExit("--database-url must be a PostgreSQL URL")
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        print(f"dropped database {name}")


# --------------------------------------------------------------------------------------------- HTTP


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def seed(target: Target, body: bytes, count: int, work_dir: Path) -> Target:
    """Create ``count`` rows through the server's own create endpoint; their ids feed the read load."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    headers = {"Content-Type": target.media_type, "Accept": target.media_type, **target.auth()}
    ids = []
    try:
        for _ in range(count):
            conn.request("POST", target.create_path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            location = resp.getheader("Location") or ""
            if resp.status != 201 or not location:
                raise RuntimeError(f"{target.name}: create answered {resp.status} (Location {location!r})")
            tail = location.split(target.read_prefix, 1)[-1]
            ids.append(tail.split("/", 1)[0])
    finally:
        conn.close()
    ids_file = work_dir / f"{target.name}-ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    status, _, _ = http_request(
        target.port, "GET", target.read_prefix + ids[0], headers={"Accept": target.media_type, **headers}
    )
    if status != 200:
        raise RuntimeError(f"{target.name}: reading a row just created answered {status}")
    return Target(
        target.name,
        target.port,
        target.create_path,
        target.read_prefix,
        target.media_type,
        ids_file,
        target.token,
    )


# --------------------------------------------------------------------------------------------- load


def run_wrk(target: Target, kind: str, clients: int, seconds: float, body_file: Path) -> LoadResult:
    if kind == "read":
        lua_args = ["read", target.read_prefix, str(target.ids_file), target.media_type]
    else:
        lua_args = ["create", target.create_path, str(body_file), target.media_type]
    lua_args += [target.auth().get("Authorization", "")]
    argv = [
        "wrk", "-t", "1", "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(HERE / "wrk_load.lua"), target.base, "--", *lua_args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^BENCH_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(match.group(1))
    return LoadResult(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        errors=r["status_errors"] + r["socket_errors"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
    )


def run_python(target: Target, kind: str, clients: int, seconds: float, body_file: Path) -> LoadResult:
    """Fallback load: one keep-alive connection per thread, bounded by time and by a request cap."""
    ids = target.ids_file.read_text().split()
    body = body_file.read_bytes()
    headers = {"Accept": target.media_type, **target.auth()}
    if kind == "create":
        headers["Content-Type"] = target.media_type
    max_per_client = 200_000
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start_gate = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        mine, i = latencies[n], n * 7919
        start_gate.wait()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and len(mine) < max_per_client:
                t0 = time.perf_counter()
                try:
                    if kind == "read":
                        i += 1
                        conn.request("GET", target.read_prefix + ids[i % len(ids)], headers=headers)
                    else:
                        conn.request("POST", target.create_path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status >= 400:
                        errors[n] += 1
                except (OSError, http.client.HTTPException):
                    errors[n] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
                mine.append(time.perf_counter() - t0)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout=seconds + 30)
    elapsed = time.monotonic() - t0
    every = sorted(x for lat in latencies for x in lat)

    def pct(p: float) -> float | None:
        return every[min(len(every) - 1, int(len(every) * p))] * 1000 if every else None

    return LoadResult(len(every), elapsed, sum(errors), pct(0.5), pct(0.99))


# --------------------------------------------------------------------------------------------- report


def best_of(runs: list[LoadResult]) -> LoadResult:
    best = max(runs, key=lambda r: r.rps)
    return LoadResult(best.requests, best.seconds, sum(r.errors for r in runs), best.p50_ms, best.p99_ms)


def print_table(results: dict[tuple[str, int, str], LoadResult], clients_list: list[int]) -> bool:
    head = f"{'interaction':<12}{'clients':>8}{'app req/s':>12}{'floor req/s':>13}"
    head += f"{'ratio':>8}{'target':>9}  result"
    print(head)
    print("-" * len(head))
    ok = True
    notes = []
    for kind in ("read", "create"):
        for clients in clients_list:
            app, floor = results[(kind, clients, "app")], results[(kind, clients, "floor")]
            ratio = app.rps / floor.rps if floor.rps else 0.0
            passed = ratio >= TARGETS[kind] and app.errors == 0 and floor.errors == 0
            ok &= passed
            print(
                f"{kind:<12}{clients:>8}{app.rps:>12,.0f}{floor.rps:>13,.0f}{ratio:>8.2f}"
                f"{'>= ' + format(TARGETS[kind], '.1f'):>9}  {'PASS' if passed else 'FAIL'}"
            )
            for name, r in (("app", app), ("floor", floor)):
                if r.errors:
                    notes.append(
                        f"  {kind} x{clients}: {name} had {r.errors} failed requests of {r.requests}"
                    )
    print("\nlatency p50 / p99 in ms (app | floor):")
    for kind in ("read", "create"):
        for clients in clients_list:
            app, floor = results[(kind, clients, "app")], results[(kind, clients, "floor")]
            print(f"  {kind:<7} x{clients:<2} {_ms(app)} | {_ms(floor)}")
    for note in notes:
        print(note)
    return ok


def print_audited_floor(results: dict[tuple[str, int, str], LoadResult], clients_list: list[int]) -> None:
    """What the read target leaves once every read commits an audit record (informative, no target)."""
    print(
        "\ninformative: the floor's read plus one audit event row and one link row (indexed as the app's,\n"
        "committed without the WAL flush in the read's transaction, one round trip): what any server that\n"
        "records every read can reach on this stack"
    )
    for clients in clients_list:
        floor, audited = results[("read", clients, "floor")], results[("read", clients, AUDITED_FLOOR)]
        app = results[("read", clients, "app")]
        print(
            f"  read x{clients:<2} audited floor {audited.rps:7,.0f} req/s = {audited.rps / floor.rps:.2f} "
            f"of the floor; the app's read = {app.rps / audited.rps:.2f} of the audited floor"
            + (f" ({audited.errors} failed)" if audited.errors else "")
        )


def _ms(r: LoadResult) -> str:
    if r.p50_ms is None or r.p99_ms is None:
        return "n/a"
    return f"{r.p50_ms:6.2f} / {r.p99_ms:6.2f}"


# --------------------------------------------------------------------------------------------- main


def token_minter(key_file: Path, public_url: str) -> Any:
    """A fresh system/*.* token per load run, signed with the key the app serves with (tokens live 300 s,
    the whole benchmark longer). The app verifies it exactly as one from its token endpoint."""
    from fhir_api import create_app
    from fhir_api.auth import tokens
    from fhir_api.auth.keys import generate_signing_key_file

    generate_signing_key_file(key_file)
    app = create_app({"AUTH_SIGNING_KEY_FILE": str(key_file), "PUBLIC_URL": public_url})
    cache: dict[str, Any] = {"token": "", "at": float("-inf")}

    def token() -> str:
        if time.monotonic() - cache["at"] > 60:
            with app.test_request_context():
                cache["token"], _ = tokens.issue(
                    client_id="bench", role="clinical-system", scope="system/*.*"
                )
            cache["at"] = time.monotonic()
        return cache["token"]

    return token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own database there",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="measurements per cell; the best counts (default 2)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server and interaction")
    p.add_argument("--workers", type=int, default=4, help="gunicorn sync workers for both servers")
    p.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated (default 1,8)")
    p.add_argument("--seed-rows", type=int, default=500, help="rows created before the read load")
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--check", action="store_true", help="exit 1 when any target is missed")
    p.add_argument(
        "--no-search-index",
        action="store_true",
        help="run the app with FHIR_SEARCH_INDEXING=false, to separate the REST core from index writes",
    )
    return p.parse_args(argv)


def _raise_on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that the finally blocks stop the servers and drop the database


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    if args.loader == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    load = run_wrk if use_wrk else run_python
    fhir_api_bin = (
        BIN / "fhir-api" if (BIN / "fhir-api").exists() else Path(shutil.which("fhir-api") or "fhir-api")
    )

    print(
        f"load generator: {'wrk' if use_wrk else 'python thread pool (wrk not found)'}; "
        f"{args.workers} sync workers per server; best of {args.rounds} x {args.duration:g} s per cell; "
        f"{os.cpu_count()} cpus"
    )

    servers: list[Server] = []
    from audit.signing import generate_key_file as generate_audit_key
    from crypto.kms import generate_key_file

    with (
        tempfile.TemporaryDirectory(prefix="fhir-bench-") as tmp,
        bench_database(args.database_url) as db_url,
    ):
        work = Path(tmp)
        shown = make_url(db_url).render_as_string(hide_password=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
        env["FHIR_DATABASE_URL"] = db_url
        subprocess.run([str(fhir_api_bin), "db", "upgrade"], env=env, cwd=ROOT, check=True)
        app_env = {**env, "FHIR_SEARCH_INDEXING": "false"} if args.no_search_index else env
        try:
            app_port, floor_port = free_port(), free_port()
            app_argv = [str(fhir_api_bin), "serve", "--host", "127.0.0.1", "--port", str(app_port)]
            key_file = work / "signing.jwk"
            keyring = work / "keyring.json"  # protected elements sealed, as in production
            generate_key_file(keyring)
            audit_key = work / "audit-signing.jwk"  # every read and write audited, as in production
            generate_audit_key(audit_key)
            app_env = {
                **app_env,
                "FHIR_AUTH_SIGNING_KEY_FILE": str(key_file),
                "FHIR_CRYPTO_KEY_FILE": str(keyring),
                "FHIR_AUDIT_SIGNING_KEY_FILE": str(audit_key),
                "FHIR_PUBLIC_URL": f"http://127.0.0.1:{app_port}",
                "FHIR_RATE_LIMIT_ENABLED": "false",  # one bench client: per-client limits are not measured
            }
            token = token_minter(key_file, f"http://127.0.0.1:{app_port}")
            app_srv = Server("app", [*app_argv, "--workers", str(args.workers)], app_env, app_port, work)
            floor_argv = [sys.executable, str(HERE / "floor_app.py"), "--database-url", db_url]
            floor_argv += ["--bind", f"127.0.0.1:{floor_port}", "--workers", str(args.workers)]
            floor_srv = Server("floor", floor_argv, env, floor_port, work)
            servers = [app_srv, floor_srv]
            for srv in servers:
                srv.start()
            for srv in servers:
                srv.wait_ready(args.workers)
            print(f"database {shown}; app on :{app_port}, floor on :{floor_port}")
            baseline = {pid: rss_mb(pid) for pid in app_srv.workers()}

            body_file = work / "patient.json"
            body = json.dumps(PATIENT, separators=(",", ":")).encode()
            body_file.write_bytes(body)
            app_t = seed(
                Target("app", app_port, "/fhir/R4/Patient", "/fhir/R4/Patient/", FHIR_JSON, token=token),
                body,
                args.seed_rows,
                work,
            )
            floor_t = seed(Target("floor", floor_port, "/row", "/row/", JSON), body, args.seed_rows, work)
            # informative: the floor's read plus the audit rows an audited read commits (floor_app.py)
            audited_t = Target(AUDITED_FLOOR, floor_port, "/row", "/arow/", JSON, floor_t.ids_file)
            app_requests = args.seed_rows + 1

            for t in (app_t, floor_t):  # warm-up: imports, model caches, pool connections, statement caches
                for kind in ("read", "create"):
                    r = load(t, kind, max(clients_list), args.warmup, body_file)
                    app_requests += r.requests if t is app_t else 0
            load(audited_t, "read", max(clients_list), args.warmup, body_file)

            # Rounds alternate which server goes first; each cell keeps its best round, because on a shared
            # 2-core machine interference only ever lowers a figure. Failed requests of every round count.
            runs: dict[tuple[str, int, str], list[LoadResult]] = {}
            for rnd in range(1, args.rounds + 1):
                for kind in ("read", "create"):
                    for clients in clients_list:
                        order = [app_t, floor_t] + ([audited_t] if kind == "read" else [])
                        for t in order if rnd % 2 else order[::-1]:
                            r = load(t, kind, clients, args.duration, body_file)
                            runs.setdefault((kind, clients, t.name), []).append(r)
                            app_requests += r.requests if t is app_t else 0
                            print(
                                f"  round {rnd}  {kind:<6} x{clients:<2} {t.name:<11} {r.rps:9,.0f} req/s "
                                f"({r.requests} requests, {r.errors} failed)",
                                flush=True,
                            )
            results = {key: best_of(rs) for key, rs in runs.items()}

            for _ in range(10):  # top up to the request count the memory target is stated for (bounded)
                if app_requests >= RSS_AFTER_REQUESTS:
                    break
                app_requests += load(app_t, "read", max(clients_list), 5, body_file).requests

            print()
            ok = print_table(results, clients_list)
            print_audited_floor(results, clients_list)
            ok &= report_memory(app_srv, floor_srv, baseline, app_requests)
        finally:
            for srv in servers:
                srv.stop()
    leftovers = [pid for srv in servers for pid in srv.start_workers if Path(f"/proc/{pid}").exists()]
    if leftovers:
        print(f"warning: worker processes still present: {leftovers}")
    return 1 if (args.check and not ok) else 0


def report_memory(
    app_srv: Server, floor_srv: Server, baseline: dict[int, float | None], requests: int
) -> bool:
    workers = app_srv.workers()
    rss = {pid: rss_mb(pid) for pid in workers}
    sizes = [v for v in rss.values() if v is not None]
    if not sizes:
        print("\nworker memory: could not read /proc")
        return False
    worst = max(sizes)
    passed = worst < RSS_TARGET_MB and requests >= RSS_AFTER_REQUESTS
    print(
        f"\napp worker RSS after {requests:,} app requests: max {worst:.1f} MB "
        f"(target < {RSS_TARGET_MB:.0f} MB)  {'PASS' if passed else 'FAIL'}"
    )
    print(
        "  per worker, start -> now: "
        + ", ".join(
            f"{pid}: {baseline[pid]:.1f} -> {rss[pid]:.1f}"
            if baseline.get(pid) and rss[pid]
            else f"{pid}: {rss[pid]}"
            for pid in workers
        )
    )
    recycled = set(workers) - set(baseline)
    if recycled:
        print(f"  note: {len(recycled)} worker(s) were restarted during the run (gunicorn max_requests)")
    floor_sizes = [v for v in (rss_mb(p) for p in floor_srv.workers()) if v is not None]
    if floor_sizes:
        print(f"  floor worker RSS max {max(floor_sizes):.1f} MB, for comparison")
    return passed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and database dropped", file=sys.stderr)
        sys.exit(130)
