"""The price of field-level encryption: create/read throughput, search latency and key rotation.

One run measures, each time against the same server with ``FHIR_PROTECTION=false`` on its own database:

1. **Throughput**: ``POST Patient`` and ``GET Patient/<id>`` (the Patient of ``bench/crud.py``: name,
   birthDate, identifier, telecom, address) on two app servers with the same settings, one protected and
   one with ``FHIR_PROTECTION=false``, each on its own fresh database, loaded alternately with wrk at 1 and
   8 connections, best of ``--rounds``. Target: protected / unprotected >= 0.85.
2. **Search latency**: the synthetic population of ``seed/population.py`` (``--resources``, default
   100,000) is loaded into a protected and an unprotected database through ``bench/search.py``'s loader
   (the API's own write path, several processes), then one sequential gzip client times
   ``Patient?name=<2-4 letter prefix>`` and ``Patient?birthdate=ge<day>&birthdate=lt<day + 2-4 years>``
   (values from generated patients, varying per request) on both servers, interleaved. Target: p95
   protected / unprotected <= 1.5. A few fixed queries are run on both with ``_count=1000`` following next
   links, and the sets of ids compared (equal / different).
3. **Key rotation**: ``fhir-api keys rotate`` on the protected population database (its key file),
   timed; keys/s = the "re-wrapped N keys" it prints over its wall time. Afterwards every data key must
   have moved, and reads of the protected server must still equal the unprotected one's.

    .venv/bin/python bench/crypto.py [--quick] [--check] [--resources 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _hand_over_to_the_crypto_package() -> None:
    """Become the project's ``crypto`` package.

    A script run from bench/ (crud.py, search.py, this one) has bench/ first on sys.path, so the app's
    ``import crypto.envelope`` finds this file as ``crypto``. The import system returns whatever
    sys.modules holds once the module has run, so putting the real package there hands over to it."""
    import importlib.util

    package = ROOT / "crypto"
    spec = importlib.util.spec_from_file_location(
        "crypto", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["crypto"] = module
    spec.loader.exec_module(module)


if __name__ == "crypto":
    _hand_over_to_the_crypto_package()  # the rest of this file only defines names, in a discarded module
else:
    # Run as a script (or re-run as __mp_main__ in a spawned loader): the repository root first, so that
    # ``crypto`` is the package, and bench/ last, for crud and search. Spawned processes inherit sys.path.
    sys.path[:] = [
        str(ROOT),
        *(p for p in sys.path if Path(p or ".").resolve() not in (HERE, ROOT)),
        str(HERE),
    ]

    import psycopg
    import requests
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
    from search import (
        Latency,
        _conninfo,
        ensure_audit_key,
        load_directory,
        load_patients,
        plan_phases,
        server_env,
        table_rows,
        upgrade,
        vacuum_analyze,
    )
    from sqlalchemy.engine import make_url

    from seed import population

THROUGHPUT_TARGET = 0.85  # protected req/s over unprotected req/s
LATENCY_TARGET = 1.5  # protected p95 over unprotected p95
DB_PREFIX = "fhir_bench_crypto"
NAMES = ("protected", "unprotected")
QUICK = {
    "resources": 5_000,
    "duration": 3.0,
    "rounds": 2,
    "warmup_seconds": 1.0,
    "seed_rows": 100,
    "requests": 60,
    "warmup": 5,
}
NORMAL = {
    "resources": 100_000,
    "duration": 10.0,
    "rounds": 3,
    "warmup_seconds": 3.0,
    "seed_rows": 500,
    "requests": 200,
    "warmup": 20,
}


# --------------------------------------------------------------------------------------------- helpers


def fhir_api_bin() -> Path:
    found = BIN / "fhir-api"
    return found if found.exists() else Path(shutil.which("fhir-api") or "fhir-api")


def init_key_file(path: Path) -> str:
    done = subprocess.run(
        [str(fhir_api_bin()), "keys", "init", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"fhir-api keys init failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip()


def app_env(db_url: str, name: str, key_file: Path, signing: Path, port: int) -> dict[str, str]:
    """The same settings for both servers; the unprotected one adds FHIR_PROTECTION=false."""
    extra = {
        "FHIR_CRYPTO_KEY_FILE": str(key_file),
        "FHIR_AUTH_SIGNING_KEY_FILE": str(signing),
        "FHIR_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    if name == "unprotected":
        extra["FHIR_PROTECTION"] = "false"
    return server_env(db_url, **extra)


@contextlib.contextmanager
def fhir_environ(env: dict[str, str]) -> Iterator[None]:
    """This process's FHIR_* variables set to those of ``env`` (loaders in this process and the ones it
    spawns build their app from them), restored afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FHIR_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("FHIR_")})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("FHIR_")]:
            del os.environ[k]
        os.environ.update(saved)


