"""Subscriptions: notification latency (commit to receiver) and the price of matching on create throughput.

One run, on a PostgreSQL database this script creates and drops, against the app under gunicorn
(``fhir-api serve``, ``--workers`` processes, each running its subscription worker thread with the default
``FHIR_SUBSCRIPTION_POLL_SECONDS``) and a receiver process on loopback (a stdlib ``ThreadingHTTPServer``
that records, per notification, its arrival time, ``X-Subscription-Id``, ``X-Event-Number``, the focus
resource id from the body and whether the ``X-Signature`` verifies with the subscription's secret):

1. **Create throughput**: ``POST /fhir/R4/Observation`` (one Patient's vital sign; protection and audit on,
   as in production) with wrk (or a Python thread-pool client) at each ``--clients`` level for ``--seconds``,
   in three phases:

   - ``none``: no subscription at all (first round), or all of them ``off`` (later rounds);
   - ``watched``: ``--subscriptions`` (100) active rest-hook subscriptions, 80 % on Observation (distinct
     codes, with ``status``, ``category`` or ``patient`` besides the code), the rest on Patient, Encounter,
     Condition, DiagnosticReport and MedicationRequest; the created Observation matches none of them. Every
     create writes its outbox row and the workers match it against the 80 Observation subscriptions: this
     is the cost of matching. Target ``watched / none >= 0.8``, both in creates/s and in sustained creates/s
     (the creates over the load's time plus the time until the last of them was matched: matching that
     falls behind the load is work put off, not saved);
   - ``notified`` (informative): the same, but every create matches ``--matching`` (1) of the subscriptions,
     so each create also causes that many signed deliveries (read of the version, POST, attempt row, audit
     event). Deliveries left when the load stops are waited for, and their CPU is counted in the CPU per
     create.

   ``--rounds`` (2) rounds; even rounds run the phases in reverse order (the subscriptions are switched
   ``off`` and back ``on`` with a PUT); the best round counts per cell. The queue is drained after every cell.

2. **Notification latency**: with the subscriptions active, one client sends matching creates at each of
   ``--rates`` (2 and 10 a second; the server takes 200+ a second) for ``--latency-seconds`` (20), one after
   the other (so commit order is send order). For each created id: the time its 201 arrived (just after the
   commit) and the time the receiver got the notification naming that id, from the subscription(s) expected
   to match it; both clocks are this machine's ``time.time()``. Printed: p50 / p95 / max, delivered /
   expected, duplicates, strays (an id or subscription not expected), bad signatures, event numbers against
   commit order and against arrival order, and each latency split at the event's ``created`` time stamp:
   when the dispatcher had taken the change (and the live subscriptions), before matching: the first part
   is the poll interval plus any lock wait, the second matching, its commit, the claim and the delivery.

The app and every process this script starts are stopped at the end, also on error, Ctrl-C or SIGTERM, and
the database is dropped. ``--json PATH`` writes the figures; ``--check`` exits 1 when the target is missed.

    .venv/bin/python bench/subscriptions.py [--seconds 10] [--clients 1,8] [--subscriptions 100] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from auth import Cpu, CpuMeter
from crud import (
    BIN,
    FHIR_JSON,
    PATIENT,
    ROOT,
    LoadResult,
    Server,
    Target,
    bench_database,
    free_port,
    http_request,
    run_python,
    run_wrk,
)
from load import NOISY, load_average
from search import _conninfo, upgrade, vacuum_analyze
from sqlalchemy.engine import make_url

TARGET = 0.8  # creates/s with the subscriptions active (none matching) over creates/s with none
DB_PREFIX = "fhir_bench_subs"
MAX_SECONDS = 200.0  # a token is minted per run and cached 60 s; tokens live 300 s
SCOPE = "system/*.cruds"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MATCHED_CODE = "59408-5"  # what the "notified" creates carry (and the latency creates): watched
UNMATCHED_CODE = "59407-7"  # what the "watched" creates carry: nobody's criteria
PHASES = ("none", "watched", "notified")
PHASE_TEXT = {
    "none": "no active subscription",
    "watched": "{n} active, none matching",
    "notified": "{n} active, {m} matching each",
}

# --------------------------------------------------------------------------------------------- receiver

# The receiver, run as ``python -c RECEIVER`` in its own process (so that its work is not this process's):
# POST /hook/<n> records a notification; POST /_secrets takes {subscription id: secret}; GET /_records?since=K
# answers the records from the K-th on, as JSON lists [arrival, subscription, event number, focus id,
# signature ok (true/false/null: no secret known), replay].
RECEIVER = r"""
import hashlib, hmac, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

records, secrets, lock = [], {}, threading.Lock()


def focus_of(body):
    try:
        bundle = json.loads(body)
        entries = bundle.get("entry") or []
        if len(entries) > 1 and entries[1].get("fullUrl"):
            return entries[1]["fullUrl"].rstrip("/").rsplit("/", 1)[-1]
        for p in entries[0]["resource"]["parameter"]:
            for part in p.get("part") or []:
                if part.get("name") == "focus":
                    return part["valueReference"]["reference"].split("/_history/")[0].rsplit("/", 1)[-1]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    return None


