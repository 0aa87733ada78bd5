"""Compartment search (``Patient/123/Observation``) from the official CompartmentDefinitions."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources as package_files
from typing import Any

from sqlalchemy import ColumnElement, Select, exists, literal, or_, select
from sqlalchemy.orm import aliased

from fhir_api.errors import BadRequest, NotFound
from resources.search.models import ReferenceIndex


@cache
def compartments() -> dict[str, dict[str, tuple[str, ...]]]:
    """compartment type -> member resource type -> parameters linking a member to the compartment."""
    raw = json.loads(package_files.files("resources").joinpath("data/compartments.json").read_text())
    return {c: {t: tuple(ps) for t, ps in members.items()} for c, members in raw["compartments"].items()}


def member_params(comp_type: str, res_type: str) -> tuple[str, ...]:
    members = compartments().get(comp_type)
    if members is None:
        raise NotFound(f"There is no {comp_type} compartment")
    params = members.get(res_type)
    if not params:
        raise BadRequest(f"{res_type} resources are not part of the {comp_type} compartment")
    return params


def compartment_clause(
    comp_type: str, comp_id: str | Select[Any], res_type: str, outer: object
) -> ColumnElement[bool]:
    """Members reference the compartment owner through one of the definition's parameters.

    ``comp_id`` is one owner's id, or a query of owner ids (an insurer's members).
    """
    params = member_params(comp_type, res_type)
    ref = aliased(ReferenceIndex)
    refs = [p for p in params if p != "{def}"]
    many = not isinstance(comp_id, str)
    clauses = []
    if refs:
        clauses.append(
            exists(
                select(literal(1)).where(
                    ref.res_type == res_type,
                    ref.res_id == outer.res_id,  # type: ignore[attr-defined]
                    ref.param.in_(refs),
                    ref.target_type == comp_type,
                    ref.target_id.in_(comp_id) if many else ref.target_id == comp_id,
                )
            )
        )
    if res_type == comp_type or "{def}" in params:
        owner = outer.res_id  # type: ignore[attr-defined]
        clauses.append(owner.in_(comp_id) if many else owner == comp_id)
    return or_(*clauses)