def start_servers(servers: list[Server], workers: int) -> None:
    for srv in servers:
        srv.start()
    for srv in servers:
        srv.wait_ready(workers)


def stop_servers(servers: list[Server]) -> None:
    for srv in servers:
        with contextlib.suppress(Exception):
            srv.stop()


@dataclass(frozen=True)
class Storage:
    """What a throughput database holds after the seeding creates (Patients only, all alike)."""

    patients: int
    keyed: int  # versions with a wrapped data key
    sealed: int  # versions whose body holds {"$enc": ...}
    name: str  # how one stored body's name element looks
    index_rows: dict[str, int]  # search-index table -> rows

    @property
    def per_patient(self) -> str:
        n = max(self.patients, 1)
        rows = sum(n for t, n in self.index_rows.items() if t != "blind hashes") / n
        blind = self.index_rows.get("blind hashes", 0) / n
        sets = self.index_rows.get("search_blind_set", 0) / n
        return (
            f"{rows:.0f} index rows per Patient ({sets:.0f} of them blind-hash arrays, holding {blind:.0f} "
            "keyed hashes)"
        )


def storage_check(db_url: str) -> Storage:
    with psycopg.connect(_conninfo(db_url)) as conn:
        row = conn.execute(
            "SELECT count(*), count(data_key), count(*) FILTER (WHERE body LIKE '%%\"$enc\"%%'), "
            "min(substr(body, strpos(body, '\"name\"'), 70)) FROM resource_version WHERE res_type = 'Patient'"
        ).fetchone()
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'search\\_%%'"
            ).fetchall()
        ]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}  # type: ignore[index]
        hashes = conn.execute("SELECT coalesce(sum(cardinality(hashes)), 0) FROM search_blind_set").fetchone()
        counts["blind hashes"] = counts.get("search_blind", 0) + int(hashes[0])  # type: ignore[index]
    assert row is not None
    return Storage(
        int(row[0]), int(row[1]), int(row[2]), str(row[3] or ""), {t: int(n) for t, n in counts.items()}
    )


def ratio_line(kind: str, on: float, off: float) -> str:
    return f"{on:,.0f} / {off:,.0f} = {on / off if off else 0:.3f}"


# --------------------------------------------------------------------------------------------- 1. throughput


@dataclass
class Throughput:
    results: dict[tuple[str, int, str], LoadResult]
    clients: list[int]
    storage: dict[str, Storage]

    def ratio(self, kind: str, clients: int) -> float:
        on, off = self.results[(kind, clients, "protected")], self.results[(kind, clients, "unprotected")]
        return on.rps / off.rps if off.rps else 0.0

    def ok(self, kind: str, clients: int) -> bool:
        on, off = self.results[(kind, clients, "protected")], self.results[(kind, clients, "unprotected")]
        return self.ratio(kind, clients) >= THROUGHPUT_TARGET and on.errors == 0 and off.errors == 0

    def storage_ok(self) -> bool:
        on, off = self.storage["protected"], self.storage["unprotected"]
        protected_ok = on.patients > 0 and on.keyed == on.sealed == on.patients
        return protected_ok and off.patients > 0 and off.keyed == off.sealed == 0