def signed(sub, timestamp, header, body):
    secret = secrets.get(sub)
    if secret is None:
        return None
    message = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, part.strip()) for part in header.split(","))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        arrived = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_secrets":
            with lock:
                secrets.update(json.loads(body))
            return self.answer(204)
        sub = self.headers.get("X-Subscription-Id", "")
        number = int(self.headers.get("X-Event-Number") or 0)
        ok = signed(sub, self.headers.get("X-Timestamp", ""), self.headers.get("X-Signature", ""), body)
        replay = self.headers.get("X-Replay") == "true"
        with lock:
            records.append([arrived, sub, number, focus_of(body), ok, replay])
        self.answer(200)

    def do_GET(self):
        since = int(self.path.partition("since=")[2] or 0) if self.path.startswith("/_records") else 0
        with lock:
            data = json.dumps(records[since:]).encode()
        self.answer(200, data)

    def answer(self, code, data=b""):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, *args):
        return None


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Receiver:
    """The receiver process, in its own process group (its pid is the group's id, counted apart)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError("the receiver did not start")
        self.port = int(line)
        self.records: list[list[Any]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{n}"

    def add_secrets(self, secrets: dict[str, str]) -> None:
        status, _, _ = http_request(self.port, "POST", "/_secrets", json.dumps(secrets).encode())
        if status != 204:
            raise RuntimeError(f"the receiver answered {status} to its secrets")

    def fetch(self) -> list[list[Any]]:
        """Every record so far (the new ones fetched)."""
        status, _, body = http_request(self.port, "GET", f"/_records?since={len(self.records)}", timeout=30)
        if status != 200:
            raise RuntimeError(f"the receiver answered {status} to GET /_records")
        self.records.extend(json.loads(body))
        return self.records

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --------------------------------------------------------------------------------------------- resources


def observation(code: str, patient_id: str) -> dict[str, Any]:
    """A vital sign of one Patient (about 0.6 kB), as a monitor would post it."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}],
                "text": "Vital Signs",
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": code, "display": "Oxygen saturation by pulse oximetry"}],
            "text": "SpO2",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-06-29T10:15:00+00:00",
        "issued": "2024-06-29T10:20:00+00:00",
        "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }


def criteria_list(count: int, matching: int, patient_id: str) -> list[str]:
    """``count`` criteria: 80 % on Observation (the first ``matching`` match the MATCHED_CODE creates, each
    in another form; the others watch codes of their own), the rest on other types. None matches the
    UNMATCHED_CODE creates."""
    on_obs = max(matching, round(count * 0.8))
    forms = (
        "code={c}",
        "code={c}&status=final",
        "category=vital-signs&code={c}",
        "patient=Patient/{p}&code={c}",
    )
    out = []
    for i in range(on_obs):
        code = f"{LOINC}|{MATCHED_CODE if i < matching else f'9{i:04d}-{i % 10}'}"
        out.append("Observation?" + forms[i % len(forms)].format(c=code, p=patient_id))
    others = (
        "Patient?family=Bench{i}",
        "Encounter?status=in-progress&patient=Patient/{p}",
        "Condition?code=http://snomed.info/sct|{i}000",
        "DiagnosticReport?code=http://loinc.org|8{i:04d}-1",
        "MedicationRequest?status=active&intent=order&code=http://www.nlm.nih.gov/research/umls/rxnorm|{i}",
    )
    for i in range(count - on_obs):
        out.append(others[i % len(others)].format(i=i, p=patient_id))
    return out


def subscription(criteria: str, endpoint: str, n: int, status: str = "requested") -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": status,
        "reason": f"bench subscription {n}",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR_JSON,  # full-resource notifications
            "header": [f"Authorization: Bearer bench-receiver-{n}"],
        },
    }


def created_id(headers: dict[str, str], res_type: str) -> str:
    location = next((v for k, v in headers.items() if k.lower() == "location"), "")
    tail = location.split(f"/{res_type}/", 1)[-1]
    if not location or not tail:
        raise RuntimeError(f"no Location for the created {res_type}")
    return tail.split("/", 1)[0]


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), None)


# --------------------------------------------------------------------------------------------- the client


