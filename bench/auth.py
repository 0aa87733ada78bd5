"""The price of SMART authorization: reads with token checks on vs off, and the token endpoint's rate.

1. Reads: two ``fhir-api serve`` servers on one PostgreSQL database this script creates and drops, with the
   same environment except that one runs with ``FHIR_AUTH_ENFORCE=false`` (a benchmark-only switch: every
   FHIR request is granted ``system/*.*`` without looking at a token). Both get the same
   ``GET /fhir/R4/Patient/<id>`` requests with the same ``Authorization`` header; only the enforcing server
   verifies the token (signature, issuer, audience, lifetime, revocation) and enforces its scopes. Cases:
   one token reused by every request (verified once per worker, then cached, as a client reusing its token
   for its five minutes), a fresh token per request (a pool of pre-minted tokens, each sent once, so every
   request pays the signature check and the scope parsing), and a reused token with a v2 query-constrained
   scope (its constraint is one more SQL condition per read). Target: enforcing / not enforcing req/s
   >= 0.9 for the reused token; the other cases are informative. Then, in this process, the checks alone
   are timed (``price_checks``) and set against the CPU a read costs, a figure that a busy machine
   disturbs far less than req/s.
2. Token endpoint: two backend-services clients (``fhir-api clients add --role clinical-system
   --jwks-file``, an ES384 and an RS384 key) POST pre-signed client assertions (each jti once, exp five
   minutes at most, signed before the timed phase) to ``/auth/token`` (client_credentials, private_key_jwt),
   compared with ``bench/floor_app.py``'s one-row insert (``POST /row``): each token request inserts its
   jti and an audit event. Every answer must be 200.

Load from wrk (``bench/wrk_auth.lua``) or, without wrk, a Python thread-pool client; best of ``--rounds``
per cell, alternating which server goes first; CPU per request from /proc (``NOISY`` when other work on the
machine took more than 0.25 cores). Rate limiting is off (``FHIR_RATE_LIMIT_ENABLED=false``).

    .venv/bin/python bench/auth.py [--duration 10] [--rounds 2] [--clients 1,8] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from crud import (
    BIN,
    FHIR_JSON,
    HERE,
    JSON,
    PATIENT,
    ROOT,
    Server,
    Target,
    bench_database,
    free_port,
    http_request,
    seed,
)
from sqlalchemy.engine import make_url

READ_TARGET = 0.9  # enforcing / not enforcing req/s, reused token (the issue's target)
NOISY = 0.25  # cores taken by other work on the machine above which a measurement is flagged
MAX_DURATION = 200.0  # tokens and client assertions live at most 300 s; they are minted before each run
SCOPE = "system/Patient.rs system/Observation.rs"  # a realistic narrowed backend-services grant
SCOPE_V2 = "system/Patient.rs?gender=male system/Observation.rs"  # every seeded Patient is male
REGISTERED_SCOPE = "system/*.rs"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
ASSERTION_LIFETIME = 290  # seconds: exp of a client assertion, signed just before its run (server: <= 300)

CASES = {
    "reused": ("token reused", SCOPE, False),
    "fresh": ("fresh token per request", SCOPE, True),
    "v2": ("v2 query scope, reused", SCOPE_V2, False),
}
ALGS = ("ES384", "RS384")


# --------------------------------------------------------------------------------------------- CPU

_TICK = os.sysconf("SC_CLK_TCK")
_PG_SHARED = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical replication")


@dataclass
class Cpu:
    """CPU seconds (from /proc) spent during a measurement by the bench's servers and database, by this
    process and wrk, and by the whole machine."""

    servers: float = 0.0  # every server process group of the bench (only the loaded one works)
    postgres: float = 0.0  # PostgreSQL backends connected to the bench's database
    pg_shared: float = 0.0  # PostgreSQL's own processes (WAL writer, checkpointer, ...)
    client: float = 0.0  # this process and its reaped children (wrk)
    busy: float = 0.0  # all CPUs busy
    wall: float = 0.0

    @property
    def other(self) -> float:
        """Cores other work on the machine took meanwhile (competing with the bench for the CPUs)."""
        spent = self.busy - self.servers - self.postgres - self.pg_shared - self.client
        return max(0.0, spent) / self.wall if self.wall > 0 else 0.0


def _processes(pgids: set[int], database: str) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each process of interest, by pid: (group, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat.rsplit(")", 1)[1].split()
            seconds = (int(rest[11]) + int(rest[12])) / _TICK
            pid = int(entry.name)
            if pid == me:
                out[pid] = ("client", seconds + (int(rest[13]) + int(rest[14])) / _TICK)  # + reaped wrk
            elif int(rest[2]) in pgids:
                out[pid] = ("servers", seconds)
            elif comm == "postgres":
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if f" {database} " in title:
                    out[pid] = ("postgres", seconds)
                elif any(t in title for t in _PG_SHARED):
                    out[pid] = ("pg_shared", seconds)
    return out


def _busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


class CpuMeter:
    """CPU by group over a measurement. /proc is sampled every ``interval`` seconds meanwhile, so that a
    process that exits during it (a pooled connection's backend closed, a gunicorn worker recycled) keeps
    the CPU it had at its last sample instead of taking it out of the sum."""

    def __init__(self, pgids: set[int], database: str, interval: float = 0.5) -> None:
        self.pgids, self.database, self.interval = pgids, database, interval
        self._stop = threading.Event()
        self._first: dict[int, tuple[str, float]] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._thread: threading.Thread | None = None
        self._t0 = self._busy0 = 0.0

    def _sample(self) -> None:
        for pid, value in _processes(self.pgids, self.database).items():
            self._first.setdefault(pid, (value[0], 0.0))  # born during the measurement: all of it counts
            self._last[pid] = value

    def __enter__(self) -> CpuMeter:
        self._first = _processes(self.pgids, self.database)
        self._last = dict(self._first)
        self._t0, self._busy0 = time.monotonic(), _busy()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.result = Cpu(busy=_busy() - self._busy0, wall=time.monotonic() - self._t0)
        for pid, (group, seconds) in self._last.items():
            spent = max(0.0, seconds - self._first[pid][1])
            setattr(self.result, group, getattr(self.result, group) + spent)


# --------------------------------------------------------------------------------------------- results


@dataclass
class Run:
    """One measurement: responses counted, over how long, how many were not the expected answer."""

    requests: int
    seconds: float
    errors: int  # unexpected answers and socket errors
    p50_ms: float | None = None
    p99_ms: float | None = None
    sent: int = 0  # requests sent (of a once-only list: lines used)
    pool: int = 0  # lines available (tokens, assertions)
    exhausted: bool = False  # the once-only list ran out before the end
    cpu: Cpu | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> tuple[float, float] | None:
        """CPU ms per request: the bench's servers, and the database's backends."""
        if self.cpu is None or not self.requests:
            return None
        return self.cpu.servers * 1000 / self.requests, self.cpu.postgres * 1000 / self.requests


def best_of(runs: list[Run]) -> Run:
    """The best round counts (on a shared machine interference only lowers a figure); every failed request
    of every round still counts."""
    best = max(runs, key=lambda r: r.rps)
    return Run(
        best.requests, best.seconds, sum(r.errors for r in runs), best.p50_ms, best.p99_ms,
        best.sent, best.pool, any(r.exhausted for r in runs), best.cpu,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Load:
    """What one measurement sends: reads of ids with tokens, or POSTs of bodies; ``once``: no line twice."""

    mode: str  # "read" or "post"
    port: int
    path: str  # read: the path prefix; post: the path
    lines_file: Path  # read: tokens; post: bodies
    once: bool
    ids_file: Path | None = None  # read only
    content_type: str = ""  # post only
    accept: str = FHIR_JSON
    status: int = 200
    text: str = '"resourceType"'

    @property
    def pool(self) -> int:
        with open(self.lines_file, "rb") as f:
            return sum(1 for line in f if line.strip())


def run_wrk(load: Load, clients: int, seconds: float) -> Run:
    if load.mode == "read":
        assert load.ids_file is not None
        lua_args = ["read", load.path, str(load.ids_file), str(load.lines_file), load.accept]
        lua_args += ["1" if load.once else "0"]
    else:
        lua_args = ["post", load.path, str(load.lines_file), load.content_type, load.accept]
        lua_args += ["1" if load.once else "0", str(load.status), load.text]
    argv = [
        "wrk", "-t", "1", "-c", str(clients), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(HERE / "wrk_auth.lua"), f"http://127.0.0.1:{load.port}", "--", *lua_args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^BENCH_RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    r = json.loads(match.group(1))
    exhausted = bool(r["exhausted"])
    span = (r["last_us"] - r["first_us"]) / 1e6 if exhausted else r["duration_us"] / 1e6
    return Run(
        requests=r["counted"],
        seconds=span,
        errors=r["bad"] + r["socket_errors"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        sent=r["sent"],
        pool=load.pool,
        exhausted=exhausted,
    )


def run_python(load: Load, clients: int, seconds: float) -> Run:
    """Fallback load: one keep-alive connection per thread; a shared counter hands out the lines."""
    lines = [x for x in load.lines_file.read_text().splitlines() if x.strip()]
    ids = load.ids_file.read_text().split() if load.ids_file else []
    counter = itertools.count()  # next() on it is atomic under the GIL
    samples: list[list[tuple[float, bool]]] = [[] for _ in range(clients)]
    socket_errors = [0] * clients
    sent = [0] * clients
    gate = threading.Barrier(clients + 1)
    ends: list[float] = [0.0] * clients

    def request(k: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        if load.mode == "read":
            token = lines[k] if load.once else lines[0]
            headers = {"Accept": load.accept, "Authorization": f"Bearer {token}"}
            return "GET", load.path + ids[k % len(ids)], None, headers
        headers = {"Accept": load.accept, "Content-Type": load.content_type}
        return "POST", load.path, lines[k % len(lines)].encode(), headers

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", load.port, timeout=10)
        mine = samples[n]
        gate.wait()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                k = next(counter)
                if load.once and k >= len(lines):
                    break
                method, path, body, headers = request(k)
                sent[n] += 1
                t0 = time.perf_counter()
                try:
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    socket_errors[n] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", load.port, timeout=10)
                    continue
                good = resp.status == load.status and (not load.text or load.text.encode() in data)
                mine.append((time.perf_counter() - t0, not good))
                ends[n] = time.monotonic()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join(timeout=seconds + 30)
    elapsed = time.monotonic() - t0
    exhausted = load.once and sum(sent) >= len(lines)
    if exhausted:
        elapsed = max(ends) - t0
    every = sorted(s for mine in samples for s, _ in mine)

    def pct(p: float) -> float | None:
        return every[min(len(every) - 1, int(len(every) * p))] * 1000 if every else None

    bad = sum(1 for mine in samples for _, b in mine if b)
    return Run(
        len(every), elapsed, bad + sum(socket_errors), pct(0.5), pct(0.99), sum(sent), len(lines), exhausted
    )


# --------------------------------------------------------------------------------------------- tokens


class Minter:
    """Access tokens signed with the key the servers use, by the function their token endpoint uses
    (``fhir_api.auth.tokens.issue``), for the registered ES384 client; and an app on the bench's database
    for pricing the checks in-process."""

    def __init__(self, key_file: Path, public_url: str, database_url: str) -> None:
        from fhir_api import create_app

        overrides = {"AUTH_SIGNING_KEY_FILE": str(key_file), "PUBLIC_URL": public_url}
        self.app = create_app({**overrides, "DATABASE_URL": database_url, "AUDIT": False})
        self.client_id = "bench"

    def mint(self, scope: str, count: int = 1) -> list[str]:
        from fhir_api.auth import tokens

        with self.app.test_request_context():
            return [
                tokens.issue(client_id=self.client_id, role="clinical-system", scope=scope)[0]
                for _ in range(count)
            ]

    def write(self, path: Path, scope: str, count: int = 1) -> tuple[Path, float]:
        t0 = time.monotonic()
        toks = self.mint(scope, count)
        path.write_text("\n".join(toks) + "\n")
        return path, time.monotonic() - t0

    def close(self) -> None:
        from fhir_api import db

        db.dispose(self.app)  # closes its connections and stops its revocation listener


def price_checks(minter: Minter, ids: list[str], calls: int = 1000, repeats: int = 5) -> dict[str, float]:
    """Microseconds per request, in this process, of what an enforcing server does for a read that one
    with FHIR_AUTH_ENFORCE=false does not: the guard (``authenticate``: verify, revocation, network;
    ``access_for``; ``require``) with a reused token and with a fresh one each time, against the guard's
    work without enforcement; and, for the v2 query scope, ``Access.visible`` (the constraint built and its
    EXISTS query run). Each in a request context, as a request runs it; ``repeats`` rounds of ``calls``
    calls of each kind taking turns (so that a busy spell of the machine does not fall on one kind), the
    best round of each counting."""
    from fhir_api import db
    from fhir_api.auth import guard

    app = minter.app
    reused = minter.mint(SCOPE)[0]
    fresh = iter(minter.mint(SCOPE, calls * repeats))
    v2 = minter.mint(SCOPE_V2)[0]

    def guard_once(token: str | None, rid: str) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with app.test_request_context(f"/fhir/R4/Patient/{rid}", headers=headers):
            db.session()  # a request has its session anyway; the revocation check is handed it
            principal = guard.authenticate() if token else guard.BENCH_PRINCIPAL
            guard.access_for(principal).require("Patient", "r")

    def best(kinds: dict[str, Callable[[int], None]]) -> dict[str, float]:
        times: dict[str, list[float]] = {name: [] for name in kinds}
        for _ in range(repeats):
            for name, fn in kinds.items():
                t0 = time.perf_counter()
                for k in range(calls):
                    fn(k)
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
        return {name: min(t) for name, t in times.items()}

    watch = app.extensions.get("fhir_revocation")
    deadline = time.monotonic() + 10
    while True:  # warm up, and let the revocation listener go live (until then checks ask the table)
        for k in range(200):
            guard_once(reused, ids[k % len(ids)])
        if watch is None or watch.is_revoked("-") is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = best(
        {
            "off": lambda k: guard_once(None, ids[k % len(ids)]),
            "reused": lambda k: guard_once(reused, ids[k % len(ids)]),
            "fresh": lambda k: guard_once(next(fresh), ids[k % len(ids)]),
        }
    )
    with app.test_request_context(f"/fhir/R4/Patient/{ids[0]}", headers={"Authorization": f"Bearer {v2}"}):
        access = guard.access_for(guard.authenticate())
        session = db.session()
        for rid in ids[:50]:
            if not access.visible(session, "Patient", rid):
                raise RuntimeError(f"Patient/{rid} is not visible under {SCOPE_V2}")

        def visible(k: int) -> None:
            access.visible(session, "Patient", ids[k % len(ids)])

        out["v2 visible"] = best({"v2": visible})["v2"]
        session.rollback()
    return out


@dataclass
class BackendClient:
    """A registered backend-services client and its private key."""

    alg: str
    client_id: str
    key: Any

    def assertion(self, token_url: str) -> str:
        from joserfc import jwt

        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": self.alg, "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])

    def form(self, token_url: str, scope: str = SCOPE) -> str:
        return urlencode(
            {
                "grant_type": "client_credentials",
                "scope": scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(token_url),
            }
        )

    def write(self, path: Path, token_url: str, count: int) -> tuple[Path, float]:
        t0 = time.monotonic()
        path.write_text("".join(self.form(token_url) + "\n" for _ in range(count)))
        return path, time.monotonic() - t0


def register_clients(fhir_api: Path, env: dict[str, str], work: Path) -> dict[str, BackendClient]:
    """``fhir-api clients add`` for an ES384 and an RS384 client, each with its own key."""
    from joserfc.jwk import ECKey, RSAKey

    out = {}
    for alg in ALGS:
        key = ECKey.generate_key("P-384") if alg.startswith("ES") else RSAKey.generate_key(2048)
        key.ensure_kid()
        jwks = work / f"client-{alg}.jwks.json"
        jwks.write_text(json.dumps({"keys": [{**key.as_dict(private=False), "alg": alg}]}))
        done = subprocess.run(
            [str(fhir_api), "clients", "add", f"bench-{alg.lower()}", "--role", "clinical-system",
             "--jwks-file", str(jwks), "--scope", REGISTERED_SCOPE],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"fhir-api clients add failed:\n{done.stdout}{done.stderr}")
        out[alg] = BackendClient(alg, done.stdout.strip().splitlines()[-1].strip(), key)
    return out


# --------------------------------------------------------------------------------------------- probes


def probe(
    on: int, off: int, read_path: str, minter: Minter, clients: dict[str, BackendClient], token_url: str
) -> tuple[bool, list[str]]:
    """One request at a time: the token endpoint answers, enforcement is on where it should be and off
    where it should not, and a constrained scope is applied. Returns (all as expected, lines)."""
    lines: list[str] = []
    ok = True

    def check(label: str, status: int, expected: tuple[int, ...], note: str = "") -> None:
        nonlocal ok
        good = status in expected
        ok &= good
        shown = "/".join(str(e) for e in expected)
        lines.append(f"    {label:<66} {status} (expected {shown}){note}{'' if good else '  FAIL'}")

    def read(port: int, token: str | None) -> int:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return http_request(port, "GET", read_path, headers=headers, timeout=30)[0]

    for alg, client in clients.items():
        form = client.form(token_url)
        status, _, body = http_request(
            on, "POST", "/auth/token", form.encode(), {"Content-Type": FORM, "Accept": JSON}, timeout=30
        )
        note = ""
        token = None
        if status == 200:
            answer = json.loads(body)
            token = answer.get("access_token")
            note = f": scope {answer.get('scope')!r}, expires_in {answer.get('expires_in')}"
        check(f"POST /auth/token, {alg} client assertion", status, (200,), note)
        if token:
            check("  read with the token it issued (enforcing server)", read(on, token), (200,))
        again = http_request(
            on, "POST", "/auth/token", form.encode(), {"Content-Type": FORM, "Accept": JSON}, timeout=30
        )
        check("  the same assertion again (a replayed jti is refused)", again[0], (400, 401))
    check("read without a token, enforcing server", read(on, None), (401,))
    narrow = "system/Observation.rs"
    check(f"read with {narrow} only, enforcing server", read(on, minter.mint(narrow)[0]), (403,))
    check(f"read with {SCOPE_V2.split()[0]}, enforcing", read(on, minter.mint(SCOPE_V2)[0]), (200,))
    female = "system/Patient.rs?gender=female"
    check(f"read with {female} (a male Patient), enforcing", read(on, minter.mint(female)[0]), (404,))
    check("read without a token, FHIR_AUTH_ENFORCE=false", read(off, None), (200,))
    return ok, lines


# --------------------------------------------------------------------------------------------- report


def fmt(x: float | None) -> str:
    return f"{x:.2f}" if x is not None else "n/a"


def lat(r: Run) -> str:
    return f"{fmt(r.p50_ms):>6} / {fmt(r.p99_ms):>6}"


def cpu_line(r: Run) -> str:
    ms = r.cpu_ms
    if ms is None:
        return "n/a"
    return f"{ms[0]:5.2f} + {ms[1]:4.2f} = {sum(ms):5.2f}"


def print_reads(
    results: dict[tuple[str, int, str], Run],
    cases: list[str],
    levels: list[int],
    checks: dict[str, float],
    rounds: dict[tuple[str, int, str], list[Run]],
) -> bool:
    head = f"{'case':<26}{'scope':<52}{'clients':>8}{'on req/s':>10}{'off req/s':>11}{'ratio':>7}"
    head += f"{'target':>9}  result"
    print(head)
    print("-" * len(head))
    ok = True
    for case in cases:
        label, scope, _ = CASES[case]
        for c in levels:
            on, off = results[(case, c, "on")], results[(case, c, "off")]
            ratio = on.rps / off.rps if off.rps else 0.0
            failed = on.errors + off.errors
            if case == "reused":
                passed = ratio >= READ_TARGET and not failed
                target, result = f">= {READ_TARGET}", "PASS" if passed else "FAIL"
                ok &= passed
            else:
                target, result = "info", "FAIL (errors)" if failed else "-"
                ok &= not failed
            print(
                f"{label:<26}{scope:<52}{c:>8}{on.rps:>10,.0f}{off.rps:>11,.0f}{ratio:>7.2f}"
                f"{target:>9}  {result}"
            )
    print("\non / off round by round (each round loads both servers back to back, in turns), and the median:")
    for case in cases:
        for c in levels:
            ratios = [
                on.rps / off.rps
                for on, off in zip(
                    rounds.get((case, c, "on"), []), rounds.get((case, c, "off"), []), strict=True
                )
                if off.rps
            ]
            if ratios:
                shown = " ".join(f"{x:.2f}" for x in ratios)
                print(f"  {CASES[case][0]:<26} x{c:<2} {shown}   median {statistics.median(ratios):.2f}")
    print("\nlatency p50 / p99 in ms (on | off):")
    for case in cases:
        for c in levels:
            on, off = results[(case, c, "on")], results[(case, c, "off")]
            print(f"  {CASES[case][0]:<26} x{c:<2} {lat(on)} | {lat(off)}")
    print(
        "\nCPU ms per read, best round: servers + PostgreSQL backends (on | off), on - off; "
        "cores of other work on the machine meanwhile (on | off):"
    )
    noisy = []
    for case in cases:
        for c in levels:
            on, off = results[(case, c, "on")], results[(case, c, "off")]
            extra = ""
            if on.cpu_ms and off.cpu_ms:
                extra = f"{sum(on.cpu_ms) - sum(off.cpu_ms):+6.2f}"
            other = (
                f"{on.cpu.other:.2f} | {off.cpu.other:.2f}"
                if on.cpu is not None and off.cpu is not None
                else "n/a"
            )
            print(
                f"  {CASES[case][0]:<26} x{c:<2} {cpu_line(on)} | {cpu_line(off)}  {extra}"
                f"   other work {other}"
            )
            noisy += [f"{CASES[case][0]} x{c} {n}" for n, r in (("on", on), ("off", off)) if _noisy(r)]
    for case in cases:
        for c in levels:
            for name in ("on", "off"):
                r = results[(case, c, name)]
                if r.errors:
                    print(f"  {CASES[case][0]} x{c} {name}: {r.errors} failed requests")
                if r.exhausted:
                    print(
                        f"  {CASES[case][0]} x{c} {name}: the token pool ({r.pool:,}) ran out in a round; "
                        "that round's rate is over the time until then"
                    )
    if noisy:
        print(
            f"  NOISY: other work took more than {NOISY} cores during the best round of {', '.join(noisy)}: "
            "req/s there are low and the ratio less sure; CPU per request holds better"
        )
    if checks:
        print_checks(results, cases, levels, checks)
    return ok


def print_checks(
    results: dict[tuple[str, int, str], Run], cases: list[str], levels: list[int], checks: dict[str, float]
) -> None:
    """The in-process price of the checks, and the ratio it implies against the CPU of a read."""
    base = checks["off"]
    extra = {
        "reused": checks["reused"] - base,
        "fresh": checks["fresh"] - base,
        "v2": checks["reused"] - base + checks["v2 visible"],
    }
    print("\nthe checks alone, in-process (this process, best of 5 x 1,000 requests), us per request:")
    print(f"  the guard without enforcement (FHIR_AUTH_ENFORCE=false)           {base:8.1f}")
    print(f"  token reused: verify (cached) + revocation + scopes                {extra['reused']:+8.1f}")
    print(f"  fresh token: verify (RS256 signature, claims) + revocation + scopes {extra['fresh']:+7.1f}")
    print(f"  v2 query scope: reused + Access.visible (constraint + EXISTS query) {extra['v2']:+7.1f}")
    print(
        "  on / off implied by them, against the off server's CPU per read (servers + PostgreSQL, best "
        "round), off_cpu / (off_cpu + checks):"
    )
    for case in cases:
        cells = []
        for c in levels:
            off = results[(case, c, "off")].cpu_ms
            if off:
                cpu = sum(off) * 1000
                cells.append(f"x{c} {cpu / (cpu + extra[case]):.3f} (of {cpu / 1000:.2f} ms)")
        print(f"    {CASES[case][0]:<26} {'   '.join(cells)}")


def print_tokens(results: dict[tuple[str, int], Run], levels: list[int], answered: dict[str, Any]) -> bool:
    head = (
        f"{'POST /auth/token':<18}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  {'answered 200':<22}"
        f"{'floor req/s':>12}{'ratio':>7}  result"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for alg in ALGS:
        for c in levels:
            r, floor = results[(alg, c)], results[("floor", c)]
            stats = answered[f"{alg} x{c}"]
            passed = stats["bad"] == 0 and stats["answered"] > 0
            ok &= passed
            ratio = r.rps / floor.rps if floor.rps else 0.0
            shown = f"{stats['good']:,} of {stats['answered']:,}"
            print(
                f"{alg + ' assertion':<18}{c:>8}{r.rps:>9,.0f}{fmt(r.p50_ms):>9}{fmt(r.p99_ms):>9}"
                f"  {shown:<22}"
                f"{floor.rps:>12,.0f}{ratio:>7.2f}  {'PASS' if passed else 'FAIL'}"
            )
    print("\nCPU ms per request, best round: servers + PostgreSQL backends; cores of other work meanwhile:")
    noisy = []
    for key in [(alg, c) for alg in ALGS for c in levels] + [("floor", c) for c in levels]:
        r = results[key]
        name = f"{key[0]} x{key[1]}"
        other = f"{r.cpu.other:.2f}" if r.cpu else "n/a"
        print(f"  {name:<10} {cpu_line(r)}   other work {other}")
        if _noisy(r):
            noisy.append(name)
        if r.exhausted:
            print(
                f"    {name}: its {r.pool:,} assertions ran out in a round; that rate is over the time "
                "until then"
            )
        if r.errors and key[0] == "floor":
            print(f"    {name}: {r.errors} failed requests")
            ok = False
    if noisy:
        print(f"  NOISY: other work took more than {NOISY} cores during the best round of {', '.join(noisy)}")
    return ok


def _noisy(r: Run) -> bool:
    return r.cpu is not None and r.cpu.other > NOISY


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def count_rows(conninfo: str) -> tuple[int, int]:
    """Rows of the replay cache (used client assertions) and of the audit log."""
    with psycopg.connect(conninfo) as conn:
        used = conn.execute("SELECT count(*) FROM auth_used_assertion").fetchone()
        events = conn.execute("SELECT count(*) FROM audit_event").fetchone()
    return int(used[0] if used else 0), int(events[0] if events else 0)


# --------------------------------------------------------------------------------------------- phases


@dataclass
class Bench:
    """The running servers and what the measurements need; ``ok`` turns False on any failed request."""

    args: argparse.Namespace
    levels: list[int]
    load_fn: Callable[[Load, int, float], Run]
    work: Path
    on_port: int
    off_port: int
    floor_port: int
    ids_file: Path
    minter: Minter
    clients: dict[str, BackendClient]
    token_url: str
    pgids: set[int]
    database: str
    conninfo: str
    ok: bool = True
    answered: dict[str, dict[str, int]] = field(default_factory=dict)  # token runs: good/answered/bad
    checks: dict[str, float] = field(default_factory=dict)  # price_checks, us per request
    read_runs: dict[tuple[str, int, str], list[Run]] = field(default_factory=dict)  # every round, in order

    def measure(self, load: Load, clients: int) -> Run:
        with CpuMeter(self.pgids, self.database) as meter:
            r = self.load_fn(load, clients, self.args.duration)
        r.cpu = meter.result
        return r

    def read_load(self, port: int, tokens_file: Path, once: bool) -> Load:
        return Load("read", port, "/fhir/R4/Patient/", tokens_file, once, ids_file=self.ids_file)

    def token_load(self, path: Path) -> Load:
        return Load("post", self.on_port, "/auth/token", path, True, content_type=FORM, accept=JSON,
                    status=200, text='"access_token"')  # fmt: skip

    def reads(self) -> dict[tuple[str, int, str], Run]:
        """Each case at each client count on both servers, alternating which goes first."""
        args = self.args
        print(
            f"\nreads: GET /fhir/R4/Patient/<id> over {args.seed_rows} Patients, enforcing (on) vs not (off)"
        )
        warm, _ = self.minter.write(self.work / "warm-token.txt", SCOPE)
        read_rate = 0.0
        for port in (self.on_port, self.off_port):  # imports, caches, pool connections, statement caches
            r = self.load_fn(self.read_load(port, warm, False), max(self.levels), args.warmup)
            read_rate = max(read_rate, r.rps)
            if r.errors:
                print(f"  warm-up on :{port}: {r.errors} failed requests")
                self.ok = False
        runs: dict[tuple[str, int, str], list[Run]] = {}
        for rnd in range(1, args.rounds + 1):
            for case in args.cases:
                label, scope, fresh = CASES[case]
                for c in self.levels:
                    # Fresh: enough tokens that none is sent twice (each is new to every worker's cache).
                    count = (args.pool or math.ceil(1.5 * read_rate * args.duration) + 200) if fresh else 1
                    tokens_file: Path | None = None
                    minted_at = 0.0
                    order = (("on", self.on_port), ("off", self.off_port))
                    for name, port in order if rnd % 2 else order[::-1]:
                        extra = ""
                        # One pool serves both servers of a pair while its tokens (300 s) outlive the run.
                        if tokens_file is None or time.time() - minted_at + args.duration > 250:
                            minted_at = time.time()
                            tokens_file, secs = self.minter.write(
                                self.work / f"tokens-{case}.txt", scope, count
                            )
                            if fresh:
                                extra = f"  [minted {count:,} tokens in {secs:.1f} s before]"
                        r = self.measure(self.read_load(port, tokens_file, fresh), c)
                        runs.setdefault((case, c, name), []).append(r)
                        read_rate = max(read_rate, r.rps)
                        self.ok &= r.errors == 0
                        note(rnd, label, c, name, r, extra)
        self.checks = price_checks(self.minter, self.ids_file.read_text().split())
        self.read_runs = runs
        return {key: best_of(rs) for key, rs in runs.items()}

    def token_endpoint(self) -> dict[tuple[str, int], Run]:
        """Each client key at each client count, and the floor's insert, alternating the order."""
        args = self.args
        print(
            f"\ntoken endpoint: POST /auth/token (client_credentials, private_key_jwt, scope {SCOPE!r}) "
            "vs the floor's POST /row"
        )
        floor_body = self.work / "floor-body.txt"
        floor_body.write_text(json.dumps({"resourceType": "Basic", "note": "x" * 600}) + "\n")
        floor_load = Load("post", self.floor_port, "/row", floor_body, False, content_type=JSON, accept=JSON,
                          status=201, text="")  # fmt: skip
        rate: dict[str, float] = {}
        for alg, client in self.clients.items():  # warm-up, and a first rate to size the assertion sets
            path, _ = client.write(self.work / f"assertions-{alg}.txt", self.token_url, args.pool or 400)
            r = self.load_fn(self.token_load(path), max(self.levels), args.warmup)
            rate[alg] = r.rps
            if r.errors:
                print(f"  warm-up {alg}: {r.errors} of {r.requests} token requests failed")
                self.ok = False
        self.load_fn(floor_load, max(self.levels), args.warmup)
        used0, events0 = count_rows(self.conninfo)
        runs: dict[tuple[str, int], list[Run]] = {}
        for rnd in range(1, args.rounds + 1):
            for c in self.levels:
                order = [*ALGS, "floor"]
                for name in order if rnd % 2 else order[::-1]:
                    if name == "floor":
                        r = self.measure(floor_load, c)
                        runs.setdefault(("floor", c), []).append(r)
                        self.ok &= r.errors == 0
                        note(rnd, "POST /row (floor)", c, "floor", r)
                        continue
                    # Signed before the timed phase, each jti once, enough for the duration (else it stops).
                    count = args.pool or math.ceil(1.5 * rate[name] * args.duration) + 100
                    path, secs = self.clients[name].write(
                        self.work / f"assertions-{name}.txt", self.token_url, count
                    )
                    r = self.measure(self.token_load(path), c)
                    rate[name] = max(rate[name], r.rps)
                    runs.setdefault((name, c), []).append(r)
                    stats = self.answered.setdefault(f"{name} x{c}", {"good": 0, "answered": 0, "bad": 0})
                    stats["good"] += r.requests - r.errors
                    stats["answered"] += r.requests
                    stats["bad"] += r.errors
                    self.ok &= r.errors == 0
                    extra = f"  [{r.sent:,} of {count:,} assertions sent, signed in {secs:.1f} s before]"
                    note(rnd, f"POST /auth/token {name}", c, "on", r, extra)
        time.sleep(1.0)  # let the last requests (answered after wrk stopped reading) commit
        used1, events1 = count_rows(self.conninfo)
        sent = sum(r.sent for key, rs in runs.items() if key[0] != "floor" for r in rs)
        answered = sum(s["answered"] for s in self.answered.values())
        good = sum(s["good"] for s in self.answered.values())
        print(
            f"  during the timed token runs: {sent:,} assertions sent, {answered:,} answers read, "
            f"{good:,} of them 200 ({sent - answered} in flight when wrk stopped, their answers not read); "
            f"replay-cache rows added {used1 - used0:,}, audit events added {events1 - events0:,}"
        )
        return {key: best_of(rs) for key, rs in runs.items()}


def note(rnd: int, label: str, c: int, name: str, r: Run, extra: str = "") -> None:
    tail = f", {r.pool:,} in the pool, RAN OUT" if r.exhausted else ""
    print(
        f"  round {rnd}  {label:<26} x{c:<2} {name:<6} {r.rps:8,.0f} req/s  p50 {fmt(r.p50_ms)} "
        f"p99 {fmt(r.p99_ms)} ms  ({r.requests:,} requests, {r.errors} failed{tail}; other work "
        f"{r.cpu.other if r.cpu else 0:.2f} cores{', NOISY' if _noisy(r) else ''}){extra}",
        flush=True,
    )


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own database there",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="measurements per cell; the best counts (default 2)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per server (default 3)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of every server (default 4)")
    p.add_argument(
        "--threads", type=int, default=None, help="threads per worker (default: FHIR_THREADS or 4)"
    )
    p.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated (default 1,8)")
    p.add_argument("--seed-rows", type=int, default=300, help="Patients created for the reads (default 300)")
    p.add_argument(
        "--cases",
        default="reused,fresh,v2",
        help="read cases: reused (the target), fresh (a new token per request), v2 (a query-constrained "
        "scope); default all three",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=0,
        help="tokens per fresh-token run and assertions per token run (default: 1.5 x the rate seen so far "
        "x --duration, so that none runs out)",
    )
    p.add_argument("--no-audit", action="store_true", help="both app servers with FHIR_AUDIT=false")
    p.add_argument("--skip-reads", action="store_true")
    p.add_argument("--skip-token", action="store_true")
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 when the reused-token read ratio is under {READ_TARGET} or any request failed",
    )
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:g}] s (tokens and assertions live 300 s)")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        p.error(f"--cases takes some of {', '.join(CASES)}")
    if "reused" not in args.cases:
        args.cases.insert(0, "reused")  # the target's case is always measured
    if args.rounds < 1 or args.seed_rows < 1:
        p.error("--rounds and --seed-rows must be at least 1")
    return args