def measure_throughput(args: argparse.Namespace, work: Path, load: Callable[..., LoadResult]) -> Throughput:
    clients_list = [int(c) for c in args.clients.split(",") if c.strip()]
    servers: list[Server] = []
    with (
        bench_database(args.database_url, DB_PREFIX) as db_on,
        bench_database(args.database_url, DB_PREFIX) as db_off,
    ):
        dbs = {"protected": db_on, "unprotected": db_off}
        key_file = work / "crud-keyring.json"
        print(f"  {init_key_file(key_file)}")
        targets: dict[str, Target] = {}
        try:
            for name, db_url in dbs.items():
                port = free_port()
                signing = work / f"crud-{name}-signing.jwk"
                env = app_env(db_url, name, key_file, signing, port)
                upgrade(fhir_api_bin(), env)
                token = token_minter(signing, f"http://127.0.0.1:{port}")
                argv = [str(fhir_api_bin()), "serve", "--host", "127.0.0.1", "--port", str(port)]
                servers.append(
                    Server(f"crud-{name}", [*argv, "--workers", str(args.workers)], env, port, work)
                )
                targets[name] = Target(
                    name, port, "/fhir/R4/Patient", "/fhir/R4/Patient/", FHIR_JSON, token=token
                )
            start_servers(servers, args.workers)
            print(
                "  servers: "
                + ", ".join(f"{n} on :{t.port} ({make_url(dbs[n]).database})" for n, t in targets.items())
            )
            body_file = work / "patient.json"
            body = json.dumps(PATIENT, separators=(",", ":")).encode()
            body_file.write_bytes(body)
            for name in NAMES:
                targets[name] = seed(targets[name], body, args.seed_rows, work)
            storage = {name: storage_check(db_url) for name, db_url in dbs.items()}
            for name, st in storage.items():
                print(
                    f"  {name:<11} database: {st.patients} Patients, {st.keyed} with a data key, {st.sealed} "
                    f"with sealed values; {st.per_patient}; stored: {st.name[:60]!r}..."
                )
            for name in NAMES:  # warm-up: imports, caches, pool connections, statement caches
                for kind in ("read", "create"):
                    load(targets[name], kind, max(clients_list), args.warmup_seconds, body_file)
            runs: dict[tuple[str, int, str], list[LoadResult]] = {}
            for rnd in range(1, args.rounds + 1):
                for kind in ("create", "read"):
                    for clients in clients_list:
                        order = NAMES if rnd % 2 else tuple(reversed(NAMES))
                        for name in order:
                            r = load(targets[name], kind, clients, args.duration, body_file)
                            runs.setdefault((kind, clients, name), []).append(r)
                            print(
                                f"    round {rnd}  {kind:<6} x{clients:<2} {name:<11} {r.rps:8,.0f} req/s "
                                f"({r.requests} requests, {r.errors} failed)",
                                flush=True,
                            )
        finally:
            stop_servers(servers)
    return Throughput({k: best_of(v) for k, v in runs.items()}, clients_list, storage)


def print_throughput(t: Throughput) -> None:
    head = f"  {'interaction':<12}{'clients':>8}{'protected/s':>13}{'unprotected/s':>15}{'ratio':>7}  target"
    print("\n" + head)
    print("  " + "-" * (len(head) + 12))
    for kind in ("create", "read"):
        for c in t.clients:
            on, off = t.results[(kind, c, "protected")], t.results[(kind, c, "unprotected")]
            print(
                f"  {kind:<12}{c:>8}{on.rps:>13,.0f}{off.rps:>15,.0f}{t.ratio(kind, c):>7.3f}"
                f"  >= {THROUGHPUT_TARGET}  {'PASS' if t.ok(kind, c) else 'FAIL'}"
            )
    if not all(t.ok("create", c) for c in t.clients):
        print("  (create below target: bench/crypto_profile.py times and profiles creates in-process)")
    print("  latency p50 / p99 in ms (protected | unprotected):")
    for kind in ("create", "read"):
        for c in t.clients:
            on, off = t.results[(kind, c, "protected")], t.results[(kind, c, "unprotected")]
            print(
                f"    {kind:<7} x{c:<2} {on.p50_ms or 0:6.2f} / {on.p99_ms or 0:6.2f} | "
                f"{off.p50_ms or 0:6.2f} / {off.p99_ms or 0:6.2f}"
                + (f"   failed requests: {on.errors} | {off.errors}" if on.errors or off.errors else "")
            )


# --------------------------------------------------------------------------------------------- 2. search

Args = list[tuple[str, str]]


@dataclass(frozen=True)
class Person:
    i: int
    pid: str
    family: str
    given: str
    birth: date


def person(i: int, seed_value: int) -> Person:
    patient = next(population.patient_record(i, seed_value))  # the Patient comes first
    name = patient["name"][0]
    return Person(
        i, patient["id"], name["family"], name["given"][0], date.fromisoformat(patient["birthDate"])
    )