def register_client(fhir_api: Path, env: dict[str, str], work: Path) -> str:
    """``fhir-api clients add`` (a clinical system allowed to subscribe): the subscriptions' owner must be a
    registered client, since every delivery checks what its client may read today."""
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384")
    key.ensure_kid()
    jwks = work / "subscriber.jwks.json"
    jwks.write_text(json.dumps({"keys": [{**key.as_dict(private=False), "alg": "ES384"}]}))
    done = subprocess.run(
        [str(fhir_api), "clients", "add", "bench-subscriber", "--role", "clinical-system",
         "--jwks-file", str(jwks), "--scope", SCOPE],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"fhir-api clients add failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1].strip()


class Minter:
    """Access tokens of the registered client, signed with the key the server uses, by the function its token
    endpoint uses; one is reused for 60 s (tokens live 300 s)."""

    def __init__(self, key_file: Path, public_url: str, db_url: str, client_id: str) -> None:
        from fhir_api import create_app
        from fhir_api.auth.keys import generate_signing_key_file

        generate_signing_key_file(key_file)
        overrides = {"AUTH_SIGNING_KEY_FILE": str(key_file), "PUBLIC_URL": public_url}
        self.app = create_app({**overrides, "DATABASE_URL": db_url, "AUDIT": False})
        self.client_id = client_id
        self.token, self.at = "", float("-inf")
        self.lock = threading.Lock()

    def __call__(self) -> str:
        from fhir_api.auth import tokens

        with self.lock:
            if time.monotonic() - self.at > 60:
                with self.app.test_request_context():
                    self.token, _ = tokens.issue(
                        client_id=self.client_id, role="clinical-system", scope=SCOPE
                    )
                self.at = time.monotonic()
            return self.token

    def close(self) -> None:
        from fhir_api import db

        with contextlib.suppress(Exception):
            db.dispose(self.app)  # its connections and its revocation listener


# --------------------------------------------------------------------------------------------- database


class Probe:
    """One autocommit connection to the bench's database, for counting."""

    def __init__(self, db_url: str) -> None:
        self.conn = psycopg.connect(_conninfo(db_url), autocommit=True)

    def one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def observations(self) -> int:
        return int(self.one("SELECT count(*) FROM resource WHERE res_type = 'Observation'"))

    def waiting(self) -> tuple[int, int]:
        """(changes not yet matched, events not yet settled)."""
        changes = int(self.one("SELECT count(*) FROM subscription_change"))
        pending = int(self.one("SELECT count(*) FROM subscription_delivery WHERE status = 'pending'"))
        return changes, pending

    def events(self, sub_ids: list[str]) -> int:
        return int(self.one("SELECT count(*) FROM subscription_delivery WHERE sub_id = ANY(%s)", (sub_ids,)))

    def statuses(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, count(*) FROM subscription_state GROUP BY status").fetchall()
        return {str(s): int(n) for s, n in rows}

    def settled(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT status, count(*) FROM subscription_delivery GROUP BY status"
        ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def queued_at(self, res_ids: list[str]) -> dict[tuple[str, str], tuple[float, float | None]]:
        """(subscription, resource) -> (the event's created time, its attempt's round trip in s)."""
        rows = self.conn.execute(
            "SELECT d.sub_id, d.res_id, extract(epoch FROM d.created), min(a.latency_ms) "
            "FROM subscription_delivery d LEFT JOIN subscription_attempt a ON a.delivery_id = d.id "
            "WHERE d.res_id = ANY(%s) AND NOT d.replay GROUP BY d.id",
            (res_ids,),
        ).fetchall()
        return {(s, r): (float(t), None if ms is None else ms / 1000) for s, r, t, ms in rows}

    def close(self) -> None:
        self.conn.close()


def drain(probe: Probe, timeout: float = 300.0) -> float:
    """Seconds until every change is matched and every event settled."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if probe.waiting() == (0, 0):
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError(f"the subscription queue did not drain in {timeout:.0f} s: {probe.waiting()}")


# --------------------------------------------------------------------------------------------- throughput


@dataclass
class Cell:
    phase: str
    clients: int
    round: int
    load: LoadResult
    created: int  # Observations the database gained
    queued: int  # events queued for the notified subscriptions
    delivered: int  # notifications the receiver got meanwhile (until drained)
    backlog: tuple[int, int]  # (changes, events) waiting when the load stopped
    drain_s: float
    cpu: Cpu  # during the load
    cpu_total: Cpu  # the load and the drain after it

    @property
    def rps(self) -> float:
        return self.load.rps

    @property
    def sustained(self) -> float:
        """Creates per second until the last of them was matched (and delivered): the rate the pipeline
        keeps up with, where ``rps`` leaves out the backlog the cell left behind."""
        spent = self.load.seconds + self.drain_s
        return self.created / spent if spent else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU ms per create: the app and the receiver, the database's PostgreSQL backends; drain included."""
        c = self.cpu_total
        return (c.servers + c.postgres) * 1000 / self.created if self.created else 0.0


@dataclass
class Setup:
    port: int
    db_url: str
    target: Target
    bodies: dict[str, Path]  # phase -> body file
    sub_bodies: list[dict[str, Any]] = field(default_factory=list)
    sub_ids: list[str] = field(default_factory=list)
    matched_ids: list[str] = field(default_factory=list)
    active: bool = False


def create_subscriptions(
    setup: Setup, receiver: Receiver, count: int, matching: int, patient_id: str, token: Callable[[], str]
) -> float:
    t0 = time.monotonic()
    headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    secrets = {}
    for n, criteria in enumerate(criteria_list(count, matching, patient_id)):
        body = subscription(criteria, receiver.url(n), n)
        status, resp_headers, text = http_request(
            setup.port, "POST", "/fhir/R4/Subscription", json.dumps(body).encode(),
            {**headers, "Authorization": f"Bearer {token()}"}, timeout=30,
        )  # fmt: skip
        if status != 201:
            raise RuntimeError(f"creating Subscription {criteria!r} answered {status}: {text[:500]!r}")
        sub_id = created_id(resp_headers, "Subscription")
        stored = json.loads(text) if text else {}
        if stored.get("status") != "active":
            raise RuntimeError(f"Subscription/{sub_id} is {stored.get('status')!r}, not active")
        secrets[sub_id] = header(resp_headers, "X-Subscription-Secret") or ""
        setup.sub_bodies.append({**body, "id": sub_id})
        setup.sub_ids.append(sub_id)
        if n < matching:
            setup.matched_ids.append(sub_id)
    receiver.add_secrets(secrets)
    setup.active = True
    return time.monotonic() - t0


def switch(setup: Setup, on: bool, token: Callable[[], str]) -> float:
    """Every subscription ``off`` (nothing matched, no outbox row) or back on (``requested``: active)."""
    t0 = time.monotonic()
    for body in setup.sub_bodies:
        new = {**body, "status": "requested" if on else "off"}
        status, _, text = http_request(
            setup.port, "PUT", f"/fhir/R4/Subscription/{body['id']}", json.dumps(new).encode(),
            {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Authorization": f"Bearer {token()}"},
            timeout=30,
        )  # fmt: skip
        if status != 200 or json.loads(text).get("status") != ("active" if on else "off"):
            raise RuntimeError(
                f"switching Subscription/{body['id']} {'on' if on else 'off'}: {status} {text[:300]!r}"
            )
    setup.active = on
    return time.monotonic() - t0


def measure_cell(
    setup: Setup,
    probe: Probe,
    receiver: Receiver,
    load: Callable[..., LoadResult],
    meter: Callable[[], CpuMeter],
    phase: str,
    clients: int,
    seconds: float,
    rnd: int,
) -> Cell:
    drain(probe)
    before_obs, before_events = probe.observations(), probe.events(setup.matched_ids)
    before_records = len(receiver.fetch())
    with meter() as total:
        with meter() as during:
            r = load(setup.target, "create", clients, seconds, setup.bodies[phase])
        backlog = probe.waiting()
        drain_s = drain(probe)
    created = probe.observations() - before_obs
    queued = probe.events(setup.matched_ids) - before_events
    delivered = len(receiver.fetch()) - before_records
    return Cell(
        phase, clients, rnd, r, created, queued, delivered, backlog, drain_s, during.result, total.result
    )


def throughput_rounds(
    args: argparse.Namespace,
    setup: Setup,
    probe: Probe,
    receiver: Receiver,
    load: Callable[..., LoadResult],
    meter: Callable[[], CpuMeter],
    levels: list[int],
    patient_id: str,
) -> list[Cell]:
    """Every round: the three phases (reversed in even rounds), each at every client level."""
    token = setup.target.token
    cells: list[Cell] = []
    for rnd in range(1, args.rounds + 1):
        for phase in PHASES if rnd % 2 else tuple(reversed(PHASES)):
            want_on = phase != "none"
            if want_on and not setup.sub_ids:
                took = create_subscriptions(
                    setup, receiver, args.subscriptions, args.matching, patient_id, token
                )
                print(
                    f"  created {args.subscriptions} subscriptions in {took:.1f} s (states: "
                    f"{probe.statuses()}); {len(setup.matched_ids)} match the notified creates"
                )
                warm = load(setup.target, "create", max(levels), args.warmup, setup.bodies["notified"])
                drained = drain(probe)
                print(
                    f"  warm-up with them: {warm.rps:,.0f} creates/s at {max(levels)} clients, {warm.errors} "
                    f"failed; queue drained {drained:.1f} s after; VACUUM (ANALYZE) + CHECKPOINT "
                    f"{vacuum_analyze(setup.db_url):.1f} s"
                )
            elif want_on != setup.active:
                drain(probe)
                took = switch(setup, want_on, token)
                print(f"  switched the subscriptions {'on' if want_on else 'off'} in {took:.1f} s")
            for c in levels:
                cell = measure_cell(setup, probe, receiver, load, meter, phase, c, args.seconds, rnd)
                cells.append(cell)
                print_round(cell, args.subscriptions, args.matching)
    return cells


def best_cells(cells: list[Cell]) -> dict[tuple[str, int], Cell]:
    best: dict[tuple[str, int], Cell] = {}
    for c in cells:
        key = (c.phase, c.clients)
        if key not in best or c.rps > best[key].rps:
            best[key] = c
    return best


def cell_ok(c: Cell, matching: int) -> bool:
    """No failed request, and exactly the notifications its creates should cause, all received."""
    expected = c.created * matching if c.phase == "notified" else 0
    return c.load.errors == 0 and c.queued == expected and c.delivered == expected


# --------------------------------------------------------------------------------------------- latency


@dataclass
class Latency:
    rate: float
    sent: int
    created: int
    failed: int
    expected: int
    delivered: int  # expected (subscription, id) pairs that arrived
    duplicates: int
    strays: int  # records naming an id or subscription not expected
    bad_signatures: int
    out_of_order: int  # per subscription, event numbers not increasing with the creates' (commit) order
    unordered_arrivals: int  # per subscription, event numbers not increasing in arrival order
    examples: list[str]  # the first few of the out-of-order events
    samples_ms: list[float]
    to_dispatch_ms: list[float]  # 201 -> the dispatcher held the change (subscription_delivery.created)
    dispatch_to_receiver_ms: list[float]  # from there (matching, commit, claim, delivery) -> the receiver
    round_trip_ms: list[float]  # the endpoint's round trip, as the attempt recorded it
    lateness_ms: float  # how late the sender ran behind its schedule, at worst
    cpu: Cpu | None = None


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p * (len(s) - 1))))]


