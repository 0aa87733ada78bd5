"""The write path's batching: several rows in one statement, and a single batch that carries its COMMIT."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select

from fhir_api import db
from resources.search.models import TokenIndex


def _rows(n: int, res_id: str = "r1") -> list[dict]:
    return [
        {"res_type": "Patient", "res_id": res_id, "param": "identifier", "system": "s", "code": f"c{i}"}
        for i in range(n)
    ]


def _count(app) -> int:
    with app.app_context(), db.new_session() as s:
        return s.execute(select(func.count()).select_from(TokenIndex)).scalar_one()


def test_many_rows_with_shared_and_null_columns_are_all_written(app):
    rows = [*_rows(30), {**_rows(1, "r2")[0], "system": None}]
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        db.execute_batch(s, [(insert(TokenIndex.__table__), rows)])
    with app.app_context(), db.new_session() as s:
        got = s.execute(select(TokenIndex.res_id, TokenIndex.system, TokenIndex.code)).all()
    assert sorted(got, key=str) == sorted([(r["res_id"], r["system"], r["code"]) for r in rows], key=str)


def test_single_batch_transaction_commits_with_its_batch(app):
    with app.app_context(), db.new_session() as s, db.write_transaction(s, single_batch=True):
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(3))])
    assert _count(app) == 3


def test_a_second_batch_in_a_single_batch_transaction_is_refused_and_nothing_is_written(app):
    with app.app_context(), db.new_session() as s:
        dialect = s.connection().dialect.name
        refused = pytest.raises(RuntimeError, match="already committed")
        with refused, db.write_transaction(s, single_batch=True):
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
            db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2, "r2"))])
    # PostgreSQL committed with the first batch; SQLite commits at the end and so rolled back: either way
    # the refused second batch wrote nothing
    assert _count(app) == (2 if dialect == "postgresql" else 0)


def test_ordinary_transaction_takes_several_batches(app):
    with app.app_context(), db.new_session() as s, db.write_transaction(s):
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2))])
        db.execute_batch(s, [(insert(TokenIndex.__table__), _rows(2, "r2"))])
    assert _count(app) == 4
