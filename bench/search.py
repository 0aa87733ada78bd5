"""Search latency of the FHIR API on PostgreSQL with the synthetic population, and the price of indexing.

The population of ``seed/population.py`` is loaded through the API's own write path (validation, storage and
search indexing, as ``seed.loader`` does) into a database this script creates and drops, in phases of
growing size (default 50,000 then 100,000 resources). After each phase it runs VACUUM ANALYZE, serves the
app with ``fhir-api serve`` and times eight typical searches from one sequential client (p50/p95/max), then
runs each search once in-process and EXPLAIN ANALYZEs every SQL statement the engine issued: index use,
rows read and SQL time. The growth of rows read between phases projects the latency at 1,000,000 resources
(``--scale 1m`` loads and measures that size instead). Last, create throughput over HTTP is measured on two
fresh databases, one server writing index rows and one started with ``FHIR_SEARCH_INDEXING=false``.

    .venv/bin/python bench/search.py [--database-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import math
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
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
import simplejson
from crud import (
    BIN,
    FHIR_JSON,
    PATIENT,
    ROOT,
    LoadResult,
    Server,
    Target,
    bench_database,
    best_of,
    free_port,
    run_python,
    run_wrk,
    token_minter,
)
from sqlalchemy import event
from sqlalchemy.engine import make_url

from seed import population
from seed import vocabulary as v

LATENCY_TARGET_MS = 50.0
GROWTH_TARGET = 2.0  # p95 at 1,000,000 resources over p95 at 100,000
GROWTH_AT = 1_000_000
INDEXING_TARGET = 0.5  # create throughput with index rows over create without
PAGE_SIZE = 50
BIG_TABLES = frozenset(
    {
        "resource",
        "resource_version",
        "search_string",
        "search_token",
        "search_date",
        "search_reference",
        "search_quantity",
        "search_number",
        "search_uri",
        "search_composite",
    }
)
# Observation codes of the population, the most common first (every visit measures heart rate and blood
# pressure; HbA1c only (pre)diabetics, temperature only emergencies). The first one is the EXPLAINed case.
LOINC_CODES = [
    m.loinc
    for m in (
        v.HEART_RATE,
        v.BLOOD_PRESSURE,
        v.HEIGHT,
        v.WEIGHT,
        v.BMI,
        v.GLUCOSE,
        v.CREATININE,
        v.CHOLESTEROL,
        v.HBA1C,
        v.RESPIRATORY_RATE,
        v.TEMPERATURE,
    )
]


# --------------------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class PatientFacts:
    """What the queries need to know about one generated patient (read from the generator, not the DB)."""

    i: int
    pid: str
    family: str
    given: str
    mrn: str
    observations: list[tuple[str, str]]  # (LOINC code, effective date YYYY-MM-DD), in generation order


def patient_facts(i: int, seed: int) -> PatientFacts:
    patient, observations = None, []
    for res in population.patient_record(i, seed):
        if res["resourceType"] == "Patient":
            patient = res
        elif res["resourceType"] == "Observation":
            observations.append((res["code"]["coding"][0]["code"], res["effectiveDateTime"][:10]))
    assert patient is not None
    name = patient["name"][0]
    return PatientFacts(
        i, patient["id"], name["family"], name["given"][0], patient["identifier"][0]["value"], observations
    )


Args = list[tuple[str, str]]


@dataclass(frozen=True)
class Query:
    label: str
    res_type: str
    make: Callable[[int, PatientFacts], Args]  # (request number, a patient) -> query parameters


def _name_prefix(k: int, p: PatientFacts) -> Args:
    word = p.family if k % 2 == 0 else p.given
    return [("name", word[: 3 + (k // 2) % 3])]  # 3, 4 or 5 letters


def _patient_code_date(k: int, p: PatientFacts) -> Args:
    code, day = p.observations[k % len(p.observations)]  # one of their own observations, so never empty
    return [("patient", p.pid), ("code", f"{v.LOINC}|{code}"), ("date", f"ge{day}")]


QUERIES = [
    Query("Patient?name=<prefix>", "Patient", _name_prefix),
    Query(
        "Patient?identifier=<system>|<value>",
        "Patient",
        lambda k, p: [("identifier", f"{v.MRN_SYSTEM}|{p.mrn}")],
    ),
    Query("Observation?patient=X&code=Y&date=ge...", "Observation", _patient_code_date),
    Query(
        "Observation?code=Y&_sort=-date&_count=50",
        "Observation",
        lambda k, p: [
            ("code", f"{v.LOINC}|{LOINC_CODES[k % len(LOINC_CODES)]}"),
            ("_sort", "-date"),
            ("_count", str(PAGE_SIZE)),
        ],
    ),
    Query(
        "Encounter?subject:Patient.name=...",
        "Encounter",
        lambda k, p: [("subject:Patient.name", p.family if k % 2 == 0 else p.given)],
    ),
    Query(
        "Patient?_has:Observation:patient:code=Y",
        "Patient",
        lambda k, p: [("_has:Observation:patient:code", f"{v.LOINC}|{LOINC_CODES[k % len(LOINC_CODES)]}")],
    ),
    Query(
        "Observation?patient=X&_include=Observation:performer",
        "Observation",
        lambda k, p: [("patient", p.pid), ("_include", "Observation:performer")],
    ),
    Query(
        "Patient?_id=X&_revinclude=Encounter:subject",
        "Patient",
        lambda k, p: [("_id", p.pid), ("_revinclude", "Encounter:subject")],
    ),
]


def sample_args(patients: int, count: int, seed: int) -> dict[str, list[Args]]:
    """``count`` parameter sets per query, from patients spread over 1..``patients`` (deterministic)."""
    picks = [1 + (k * 7919) % patients for k in range(count)]
    facts = {i: patient_facts(i, seed) for i in set(picks)}
    return {q.label: [q.make(k, facts[i]) for k, i in enumerate(picks)] for q in QUERIES}


def show_args(args: Args) -> str:
    return "&".join(f"{k}={val}" for k, val in args)


# --------------------------------------------------------------------------------------------- sizes


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def plan_phases(sizes: list[int], seed: int) -> list[tuple[int, int]]:
    """(patients, resources) per phase: the fewest patients whose population, with the directory (sized
    for the last phase and loaded once before any patient), reaches each size."""
    estimate = math.ceil(max(sizes) / 25)  # the directory grows by one organization per 1,000 patients
    directory = sum(1 for _ in population.directory(estimate, seed))
    phases, total, i = [], directory, 0
    for size in sorted(sizes):
        while total < size:
            i += 1
            total += sum(1 for _ in population.patient_record(i, seed))
        phases.append((i, total))
    return phases


# --------------------------------------------------------------------------------------------- loading


def _load_patients(db_url: str, first: int, stop: int, step: int, seed: int) -> dict[str, int]:
    """A loader process: patients first, first+step, ... < stop through the API's write path."""
    from fhir_api import create_app, db
    from resources.repository import ResourceRepository
    from seed.loader import _put  # the very function seed.loader.load_population writes with

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    app = create_app({"DATABASE_URL": db_url})
    counts: Counter[str] = Counter()
    with app.app_context(), db.new_session() as session:
        repo = ResourceRepository(session)
        for i in range(first, stop, step):
            for resource in population.patient_record(i, seed):
                counts[_put(repo, resource)] += 1
        db.engine().dispose()
    return dict(counts)


