"""Migration 0014 on PostgreSQL: string and token blind hashes move from rows to one array per resource,
date buckets stay rows, and protected searches answer the same before and after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, text

from crypto.kms import generate_key_file
from fhir_api import create_app
from fhir_api.db import make_engine, new_session
from fhir_api.migrate import alembic_config, upgrade
from resources import jsonio
from resources.protection import service as protection
from resources.repository import ResourceRepository
from resources.search.indexer import BlindContext, index_rows
from resources.search.models import BlindIndex
from tests.helpers import authorized_client, created_id, fresh_database, patient

pytestmark = pytest.mark.skipif(
    not os.environ.get("FHIR_TEST_DATABASE_URL"), reason="search_blind_set is PostgreSQL's"
)
QUERIES = (
    "Patient?name=Migr",
    "Patient?family=Migrate1",
    "Patient?birthdate=ge1960&birthdate=lt1963",
    "Patient?telecom=555-2",
    "Patient?name:missing=false",
)


def _totals(http) -> dict[str, int]:
    return {q: http.get(f"/fhir/R4/{q}&_total=accurate").get_json().get("total") for q in QUERIES}


def _count(url: str, sql: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text(sql)).scalar_one()
    engine.dispose()
    return int(n)


def test_rows_written_before_0014_move_into_arrays(tmp_path: Path):
    keyring = tmp_path / "keyring.json"
    generate_key_file(keyring)
    with fresh_database(tmp_path, "blindsets") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True, "CRYPTO_KEY_FILE": str(keyring)})
        http = authorized_client(app)
        ids = []
        for i in range(4):
            phone = [{"system": "phone", "value": f"555-{i}"}]
            body = patient(name=[{"family": f"Migrate{i}"}], birthDate=f"196{i}-05-06", telecom=phone)
            ids.append(created_id(http.post("/fhir/R4/Patient", json=body)))
        before = _totals(http)
        assert before == {QUERIES[0]: 4, QUERIES[1]: 1, QUERIES[2]: 3, QUERIES[3]: 1, QUERIES[4]: 4}

        # the database as 0013 left it: every hash a row of search_blind, no array table
        with app.app_context(), new_session() as s:
            root = protection.current().index_roots(s)[0]
            context = BlindContext(protection.current().protected_params("Patient"), root, sets=False)
            repo = ResourceRepository(s)
            rows = []
            for pid in ids:
                clear = jsonio.loads_trusted(repo.read("Patient", pid).body)
                rows += index_rows("Patient", pid, clear, blind=context)[BlindIndex]
        app.extensions["fhir_db"]["engine"].dispose()
        engine = make_engine(url)
        cfg = alembic_config(url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0013")
            conn.execute(text("DELETE FROM search_blind"))
            conn.execute(insert(BlindIndex.__table__), rows)
        upgrade(engine)
        engine.dispose()

        assert _count(url, "SELECT count(*) FROM search_blind_set") == 4
        assert _count(url, "SELECT count(DISTINCT param) FROM search_blind") == 1  # birthdate only
        app = create_app({"DATABASE_URL": url, "TESTING": True, "CRYPTO_KEY_FILE": str(keyring)})
        assert _totals(authorized_client(app)) == before
        app.extensions["fhir_db"]["engine"].dispose()
