"""The proof that matters: after loading real (synthetic) patient records through the API, no protected value
is anywhere in the database's bytes, nor in the log.

Corpus. Writing all 11,160 Synthea entries one PUT at a time takes about 95 s on SQLite (80 s on
PostgreSQL), over this module's budget. So this loads a subset, deterministically:

* the organisation and practitioner bundles (204 resources);
* the complete bundles of the first ``FULL_BUNDLES`` (6) patients by file name, 1,772 resources (every
  Encounter, Claim, Observation... that could copy a patient's details into an unprotected element);
* from each of the other patient bundles, its person resources only (Patient, Practitioner) and the
  Organizations they point to, so every one of the 40 patients' protected values is written and scanned.

The database is the module's own (a fresh SQLite file, or a fresh PostgreSQL database on the server named
by FHIR_TEST_DATABASE_URL), so nothing another test wrote, in clear or not, can be found or missed here.

What is scanned. On SQLite: the bytes of the database file and of its ``-wal`` file after a
``PRAGMA wal_checkpoint(TRUNCATE)``, free pages included. On PostgreSQL: ``pg_dump --data-only`` of the
database (skipped when pg_dump is not installed).

Which values. From every Patient and Practitioner loaded: family and given names, name.text, birth dates,
identifier values, telecom values, address lines, cities and postal codes; and the "Person seed" numbers of
the Patients' narratives. Each value is looked for in any letter case (the bytes are searched lower-cased;
search indexes fold case), with accents stripped, and, for phone numbers, as digits only. Values are left
out, honestly and only for these reasons (the test asserts enough remain, per kind):

1. shorter than 4 characters ("MA", "US", "Noe", "Dr."): such strings occur by chance in any binary file;
2. values that the loaded data itself holds in an unprotected element, so that the database must contain
   them in clear: found by sealing every loaded resource with the server's own policy (a stand-in cipher)
   and looking for the value, case-insensitively and as a substring (the scan below is a substring scan
   too), in what stays clear. In this subset that removes the address lines, cities and postal codes
   Practitioners share with their Organization, a few 5-digit practitioner identifiers found inside
   decimals, names inside words of code displays ("Lang" in "language", "Norma" in "normal", "Rubin" in
   "Bilirubin"). (Names in a patient-mothersMaidenName extension are no longer excluded: Patient.extension
   is protected by default since this test found them there in clear.)
3. values found in the server's own vocabulary (table, column, index and search parameter names);
4. birth dates that are also the calendar day (as written, or in UTC) of an unprotected date or dateTime
   of the loaded data, which the date index stores in clear.

Birth dates are additionally looked for as ``"birthDate":"<date>"`` with no exclusion at all.

Chance matches. Sealed values are stored as base64url text, data keys and index keys too, and blind hashes
appear as decimal numbers in a dump: a four-letter name turns up by chance in a few megabytes of base64.
A match is therefore discounted only when it sits inside a run of base64url characters and that run, up to
12 characters either side of the match and at least 8 more than the value, is a piece of one of the
database's own ciphertexts, wrapped keys or blind hashes, read back with SQL. Values made only of digits
(postal codes) occur by chance in timestamps, sequence numbers and hashes, so they count only as a whole
digit run, or written twice in a row (a SQLite record puts an index row's value_norm and value_exact side
by side). Finally, a SQLite record stores its column values side by side with no delimiter, so
``...73078449dfe`` (an id) + ``status`` reads ``feest`` (a family name, case-folded): a match is discounted
when it starts inside a clear token of the records (a resource id, a resource type, a search parameter
code) and ends after it, or starts before one and ends inside it. A value stored as a column of its own is
never discounted by this, since it neither starts nor ends inside a neighbour.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import shutil
import subprocess
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from fhir_api import create_app
from fhir_api.db import Base
from resources.dates import parse_range
from resources.protection.sealing import seal
from tests.helpers import authorized_client, fresh_database
from tests.resources.search.corpus import synthea_files, synthea_resources, walk

BASE = "/fhir/R4"
FHIR = "application/fhir+json"
FULL_BUNDLES = 6  # complete patient bundles (1,772 resources); the other 34 contribute their persons
PERSON_TYPES = ("Patient", "Practitioner", "RelatedPerson", "Person")
MIN_LENGTH = 4
B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
DIGITS = frozenset(b"0123456789")


# -- an isolated database ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scan_database(shared_fhir, tmp_path_factory) -> Iterator[str]:
    with fresh_database(tmp_path_factory.mktemp("scan"), "fhir_scan") as url:
        yield url


# -- the corpus ----------------------------------------------------------------------------------------------
def corpus_subset(root: Path) -> list[dict[str, Any]]:
    """Support bundles, FULL_BUNDLES complete patient bundles, and the persons of every other one."""
    files = synthea_files(root, patients=10_000)
    support = [f for f in files if f.name.startswith(("hospitalInformation", "practitionerInformation"))]
    people = [f for f in files if f not in support]
    everything = synthea_resources(files)  # references resolved across all bundles
    by_file: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        ids = {e["fullUrl"].removeprefix("urn:uuid:") for e in json.loads(path.read_bytes())["entry"]}
        by_file[path.name] = [r for r in everything if r["id"] in ids]
    chosen: list[dict[str, Any]] = []
    for path in support + people[:FULL_BUNDLES]:
        chosen += by_file[path.name]
    for path in people[FULL_BUNDLES:]:
        chosen += [r for r in by_file[path.name] if r["resourceType"] in (*PERSON_TYPES, "Organization")]
    return chosen


def put_all(client, resources: list[dict[str, Any]]) -> None:
    for resource in resources:
        resp = client.put(
            f"{BASE}/{resource['resourceType']}/{resource['id']}",
            data=json.dumps(resource),
            content_type=FHIR,
        )
        assert resp.status_code in (200, 201), resp.get_data(as_text=True)[:500]


# -- which values must not be found --------------------------------------------------------------------------
def fold_accents(value: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))


def protected_values(resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Kind -> clear values of the protected elements of the loaded person resources."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in resources:
        if r["resourceType"] not in PERSON_TYPES:
            continue
        for name in walk(r, "name"):
            out["family"].update(v for v in walk(name, "family") if isinstance(v, str))
            out["given"].update(v for v in walk(name, "given") if isinstance(v, str))
            out["name.text"].update(v for v in walk(name, "text") if isinstance(v, str))
        out["birthDate"].update(walk(r, "birthDate"))
        out["identifier"].update(v for v in walk(r, "identifier.value") if isinstance(v, str))
        out["telecom"].update(v for v in walk(r, "telecom.value") if isinstance(v, str))
        out["address.line"].update(walk(r, "address.line"))
        out["address.city"].update(walk(r, "address.city"))
        out["address.postalCode"].update(walk(r, "address.postalCode"))
        for div in walk(r, "text.div"):
            out["narrative seed"].update(re.findall(r"Person seed: (-?\d+)", div))
    return out


class _StandIn:
    """A cipher for computing what stays clear: every sealed element becomes an empty marker."""

    def seal(self, plaintext: bytes, pointer: str) -> str:
        return ""


def clear_residue(resources: list[dict[str, Any]], policy) -> str:
    """The loaded data as the server stores it in clear: every protected element removed."""
    parts = []
    for r in resources:
        sealed = seal(r, policy, lambda: _StandIn())
        parts.append(json.dumps(sealed if sealed is not None else r, ensure_ascii=False))
    return "\n".join(parts)


_DATE = re.compile(r'"(\d{4}-\d{2}-\d{2}(?:T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?)"')


def clear_days(residue: str) -> set[str]:
    """Calendar days of the unprotected dates: as written, and the UTC days of their range ends."""
    days = set()
    for value in _DATE.findall(residue):
        days.add(value[:10])
        try:
            r = parse_range(value)
        except Exception:
            continue
        days.add(r.low.date().isoformat())
        days.add(r.high.date().isoformat())
    return days


def server_vocabulary(engine) -> str:
    ddl = [str(CreateTable(t).compile(engine)) for t in Base.metadata.sorted_tables]
    ddl += [str(CreateIndex(i).compile(engine)) for t in Base.metadata.sorted_tables for i in t.indexes]
    with engine.connect() as conn:
        for table in ("search_blind", "search_string", "search_token", "search_date", "search_reference"):
            ddl += [p for (p,) in conn.execute(text(f"SELECT DISTINCT param FROM {table}"))]
    return "\n".join(ddl).casefold()


def variants(kind: str, value: str) -> set[str]:
    """The forms to look for, lower-cased (the bytes are searched lower-cased, so every case is found):
    as written, with accents stripped (string indexes fold them), and phone numbers as digits only."""
    out = {value.lower(), fold_accents(value).lower(), value.casefold()}
    if kind == "telecom":
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 7:
            out.add(digits)
    return {v for v in out if len(v) >= MIN_LENGTH}


def wanted_values(
    found: dict[str, set[str]], residue: str, vocabulary: str, days: set[str]
) -> tuple[dict[str, set[str]], dict[str, dict[str, int]]]:
    """The values to look for, and how many of each kind were left out and why."""
    folded_residue = residue.casefold()
    kept: dict[str, set[str]] = defaultdict(set)
    dropped: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for kind, values in found.items():
        for value in values:
            if len(value) < MIN_LENGTH:
                dropped[kind]["shorter than 4"] += 1
            elif value.casefold() in folded_residue:
                dropped[kind]["also in an unprotected element"] += 1
            elif value.casefold() in vocabulary:
                dropped[kind]["server vocabulary"] += 1
            elif kind == "birthDate" and value in days:
                dropped[kind]["day of an unprotected date"] += 1
            else:
                kept[kind].add(value)
    return kept, dropped


# -- the bytes -----------------------------------------------------------------------------------------------
def sqlite_bytes(engine, url: str) -> bytes:
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    path = Path(make_url(url).database)
    blob = path.read_bytes()
    wal = Path(f"{path}-wal")
    if wal.exists():
        blob += b"\n--wal--\n" + wal.read_bytes()
    return blob


def pg_dump_bytes(url: str) -> bytes:
    pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
    if not Path(pg_dump).exists():
        pytest.skip("pg_dump is not installed")
    parsed = make_url(url)
    args = [pg_dump, "--data-only", "--no-owner", "-d", parsed.database]
    if parsed.host:
        args += ["-h", parsed.host]
    if parsed.port:
        args += ["-p", str(parsed.port)]
    if parsed.username:
        args += ["-U", parsed.username]
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    done = subprocess.run(args, capture_output=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"COPY public.resource_version" in done.stdout
    return done.stdout


def opaque_text(engine) -> bytes:
    """Every ciphertext, wrapped key, blind hash and audit hash or id in the database, as text (for chance
    matches)."""
    pieces: list[str] = []
    with engine.connect() as conn:
        for body, data_key in conn.execute(text("SELECT body, data_key FROM resource_version")):
            pieces += re.findall(r'"\$enc":"1\|([A-Za-z0-9_-]+)"', body or "")
            if data_key:
                pieces.append(data_key)
        pieces += [w for (w,) in conn.execute(text("SELECT wrapped FROM crypto_index_key"))]
        pieces += [str(h) for (h,) in conn.execute(text("SELECT hash FROM search_blind"))]
        if engine.dialect.name == "postgresql":
            pieces += [str(h) for (h,) in conn.execute(text("SELECT unnest(hashes) FROM search_blind_set"))]
        # the audit log's random ids, MACs, chain hashes, token ids and blinded query values
        for body, event_id, mac in conn.execute(text("SELECT body, event_id, mac FROM audit_event")):
            pieces += [event_id, mac or "", *re.findall(r"[0-9a-f-]{16,}", body)]
            pieces += re.findall(r'"query":"([A-Za-z0-9+/=]+)"', body)  # the recorded (blinded) query, base64
        pieces += [h for row in conn.execute(text("SELECT hash, prev_hash FROM audit_chain")) for h in row]
    return "\n".join(pieces).encode()


def _run(blob: bytes, start: int, end: int, alphabet: frozenset[int]) -> tuple[int, int]:
    while start > 0 and blob[start - 1] in alphabet:
        start -= 1
    while end < len(blob) and blob[end] in alphabet:
        end += 1
    return start, end


def clear_tokens(engine) -> dict[int, set[bytes]]:
    """Clear strings every record is made of (ids, resource types, parameter codes), by length."""
    tokens: set[str] = set()
    with engine.connect() as conn:
        for res_type, res_id in conn.execute(text("SELECT res_type, res_id FROM resource")):
            tokens.update((res_type, res_id))
        for table in (
            "search_blind",
            "search_string",
            "search_token",
            "search_date",
            "search_reference",
            "search_uri",
            "search_number",
            "search_quantity",
            "search_composite",
        ):
            tokens.update(p for (p,) in conn.execute(text(f"SELECT DISTINCT param FROM {table}")))
    by_length: dict[int, set[bytes]] = defaultdict(set)
    for token in tokens:
        by_length[len(token.encode())].add(token.encode())
    return by_length


def straddles(blob: bytes, pos: int, end: int, tokens: dict[int, set[bytes]]) -> bool:
    """The match begins inside a clear token and ends after it, or begins before one and ends inside it:
    two column values side by side in a SQLite record (``...4449dfe`` + ``status`` reads ``feest``)."""
    for cut in range(pos + 1, end):
        for length, known in tokens.items():
            if (cut >= length and blob[cut - length : cut] in known) or blob[cut : cut + length] in known:
                return True
    return False


def unexplained(
    blob: bytes, lowered: bytes, needle: bytes, opaque: bytes, tokens: dict[int, set[bytes]]
) -> list[int]:
    """Positions of ``needle`` (lower-case) in ``lowered`` (the blob with ASCII lower-cased) that are not
    chance matches inside the database's opaque data, judged on the original bytes."""
    out = []
    pos = lowered.find(needle)
    in_b64 = all(b in B64URL for b in needle)
    only_digits = all(b in DIGITS for b in needle)
    while pos >= 0:
        end = pos + len(needle)
        chance = False
        if only_digits:
            lo, hi = _run(blob, pos, end, DIGITS)
            chance = (lo, hi) != (pos, end) and blob[lo:hi] != needle * 2
        if not chance and in_b64:
            lo, hi = _run(blob, pos, end, B64URL)
            window = blob[max(lo, pos - 12) : min(hi, end + 12)]
            # at least 8 more characters than the value itself, so the window is a piece of ciphertext and
            # not merely the value (a short value is likely to occur somewhere in megabytes of base64)
            chance = len(window) >= len(needle) + 8 and window in opaque
        if not chance:
            chance = straddles(blob, pos, end, tokens)
        if not chance:  # a piece of a random UUID (resource, event, request ids): a chance match, but a
            # value that is a whole UUID itself (Synthea's identifiers) still counts
            around = blob[max(0, pos - 36) : end + 36].decode("latin-1")
            offset = pos - max(0, pos - 36)
            chance = any(
                m.start() <= offset and offset + len(needle) <= m.end() and m.end() - m.start() > len(needle)
                for m in _UUID.finditer(around)
            )
        if not chance:
            out.append(pos)
        pos = lowered.find(needle, pos + 1)
    return out


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def log_mentions(log: str, value: str, uuids: list[tuple[int, int]]) -> bool:
    """``value`` in the (case-folded) log, other than by chance inside a request or resource id (the access
    log names both; ``uuids`` are their spans), or inside a longer number when it is made only of digits."""
    pos = log.find(value)
    while pos >= 0:
        end = pos + len(value)
        i = bisect.bisect_right(uuids, (pos, len(log))) - 1
        inside_id = i >= 0 and uuids[i][1] >= end and uuids[i] != (pos, end)
        in_number = value.isdigit() and (
            (pos > 0 and log[pos - 1].isdigit()) or (end < len(log) and log[end].isdigit())
        )
        if not inside_id and not in_number:
            return True
        pos = log.find(value, pos + 1)
    return False


