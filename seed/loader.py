"""Load the synthetic population through the API's own write path.

Why ``interactions.update`` and not direct inserts: the demo data then passes exactly the validation,
storage (and, as they arrive, indexing, encryption and audit) that a client's ``PUT`` gets. Update-as-create
with the generator's deterministic ids makes loading idempotent: a second run adds versions, never copies.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tqdm import tqdm

from fhir_api import db
from resources import interactions
from resources.repository import ResourceRepository
from seed import population


def _put(repo: ResourceRepository, resource: dict[str, Any]) -> str:
    res_type = resource["resourceType"]
    interactions.update(repo, res_type, resource["id"], resource, if_match=None, update_create=True)
    return res_type


def load_population(patients: int = 10, seed: int = 42, progress: bool = False) -> dict[str, int]:
    """Write the population of ``patients`` patients; returns how many resources of each type were written.

    Runs inside a Flask app context; each resource commits on its own, as an HTTP PUT would.
    """
    records = population.patient_records(patients, seed)  # refuses a bad size before any write
    counts: Counter[str] = Counter()
    with db.new_session() as session:
        repo = ResourceRepository(session)
        for resource in population.directory(patients, seed):
            counts[_put(repo, resource)] += 1
        with tqdm(total=patients, unit="patient", desc="seeding", disable=not progress) as bar:
            for record in records:
                for resource in record:
                    counts[_put(repo, resource)] += 1
                bar.update(1)
                bar.set_postfix(resources=sum(counts.values()), refresh=False)
    return dict(sorted(counts.items()))