def measure_latency(
    setup: Setup,
    probe: Probe,
    receiver: Receiver,
    token: Callable[[], str],
    rate: float,
    seconds: float,
    meter: Callable[[], CpuMeter],
) -> Latency:
    drain(probe)
    body = setup.bodies["notified"].read_bytes()
    before = len(receiver.fetch())
    count = max(1, round(rate * seconds))
    committed: dict[str, float] = {}  # id -> when its 201 arrived
    order: list[str] = []
    failed, lateness = 0, 0.0
    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=30)
    with meter() as cpu_meter:
        start = time.monotonic() + 0.2
        try:
            for k in range(count):
                due = start + k / rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                else:
                    lateness = max(lateness, now - due)
                headers = {
                    "Content-Type": FHIR_JSON,
                    "Accept": FHIR_JSON,
                    "Authorization": f"Bearer {token()}",
                }
                try:
                    conn.request("POST", "/fhir/R4/Observation", body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    at = time.time()
                    if resp.status != 201:
                        failed += 1
                        continue
                    res_id = created_id(dict(resp.getheaders()), "Observation")
                    committed[res_id] = at
                    order.append(res_id)
                except (OSError, http.client.HTTPException):
                    failed += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=30)
        finally:
            conn.close()
        expected_pairs = {(s, i) for i in committed for s in setup.matched_ids}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {(r[1], r[3]) for r in receiver.fetch()[before:]}
            if expected_pairs <= got:
                break
            time.sleep(0.1)
    cpu = cpu_meter.result
    records = receiver.fetch()[before:]
    arrivals: dict[tuple[str, str], float] = {}
    duplicates = strays = bad = 0
    numbers: dict[str, list[tuple[int, int]]] = {}  # subscription -> (position of the create, event number)
    arrived_numbers: dict[str, list[int]] = {}  # subscription -> event numbers in arrival order
    position = {res_id: n for n, res_id in enumerate(order)}
    for arrived, sub, number, focus, signed_ok, _replay in records:
        pair = (sub, focus)
        if pair not in expected_pairs:
            strays += 1
            continue
        if signed_ok is not True:
            bad += 1
        if pair in arrivals:
            duplicates += 1
            continue
        arrivals[pair] = arrived
        numbers.setdefault(sub, []).append((position[focus], number))
        arrived_numbers.setdefault(sub, []).append(number)
    out_of_order, examples = 0, []
    for sub, pairs in numbers.items():
        for (pa, a), (pb, b) in itertools.pairwise(sorted(pairs)):
            if b <= a:
                out_of_order += 1
                if len(examples) < 3:
                    examples.append(
                        f"Subscription/{sub}: create #{pb + 1} (committed after #{pa + 1}) got event {b}, "
                        f"#{pa + 1} got event {a}"
                    )
    unordered = sum(1 for got in arrived_numbers.values() for a, b in itertools.pairwise(got) if b <= a)
    queued = probe.queued_at(list(committed))
    samples, to_dispatch, after_dispatch, round_trip = [], [], [], []
    for (sub, res_id), arrived in arrivals.items():
        samples.append((arrived - committed[res_id]) * 1000)
        q = queued.get((sub, res_id))
        if q is not None:
            to_dispatch.append((q[0] - committed[res_id]) * 1000)
            after_dispatch.append((arrived - q[0]) * 1000)
            if q[1] is not None:
                round_trip.append(q[1] * 1000)
    return Latency(
        rate, count, len(committed), failed, len(expected_pairs), len(arrivals), duplicates, strays, bad,
        out_of_order, unordered, examples, samples, to_dispatch, after_dispatch, round_trip, lateness * 1000,
        cpu,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------- report


def share(a: float, b: float) -> float:
    return a / b if b else 0.0


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def phase_label(phase: str, subs: int, matching: int) -> str:
    return PHASE_TEXT[phase].format(n=subs, m=matching)


def print_throughput(best: dict[tuple[str, int], Cell], levels: list[int], subs: int, matching: int) -> bool:
    """The table; the target holds when both ratios (creates/s, and sustained) reach it."""
    head = (
        f"{'phase':<28}{'clients':>8}{'creates/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'CPU ms':>8}"
        f"{'sustained/s':>12}{'ratio':>7}{'sust.':>7}{'target':>9}  result"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for phase in PHASES:
        for c in levels:
            cell, floor = best[(phase, c)], best[("none", c)]
            ratio, sustained = share(cell.rps, floor.rps), share(cell.sustained, floor.sustained)
            if phase == "none":
                verdict, target = "-", ""
            elif phase == "watched":
                passed = (
                    min(ratio, sustained) >= TARGET and cell_ok(cell, matching) and cell_ok(floor, matching)
                )
                ok &= passed
                verdict, target = ("PASS" if passed else "FAIL"), f">= {TARGET:g}"
            else:
                verdict, target = ("-" if cell_ok(cell, matching) else "WRONG"), "info"
            shown = "" if phase == "none" else f"{ratio:7.2f}{sustained:7.2f}"
            print(
                f"{phase_label(phase, subs, matching):<28}{c:>8}{cell.rps:>10,.0f}{fmt(cell.load.p50_ms):>8}"
                f"{fmt(cell.load.p99_ms):>8}{cell.cpu_ms:>8.2f}{cell.sustained:>12,.0f}{shown:>14}{target:>9}"
                f"  {verdict}"
            )
    print(
        "  sustained/s: creates over the load's time plus the time until the last of them was matched (and, "
        "notified, delivered); CPU ms: per create, below"
    )
    return ok


def print_round(cell: Cell, subs: int, matching: int) -> None:
    note = ""
    if cell.phase == "notified":
        note = (
            f"; {cell.queued:,} events queued, {cell.delivered:,} received; at stop {cell.backlog[0]:,} "
            f"changes and {cell.backlog[1]:,} events waiting, drained in {cell.drain_s:.1f} s"
        )
    elif cell.backlog != (0, 0) or cell.drain_s > 0.5:
        note = f"; backlog at stop {cell.backlog[0]:,} changes, drained in {cell.drain_s:.1f} s"
    other = cell.cpu.other
    print(
        f"  round {cell.round}  {phase_label(cell.phase, subs, matching):<27} x{cell.clients:<2} "
        f"{cell.rps:7,.0f} creates/s  ({cell.load.requests:,} requests, {cell.load.errors} failed, "
        f"{cell.created:,} stored; {cell.cpu_ms:.2f} CPU ms/create; other work {other:.2f} cores"
        f"{', NOISY' if other > NOISY else ''}{note})",
        flush=True,
    )


def print_latency(lat: Latency, subs: int, matching: int) -> None:
    print(
        f"  {lat.created} creates at {lat.rate:g}/s ({lat.failed} failed; the sender ran at most "
        f"{lat.lateness_ms:.0f} ms behind its schedule), each matching {matching} of {subs} subscriptions"
    )
    print(
        f"  delivered {lat.delivered} of {lat.expected} expected; {lat.duplicates} duplicates, {lat.strays} "
        f"strays, {lat.bad_signatures} bad signatures; event numbers against commit order: "
        f"{lat.out_of_order} out of order; in arrival order: {lat.unordered_arrivals} out of order"
    )
    for example in lat.examples:
        print(f"    OUT OF ORDER: {example}")
    s = lat.samples_ms
    print(
        f"  commit (201) -> receiver: p50 {fmt(pct(s, 0.5))} ms, p95 {fmt(pct(s, 0.95))} ms, max "
        f"{fmt(max(s) if s else None)} ms (min {fmt(min(s) if s else None)} ms, {len(s)} samples)"
    )
    for label, values in (
        ("201 -> dispatcher start (poll, locks)", lat.to_dispatch_ms),
        ("dispatcher start -> receiver", lat.dispatch_to_receiver_ms),
        ("  of which the POST's round trip", lat.round_trip_ms),
    ):
        print(f"    {label:<38} p50 {fmt(pct(values, 0.5)):>7} ms   p95 {fmt(pct(values, 0.95)):>7} ms")
    if lat.cpu is not None:
        other = lat.cpu.other
        print(
            f"  CPU meanwhile: app and receiver {lat.cpu.servers / lat.cpu.wall:.2f} cores, PostgreSQL "
            f"{lat.cpu.postgres / lat.cpu.wall:.2f}; other work "
            f"{other:.2f} cores{' (NOISY)' if other > NOISY else ''}"
        )


def print_summary(
    best: dict[tuple[str, int], Cell],
    cells: list[Cell],
    levels: list[int],
    args: argparse.Namespace,
    loader: str,
) -> bool:
    """The throughput table and what qualifies it; False when the target is missed or a cell is wrong."""
    subs, matching = args.subscriptions, args.matching
    print(f"\ncreate throughput, best round per cell (POST /fhir/R4/Observation, {loader}):")
    ok = print_throughput(best, levels, subs, matching)
    noisy = [f"{c.phase} x{c.clients}" for c in best.values() if c.cpu.other > NOISY]
    if noisy:
        print(
            f"  NOISY: other work took more than {NOISY} cores during the best round of "
            f"{', '.join(noisy)}: creates/s there are low; CPU ms per create holds better"
        )
    print(
        "  CPU ms per create (app, receiver, PostgreSQL backends; the drain after the load included), "
        "none / phase:"
    )
    for c in levels:
        floor, watched, notified = (best[(p, c)] for p in PHASES)
        print(
            f"    x{c}: none {floor.cpu_ms:.2f}; watched {watched.cpu_ms:.2f} "
            f"(+{watched.cpu_ms - floor.cpu_ms:.2f}, {share(floor.cpu_ms, watched.cpu_ms):.2f}); notified "
            f"{notified.cpu_ms:.2f} (+{notified.cpu_ms - floor.cpu_ms:.2f}, "
            f"{share(floor.cpu_ms, notified.cpu_ms):.2f})"
        )
    behind = [
        f"{c.phase} x{c.clients} {c.backlog[0]:,} of {c.created:,}"
        for c in best.values()
        if c.backlog[0] > c.created // 10
    ]
    if behind:
        print(
            "  matching fell behind the creates (changes not matched yet when the load stopped, of the "
            f"cell's creates): {'; '.join(behind)}. That work ran after the cell: creates/s flatter the "
            "phase; sustained/s and CPU ms (drain included) do not"
        )
    wrong = [c for c in cells if not cell_ok(c, matching)]
    for c in wrong:
        expected = c.created * matching if c.phase == "notified" else 0
        print(
            f"  WRONG: round {c.round} {c.phase} x{c.clients}: {c.load.errors} failed requests, "
            f"{c.queued} events queued and {c.delivered} received for {expected} expected"
        )
    return ok and not wrong


def write_json(
    path: Path,
    args: argparse.Namespace,
    levels: list[int],
    cells: list[Cell],
    best: dict[tuple[str, int], Cell],
    lats: list[Latency],
    loader: str,
    threads: int,
) -> None:
    def cell_dict(c: Cell) -> dict[str, Any]:
        return {
            "phase": c.phase,
            "clients": c.clients,
            "round": c.round,
            "creates_per_s": c.rps,
            "sustained_per_s": c.sustained,
            "requests": c.load.requests,
            "errors": c.load.errors,
            "p50_ms": c.load.p50_ms,
            "p99_ms": c.load.p99_ms,
            "created": c.created,
            "events_queued": c.queued,
            "notifications_received": c.delivered,
            "backlog_at_stop": {"changes": c.backlog[0], "events": c.backlog[1]},
            "drain_s": c.drain_s,
            "cpu_ms_per_create": c.cpu_ms,
            "other_work_cores": c.cpu.other,
        }

    out: dict[str, Any] = {
        "loader": loader,
        "workers": args.workers,
        "threads": threads,
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "subscriptions": args.subscriptions,
        "matching": args.matching,
        "rates": args.rates,
        "latency_seconds": args.latency_seconds,
        "target": TARGET,
        "rounds_run": [cell_dict(c) for c in cells],
        "best": {},
    }
    for c in levels:
        floor = best[("none", c)]
        out["best"][str(c)] = {
            p: {
                **cell_dict(best[(p, c)]),
                "ratio": share(best[(p, c)].rps, floor.rps),
                "sustained_ratio": share(best[(p, c)].sustained, floor.sustained),
            }
            for p in PHASES
        }
    out["latency"] = []
    for lat in lats:
        d = asdict(lat)
        d.pop("cpu", None)
        for key in ("samples_ms", "to_dispatch_ms", "dispatch_to_receiver_ms", "round_trip_ms"):
            values = d.pop(key)
            d[key.removesuffix("_ms")] = {
                "p50_ms": pct(values, 0.5),
                "p95_ms": pct(values, 0.95),
                "max_ms": max(values) if values else None,
                "n": len(values),
            }
        out["latency"].append(d)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; the bench creates (and drops) its own database there",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per throughput cell (default 10)")
    p.add_argument("--clients", default="1,8", help="concurrent create clients, comma-separated (1,8)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three phases; the best counts (2)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load (default 3)")
    p.add_argument("--subscriptions", type=int, default=100, help="active subscriptions (default 100)")
    p.add_argument("--matching", type=int, default=1, help="subscriptions each matched create matches (1)")
    p.add_argument(
        "--rates", default="2,10", help="creates/s of the latency phases, comma-separated (default 2,10)"
    )
    p.add_argument("--latency-seconds", type=float, default=20.0, help="length of the latency phase (20)")
    p.add_argument("--workers", type=int, default=4, help="gunicorn workers (default 4)")
    p.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is missed or a check fails")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS:g}] (each run's token must outlive it)")
    if args.subscriptions < 1 or not 1 <= args.matching <= args.subscriptions:
        p.error("need 1 <= --matching <= --subscriptions")
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error("--rates takes numbers, comma-separated")
    if args.rounds < 1 or args.workers < 1 or args.latency_seconds <= 0 or not args.rates:
        p.error("--rounds, --workers and --latency-seconds must be positive, and --rates given")
    if min(args.rates) <= 0:
        p.error("--rates must be positive")
    return args


