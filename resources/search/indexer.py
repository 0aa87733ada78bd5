"""Write-time indexing: every search parameter of a resource's type, evaluated once per write."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.orm import Session

from resources.search.definitions import params_for
from resources.search.models import INDEX_TABLES
from resources.search.paths import compile_expression
from resources.search.values import EXTRACTORS

log = logging.getLogger(__name__)
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})  # served from the resource table itself

Extractor = tuple[
    str, type, Callable[[dict[str, Any]], list[Any]], Callable[[Iterable[Any]], list[dict[str, Any]]]
]


@cache
def extractors(res_type: str) -> tuple[Extractor, ...]:
    """(param code, index table, compiled accessor, value extractor) for each indexed parameter."""
    found = []
    for code, param in sorted(params_for(res_type).items()):
        if code in NOT_INDEXED or param.type not in EXTRACTORS or not param.expression:
            continue
        found.append(
            (code, INDEX_TABLES[param.type], compile_expression(param.expression), EXTRACTORS[param.type])
        )
    return tuple(found)


@cache
def tables_for(res_type: str) -> tuple[type, ...]:
    return tuple({table for _, table, _, _ in extractors(res_type)})


def index_rows(res_type: str, res_id: str, resource: dict[str, Any]) -> dict[type, list[dict[str, Any]]]:
    """Index rows per table; values repeated within one parameter are stored once."""
    out: dict[type, list[dict[str, Any]]] = {}
    for code, table, accessor, extract in extractors(res_type):
        try:
            nodes = accessor(resource)
            if not nodes:
                continue
            rows = extract(nodes)
        except Exception:  # one odd element must not make the resource unwritable
            log.warning("index extraction failed for %s parameter %s", res_type, code, exc_info=True)
            continue
        seen: set[tuple[Any, ...]] = set()
        bucket = out.setdefault(table, [])
        for row in rows:
            key = tuple(row.values())
            if key in seen:
                continue
            seen.add(key)
            bucket.append({"res_type": res_type, "res_id": res_id, "param": code, **row})
    return out


def write_index(
    session: Session, res_type: str, res_id: str, resource: dict[str, Any] | None, *, replace: bool
) -> None:
    """Replace a resource's index rows inside the caller's transaction (none for a deleted resource)."""
    if replace:
        for table in tables_for(res_type):
            session.execute(delete(table).where(table.res_type == res_type, table.res_id == res_id))
    if resource is None:
        return
    for table, rows in index_rows(res_type, res_id, resource).items():
        if rows:
            session.execute(insert(table), rows)