def load_directory(db_url: str, patients: int, seed: int) -> int:
    from fhir_api import create_app, db
    from resources.repository import ResourceRepository
    from seed.loader import _put

    app = create_app({"DATABASE_URL": db_url})
    with app.app_context():
        with db.new_session() as session:
            repo = ResourceRepository(session)
            n = sum(1 for resource in population.directory(patients, seed) if _put(repo, resource))
        db.engine().dispose()
    return n


def load_patients(db_url: str, first: int, last: int, processes: int, seed: int, timeout: float) -> int:
    """Patients first..last in ``processes`` spawned processes (interleaved ranges); progress every 30 s."""
    conninfo = _conninfo(db_url)
    start = time.monotonic()
    ctx = multiprocessing.get_context("spawn")  # each process builds its own app and engine
    written: Counter[str] = Counter()
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        futures = [
            pool.submit(_load_patients, db_url, first + k, last + 1, processes, seed)
            for k in range(processes)
        ]
        try:
            while True:
                done, pending = wait(futures, timeout=30, return_when=FIRST_EXCEPTION)
                for f in done:
                    if f.exception() is not None:
                        raise RuntimeError("a loader process failed") from f.exception()
                if not pending:
                    break
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    raise RuntimeError(f"loading took more than {timeout:.0f} s")
                with psycopg.connect(conninfo) as conn:
                    n = conn.execute("SELECT count(*) FROM resource").fetchone()[0]  # type: ignore[index]
                print(f"    ... {n:,} resources in the database after {elapsed:.0f} s", flush=True)
        finally:
            for f in futures:
                f.cancel()
        for f in futures:
            written.update(f.result())
    return sum(written.values())


def _conninfo(db_url: str) -> str:
    return make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)


