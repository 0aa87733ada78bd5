"""Write-time indexing: every search parameter of a resource's type, evaluated once per write."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, insert
from sqlalchemy.orm import Session

from fhir_api.db import Batch, execute_batch
from resources.protection import service as protection
from resources.protection.blind import BLINDABLE_TYPES, hasher, hashes_for_rows, part_hashes
from resources.protection.policy import string_groups
from resources.protection.service import IndexRoot, Protection
from resources.search.definitions import SearchParam, params_for
from resources.search.models import INDEX_TABLES, BlindIndex, BlindSet, CompositeIndex, TokenIndex
from resources.search.paths import compile_expression
from resources.search.values import (
    COMPOSITE_EMPTY,
    EXTRACTORS,
    composite_columns,
    reference_identifier_rows,
    reference_rows,
)

log = logging.getLogger(__name__)
NOT_INDEXED = frozenset({"_id", "_lastUpdated"})  # served from the resource table itself

Rows = list[dict[str, Any]]
# (resource, the server's own base URL or None) -> index rows without res_type/res_id/param
RowMaker = Callable[[dict[str, Any], str | None], Rows]
IDENTIFIER_SUFFIX = ":identifier"  # Reference.identifier tokens are stored as param "<code>:identifier"


def _simple(param: SearchParam) -> RowMaker:
    accessor, extract = compile_expression(param.expression), EXTRACTORS[param.type]

    def rows(resource: dict[str, Any], local_base: str | None) -> Rows:
        nodes = accessor(resource, resource)
        return extract(nodes) if nodes else []

    return rows


def _references(param: SearchParam) -> RowMaker:
    accessor = compile_expression(param.expression)

    def rows(resource: dict[str, Any], local_base: str | None) -> Rows:
        nodes = accessor(resource, resource)
        return reference_rows(nodes, local_base) if nodes else []

    return rows


def _reference_identifiers(param: SearchParam) -> RowMaker:
    accessor = compile_expression(param.expression)

    def rows(resource: dict[str, Any], local_base: str | None) -> Rows:
        nodes = accessor(resource, resource)
        return reference_identifier_rows(nodes) if nodes else []

    return rows


def _composite(param: SearchParam) -> RowMaker | None:
    """Each node the composite expression selects yields the product of its components' values."""
    owner = params_for(param.base)
    parts = []
    for position, (code, expression) in enumerate(param.components):
        component = owner.get(code)
        if component is None or component.type not in EXTRACTORS or not expression:
            return None
        if composite_columns(position, component.type, _probe(component.type)) is None:
            return None
        parts.append((position, component.type, compile_expression(expression), EXTRACTORS[component.type]))
    accessor = compile_expression(param.expression)

    def rows(resource: dict[str, Any], local_base: str | None) -> Rows:
        out: Rows = []
        for node in accessor(resource, resource):
            columns: list[list[dict[str, Any]]] = []
            for position, comp_type, comp_accessor, extract in parts:
                values = [
                    composite_columns(position, comp_type, r) for r in extract(comp_accessor(node, resource))
                ]
                values = [v for v in values if v]
                if not values:
                    break
                columns.append(values)
            else:
                for combo in itertools.product(*columns):
                    row = dict(COMPOSITE_EMPTY)
                    for part in combo:
                        row.update(part)
                    out.append(row)
        return out

    return rows


def _probe(param_type: str) -> dict[str, Any]:
    """A row with every column of a type's table, to ask whether a component position maps it."""
    keys = {
        "token": ("system", "code"),
        "reference": ("target_type", "target_id", "url"),
        "quantity": ("value", "system", "code", "unit"),
        "number": ("value",),
        "date": ("low", "high"),
        "string": ("value_norm",),
        "uri": ("value",),
    }[param_type]
    return dict.fromkeys(keys)