def _raise_on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")  # so that the finally blocks stop the processes and drop the database


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started with it ignored
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.loader == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    use_wrk = args.loader == "wrk" or (args.loader == "auto" and shutil.which("wrk") is not None)
    load = run_wrk if use_wrk else run_python
    loader = "wrk" if use_wrk else "python"
    fhir_api = (
        BIN / "fhir-api" if (BIN / "fhir-api").exists() else Path(shutil.which("fhir-api") or "fhir-api")
    )
    from fhir_api.serving import default_threads

    threads = default_threads()
    python_note = (
        "python thread pool"
        + ("" if args.loader == "python" else " (wrk not found)")
        + ": lower, noisier figures, the client sharing the cores"
    )
    with psycopg.connect(_conninfo(args.database_url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(
        f"PostgreSQL {version}; {os.cpu_count()} cpus; load average {load_average()}; load generator "
        f"{'wrk' if use_wrk else python_note}; app: "
        f"{args.workers} workers x {threads} threads, a subscription worker thread each (poll 0.25 s); "
        f"best of {args.rounds} x {args.seconds:g} s per cell"
    )
    started = time.monotonic()
    processes: list[Any] = []
    minter: Minter | None = None
    probe: Probe | None = None
    ok = True
    from audit.signing import generate_key_file as generate_audit_key
    from crypto.kms import generate_key_file as generate_keyring

    with (
        tempfile.TemporaryDirectory(prefix="fhir-bench-subs-") as tmp,
        bench_database(args.database_url, DB_PREFIX) as db_url,
    ):
        work = Path(tmp)
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            keyring, audit_key, signing_key = work / "keyring.json", work / "audit.jwk", work / "signing.jwk"
            generate_keyring(keyring)  # protected elements and subscription secrets sealed, as in production
            generate_audit_key(audit_key)  # every request and every delivery audited, as in production
            env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_") or k == "FHIR_THREADS"}
            env.update(
                FHIR_DATABASE_URL=db_url,
                FHIR_CRYPTO_KEY_FILE=str(keyring),
                FHIR_AUDIT_SIGNING_KEY_FILE=str(audit_key),
                FHIR_AUTH_SIGNING_KEY_FILE=str(signing_key),
                FHIR_PUBLIC_URL=base,
                FHIR_RATE_LIMIT_ENABLED="false",  # one bench client sends what a hospital would
                FHIR_SUBSCRIPTION_ALLOW_PRIVATE="true",  # the receiver is on loopback, over http
            )
            upgrade(fhir_api, env)
            client_id = register_client(fhir_api, env, work)
            minter = Minter(signing_key, base, db_url, client_id)
            receiver = Receiver()
            processes.append(receiver)
            serve = [str(fhir_api), "serve", "--host", "127.0.0.1", "--port", str(port)]
            app = Server("app", [*serve, "--workers", str(args.workers)], env, port, work)
            processes.append(app)
            app.start()
            app.wait_ready(args.workers)
            assert app.proc is not None
            database = make_url(db_url).database or ""
            app_pgid, receiver_pgid = app.proc.pid, receiver.pid

            def meter() -> CpuMeter:
                """CPU of the app's and the receiver's process groups, of the database's backends, and of
                the machine, sampled every 0.5 s (a backend closed or a worker recycled keeps its share)."""
                return CpuMeter({app_pgid, receiver_pgid}, database)

            probe = Probe(db_url)
            print(f"database {database}; app on :{port}; receiver on :{receiver.port}; client {client_id}")

            status, headers, text = http_request(
                port, "POST", "/fhir/R4/Patient", json.dumps(PATIENT).encode(),
                {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Authorization": f"Bearer {minter()}"},
            )  # fmt: skip
            if status != 201:
                raise RuntimeError(f"creating the Patient answered {status}: {text[:300]!r}")
            patient_id = created_id(headers, "Patient")
            bodies = {}
            for phase, code in (
                ("none", MATCHED_CODE),
                ("watched", UNMATCHED_CODE),
                ("notified", MATCHED_CODE),
            ):
                bodies[phase] = work / f"observation-{phase}.json"
                bodies[phase].write_text(json.dumps(observation(code, patient_id), separators=(",", ":")))
            ids_file = work / "ids.txt"  # the Python loader reads it, even for creates
            ids_file.write_text(patient_id + "\n")
            target = Target(
                "app", port, "/fhir/R4/Observation", "/fhir/R4/Observation/", FHIR_JSON, ids_file, minter
            )
            setup = Setup(port, db_url, target, bodies)

            warm = load(target, "create", max(levels), args.warmup, bodies["none"])  # also starts every
            # worker's subscription thread (on its first request)
            print(
                f"warm-up: {warm.rps:,.0f} creates/s at {max(levels)} clients, {warm.errors} failed; "
                f"VACUUM (ANALYZE) + CHECKPOINT {vacuum_analyze(db_url):.1f} s"
            )

            cells = throughput_rounds(args, setup, probe, receiver, load, meter, levels, patient_id)
            best = best_cells(cells)

            if not setup.active:
                switch(setup, True, minter)
            lats = []
            for rate in args.rates:
                print(
                    f"\nnotification latency at {rate:g} creates/s, {args.subscriptions} active "
                    f"subscriptions (states: {probe.statuses()}):"
                )
                lat = measure_latency(setup, probe, receiver, minter, rate, args.latency_seconds, meter)
                print_latency(lat, args.subscriptions, args.matching)
                lats.append(lat)
            lat_ok = all(
                lat.failed == 0
                and lat.delivered == lat.expected
                and lat.duplicates == lat.strays == lat.bad_signatures == lat.out_of_order == 0
                and lat.unordered_arrivals == 0
                for lat in lats
            )

            ok = print_summary(best, cells, levels, args, loader)
            print(f"  deliveries by status at the end: {probe.settled()}")
            ok = ok and lat_ok
            print()
            for lat in lats:
                print(
                    f"latency at {lat.rate:g}/s: p50 {fmt(pct(lat.samples_ms, 0.5))} ms, p95 "
                    f"{fmt(pct(lat.samples_ms, 0.95))} ms ({lat.delivered}/{lat.expected} delivered, "
                    f"{lat.out_of_order} out of commit order)"
                )
            recycled = sorted(set(app.workers()) - set(app.start_workers))
            if recycled:
                print(f"app workers started during the run (gunicorn max_requests): {len(recycled)}")
            print(f"load average at the end {load_average()}; total time {time.monotonic() - started:.0f} s")
            if args.json:
                write_json(args.json, args, levels, cells, best, lats, loader, threads)
        finally:
            if probe is not None:
                probe.close()
            if minter is not None:
                minter.close()
            for proc in reversed(processes):
                with contextlib.suppress(Exception):
                    proc.stop()
    return 1 if (args.check and not ok) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; processes stopped and database dropped", file=sys.stderr)
        sys.exit(130)