def vacuum_analyze(db_url: str) -> float:
    """Statistics and visibility map for the planner, then a checkpoint, so that flushing what the load
    wrote does not disturb the latency measurement that follows."""
    t0 = time.monotonic()
    with psycopg.connect(_conninfo(db_url), autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    return time.monotonic() - t0


def table_rows(db_url: str) -> dict[str, int]:
    with psycopg.connect(_conninfo(db_url)) as conn:
        rows = conn.execute(
            "SELECT relname, reltuples::bigint FROM pg_class WHERE relkind = 'r' AND relname = ANY(%s)",
            (sorted(BIG_TABLES),),
        ).fetchall()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
    return {**{name: int(n) for name, n in rows}, "_bytes": int(size)}


# --------------------------------------------------------------------------------------------- latency


@dataclass
class Latency:
    ms: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    included: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: int = 0  # searchsets carrying an OperationOutcome (e.g. an ignored parameter)

    def pct(self, p: float) -> float:
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else float("nan")

    @property
    def empty(self) -> int:
        return sum(1 for m in self.matches if m == 0)


def measure_latency(port: int, samples: dict[str, list[Args]], warmup: int, token: Any) -> dict[str, Latency]:
    """One sequential keep-alive client; queries interleaved round-robin so that a transient disturbance
    of the shared machine hits all of them alike. Warm-up repeats the first ``warmup`` parameter sets."""
    base = f"http://127.0.0.1:{port}/fhir/R4"
    out = {q.label: Latency() for q in QUERIES}
    rounds = len(samples[QUERIES[0].label])
    with requests.Session() as http:
        http.headers.update({"Accept": FHIR_JSON})  # requests asks for gzip, as most clients do
        for measured, ks in ((False, range(min(warmup, rounds))), (True, range(rounds))):
            for k in ks:
                for q in QUERIES:
                    args = samples[q.label][k]
                    http.headers["Authorization"] = f"Bearer {token()}"  # cached; renewed each minute
                    t0 = time.perf_counter()
                    try:
                        resp = http.get(f"{base}/{q.res_type}", params=args, timeout=30)
                        body = resp.content
                    except requests.RequestException as exc:
                        if measured:
                            out[q.label].errors.append(f"{show_args(args)}: {exc}")
                        continue
                    elapsed = (time.perf_counter() - t0) * 1000
                    if not measured:
                        continue
                    stats = out[q.label]
                    if resp.status_code != 200:
                        stats.errors.append(f"{show_args(args)}: HTTP {resp.status_code} {body[:200]!r}")
                        continue
                    stats.ms.append(elapsed)
                    modes = Counter(
                        e.get("search", {}).get("mode") for e in simplejson.loads(body).get("entry", [])
                    )
                    stats.matches.append(modes["match"])
                    stats.included.append(modes["include"])
                    stats.warnings += 1 if modes["outcome"] else 0
    return out


# --------------------------------------------------------------------------------------------- plans


@dataclass
class Statement:
    sql: str
    rows_read: int  # rows produced or filtered out by the scan nodes, over all loops
    ms: float  # planning + execution, as EXPLAIN ANALYZE reports them
    scans: list[str]
    seq_scans: list[str]  # sequential scans of big tables
    text: list[str]
    generic: Statement | None = None  # the same statement under a generic plan (see explain_generic)


@dataclass
class PlanReport:
    args: Args
    statements: list[Statement]

    @property
    def rows_read(self) -> int:
        return sum(s.rows_read for s in self.statements)

    @property
    def ms(self) -> float:
        return sum(s.ms for s in self.statements)

    @property
    def seq_scans(self) -> list[str]:
        return [x for s in self.statements for x in s.seq_scans]

    @property
    def generic_rows_read(self) -> int:
        return sum((s.generic or s).rows_read for s in self.statements)

    @property
    def generic_ms(self) -> float:
        return sum((s.generic or s).ms for s in self.statements)

    @property
    def generic_seq_scans(self) -> list[str]:
        return [x for s in self.statements for x in (s.generic or s).seq_scans]

    @property
    def generic_worse(self) -> bool:
        """A generic plan that reads far more than the custom one, or scans a big table sequentially."""
        return self.generic_rows_read > 2 * self.rows_read + 1000 or (
            bool(self.generic_seq_scans) and not self.seq_scans
        )


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _analyse(plan_json: Any, text: list[str], sql: str) -> Statement:
    top = plan_json[0] if isinstance(plan_json, list) else plan_json
    rows, scans, seqs = 0, [], []
    for node in _nodes(top["Plan"]):
        kind = node["Node Type"]
        if kind == "Bitmap Index Scan":  # its rows are counted by the Bitmap Heap Scan above it
            scans.append(f"Bitmap Index Scan on {node.get('Index Name')}")
            continue
        if not kind.endswith("Scan"):
            continue
        loops = node.get("Actual Loops", 1) or 0
        per_loop = node.get("Actual Rows", 0)
        per_loop += node.get("Rows Removed by Filter", 0) + node.get("Rows Removed by Index Recheck", 0)
        rows += round(per_loop * loops)
        relation = node.get("Relation Name", "?")
        where = f" using {node['Index Name']}" if node.get("Index Name") else ""
        scans.append(f"{kind}{where} on {relation}")
        if kind == "Seq Scan" and relation in BIG_TABLES:
            seqs.append(f"Seq Scan on {relation} ({round(per_loop * loops):,} rows, {loops} loops)")
    ms = float(top.get("Planning Time", 0.0)) + float(top.get("Execution Time", 0.0))
    return Statement(sql, rows, ms, list(dict.fromkeys(scans)), seqs, text)


def explain_custom(raw: Any, sql: str, params: Any) -> Statement:
    """EXPLAIN ANALYZE with the values bound as the app binds them: the planner sees them (custom plan)."""
    with raw.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)  # less overhead
        plan_json = cur.fetchone()[0]
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        text = [row[0] for row in cur.fetchall()]
    return _analyse(plan_json, text, psycopg.ClientCursor(raw).mogrify(sql, params))


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