@cache
def extractors(res_type: str) -> tuple[tuple[str, type, RowMaker], ...]:
    """(param code, index table, row maker) for each indexed parameter of a type."""
    found = []
    for code, param in sorted(params_for(res_type).items()):
        if code in NOT_INDEXED or not param.expression:
            continue
        if param.type == "reference":
            found.append((code, INDEX_TABLES["reference"], _references(param)))
            found.append((code + IDENTIFIER_SUFFIX, TokenIndex, _reference_identifiers(param)))
        elif param.type in EXTRACTORS:
            found.append((code, INDEX_TABLES[param.type], _simple(param)))
        elif param.type == "composite" and (maker := _composite(param)) is not None:
            found.append((code, CompositeIndex, maker))
    return tuple(found)


@cache
def tables_for(res_type: str) -> tuple[type, ...]:
    return tuple({table for _, table, _ in extractors(res_type)})


@dataclass(frozen=True)
class BlindContext:
    """A type's protected parameters, the blind-index root key new rows are written under, and whether
    they go to ``search_blind_set`` (PostgreSQL) or ``search_blind``."""

    protected: frozenset[str]
    root: IndexRoot | None
    sets: bool = False


def blind_sets(session: Session) -> bool:
    """Whether this database keeps string and token blind hashes as one array per resource (PostgreSQL's
    GIN); elsewhere every hash is a row of ``search_blind``."""
    return session.get_bind().dialect.name == "postgresql"


def blind_tables(sets: bool) -> tuple[type, ...]:
    return (BlindSet, BlindIndex) if sets else (BlindIndex,)


def in_set(res_type: str, code: str) -> bool:
    """Where sets are kept, whether a protected parameter's hashes go to the array.

    Strings and tokens do: about a hundred hashes per resource, looked up one or two at a time. Dates stay
    rows: a handful of bucket hashes per value, but a range looks up a few hundred buckets at once, which a
    btree answers directly, while ``&&`` compares every pair and PostgreSQL misjudges how many arrays
    share one of so many elements (it then filters every resource's array in page order)."""
    param = params_for(res_type).get(code)
    return param is not None and param.type != "date"


def blind_context(session: Session, shield: Protection, res_type: str, writing: bool) -> BlindContext | None:
    protected = shield.protected_params(res_type)
    if not protected:
        return None
    roots = shield.index_roots(session, create=True) if writing else ()
    return BlindContext(protected, roots[0] if roots else None, blind_sets(session))


@cache
def _accessor(res_type: str, code: str) -> Callable[[Any, Any], list[Any]]:
    return compile_expression(params_for(res_type)[code].expression)


def _blind_hashes(
    res_type: str, code: str, rows: Rows, blind: BlindContext, resource: dict[str, Any]
) -> set[int]:
    """A protected parameter's plain rows as keyed hashes (none for types blind indexes cannot serve).

    The parts of a HumanName or Address are hashed once, labelled, under the owning parameter (``name``,
    ``address``); the parameters that search single parts (``family``, ``address-city``) write nothing."""
    param = params_for(res_type).get(code)
    if blind.root is None or param is None or param.type not in BLINDABLE_TYPES:
        return set()
    group = string_groups(res_type).get(code)
    if group is not None and group[0] != code:
        return set()  # searched through the owner's labelled rows
    h = hasher(blind.root.root, res_type, code)
    if group is not None:
        return part_hashes(_accessor(res_type, code)(resource, resource), group[1], h)
    return hashes_for_rows(param.type, rows, h)


@cache
def _unwritten(res_type: str, protected: frozenset[str], keyed: bool) -> frozenset[str]:
    """Protected parameters whose rows would only be dropped, so are not extracted: the part parameters of
    a HumanName or Address (``family``, ``address-city``: the owner's labelled rows answer them), the
    identifier tokens of a protected reference, and all of them when there is no key to hash with."""
    out = set()
    for code, _, _ in extractors(res_type):
        base = code.removesuffix(IDENTIFIER_SUFFIX)
        if base not in protected:
            continue
        group = string_groups(res_type).get(code)
        if code not in protected or not keyed or (group is not None and group[0] != code):
            out.add(code)
    return frozenset(out)