def add_years(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def name_args(k: int, p: Person) -> Args:
    word = p.family if k % 2 == 0 else p.given
    return [("name", word[: 2 + (k // 2) % 3])]  # 2, 3 or 4 letters


def birthdate_args(k: int, p: Person) -> Args:
    low = p.birth - timedelta(days=(k * 53) % 700)  # a range of 2 to 4 years holding this patient's birth
    high = add_years(low, 2 + k % 3)
    return [("birthdate", f"ge{low.isoformat()}"), ("birthdate", f"lt{high.isoformat()}")]


QUERIES: dict[str, Callable[[int, Person], Args]] = {
    "Patient?name=<2-4 letter prefix>": name_args,
    "Patient?birthdate=ge<day>&birthdate=lt<day+2..4y>": birthdate_args,
}


def samples(patients: int, count: int, seed_value: int) -> dict[str, list[Args]]:
    picks = [1 + (k * 7919) % patients for k in range(count)]
    people = {i: person(i, seed_value) for i in set(picks)}
    return {label: [make(k, people[i]) for k, i in enumerate(picks)] for label, make in QUERIES.items()}


def fixed_queries(patients: int, seed_value: int) -> list[Args]:
    """Queries whose id sets are compared on both servers (_count=1000, every page)."""
    a, b, c, d = (person(1 + (n * 811) % patients, seed_value) for n in range(4))
    d_low = date(d.birth.year, d.birth.month, 15)
    return [
        [("name", a.family[:2])],
        [("name", b.given[:3])],
        [("name", c.family)],
        [("birthdate", "ge1970-01-01"), ("birthdate", "lt1975-01-01")],
        [("birthdate", f"ge{d_low.isoformat()}"), ("birthdate", f"lt{add_years(d_low, 3).isoformat()}")],
        [("name", d.family[:1]), ("birthdate", "ge1950-06-15"), ("birthdate", "lt1960-01-01")],
        [("birthdate", d.birth.isoformat())],
        [("birthdate", "ge1920-01-01"), ("birthdate", "lt2010-01-01")],  # every patient: several pages
    ]


def show(args: Args) -> str:
    return "&".join(f"{k}={v}" for k, v in args)


@dataclass
class SearchServer:
    name: str
    port: int
    token: Callable[[], str]
    http: Any = field(default_factory=lambda: requests.Session())

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/R4"

    def get(self, url: str, params: Args | None = None) -> requests.Response:
        headers = {"Accept": FHIR_JSON, "Authorization": f"Bearer {self.token()}"}  # requests asks for gzip
        return self.http.get(url, params=params, headers=headers, timeout=60)


def measure_search(
    servers: dict[str, SearchServer], sets: dict[str, list[Args]], warmup: int
) -> dict[tuple[str, str], Latency]:
    """One sequential client; request k of every query goes to both servers (which first alternates), so a
    disturbance of the shared machine hits both alike. Warm-up repeats the first ``warmup`` sets."""
    out = {(label, name): Latency() for label in QUERIES for name in servers}
    rounds = len(next(iter(sets.values())))
    for measured, ks in ((False, range(min(warmup, rounds))), (True, range(rounds))):
        for k in ks:
            for label in QUERIES:
                args = sets[label][k]
                for name in NAMES if k % 2 == 0 else tuple(reversed(NAMES)):
                    srv, stats = servers[name], out[(label, name)]
                    t0 = time.perf_counter()
                    try:
                        resp = srv.get(f"{srv.base}/Patient", args)
                        body = resp.content
                    except requests.RequestException as exc:
                        if measured:
                            stats.errors.append(f"{show(args)}: {exc}")
                        continue
                    elapsed = (time.perf_counter() - t0) * 1000
                    if not measured:
                        continue
                    if resp.status_code != 200:
                        stats.errors.append(f"{show(args)}: HTTP {resp.status_code} {body[:300]!r}")
                        continue
                    stats.ms.append(elapsed)
                    modes = Counter(e.get("search", {}).get("mode") for e in resp.json().get("entry", []))
                    stats.matches.append(modes["match"])
                    stats.warnings += 1 if modes["outcome"] else 0
    return out


def all_ids(srv: SearchServer, args: Args, max_pages: int = 500) -> tuple[set[str], int, str | None]:
    """Every matching id over all pages (``_count=1000``), the pages read, and an error if any."""
    ids: set[str] = set()
    url: str | None = f"{srv.base}/Patient"
    params: Args | None = [*args, ("_count", "1000")]
    pages = 0
    while url and pages < max_pages:
        resp = srv.get(url, params)
        pages += 1
        if resp.status_code != 200:
            return ids, pages, f"HTTP {resp.status_code}: {resp.text[:300]}"
        bundle = resp.json()
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode", "match") == "match":
                ids.add(entry["resource"]["id"])
        url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
        params = None
    return ids, pages, None if not url else f"more than {max_pages} pages"


@dataclass
class Equality:
    args: Args
    counts: dict[str, int]
    pages: dict[str, int]
    errors: list[str]
    equal: bool


def compare_results(servers: dict[str, SearchServer], queries: list[Args]) -> list[Equality]:
    out = []
    for args in queries:
        found = {name: all_ids(srv, args) for name, srv in servers.items()}
        errors = [f"{n}: {err}" for n, (_, _, err) in found.items() if err]
        sets = [ids for ids, _, _ in found.values()]
        out.append(
            Equality(
                args,
                {n: len(ids) for n, (ids, _, _) in found.items()},
                {n: pages for n, (_, pages, _) in found.items()},
                errors,
                not errors and all(s == sets[0] for s in sets),
            )
        )
    return out


def print_equality(rows: list[Equality], title: str) -> None:
    print(f"\n  {title}")
    for r in rows:
        counts = " / ".join(f"{r.counts[n]:,}" for n in NAMES)
        pages = " / ".join(str(r.pages[n]) for n in NAMES)
        print(
            f"    {'equal' if r.equal else 'DIFFERENT':<10} {counts:>15} ids ({pages} pages)  "
            f"Patient?{show(r.args)}"
        )
        for err in r.errors:
            print(f"      ! {err}")


def same_reads(servers: dict[str, SearchServer], ids: list[str]) -> tuple[int, list[str]]:
    """Reads of the same Patients on both servers: equal bodies apart from meta (stored at other times)."""
    same, bad = 0, []
    for pid in ids:
        bodies = []
        for name in NAMES:
            resp = servers[name].get(f"{servers[name].base}/Patient/{pid}")
            bodies.append(
                {k: v for k, v in resp.json().items() if k != "meta"}
                if resp.status_code == 200
                else resp.status_code
            )
        if bodies[0] == bodies[1]:
            same += 1
        else:
            bad.append(pid)
    return same, bad


@dataclass
class Rotation:
    keys: int
    wall: float
    startup: float
    grace: float
    stale_before: int
    old_left: int | None
    output: str

    @property
    def rate(self) -> float:
        return self.keys / self.wall if self.wall else 0.0

    @property
    def loop_rate(self) -> str:
        loop = self.wall - self.startup - self.grace
        return f"~{self.keys / loop:,.0f} keys/s" if loop > 0.05 else "too short to tell"

    @property
    def ok(self) -> bool:
        return self.keys > 0 and self.keys >= self.stale_before and self.old_left == 0


def run_keys(env: dict[str, str], *argv: str, timeout: float = 3600) -> tuple[float, str]:
    t0 = time.monotonic()
    done = subprocess.run(
        [str(fhir_api_bin()), "keys", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"fhir-api keys {' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return wall, done.stdout + done.stderr


def rotate(db_url: str, env: dict[str, str], grace: float = 2.0) -> Rotation:
    with psycopg.connect(_conninfo(db_url)) as conn:
        stale = conn.execute(
            "SELECT (SELECT count(*) FROM resource_version WHERE key_id IS NOT NULL) "
            "+ (SELECT count(*) FROM crypto_index_key)"
        ).fetchone()[0]  # type: ignore[index]
    startup, before = run_keys(env, "list")  # the same start-up (app, key file, one query) without work
    old = re.findall(r"^(\S+) \(current\)", before, re.MULTILINE)
    print("  fhir-api keys list:  " + "\n                       ".join(before.strip().splitlines()))
    wall, output = run_keys(env, "rotate")
    print("  fhir-api keys rotate: " + "\n                       ".join(output.strip().splitlines()))
    found = re.search(r"re-wrapped (\d+) keys", output)
    if not found:
        raise RuntimeError(f"fhir-api keys rotate printed no 're-wrapped N keys':\n{output}")
    _, after = run_keys(env, "list")
    print("  fhir-api keys list:  " + "\n                       ".join(after.strip().splitlines()))
    left = None
    if old:
        m = re.search(rf"^{re.escape(old[0])}: wraps (\d+) data keys", after, re.MULTILINE)
        left = int(m.group(1)) if m else None
    return Rotation(int(found.group(1)), wall, startup, grace, int(stale), left, output)


def blind_lookups(sets: dict[str, list[Args]]) -> dict[str, list[int]]:
    """How many keyed hashes each request's protected search looks up in the blind index (any root key: the
    count does not depend on it), computed the way the server computes them."""
    from resources.dates import parse_range
    from resources.protection import blind
    from resources.search.query import split_prefix
    from resources.search.values import normalize_text

    h = blind.hasher(b"\0" * 32, "Patient", "x")
    out: dict[str, list[int]] = {}
    for label, arg_sets in sets.items():
        counts = []
        for args in arg_sets:
            n = 0
            for key, value in args:
                if key == "name":
                    n += len(blind.string_hashes("", value, normalize_text(value), h, key))
                elif key == "birthdate":
                    prefix, text = split_prefix(value)
                    r = parse_range(text, key)
                    n += len(set(blind.date_hashes(prefix, r.low, r.high, h)))
            counts.append(n)
        out[label] = counts
    return out


@dataclass
class SearchReport:
    resources: dict[str, int]
    load_rate: dict[str, float]
    latency: dict[tuple[str, str], Latency]
    equality: list[Equality]
    rotation: Rotation | None
    equality_after: list[Equality]
    reads_after: tuple[int, list[str]]
    requests: int
    lookups: dict[str, list[int]]


def p95_ratio(rep: SearchReport, label: str) -> float:
    on, off = rep.latency[(label, "protected")], rep.latency[(label, "unprotected")]
    return on.pct(0.95) / off.pct(0.95) if on.ms and off.ms else float("nan")


def latency_ok(rep: SearchReport, label: str) -> bool:
    sane = all(
        rep.latency[(label, n)].ms
        and not rep.latency[(label, n)].errors
        and not rep.latency[(label, n)].empty
        for n in NAMES
    )
    return sane and p95_ratio(rep, label) <= LATENCY_TARGET


def run_search(args: argparse.Namespace, work: Path) -> SearchReport:
    ((patients, planned),) = plan_phases([args.resources], args.seed)
    sets = samples(patients, args.requests, args.seed)
    fixed = fixed_queries(patients, args.seed)
    key_file = work / "search-keyring.json"
    print(f"  {init_key_file(key_file)}")
    servers: list[Server] = []
    with (
        bench_database(args.database_url, DB_PREFIX) as db_on,
        bench_database(args.database_url, DB_PREFIX) as db_off,
    ):
        dbs = {"protected": db_on, "unprotected": db_off}
        ports = {name: free_port() for name in NAMES}
        envs = {
            name: app_env(dbs[name], name, key_file, work / f"search-{name}-signing.jwk", ports[name])
            for name in NAMES
        }
        resources: dict[str, int] = {}
        load_rate: dict[str, float] = {}
        for name in NAMES:
            upgrade(fhir_api_bin(), envs[name])
            print(
                f"\n  loading {planned:,} resources ({patients:,} patients and the directory) into the "
                f"{name} "
                f"database {make_url(dbs[name]).database}, {args.load_processes} processes",
                flush=True,
            )
            t0 = time.monotonic()
            with fhir_environ(envs[name]):  # the loaders build their app from these (protection, keys)
                n = load_directory(dbs[name], patients, args.seed)
                n += load_patients(dbs[name], 1, patients, args.load_processes, args.seed, args.load_timeout)
            seconds = time.monotonic() - t0
            load_rate[name] = n / seconds
            vacuum = vacuum_analyze(dbs[name])
            rows = table_rows(dbs[name])
            resources[name] = rows.get("resource", n)
            with psycopg.connect(_conninfo(dbs[name])) as conn:
                keyed, blind = conn.execute(
                    "SELECT (SELECT count(*) FROM resource_version WHERE data_key IS NOT NULL), "
                    "(SELECT count(*) FROM search_blind) "
                    "+ (SELECT coalesce(sum(cardinality(hashes)), 0) FROM search_blind_set)"
                ).fetchone()  # type: ignore[misc]
            print(
                f"  {n:,} resources in {seconds:.0f} s ({n / seconds:,.0f}/s); VACUUM ANALYZE + CHECKPOINT "
                f"{vacuum:.0f} s; {keyed:,} versions with a data key, {blind:,} blind-index hashes, "
                f"string index {rows.get('search_string', 0):,} rows; "
                f"database {rows['_bytes'] / 2**20:,.0f} MB",
                flush=True,
            )
        clients: dict[str, SearchServer] = {}
        try:
            for name in NAMES:
                argv = [str(fhir_api_bin()), "serve", "--host", "127.0.0.1", "--port", str(ports[name])]
                servers.append(
                    Server(
                        f"search-{name}",
                        [*argv, "--workers", str(args.search_workers)],
                        envs[name],
                        ports[name],
                        work,
                    )
                )
                token = token_minter(work / f"search-{name}-signing.jwk", f"http://127.0.0.1:{ports[name]}")
                clients[name] = SearchServer(name, ports[name], token)
            start_servers(servers, args.search_workers)
            t0 = time.monotonic()
            latency = measure_search(clients, sets, args.warmup)
            print(
                f"\n  timed {args.requests} requests per query and server after {args.warmup} warm-up, one "
                f"sequential gzip client, {args.search_workers} sync workers per server: "
                f"{time.monotonic() - t0:.0f} s (load average after: {os.getloadavg()[0]:.1f})"
            )
            equality = compare_results(clients, fixed)
            rotation = None
            equality_after: list[Equality] = []
            reads_after: tuple[int, list[str]] = (0, [])
            if not args.skip_rotation:
                print("\n  key rotation on the protected population database (its server still running):")
                rotation = rotate(dbs["protected"], envs["protected"])
                equality_after = compare_results(clients, fixed[:2])
                some = sorted(all_ids(clients["unprotected"], fixed[0])[0])[:25]
                reads_after = same_reads(clients, some)
        finally:
            stop_servers(servers)
            for c in clients.values():
                c.http.close()
    return SearchReport(
        resources,
        load_rate,
        latency,
        equality,
        rotation,
        equality_after,
        reads_after,
        args.requests,
        blind_lookups(sets),
    )


def print_search(rep: SearchReport) -> None:
    print(
        "\n  resources: "
        + ", ".join(f"{n} {rep.resources[n]:,} (loaded at {rep.load_rate[n]:,.0f}/s)" for n in NAMES)
    )
    head = (
        f"  {'query':<52}{'server':<13}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}"
        f"{'matches med (min-max)':>23}{'p95 ratio':>10}  target"
    )
    print(head)
    print("  " + "-" * (len(head) + 8))
    for label in QUERIES:
        for name in NAMES:
            lat = rep.latency[(label, name)]
            if not lat.ms:
                print(f"  {label:<52}{name:<13}  no successful request ({len(lat.errors)} errors)")
                continue
            matches = f"{statistics.median(lat.matches):g} ({min(lat.matches)}-{max(lat.matches)})"
            tail = ""
            if name == "protected":
                verdict = "PASS" if latency_ok(rep, label) else "FAIL"
                tail = f"{p95_ratio(rep, label):>10.2f}  <= {LATENCY_TARGET}  {verdict}"
            print(
                f"  {label:<52}{name:<13}{lat.pct(0.5):8.1f}{lat.pct(0.95):8.1f}{max(lat.ms):8.1f}"
                f"{matches:>23}{tail}"
            )
    for label in QUERIES:
        for name in NAMES:
            lat = rep.latency[(label, name)]
            if lat.empty or lat.errors or lat.warnings:
                print(
                    f"  ! {label} ({name}): {lat.empty} empty results, {len(lat.errors)} errors, "
                    f"{lat.warnings} searchsets with an OperationOutcome"
                )
                for err in lat.errors[:3]:
                    print(f"      {err}")
    print("  keyed hashes a protected request looks up in the blind index, median (min-max):")
    for label, counts in rep.lookups.items():
        print(f"    {label:<52}{statistics.median(counts):g} ({min(counts)}-{max(counts)})")
    print_equality(rep.equality, "same results? ids of every page (_count=1000), protected / unprotected:")
    rot = rep.rotation
    if rot is not None:
        print(
            f"\n  key rotation: re-wrapped {rot.keys:,} keys (stale before: {rot.stale_before:,}) in "
            f"{rot.wall:.1f} s wall = {rot.rate:,.0f} keys/s"
        )
        print(
            f"    of which command start-up ~{rot.startup:.1f} s (timed with `fhir-api keys list`) and the "
            f"{rot.grace:g} s grace sleep before the final sweep; the re-wrap loop alone "
            f"{rot.loop_rate}"
        )
        print(f"    data keys still under the old KEK afterwards: {rot.old_left}")
        print_equality(rep.equality_after, "after rotation (the protected server kept running):")
        same, bad = rep.reads_after
        print(
            f"    reads of {same + len(bad)} Patients after rotation: {same} equal to the unprotected "
            f"server's (bodies without meta)" + (f"; different: {bad[:5]}" if bad else "")
        )


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own databases there",
    )
    p.add_argument("--quick", action="store_true", help="a fast smoke run: 5,000 resources, short rounds")
    p.add_argument(
        "--resources", type=int, default=None, help="population size (default 100,000; quick 5,000)"
    )
    p.add_argument("--requests", type=int, default=None, help="timed requests per query and server (200)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up requests per query and server (20)")
    p.add_argument("--duration", type=float, default=None, help="seconds per throughput measurement (10)")
    p.add_argument(
        "--rounds", type=int, default=None, help="throughput measurements per cell, best counts (3)"
    )
    p.add_argument("--warmup-seconds", type=float, default=None, help="throughput warm-up per server (3)")
    p.add_argument("--seed-rows", type=int, default=None, help="Patients created before the read load (500)")
    p.add_argument("--clients", default="1,8", help="throughput connections, comma-separated (default 1,8)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers of the throughput servers (4)")
    p.add_argument("--search-workers", type=int, default=2, help="gunicorn workers of the search servers (2)")
    p.add_argument("--load-processes", type=int, default=os.cpu_count() or 2, help="parallel loaders")
    p.add_argument("--load-timeout", type=float, default=7200.0, help="seconds allowed per population load")
    p.add_argument("--seed", type=int, default=42, help="population seed (default 42)")
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto", help="throughput load")
    p.add_argument("--skip-throughput", action="store_true", help="only the search and rotation parts")
    p.add_argument("--skip-search", action="store_true", help="only the throughput part")
    p.add_argument("--skip-rotation", action="store_true", help="no key rotation after the search part")
    p.add_argument("--check", action="store_true", help="exit 1 when any target is missed")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else NORMAL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM or SIGINT: end the loader processes this script spawned (by their ids), then unwind, so
    that the finally blocks stop the servers and drop the databases."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(Exception):
            child.terminate()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def summary(tp: Throughput | None, rep: SearchReport | None) -> bool:
    rows: list[tuple[str, str, str]] = []
    if tp is not None:
        for kind in ("create", "read"):
            for c in tp.clients:
                on, off = tp.results[(kind, c, "protected")], tp.results[(kind, c, "unprotected")]
                rows.append(
                    (
                        f"{kind} x{c}: protected / unprotected req/s >= {THROUGHPUT_TARGET}",
                        ratio_line(kind, on.rps, off.rps),
                        "PASS" if tp.ok(kind, c) else "FAIL",
                    )
                )
        on, off = tp.storage["protected"], tp.storage["unprotected"]
        rows.append(
            (
                "created Patients stored sealed (protected) / clear (unprotected)",
                f"{on.sealed}/{on.patients} sealed | {off.sealed}/{off.patients} sealed",
                "PASS" if tp.storage_ok() else "FAIL",
            )
        )
    if rep is not None:
        for label in QUERIES:
            on, off = rep.latency[(label, "protected")], rep.latency[(label, "unprotected")]
            rows.append(
                (
                    f"p95 protected / unprotected <= {LATENCY_TARGET}: {label}",
                    f"{on.pct(0.95):.1f} / {off.pct(0.95):.1f} ms = {p95_ratio(rep, label):.2f}",
                    "PASS" if latency_ok(rep, label) else "FAIL",
                )
            )
        equal = sum(1 for e in rep.equality if e.equal)
        rows.append(
            (
                "same ids from both servers (fixed queries, every page)",
                f"{equal}/{len(rep.equality)} equal",
                "PASS" if equal == len(rep.equality) else "FAIL",
            )
        )
        rot = rep.rotation
        if rot is not None:
            rows.append(
                (
                    f"keys rotate: re-wrap rate ({rot.keys:,} keys, {rot.wall:.1f} s wall)",
                    f"{rot.rate:,.0f} keys/s",
                    "PASS" if rot.ok else "FAIL",
                )
            )
            ok_after = all(e.equal for e in rep.equality_after) and not rep.reads_after[1]
            rows.append(
                (
                    "after rotation: same searches and reads as unprotected",
                    f"{rep.reads_after[0]} reads, {sum(e.equal for e in rep.equality_after)}/"
                    f"{len(rep.equality_after)} searches",
                    "PASS" if ok_after and rep.reads_after[0] else "FAIL",
                )
            )
    print("\nSUMMARY")
    width = max((len(r[0]) for r in rows), default=40)
    print(f"{'target':<{width}}  {'measured':<30}result")
    print("-" * (width + 38))
    for name, measured, result in rows:
        print(f"{name:<{width}}  {measured:<30}{result}")
    if rep is not None and rep.rotation is not None:
        print("(key rotation has no target: its PASS says every stored key moved to the new KEK)")
    return all(r[2] == "PASS" for r in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    if args.loader == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    load = run_wrk if use_wrk else run_python
    with psycopg.connect(_conninfo(args.database_url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(
        f"PostgreSQL {version}; {os.cpu_count()} cpus; load generator "
        f"{'wrk' if use_wrk else 'python thread pool (wrk not found)'}; "
        f"{'quick run' if args.quick else 'full run'}: {args.resources:,} resources, "
        f"throughput best of {args.rounds} x {args.duration:g} s, {args.requests} search requests per query"
    )
    started = time.monotonic()
    tp: Throughput | None = None
    rep: SearchReport | None = None
    with tempfile.TemporaryDirectory(prefix="fhir-bench-crypto-") as tmp:
        work = Path(tmp)
        ensure_audit_key(work)
        if not args.skip_throughput:
            print(
                f"\n1. create and read throughput, protected vs FHIR_PROTECTION=false "
                f"({args.workers} sync workers per server, each on its own database)"
            )
            tp = measure_throughput(args, work, load)
            print_throughput(tp)
        if not args.skip_search:
            print("\n2. search latency on protected vs unprotected data, and 3. key rotation")
            rep = run_search(args, work)
            print_search(rep)
    ok = summary(tp, rep)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and databases dropped", file=sys.stderr)
        sys.exit(130)