def explain_generic(raw: Any, sql: str, params: Any) -> Statement | None:
    """The plan the statement gets without its values (``plan_cache_mode = force_generic_plan``).

    psycopg prepares a statement once a connection has run it 5 times, and PostgreSQL may then switch a
    prepared statement to such a generic plan (after 5 more executions, when it does not look costlier),
    so a long-lived server worker can run this plan rather than the custom one.
    """
    if not isinstance(params, dict):
        return None
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    prepared = _PLACEHOLDER.sub(number, sql)
    values = ", ".join(["%s"] * len(names))
    try:
        with raw.transaction(), raw.cursor() as cur:  # a savepoint: a failure here spoils nothing else
            cur.execute("SET plan_cache_mode = force_generic_plan")
            cur.execute("PREPARE bench_generic AS " + prepared)
            try:
                client = psycopg.ClientCursor(raw)
                explain = "EXPLAIN (ANALYZE, {}) EXECUTE bench_generic" + (f"({values})" if names else "")
                client.execute(explain.format("TIMING OFF, FORMAT JSON"), [params[n] for n in names])
                plan_json = client.fetchone()[0]  # type: ignore[index]
                client.execute(explain.format("BUFFERS"), [params[n] for n in names])
                text = [row[0] for row in client.fetchall()]
            finally:
                cur.execute("DEALLOCATE bench_generic")
                cur.execute("RESET plan_cache_mode")
    except psycopg.Error as exc:
        return Statement(prepared, 0, 0.0, [], [], [f"(no generic plan: {exc})"])
    return _analyse(plan_json, text, prepared)


def explain_queries(db_url: str, samples: dict[str, list[Args]]) -> dict[str, PlanReport]:
    """Run each query's first parameter set in-process as the view does, capture every SQL statement the
    engine sends (page, fetch, includes), and EXPLAIN ANALYZE each with the same bound values, under the
    custom plan the values get and under the generic plan a prepared statement may switch to."""
    from fhir_api import create_app, db
    from resources import interactions
    from resources.search.query import SearchContext
    from resources.search.results import parse_request

    app = create_app({"DATABASE_URL": db_url})
    cfg = app.config
    reports: dict[str, PlanReport] = {}
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        if not many:
            captured.append((statement, parameters))

    with app.app_context():
        engine = db.engine()
        try:
            for q in QUERIES:
                args = samples[q.label][0]
                with db.new_session() as session:
                    req = parse_request(
                        q.res_type,
                        args,
                        default_count=int(cfg["DEFAULT_PAGE_SIZE"]),
                        max_count=int(cfg["MAX_PAGE_SIZE"]),
                    )
                    interactions.search(session, req, SearchContext(session=session))  # warm
                    captured.clear()
                    event.listen(engine, "before_cursor_execute", capture)
                    try:
                        interactions.search(session, req, SearchContext(session=session))
                    finally:
                        event.remove(engine, "before_cursor_execute", capture)
                    raw = session.connection().connection.dbapi_connection
                    statements = []
                    for sql, params in list(captured):
                        if sql.lstrip().upper().startswith("SELECT"):
                            statement = explain_custom(raw, sql, params)
                            statement.generic = explain_generic(raw, sql, params)
                            statements.append(statement)
                    session.rollback()
                reports[q.label] = PlanReport(args, statements)
        finally:
            engine.dispose()
    return reports


# --------------------------------------------------------------------------------------------- phases


@dataclass
class Phase:
    patients: int
    resources: int
    load_seconds: float
    latency: dict[str, Latency]
    plans: dict[str, PlanReport]