# -- the test ------------------------------------------------------------------------------------------------
def test_no_protected_value_in_raw_storage_or_logs(scan_database, shared_fhir, caplog) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app({"DATABASE_URL": scan_database, "TESTING": True})
    engine = app.extensions["fhir_db"]["engine"]
    for name in ("fhir_api", "resources", "crypto", "audit", "werkzeug", "flask"):
        caplog.set_level(logging.DEBUG, logger=name)
    try:
        client = authorized_client(app)
        resources = corpus_subset(shared_fhir)
        started = time.perf_counter()
        put_all(client, resources)
        load_seconds = time.perf_counter() - started
        patients = [r for r in resources if r["resourceType"] == "Patient"]
        assert len(patients) == 40

        # searches over the protected parameters, so their (blind) index rows are exercised and correct
        for p in patients[::5]:
            official = p["name"][0]
            family, given = official["family"], official["given"][0]
            phone = p["telecom"][0]["value"]
            ssn = [i["value"] for i in p["identifier"] if i.get("system") == "http://hl7.org/fhir/sid/us-ssn"]
            for query in (
                f"family={family}",
                f"name={given[:3]}",
                f"name:exact={family}",
                f"given={given}&family={family}",
                f"birthdate={p['birthDate']}",
                f"birthdate=eq{p['birthDate'][:7]}",
                f"phone={phone}",
                f"telecom=phone|{phone}",
                f"identifier=http://hl7.org/fhir/sid/us-ssn|{ssn[0]}",
                f"address-postalcode={p['address'][0].get('postalCode', '')}",
            ):
                if query.endswith("="):
                    continue
                resp = client.get(f"{BASE}/Patient?{query}&_count=100&_elements=id")
                assert resp.status_code == 200, (query, resp.get_data(as_text=True)[:500])
                ids = {e["resource"]["id"] for e in resp.get_json().get("entry") or []}
                assert p["id"] in ids, query

        # a Patient read back through the API keeps its name (and the rest) intact
        for p in patients[:3]:
            resp = client.get(f"{BASE}/Patient/{p['id']}")
            assert resp.status_code == 200
            back = resp.get_json()
            assert back["name"] == p["name"] and back["birthDate"] == p["birthDate"]
            assert back["telecom"] == p["telecom"] and back["identifier"] == p["identifier"]

        # the values to look for
        shield = app.extensions["fhir_protection"]
        residue = clear_residue(resources, shield.policy)
        found = protected_values(resources)
        wanted, dropped = wanted_values(found, residue, server_vocabulary(engine), clear_days(residue))
        summary = {k: (len(found[k]), len(wanted.get(k, ())), dict(dropped.get(k, {}))) for k in found}
        minimum = {
            "family": 100,
            "given": 100,
            "birthDate": 35,
            "identifier": 150,
            "telecom": 35,
            "address.line": 35,
            "address.postalCode": 15,
            "narrative seed": 35,
        }
        for kind, at_least in minimum.items():
            assert len(wanted.get(kind, ())) >= at_least, (kind, summary)

        # the bytes
        if engine.dialect.name == "sqlite":
            blob = sqlite_bytes(engine, scan_database)
        else:
            blob = pg_dump_bytes(scan_database)
        opaque = opaque_text(engine)
        tokens = clear_tokens(engine)
        lowered = blob.lower()
        leaks = []
        for kind, values in wanted.items():
            for value in values:
                for variant in variants(kind, value):
                    needle = variant.encode()
                    for pos in unexplained(blob, lowered, needle, opaque, tokens)[:3]:
                        context = blob[max(0, pos - 60) : pos + len(needle) + 60]
                        leaks.append(f"{kind} {variant!r}: ...{context!r}...")
        for day in found["birthDate"]:  # no exclusion here: the JSON form of a birth date in clear
            for needle in (f'"birthDate":"{day}"', f'"birthDate": "{day}"'):
                if needle.encode() in blob:
                    leaks.append(f"birthDate in clear JSON: {needle}")
        assert not leaks, f"{len(leaks)} protected values in the {engine.dialect.name} bytes:\n" + "\n".join(
            leaks[:40]
        )
        # the scan is not blind: the clear parts of the same records are there
        assert b"http://loinc.org" in blob and patients[0]["id"].encode() in blob

        # the log of the whole load
        logged = "\n".join(
            [caplog.text] + [str(r.args) for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
        ).casefold()
        uuids = [m.span() for m in _UUID.finditer(logged)]  # sorted, and they never overlap
        in_log = sorted(
            v for values in wanted.values() for v in values if log_mentions(logged, v.casefold(), uuids)
        )
        assert not in_log, f"protected values in the log: {in_log[:20]}"
        print(f"loaded {len(resources)} resources in {load_seconds:.1f} s; values per kind {summary}")
    finally:
        engine.dispose()