def _blind_table_rows(
    res_type: str, res_id: str, blind: BlindContext, hashes: dict[str, set[int]]
) -> dict[type, Rows]:
    """A ``search_blind`` row per hash, but where sets are kept, one ``search_blind_set`` row with every
    string and token hash (``in_set``)."""
    if blind.root is None:
        return {}
    gen = blind.root.gen
    arrayed: set[int] = set()
    rows: Rows = []
    for code, values in hashes.items():
        if blind.sets and in_set(res_type, code):
            arrayed |= values
        else:
            rows += [
                {"res_type": res_type, "res_id": res_id, "param": code, "hash": value, "gen": gen}
                for value in values
            ]
    out: dict[type, Rows] = {BlindIndex: rows} if rows else {}
    if arrayed:
        out[BlindSet] = [{"res_type": res_type, "res_id": res_id, "gen": gen, "hashes": sorted(arrayed)}]
    return out


def index_rows(
    res_type: str,
    res_id: str,
    resource: dict[str, Any],
    local_base: str | None = None,
    blind: BlindContext | None = None,
) -> dict[type, Rows]:
    """Index rows per table; values repeated within one parameter are stored once. A protected
    parameter's values become blind-index rows only: no clear value reaches an index table."""
    out: dict[type, Rows] = {}
    hashes: dict[str, set[int]] = {}
    unwritten = _unwritten(res_type, blind.protected, blind.root is not None) if blind is not None else ()
    for code, table, make_rows in extractors(res_type):
        if code in unwritten:
            continue
        try:
            rows = make_rows(resource, local_base)
        except Exception as exc:  # one odd element must not make the resource unwritable
            # no message or traceback: either could quote the resource's (protected) values
            log.warning("index extraction failed for %s parameter %s: %s", res_type, code, type(exc).__name__)
            continue
        if not rows:
            continue
        if blind is not None and code.removesuffix(IDENTIFIER_SUFFIX) in blind.protected:
            if code in blind.protected:
                hashes[code] = _blind_hashes(res_type, code, rows, blind, resource)
            continue
        seen: set[tuple[Any, ...]] = set()
        bucket = out.setdefault(table, [])
        for row in rows:
            key = tuple(row.values())
            if key in seen:
                continue
            seen.add(key)
            bucket.append({"res_type": res_type, "res_id": res_id, "param": code, **row})
    if blind is not None:
        out.update(_blind_table_rows(res_type, res_id, blind, hashes))
    return out


_ALL_TABLES = {*INDEX_TABLES.values(), BlindIndex, BlindSet}
_DELETE = {
    model: delete(model.__table__).where(
        model.__table__.c.res_type == bindparam("res_type"), model.__table__.c.res_id == bindparam("res_id")
    )
    for model in _ALL_TABLES
}
_INSERT = {model: insert(model.__table__) for model in _ALL_TABLES}


def index_batch(
    res_type: str,
    res_id: str,
    resource: dict[str, Any] | None,
    *,
    replace: bool,
    local_base: str | None = None,
    blind: BlindContext | None = None,
) -> Batch:
    """The statements that replace a resource's index rows (none remain for a deleted resource)."""
    batch: Batch = []
    if replace:
        tables = tables_for(res_type) + (blind_tables(blind.sets) if blind is not None else ())
        batch += [(_DELETE[table], [{"res_type": res_type, "res_id": res_id}]) for table in tables]
    if resource is not None:
        rows_by_table = index_rows(res_type, res_id, resource, local_base, blind)
        batch += [(_INSERT[table], rows) for table, rows in rows_by_table.items() if rows]
    return batch


def write_index(
    session: Session,
    res_type: str,
    res_id: str,
    resource: dict[str, Any] | None,
    *,
    replace: bool,
    local_base: str | None = None,
) -> None:
    """Replace a resource's index rows inside the caller's transaction."""
    blind = blind_context(session, protection.current(), res_type, resource is not None)
    batch = index_batch(res_type, res_id, resource, replace=replace, local_base=local_base, blind=blind)
    execute_batch(session, batch)