def _raise_on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that the finally blocks stop the servers and drop the database


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.loader == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    load_fn: Callable[[Load, int, float], Run] = run_wrk if use_wrk else run_python
    fhir_api = (
        BIN / "fhir-api" if (BIN / "fhir-api").exists() else Path(shutil.which("fhir-api") or "fhir-api")
    )
    if args.threads:
        os.environ["FHIR_THREADS"] = str(args.threads)  # read by every server's gunicorn settings
    from fhir_api.serving import default_threads

    threads = default_threads()
    started = time.monotonic()
    loader = "wrk (bench/wrk_auth.lua, 1 thread)" if use_wrk else "python thread pool (wrk not found: "
    loader += "" if use_wrk else "its figures are lower and noisier, the client sharing the cores)"
    print(
        f"load generator: {loader}; every server {args.workers} workers x {threads} threads "
        f"({'gthread' if threads > 1 else 'sync'}); best of {args.rounds} x {args.duration:g} s per cell; "
        f"{os.cpu_count()} cpus; load average {load_average()}"
    )

    from audit.signing import generate_key_file as generate_audit_key
    from crypto.kms import generate_key_file as generate_keyring
    from fhir_api.auth.keys import generate_signing_key_file

    servers: list[Server] = []
    minter: Minter | None = None
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="fhir-bench-auth-") as tmp,
        bench_database(args.database_url) as db_url,
    ):
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_") or k == "FHIR_THREADS"}
        env["FHIR_DATABASE_URL"] = db_url
        try:
            done = subprocess.run(
                [str(fhir_api), "db", "upgrade"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"fhir-api db upgrade failed:\n{done.stdout}{done.stderr}")
            on_port, off_port, floor_port = free_port(), free_port(), free_port()
            public = f"http://127.0.0.1:{on_port}"
            token_url = public + "/auth/token"
            key_file, keyring, audit_key = work / "signing.jwk", work / "keyring.json", work / "audit.jwk"
            generate_signing_key_file(key_file)
            generate_keyring(keyring)  # protected elements sealed, as in production
            generate_audit_key(audit_key)  # every request audited, as in production
            app_env = {
                **env,
                "FHIR_AUTH_SIGNING_KEY_FILE": str(key_file),
                "FHIR_CRYPTO_KEY_FILE": str(keyring),
                "FHIR_AUDIT_SIGNING_KEY_FILE": str(audit_key),
                # The same public URL for both app servers: their settings differ in one switch only.
                "FHIR_PUBLIC_URL": public,
                # Throughput is the point (and the token endpoint's per-client limit would throttle it).
                "FHIR_RATE_LIMIT_ENABLED": "false",
            }
            if args.no_audit:
                app_env["FHIR_AUDIT"] = "false"
            clients = register_clients(fhir_api, app_env, work)
            minter = Minter(key_file, public, db_url)
            minter.client_id = clients["ES384"].client_id

            serve = [str(fhir_api), "serve", "--host", "127.0.0.1", "--workers", str(args.workers)]
            on_srv = Server("on", [*serve, "--port", str(on_port)], app_env, on_port, work)
            off_env = {**app_env, "FHIR_AUTH_ENFORCE": "false"}
            off_srv = Server("off", [*serve, "--port", str(off_port)], off_env, off_port, work)
            floor_argv = [sys.executable, str(HERE / "floor_app.py"), "--database-url", db_url]
            floor_argv += ["--bind", f"127.0.0.1:{floor_port}", "--workers", str(args.workers)]
            floor_srv = Server("floor", floor_argv, env, floor_port, work)
            servers = [on_srv, off_srv, floor_srv]
            for srv in servers:
                srv.start()
            for srv in servers:
                srv.wait_ready(args.workers)
            shown = make_url(db_url).render_as_string(hide_password=True)
            print(
                f"database {shown}; enforcing server on :{on_port}, FHIR_AUTH_ENFORCE=false on :{off_port}, "
                f"floor on :{floor_port}; audit {'off' if args.no_audit else 'on'}, encryption on"
            )
            print(
                "clients: "
                + ", ".join(f"{alg} {c.client_id} ({REGISTERED_SCOPE})" for alg, c in clients.items())
            )

            seeder_token = minter.mint("system/Patient.cruds")[0]
            body = json.dumps(PATIENT, separators=(",", ":")).encode()
            target = seed(
                Target(
                    "on",
                    on_port,
                    "/fhir/R4/Patient",
                    "/fhir/R4/Patient/",
                    FHIR_JSON,
                    token=lambda: seeder_token,
                ),
                body,
                args.seed_rows,
                work,
            )
            ids_file = target.ids_file
            first_id = ids_file.read_text().split()[0]
            print(f"created {args.seed_rows} Patients through the enforcing server")

            print("probe, one request at a time:")
            good, lines = probe(on_port, off_port, f"/fhir/R4/Patient/{first_id}", minter, clients, token_url)
            ok &= good
            print("\n".join(lines))

            bench = Bench(
                args=args,
                levels=levels,
                load_fn=load_fn,
                work=work,
                on_port=on_port,
                off_port=off_port,
                floor_port=floor_port,
                ids_file=ids_file,
                minter=minter,
                clients=clients,
                token_url=token_url,
                pgids={srv.proc.pid for srv in servers if srv.proc is not None},  # each leads its group
                database=make_url(db_url).database or "",
                conninfo=make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False),
            )
            read_results = {} if args.skip_reads else bench.reads()
            token_results = {} if args.skip_token else bench.token_endpoint()
            ok &= bench.ok

            # ---- report
            print()
            if read_results:
                ok &= print_reads(read_results, args.cases, levels, bench.checks, bench.read_runs)
            if token_results:
                print()
                ok &= print_tokens(token_results, levels, bench.answered)
            print(
                f"\nload average at the end {load_average()}; total time {time.monotonic() - started:.0f} s"
            )
        finally:
            for srv in servers:
                srv.stop()
            if minter is not None:
                minter.close()
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and database dropped", file=sys.stderr)
        sys.exit(130)
