"""Whose records each stored version belongs to, read from that version's own content.

Tokens confined to one patient's compartment, or to an insurer's members, are checked against the search
index, which describes only current versions. A resource moved from patient B to patient A (a misfiled
result corrected) would then show A every older version too, B's data included. So every version records
its owners when it is written, in the same batch: each patient whose compartment it is in (the official
Patient CompartmentDefinition's parameters), and for a Coverage the Organizations that pay it (an
insurer sees only its own Coverage). A deletion keeps the owners of the version it deletes.

The rows come from the reference rows the indexer already extracted for the search index, so a write
costs one more multi-row insert, and no second evaluation of the resource.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    exists,
    false,
    insert,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from fhir_api.db import Batch
from resources.models import VersionOwner
from resources.search.compartments import compartments
from resources.search.indexer import extractors
from resources.search.models import ReferenceIndex

PATIENT = "Patient"
PAYOR = ("Coverage", "payor", "Organization")  # (type, parameter, owner type): an insurer's own Coverage

Rows = list[dict[str, Any]]

_TABLE = VersionOwner.__table__
INSERT = insert(_TABLE)
_COLUMNS = ("res_type", "res_id", "version", "owner_type", "owner_id")
COPY = insert(_TABLE).from_select(
    list(_COLUMNS),
    select(
        _TABLE.c.res_type,
        _TABLE.c.res_id,
        cast(bindparam("o_new_version"), Integer),
        _TABLE.c.owner_type,
        _TABLE.c.owner_id,
    ).where(
        _TABLE.c.res_type == bindparam("o_type"),
        _TABLE.c.res_id == bindparam("o_id"),
        _TABLE.c.version == bindparam("o_version"),
    ),
)
"""A deletion's owners: those of the version it deletes (whoever could see that may see it went)."""


@cache
def owner_params(res_type: str) -> dict[str, tuple[str, ...]]:
    """Reference parameter -> the owner types it makes owners of a version of ``res_type``."""
    out: dict[str, tuple[str, ...]] = {
        p: (PATIENT,) for p in compartments()[PATIENT].get(res_type, ()) if p != "{def}"
    }
    if res_type == PAYOR[0]:
        out[PAYOR[1]] = (*out.get(PAYOR[1], ()), PAYOR[2])
    return out


def owners(res_type: str, references: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(owner type, owner id) pairs, once each, from a version's reference index rows."""
    params = owner_params(res_type)
    found: dict[tuple[str, str], None] = {}
    for row in references:
        target_type, target_id = row.get("target_type"), row.get("target_id")
        if target_id and target_type in params.get(row.get("param", ""), ()):
            found[(target_type, target_id)] = None
    return list(found)


def rows(res_type: str, res_id: str, version: int, references: Iterable[dict[str, Any]]) -> Rows:
    """The owner rows of one version."""
    return [
        {"res_type": res_type, "res_id": res_id, "version": version, "owner_type": t, "owner_id": i}
        for t, i in owners(res_type, references)
    ]


def references_in(batch: Batch) -> Rows:
    """The reference index rows of a write's batch (the indexer's, already extracted: no second pass)."""
    out: Rows = []
    for stmt, params in batch:
        table = getattr(getattr(stmt, "table", None), "name", None)
        if table == ReferenceIndex.__tablename__ and params and "target_type" in params[0]:
            out += params  # an insert's rows (a delete's carry only the resource's type and id)
    return out


def references(res_type: str, resource: dict[str, Any], local_base: str | None = None) -> Rows:
    """The reference rows of only the owner parameters, for writes that skip the search index and for
    backfilling versions the index no longer describes."""
    params = owner_params(res_type)
    if not params:
        return []
    out: Rows = []
    for code, table, make_rows in extractors(res_type):
        if table is ReferenceIndex and code in params:
            try:
                found = make_rows(resource, local_base)
            except Exception:  # as in the indexer: an odd element must not make the version unwritable
                continue
            out += [{"param": code, **row} for row in found]
    return out


def owned_by(
    res_type: str | None, version: Any, owner_type: str, owner: str | Select[Any]
) -> ColumnElement[bool]:
    """The version (a ResourceVersion alias, of ``res_type`` or of any type) has this owner, or one of a
    query's."""
    row = aliased(VersionOwner)
    return (
        exists()
        .where(
            row.res_type == (version.res_type if res_type is None else res_type),
            row.res_id == version.res_id,
            row.version == version.version,
            row.owner_type == owner_type,
            row.owner_id == owner if isinstance(owner, str) else row.owner_id.in_(owner),
        )
        .correlate_except(row)  # the version may be a query or two further out (history, vread)
    )


def in_patient_compartment(
    res_type: str | None, patient: str | Select[Any], version: Any
) -> ColumnElement[bool]:
    """The version is in the compartment of the patient (or of one of a query's patients), by its own
    content; a Patient is always in its own. ``res_type`` None: a version of any type (only members of
    the compartment have Patient owners)."""
    if res_type is not None and res_type != PATIENT and res_type not in compartments()[PATIENT]:
        return false()
    clause = owned_by(res_type, version, PATIENT, patient)
    if res_type is not None and res_type != PATIENT:
        return clause
    own = version.res_id == patient if isinstance(patient, str) else version.res_id.in_(patient)
    if res_type is None:
        own = and_(version.res_type == PATIENT, own)
    return or_(own, clause)


def paid_by(version: Any, payor: str) -> ColumnElement[bool]:
    """The Coverage version names Organization ``payor`` as its payor."""
    return owned_by(PAYOR[0], version, PAYOR[2], payor)