def print_latency(phase: Phase) -> None:
    head = (
        f"  {'query':<54}{'p50 ms':>8}{'p95 ms':>8}{'max ms':>8}{'SQL ms':>8}"
        f"{'matches med (min-max)':>23}{'incl':>6}  p95 < {LATENCY_TARGET_MS:.0f}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for q in QUERIES:
        lat, plan = phase.latency[q.label], phase.plans.get(q.label)
        if not lat.ms:
            print(f"  {q.label:<54}  no successful request ({len(lat.errors)} errors)")
            continue
        matches = f"{statistics.median(lat.matches):g} ({min(lat.matches)}-{max(lat.matches)})"
        print(
            f"  {q.label:<54}{lat.pct(0.5):8.1f}{lat.pct(0.95):8.1f}{max(lat.ms):8.1f}"
            f"{plan.ms if plan else float('nan'):8.2f}{matches:>23}{statistics.median(lat.included):6g}"
            f"  {'PASS' if latency_ok(lat) else 'FAIL'}"
        )
    for q in QUERIES:
        lat = phase.latency[q.label]
        if lat.empty or lat.errors or lat.warnings:
            print(
                f"  ! {q.label}: {lat.empty} empty results, {len(lat.errors)} errors, "
                f"{lat.warnings} searchsets with an OperationOutcome"
            )
            for err in lat.errors[:3]:
                print(f"      {err}")


def latency_ok(lat: Latency) -> bool:
    return bool(lat.ms) and lat.pct(0.95) < LATENCY_TARGET_MS


def sane(lat: Latency) -> bool:
    return bool(lat.ms) and not lat.errors and not lat.empty and not lat.warnings


def print_plans(phase: Phase, full: bool, show_sql: bool) -> None:
    for n, q in enumerate(QUERIES, 1):
        plan = phase.plans[q.label]
        print(f"\n  [{n}] {q.res_type}?{show_args(plan.args)}")
        print(
            f"      custom plans:  SQL {plan.ms:6.2f} ms, rows read {plan.rows_read:>9,}, "
            f"sequential scans of big tables: {'; '.join(plan.seq_scans) or 'none'}"
        )
        print(
            f"      generic plans: SQL {plan.generic_ms:6.2f} ms, rows read {plan.generic_rows_read:>9,}, "
            f"sequential scans of big tables: {'; '.join(plan.generic_seq_scans) or 'none'}"
            + ("  <- WORSE than custom" if plan.generic_worse else "")
        )
        for m, st in enumerate(plan.statements, 1):
            print(f"      statement {m}: {st.ms:.2f} ms, rows read {st.rows_read:,}: {', '.join(st.scans)}")
            if show_sql:
                print("        SQL: " + " ".join(st.sql.split()))
            if full:
                for line in st.text:
                    print("        | " + line)
            g = st.generic
            if g is not None and (
                g.rows_read > 2 * st.rows_read + 1000 or (g.seq_scans and not st.seq_scans)
            ):
                print(f"      statement {m}, generic plan: {g.ms:.2f} ms, rows read {g.rows_read:,}")
                if full:
                    for line in g.text:
                        print("        | " + line)


# --------------------------------------------------------------------------------------------- scaling


@dataclass
class Growth:
    factor: float  # p95 at GROWTH_AT over p95 at the base size (projected or measured)
    measured: bool
    note: str


def growth(base: Phase, first: Phase, big: Phase | None, label: str) -> Growth | None:
    """p95 growth from ``base`` to GROWTH_AT resources.

    Measured when a phase of that size ran. Otherwise projected per SQL statement: the rows its plan reads
    are fitted as a + b * resources (b >= 0) through ``first`` and ``base``, its SQL time at ``base``
    grows with the rows read at GROWTH_AT, and the rest of the p95 (HTTP, Python, JSON) stays.
    """
    p95 = base.latency[label].pct(0.95)
    plan = base.plans[label]
    if big is not None:
        big_p95, big_plan = big.latency[label].pct(0.95), big.plans[label]
        note = (
            f"p95 {p95:.1f} -> {big_p95:.1f} ms (measured); rows read {plan.rows_read:,} -> "
            f"{big_plan.rows_read:,}; SQL {plan.ms:.1f} -> {big_plan.ms:.1f} ms"
        )
        return Growth(big_p95 / p95, True, note)
    if first is base:
        return None
    before = first.plans[label]
    pairs = [((before.rows_read, before.ms), (plan.rows_read, plan.ms))]  # statements differ: as a whole
    if len(before.statements) == len(plan.statements):
        pairs = [
            ((a.rows_read, a.ms), (b.rows_read, b.ms))
            for a, b in zip(before.statements, plan.statements, strict=True)
        ]
    n1, n2 = first.resources, base.resources
    extra, rows_at = 0.0, 0.0
    for (r1, _), (r2, ms) in pairs:
        at = r2 + max(0.0, (r2 - r1) / (n2 - n1)) * (GROWTH_AT - n2)
        extra += ms * (at / r2 - 1) if r2 else 0.0
        rows_at += at
    projected = p95 + extra
    r1, r2 = before.rows_read, plan.rows_read
    note = (
        f"rows read {r1:,} -> {r2:,} (x{r2 / r1 if r1 else 1:.2f} for x{n2 / n1:.2f} data) -> "
        f"{rows_at:,.0f} at {GROWTH_AT:,}; SQL {plan.ms:.1f} -> {plan.ms + extra:.1f} ms; "
        f"p95 {p95:.1f} -> {projected:.1f} ms "
        f"(measured p95 {first.latency[label].pct(0.95):.1f} -> {p95:.1f})"
    )
    if plan.seq_scans:
        note += "; SEQ SCAN: " + "; ".join(plan.seq_scans)
    return Growth(projected / p95, False, note)


# --------------------------------------------------------------------------------------------- indexing


@dataclass
class CreateCost:
    res_type: str
    index_rows: int  # index rows one such resource writes
    indexed: LoadResult
    plain: LoadResult

    @property
    def ratio(self) -> float:
        return self.indexed.rps / self.plain.rps if self.plain.rps else 0.0

    @property
    def ok(self) -> bool:
        return self.ratio >= INDEXING_TARGET and self.indexed.errors == 0 and self.plain.errors == 0


def observation_body(seed: int) -> dict[str, Any]:
    body = next(r for r in population.patient_record(1, seed) if r["resourceType"] == "Observation")
    return {k: val for k, val in body.items() if k != "id"}


def index_row_count(res_type: str, body: dict[str, Any]) -> int:
    from resources.search.indexer import index_rows

    return sum(len(rows) for rows in index_rows(res_type, "x", body).values())


def ensure_audit_key(work: Path) -> None:
    """The run's audit signing key (servers refuse to start without one), in the environment."""
    if not os.environ.get("FHIR_AUDIT_SIGNING_KEY_FILE"):
        from audit.signing import generate_key_file as generate_audit_key

        path = work / "audit-signing.jwk"
        generate_audit_key(path)
        os.environ["FHIR_AUDIT_SIGNING_KEY_FILE"] = str(path)


def server_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of a server: no FHIR_* of the caller's, but the run's encryption keyring and audit
    signing key."""
    env = {k: val for k, val in os.environ.items() if not k.startswith("FHIR_")}
    names = ("FHIR_CRYPTO_KEY_FILE", "FHIR_AUDIT_SIGNING_KEY_FILE")
    keys = {name: os.environ[name] for name in names if os.environ.get(name)}
    # One bench client sends what a whole hospital would: per-client rate limits are not what is measured.
    return {**env, "FHIR_DATABASE_URL": db_url, "FHIR_RATE_LIMIT_ENABLED": "false", **keys, **extra}


def authorized(work: Path, env: dict[str, str], port: int) -> tuple[dict[str, str], Any]:
    """A server environment with its own token-signing key and public URL, and a minter of its tokens
    (every FHIR data request needs a bearer token whose audience is that URL)."""
    base = f"http://127.0.0.1:{port}"
    key_file = work / f"signing-{port}.jwk"
    minter = token_minter(key_file, base)
    return {**env, "FHIR_AUTH_SIGNING_KEY_FILE": str(key_file), "FHIR_PUBLIC_URL": base}, minter


def upgrade(fhir_api_bin: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(fhir_api_bin), "db", "upgrade"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"fhir-api db upgrade failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def measure_indexing(
    args: argparse.Namespace, fhir_api_bin: Path, work: Path
) -> tuple[list[CreateCost], dict[str, int]]:
    """Create throughput of a normal server and of one started with FHIR_SEARCH_INDEXING=false, each on its
    own fresh database; best of ``--rounds``, alternating which goes first. Returns the index rows each
    database holds at the end too (the second must hold none)."""
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    if args.loader == "wrk" and not use_wrk:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    load = run_wrk if use_wrk else run_python
    bodies = {"Patient": PATIENT, "Observation": observation_body(args.seed)}
    costs: list[CreateCost] = []
    servers: list[Server] = []
    with (
        bench_database(args.database_url, "fhir_bench_search") as db_indexed,
        bench_database(args.database_url, "fhir_bench_search") as db_plain,
    ):
        dbs = {"indexed": db_indexed, "no-index": db_plain}
        try:
            ports = {}
            minters: dict[str, Any] = {}
            for name, db_url in dbs.items():
                env = server_env(db_url, FHIR_SEARCH_INDEXING="true" if name == "indexed" else "false")
                upgrade(fhir_api_bin, env)
                port = ports[name] = free_port()
                env, minters[name] = authorized(work, env, port)
                argv = [str(fhir_api_bin), "serve", "--host", "127.0.0.1", "--port", str(port)]
                servers.append(Server(name, [*argv, "--workers", str(args.create_workers)], env, port, work))
            for srv in servers:
                srv.start()
            for srv in servers:
                srv.wait_ready(args.create_workers)
            print(
                f"  load generator: {'wrk' if use_wrk else 'python thread pool (wrk not found)'}; "
                f"{args.create_clients} connections; {args.create_workers} sync workers per server; "
                f"best of {args.rounds} x {args.duration:g} s"
            )
            for res_type, body in bodies.items():
                body_file = work / f"{res_type}.json"
                body_file.write_text(simplejson.dumps(body, use_decimal=True, separators=(",", ":")))
                path = f"/fhir/R4/{res_type}"
                targets = {
                    n: Target(n, p, path, path + "/", FHIR_JSON, token=minters[n]) for n, p in ports.items()
                }
                for t in targets.values():  # warm-up
                    load(t, "create", args.create_clients, args.warmup_seconds, body_file)
                runs: dict[str, list[LoadResult]] = {n: [] for n in targets}
                for rnd in range(args.rounds):
                    for n in ("indexed", "no-index") if rnd % 2 == 0 else ("no-index", "indexed"):
                        r = load(targets[n], "create", args.create_clients, args.duration, body_file)
                        runs[n].append(r)
                        print(
                            f"    round {rnd + 1}  {res_type:<12} {n:<9} {r.rps:8,.0f} creates/s "
                            f"({r.requests} requests, {r.errors} failed)",
                            flush=True,
                        )
                costs.append(
                    CreateCost(
                        res_type,
                        index_row_count(res_type, body),
                        best_of(runs["indexed"]),
                        best_of(runs["no-index"]),
                    )
                )
        finally:
            for srv in servers:
                srv.stop()
        index_rows: dict[str, int] = {}
        for name, db_url in dbs.items():
            with psycopg.connect(_conninfo(db_url)) as conn:
                resources = conn.execute("SELECT count(*) FROM resource").fetchone()[0]  # type: ignore[index]
                index_rows[name] = sum(
                    conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                    for t in sorted(BIG_TABLES)
                    if t.startswith("search_")
                )
            print(f"  {name:<9} database: {resources:,} resources, {index_rows[name]:,} index rows")
    return costs, index_rows


def print_indexing(costs: list[CreateCost]) -> None:
    head = f"  {'body':<13}{'index rows':>11}{'indexed/s':>11}{'no-index/s':>12}{'ratio':>7}  target"
    print("\n" + head)
    print("  " + "-" * (len(head) + 6))
    for c in costs:
        print(
            f"  {c.res_type:<13}{c.index_rows:>11}{c.indexed.rps:>11,.0f}{c.plain.rps:>12,.0f}{c.ratio:>7.2f}"
            f"  >= {INDEXING_TARGET}  {'PASS' if c.ok else 'FAIL'}"
        )
    print("  latency p50 / p99 in ms (indexed | no-index):")
    for c in costs:
        print(
            f"    {c.res_type:<12} {c.indexed.p50_ms or 0:6.2f} / {c.indexed.p99_ms or 0:6.2f} | "
            f"{c.plain.p50_ms or 0:6.2f} / {c.plain.p99_ms or 0:6.2f}"
        )


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own databases there",
    )
    p.add_argument(
        "--scale",
        choices=("100k", "1m"),
        default="100k",
        help="100k: phases of 50,000 and 100,000 resources, 1,000,000 projected (default); "
        "1m: phases of 100,000 and 1,000,000 resources, both measured (loading takes about an hour)",
    )
    p.add_argument("--sizes", default=None, help="phase sizes in resources instead, e.g. 5k,10k")
    p.add_argument("--seed", type=int, default=42, help="population seed (default 42)")
    p.add_argument("--load-processes", type=int, default=os.cpu_count() or 2, help="parallel loaders")
    p.add_argument("--requests", type=int, default=200, help="measured requests per query and phase")
    p.add_argument("--warmup", type=int, default=20, help="warm-up requests per query and phase")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers of the searched server")
    p.add_argument("--plans", choices=("full", "summary"), default="full", help="plans of the last phase")
    p.add_argument("--show-sql", action="store_true", help="print each statement's SQL with its values")
    p.add_argument("--skip-search", action="store_true", help="only the indexing-cost measurement")
    p.add_argument("--skip-indexing", action="store_true", help="only the search measurement")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per create measurement")
    p.add_argument("--rounds", type=int, default=2, help="create measurements per server; the best counts")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="create warm-up per server and body")
    p.add_argument("--create-workers", type=int, default=4, help="gunicorn workers of the create servers")
    p.add_argument("--create-clients", type=int, default=8, help="connections of the create load")
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto", help="create load")
    p.add_argument("--load-timeout", type=float, default=7200.0, help="seconds allowed per load phase")
    p.add_argument("--check", action="store_true", help="exit 1 when any target is missed")
    return p.parse_args(argv)


def _raise_on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that the finally blocks stop the servers and drop the databases


def run_search(args: argparse.Namespace, fhir_api_bin: Path, work: Path) -> list[Phase]:
    if args.sizes:
        sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    else:
        sizes = [50_000, 100_000] if args.scale == "100k" else [100_000, 1_000_000]
    plan = plan_phases(sizes, args.seed)
    samples = sample_args(plan[0][0], args.requests, args.seed)  # first-phase patients: valid in every phase
    phases: list[Phase] = []
    with bench_database(args.database_url, "fhir_bench_search") as db_url:
        env = server_env(db_url)
        upgrade(fhir_api_bin, env)
        print(f"database {make_url(db_url).database}; phases of " + ", ".join(f"{n:,}" for _, n in plan))
        t0 = time.monotonic()
        loaded = load_directory(db_url, plan[-1][0], args.seed)
        print(
            f"  directory (organizations, practitioners, roles): {loaded} resources, "
            f"{time.monotonic() - t0:.1f} s"
        )
        done = 0
        for patients, _ in plan:
            print(
                f"\nphase: patients {done + 1:,}..{patients:,} through the API's write path (validation, "
                f"storage, indexing; a commit per resource), {args.load_processes} processes",
                flush=True,
            )
            t0 = time.monotonic()
            new = load_patients(db_url, done + 1, patients, args.load_processes, args.seed, args.load_timeout)
            seconds = time.monotonic() - t0
            loaded, done = loaded + new, patients
            print(f"  loaded {new:,} resources in {seconds:.0f} s: {new / seconds:,.0f} resources/s")
            vacuum = vacuum_analyze(db_url)
            rows = table_rows(db_url)
            per_table = ", ".join(
                f"{t.removeprefix('search_')} {n:,}"
                for t, n in sorted(rows.items())
                if t.startswith("search_")
            )
            index_total = sum(n for t, n in rows.items() if t.startswith("search_"))
            print(
                f"  VACUUM ANALYZE + CHECKPOINT {vacuum:.0f} s; {rows.get('resource', 0):,} resources; "
                f"{index_total:,} index rows ({per_table}); database {rows['_bytes'] / 2**20:,.0f} MB",
                flush=True,
            )
            port = free_port()
            srv_env, minter = authorized(work, env, port)
            argv = [str(fhir_api_bin), "serve", "--host", "127.0.0.1", "--port", str(port)]
            srv = Server(f"search-{loaded}", [*argv, "--workers", str(args.workers)], srv_env, port, work)
            try:
                srv.start()
                srv.wait_ready(args.workers)
                t0 = time.monotonic()
                latency = measure_latency(port, samples, args.warmup, minter)
                print(
                    f"  timed {args.requests} requests per query after {args.warmup} warm-up, one sequential "
                    f"client, {args.workers} sync workers: {time.monotonic() - t0:.0f} s "
                    f"(machine load average after: {os.getloadavg()[0]:.1f})"
                )
            finally:
                srv.stop()
            phase = Phase(patients, loaded, seconds, latency, explain_queries(db_url, samples))
            phases.append(phase)
            print(f"\n  latency at {loaded:,} resources ({patients:,} patients):")
            print_latency(phase)
            full = patients == plan[-1][0] and args.plans == "full"
            print(
                f"\n  plans at {loaded:,} resources "
                "(EXPLAIN ANALYZE of every statement, first parameter set):"
            )
            print_plans(phase, full=full, show_sql=args.show_sql)
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    fhir_api_bin = BIN / "fhir-api"
    if not fhir_api_bin.exists():
        fhir_api_bin = Path(shutil.which("fhir-api") or "fhir-api")
    with psycopg.connect(_conninfo(args.database_url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(f"PostgreSQL {version}; {os.cpu_count()} cpus; population seed {args.seed}")
    started = time.monotonic()
    phases: list[Phase] = []
    costs: list[CreateCost] = []
    index_rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="fhir-bench-search-") as tmp:
        work = Path(tmp)
        from crypto.kms import generate_key_file

        keyring = work / "keyring.json"  # protected elements are sealed, as in production
        generate_key_file(keyring)
        os.environ["FHIR_CRYPTO_KEY_FILE"] = str(keyring)  # the loader processes' apps read it too
        ensure_audit_key(work)
        if not args.skip_search:
            phases = run_search(args, fhir_api_bin, work)
        if not args.skip_indexing:
            print("\nindexing cost: create throughput with and without index rows, each on a fresh database")
            costs, index_rows = measure_indexing(args, fhir_api_bin, work)
            print_indexing(costs)
    ok = summary(phases, costs, index_rows)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    return 1 if (args.check and not ok) else 0


def summary(phases: list[Phase], costs: list[CreateCost], index_rows: dict[str, int]) -> bool:
    rows: list[tuple[str, str, bool]] = []
    notes: list[str] = []
    if phases:
        base = max(
            (p for p in phases if p.resources < 0.9 * GROWTH_AT), key=lambda p: p.resources, default=None
        )
        base = base or phases[0]
        big = next((p for p in phases if p.resources >= 0.9 * GROWTH_AT), None)
        for q in QUERIES:
            lat = base.latency[q.label]
            rows.append(
                (
                    f"p95 < {LATENCY_TARGET_MS:g} ms at {base.resources:,}: {q.label}",
                    f"{lat.pct(0.95):.1f} ms",
                    latency_ok(lat),
                )
            )
        for q in QUERIES:
            g = growth(base, phases[0], big, q.label)
            name = f"p95 at {GROWTH_AT:,} < {GROWTH_TARGET:g} x p95 at {base.resources:,}: {q.label}"
            if g is None:
                rows.append((name, "n/a: needs two phases", False))
                continue
            passed = g.factor < GROWTH_TARGET and (g.measured or not base.plans[q.label].seq_scans)
            rows.append((name, f"x{g.factor:.2f} {'measured' if g.measured else 'projected'}", passed))
            notes.append(f"  {q.label}: {g.note}")
            if base.plans[q.label].generic_worse:
                plan = base.plans[q.label]
                notes.append(
                    f"    generic plans read {plan.generic_rows_read:,} rows in {plan.generic_ms:.1f} ms "
                    f"(custom {plan.rows_read:,} in {plan.ms:.1f} ms)"
                    + (f"; {'; '.join(plan.generic_seq_scans)}" if plan.generic_seq_scans else "")
                )
        for q in QUERIES:
            bad = [p.resources for p in phases if not sane(p.latency[q.label])]
            rows.append(
                (f"non-empty results, no errors: {q.label}", "ok" if not bad else f"not at {bad}", not bad)
            )
    for c in costs:
        rows.append(
            (
                f"create indexed / no-index >= {INDEXING_TARGET:g}: {c.res_type} ({c.index_rows} index rows)",
                f"{c.indexed.rps:,.0f} / {c.plain.rps:,.0f} = {c.ratio:.2f}",
                c.ok,
            )
        )
    if index_rows:
        passed = index_rows["no-index"] == 0 and index_rows["indexed"] > 0
        rows.append(("the no-index server wrote no index rows", f"{index_rows['no-index']:,} rows", passed))
    print("\nSUMMARY")
    width = max((len(r[0]) for r in rows), default=40)
    print(f"{'target':<{width}}  {'measured':<24}result")
    print("-" * (width + 32))
    for name, measured, passed in rows:
        print(f"{name:<{width}}  {measured:<24}{'PASS' if passed else 'FAIL'}")
    if notes:
        print("\nscaling evidence (custom plans of the first parameter set; SQL = EXPLAIN ANALYZE time):")
        print("\n".join(notes))
    return all(passed for _, _, passed in rows)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped and databases dropped", file=sys.stderr)
        sys.exit(130)
