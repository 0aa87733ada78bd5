"""Load the synthetic population through the API itself: transaction bundles of PUTs, posted in-process.

Why transactions posted to the app rather than repository calls: the demo data then gets exactly what a
client's transaction gets (validation, authorization under a token, encryption, indexing and an AuditEvent
per resource, under the client ``fhir-api-seed``). Why PUT with the generator's deterministic ids: loading
is idempotent, a second run adds versions and never copies. Why bundles of several patients: one commit
per bundle instead of one per resource. Why worker processes (``--workers``): validation and encryption
are CPU-bound, and each process has its own interpreter.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import chain, islice
from typing import Any

from flask import Flask, current_app
from tqdm import tqdm

from fhir_api.http import dumps  # Decimal as written: 1.50 stays 1.50
from resources import interactions
from resources.repository import ResourceRepository
from seed import population

SEED_CLIENT = "fhir-api-seed"
DIRECTORY_CHUNK = 200  # directory resources per bundle
PATIENTS_PER_BUNDLE = 10  # about 300 resources


class SeedError(RuntimeError):
    """A bundle the API refused: the population and the server disagree (a bug, or a missing migration)."""


class Poster:
    """Posts transaction bundles to ``app`` in-process with a ``system/*.*`` token of its own."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.client = app.test_client()
        self._minted = float("-inf")

    def _authorize(self) -> None:
        if time.monotonic() - self._minted < 120:  # tokens live 300 s; a big population outlives one
            return
        from fhir_api.auth import tokens

        with self.app.test_request_context():
            token, _ = tokens.issue(client_id=SEED_CLIENT, role="clinical-system", scope="system/*.*")
        self.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        self._minted = time.monotonic()

    def post(self, resources: Iterable[dict[str, Any]]) -> Counter[str]:
        entries = [
            {
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ]
        if not entries:
            return Counter()
        self._authorize()
        body = dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
        with self.app.app_context():  # a request of its own: nothing in ``g`` from the caller or the last one
            resp = self.client.post(
                "/fhir/R4",
                data=body,
                headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
            )
        if resp.status_code != 200:
            payload = resp.get_json(silent=True) or {}
            said = (payload.get("issue") or [{}])[0].get("diagnostics") or resp.status
            raise SeedError(f"the server refused a seed bundle: HTTP {resp.status_code}: {said}")
        return Counter(e["resource"]["resourceType"] for e in entries)


def _chunks(items: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while batch := list(islice(items, size)):
        yield batch


def _patients(first: int, stop: int, seed: int) -> Iterator[dict[str, Any]]:
    return chain.from_iterable(population.patient_record(i, seed) for i in range(first, stop))


def load_population(
    patients: int = 10,
    seed: int = 42,
    progress: bool = False,
    workers: int = 1,
    per_bundle: int = PATIENTS_PER_BUNDLE,
) -> dict[str, int]:
    """Write the population of ``patients`` patients (inside an app context); returns how many resources
    of each type were written."""
    population.Sizes.for_patients(patients)  # refuses a bad size before any write
    poster = Poster(current_app._get_current_object())  # type: ignore[attr-defined]
    counts: Counter[str] = Counter()
    for batch in _chunks(population.directory(patients, seed), DIRECTORY_CHUNK):
        counts += poster.post(batch)
    ranges = [(i, min(i + per_bundle, patients + 1)) for i in range(1, patients + 1, per_bundle)]
    with tqdm(total=patients, unit="patient", desc="seeding", disable=not progress) as bar:

        def done(first: int, stop: int, written: Counter[str]) -> None:
            counts.update(written)
            bar.update(stop - first)
            bar.set_postfix(resources=sum(counts.values()), refresh=False)

        if workers <= 1 or len(ranges) <= 1:
            for first, stop in ranges:
                done(first, stop, poster.post(_patients(first, stop, seed)))
        else:
            url = current_app.config["DATABASE_URL"]
            spawn = multiprocessing.get_context("spawn")  # nothing of this process's engine reaches them
            with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
                futures = {
                    pool.submit(_load_range, url, first, stop, seed): (first, stop) for first, stop in ranges
                }
                for fut in as_completed(futures):
                    done(*futures[fut], Counter(fut.result()))
    return dict(sorted(counts.items()))


_WORKER_POSTER: Poster | None = None


def _load_range(database_url: str, first: int, stop: int, seed: int) -> dict[str, int]:
    """In a worker process: patients ``first`` to ``stop - 1``, through this process's own app."""
    global _WORKER_POSTER
    if _WORKER_POSTER is None:
        from fhir_api import create_app

        app = create_app({"DATABASE_URL": database_url, "AUDIT_CHAIN_INTERVAL": 0, "LOG_LEVEL": "WARNING"})
        _WORKER_POSTER = Poster(app)
    return dict(_WORKER_POSTER.post(_patients(first, stop, seed)))


def _put(repo: ResourceRepository, resource: dict[str, Any]) -> str:
    """One resource by the update interaction, without HTTP, authorization or audit: benchmarks that price
    the storage layer alone (bench/search.py) use it; the seed command does not."""
    res_type = resource["resourceType"]
    interactions.update(repo, res_type, resource["id"], resource, if_match=None, update_create=True)
    return res_type
