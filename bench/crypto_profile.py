"""Where a protected create (and read) spends its time: in-process timing and cProfile, protection on vs off.

A helper of ``bench/crypto.py``: one fresh database (dropped at the end), two apps built in this process
(the same settings, one with ``PROTECTION=False``), Flask's test client (no HTTP, no gunicorn), the Patient
of ``bench/crud.py``. It times ``--requests`` POSTs and GETs per app after a warm-up, then profiles the
protected POSTs (and, with ``--reads``, GETs) and prints the functions with the most own and cumulative
time, and the time of the protection steps per request.

    .venv/bin/python bench/crypto_profile.py [--requests 300] [--reads]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from crud import PATIENT, bench_database  # bench/ is first on sys.path: crypto.py hands over to the package

# The protection steps of the write and read paths: (label, file fragment, function name).
STEPS = [
    ("seal (encrypt the protected elements)", "protection/service.py", "seal"),
    ("  new data key + wrap under the KEK", "crypto/envelope.py", "new"),
    ("  AES-GCM of each element", "crypto/envelope.py", "seal"),
    ("blind-index rows (all protected params)", "search/indexer.py", "_blind_rows"),
    ("  hashes_for_rows", "protection/blind.py", "hashes_for_rows"),
    ("  keyed hashes (blind_hash)", "crypto/blind.py", "blind_hash"),
    ("  keyed prefix hashes (prefix_hashes)", "crypto/blind.py", "prefix_hashes"),
    ("  HKDF parameter keys (parameter_key)", "crypto/blind.py", "parameter_key"),
    ("blind_context / index_roots", "search/indexer.py", "blind_context"),
    ("key file stat/re-read (_fresh)", "crypto/kms.py", "_fresh"),
    ("index_rows (plain + blind extraction)", "search/indexer.py", "index_rows"),
    ("execute_batch (the write's round trip)", "fhir_api/db.py", "execute_batch"),
    ("open (decrypt a stored body)", "protection/service.py", "open"),
    ("  unwrap the data key", "crypto/kms.py", "unwrap"),
    ("  open_sealed", "protection/sealing.py", "open_sealed"),
]


def make_app(db_url: str, protected: bool, key_file: Path, signing: Path) -> Any:
    from fhir_api import create_app

    return create_app(
        {
            "DATABASE_URL": db_url,
            "PROTECTION": protected,
            "CRYPTO_KEY_FILE": str(key_file),
            "AUTH_SIGNING_KEY_FILE": str(signing),
            "PUBLIC_URL": "http://localhost",
            "LOG_LEVEL": "WARNING",  # no access log line per request on this terminal
            "RATE_LIMIT_ENABLED": False,  # one in-process client: per-client limits are not measured
        }
    )


def bearer(app: Any) -> dict[str, str]:
    from fhir_api.auth import tokens

    with app.test_request_context():
        token, _ = tokens.issue(client_id="bench", role="clinical-system", scope="system/*.*")
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}


def posts(client: Any, headers: dict[str, str], body: bytes, n: int) -> tuple[list[float], list[str]]:
    times, ids = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = client.post(
            "/fhir/R4/Patient", data=body, headers={**headers, "Content-Type": "application/fhir+json"}
        )
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 201:
            raise RuntimeError(f"create answered {resp.status_code}: {resp.get_data(as_text=True)[:300]}")
        ids.append(resp.headers["Location"].split("/Patient/", 1)[1].split("/", 1)[0])
    return times, ids


def gets(client: Any, headers: dict[str, str], ids: list[str]) -> list[float]:
    times = []
    for pid in ids:
        t0 = time.perf_counter()
        resp = client.get(f"/fhir/R4/Patient/{pid}", headers=headers)
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"read answered {resp.status_code}")
    return times


# Wall time without a profiler: these functions are wrapped with a clock during one more run.
WRAPPED = [
    ("seal (protection.seal)", "resources.protection.service", "Protection", "seal"),
    ("index rows (index_batch)", "resources.repository", None, "index_batch"),
    ("write round trip (execute_batch)", "resources.repository", None, "execute_batch"),
    ("open (protection.open)", "resources.protection.service", "Protection", "open"),
]


def clocked(run: Any, n: int) -> list[tuple[str, float]]:
    """(label, wall ms per request) of each WRAPPED function during ``run()``, unprofiled."""
    import importlib

    spent = {label: 0.0 for label, *_ in WRAPPED}
    saved = []
    for label, module_name, cls_name, name in WRAPPED:
        owner = importlib.import_module(module_name)
        if cls_name:
            owner = getattr(owner, cls_name)
        original = getattr(owner, name)

        def wrapper(*a: Any, _f: Any = original, _label: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                spent[_label] += time.perf_counter() - t0

        setattr(owner, name, wrapper)
        saved.append((owner, name, original))
    t0 = time.perf_counter()
    try:
        run()
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    total = time.perf_counter() - t0
    return [("whole request (test client)", total * 1000 / n)] + [
        (label, v * 1000 / n) for label, v in spent.items() if v
    ]


def step_times(stats: pstats.Stats, requests: int) -> list[tuple[str, float, int]]:
    """(label, cumulative ms per request, calls per request) of each protection step found."""
    out = []
    raw = stats.stats  # type: ignore[attr-defined]
    for label, fragment, name in STEPS:
        cum, calls = 0.0, 0
        for (filename, _line, func), (_cc, nc, _tt, ct, _callers) in raw.items():
            if func == name and fragment in filename.replace("\\", "/"):
                cum += ct
                calls += nc
        if calls:
            out.append((label, cum * 1000 / requests, calls // requests if requests else 0))
    return out


def profile(client: Any, run: Any, n: int, top: int, title: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(tt for (_cc, _nc, tt, _ct, _c) in stats.stats.values())  # type: ignore[attr-defined]
    print(f"\n{title}: profiled {n} requests, {total * 1000 / n:.2f} ms per request under cProfile")
    print("  protection steps, cumulative ms per request (calls per request):")
    for label, ms, calls in step_times(stats, n):
        print(f"    {label:<44}{ms:7.3f} ms  ({calls})")
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        lines = buf.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
        print(f"  top {top} by {order}:")
        print("\n".join("    " + line for line in lines[start:] if line.strip()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--requests", type=int, default=300, help="timed requests per app and interaction")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--top", type=int, default=25, help="functions listed per profile order")
    p.add_argument("--reads", action="store_true", help="profile the protected reads too")
    args = p.parse_args(argv)

    from crypto.kms import generate_key_file
    from fhir_api import db, migrate
    from fhir_api.auth.keys import generate_signing_key_file

    body = json.dumps(PATIENT, separators=(",", ":")).encode()
    with (
        tempfile.TemporaryDirectory(prefix="fhir-bench-crypto-profile-") as tmp,
        bench_database(args.database_url, "fhir_bench_crypto") as db_url,
    ):
        key_file, signing = Path(tmp, "keyring.json"), Path(tmp, "signing.jwk")
        generate_key_file(key_file)
        generate_signing_key_file(signing)
        apps = {
            name: make_app(db_url, name == "protected", key_file, signing)
            for name in ("protected", "unprotected")
        }
        with apps["protected"].app_context():
            migrate.upgrade(db.engine(), "head")
        clients = {name: app.test_client() for name, app in apps.items()}
        headers = {name: bearer(app) for name, app in apps.items()}
        ids: dict[str, list[str]] = {}
        for name in apps:  # warm-up: imports, caches, pool connections, the first blind-index key
            posts(clients[name], headers[name], body, args.warmup)
        timing: dict[str, dict[str, list[float]]] = {name: {} for name in apps}
        for _ in range(2):  # alternate, keep the better median
            for name in apps:
                t, new_ids = posts(clients[name], headers[name], body, args.requests)
                ids[name] = new_ids
                r = gets(clients[name], headers[name], new_ids)
                for kind, values in (("create", t), ("read", r)):
                    old = timing[name].get(kind)
                    if old is None or statistics.median(values) < statistics.median(old):
                        timing[name][kind] = values
        print(f"in-process (Flask test client, no HTTP), {args.requests} requests, better of 2 runs:")
        print(f"  {'':<8}{'protected ms':>16}{'unprotected ms':>17}{'extra ms':>10}{'ratio (req/s)':>15}")
        for kind in ("create", "read"):
            on = statistics.median(timing["protected"][kind])
            off = statistics.median(timing["unprotected"][kind])
            print(f"  {kind:<8}{on:>16.2f}{off:>17.2f}{on - off:>10.2f}{off / on:>15.2f}   (medians)")
        n = args.requests
        client, hdr = clients["protected"], headers["protected"]
        off_client, off_hdr = clients["unprotected"], headers["unprotected"]
        print("\nwall ms per request of the steps, unprofiled (protected | unprotected):")
        for kind, runs in (
            (
                "create",
                (
                    lambda: posts(client, hdr, body, n),
                    lambda: posts(off_client, off_hdr, body, n),
                ),
            ),
            (
                "read",
                (
                    lambda: gets(client, hdr, ids["protected"]),
                    lambda: gets(off_client, off_hdr, ids["unprotected"]),
                ),
            ),
        ):
            on, off = dict(clocked(runs[0], n)), dict(clocked(runs[1], n))
            for label in on:
                print(f"  {kind:<7}{label:<36}{on[label]:8.3f} | {off.get(label, 0.0):8.3f}")
        profile(client, lambda: posts(client, hdr, body, n), n, args.top, "protected create")
        profile(off_client, lambda: posts(off_client, off_hdr, body, n), n, args.top, "unprotected create")
        if args.reads:
            profile(client, lambda: gets(client, hdr, ids["protected"]), n, args.top, "protected read")
        for app in apps.values():
            with app.app_context():
                db.engine().dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
