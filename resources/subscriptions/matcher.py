"""Matching a batch of changed ids against every subscription of a type in one statement.

Each subscription's criteria become a SELECT of the ids it matches among ``:ids`` (built once by the search
engine, under the subscriber's access, and kept: its conditions are SQL evaluated when run, so membership
and compartments are those of the moment). The SELECTs of one type are joined with UNION ALL, also kept
while the set of subscriptions stays the same: a batch costs one round trip and no query building. Built
statements are forgotten after ``TTL`` seconds (blind-index keys can be rotated).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import ARRAY, String, bindparam, func, literal, select, union_all
from sqlalchemy.orm import Session

from resources.search.results import criteria_conditions

TTL = 60.0
_IDS = bindparam("ids", expanding=True)
_ID_ARRAY = bindparam("ids", type_=ARRAY(String(64)))
_ONE: dict[tuple[Any, ...], tuple[float, Any]] = {}
_UNION: dict[tuple[Any, ...], tuple[float, Any]] = {}


def _key(sub: Any, access: Any) -> tuple[Any, ...]:
    return (sub.sub_id, sub.criteria_type, sub.criteria, access)


def one(session: Session, sub: Any, access: Any) -> Any:
    """The SELECT (sub_id, res_id) of the ids among ``:ids`` that ``sub`` matches (raises if its criteria
    no longer build: a parameter gone, a value now refused)."""
    key = _key(sub, access)
    now = time.monotonic()
    hit = _ONE.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    criteria = parse_qsl(sub.criteria, keep_blank_values=True)
    outer, conditions = criteria_conditions(session, sub.criteria_type, criteria, access)
    if session.get_bind().dialect.name == "postgresql":
        # one array parameter, named alike in every branch: sent once, not 200 placeholders per branch
        among = outer.res_id == func.any(_ID_ARRAY)
    else:
        among = outer.res_id.in_(_IDS)
    stmt = select(literal(sub.sub_id).label("sub_id"), outer.res_id.label("res_id")).where(*conditions, among)
    if len(_ONE) > 10_000:
        _ONE.clear()
    _ONE[key] = (now + TTL, stmt)
    return stmt


def union(keys: Sequence[tuple[Any, ...]], parts: Sequence[Any]) -> Any:
    """The UNION ALL of ``parts`` (kept while the same subscriptions are matched together)."""
    key = tuple(keys)
    now = time.monotonic()
    hit = _UNION.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    stmt = parts[0] if len(parts) == 1 else union_all(*parts)
    if len(_UNION) > 1_000:
        _UNION.clear()
    _UNION[key] = (now + TTL, stmt)
    return stmt


def run(session: Session, stmt: Any, ids: Sequence[str]) -> list[tuple[str, str]]:
    """(sub_id, res_id) rows of a matching statement for ``ids``."""
    return [tuple(r) for r in session.execute(stmt, {"ids": list(ids)})]


def key_of(sub: Any, access: Any) -> tuple[Any, ...]:
    return _key(sub, access)


def forget() -> None:
    _ONE.clear()
    _UNION.clear()
