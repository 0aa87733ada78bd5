"""The official R4 search parameters, one ``SearchParam`` per (base type, code).

Loaded once from ``resources/data/search-parameters.json`` (see ``build_definitions``). A parameter the
spec defines for several bases (``clinical-code`` style: ``AllergyIntolerance.code | Condition.code``)
becomes one ``SearchParam`` per base holding only that base's part of the expression, so that indexing a
Condition never evaluates the AllergyIntolerance members.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any

from resources.registry import R4_RESOURCE_TYPES
from resources.search.paths import split_union

COMMON_BASES = ("Resource", "DomainResource")
# Resource types that are not DomainResources, so lack text/contained/extensions (and the _text parameter).
NOT_DOMAIN_RESOURCES = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True)
class SearchParam:
    code: str  # e.g. "birthdate"
    type: str  # string|token|date|reference|quantity|number|uri|composite|special
    base: str  # the resource type this instance is for (one per base type)
    expression: str  # only the part of the official expression that applies to this base; "" if none
    url: str
    targets: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # (code of the component's parameter, its expression)
    multiple_or: bool = True


def _raw() -> dict[str, Any]:
    text = files("resources").joinpath("data", "search-parameters.json").read_text(encoding="utf-8")
    return json.loads(text)


def _owns(member: str, base: str) -> bool:
    """A union member belongs to a base when it navigates from it: ``Base.x`` or ``(Base.x as T)``."""
    head = member.lstrip("( ")
    return head == base or head.startswith(base + ".")


def expression_for(expression: str, base: str, bases: list[str]) -> str:
    """The members of a multi-base expression that start at ``base`` (the whole of a single-base one)."""
    if len(bases) == 1:
        return expression
    return " | ".join(m for m in split_union(expression) if _owns(m, base))


def retarget(expression: str, old: str, new: str) -> str:
    """``Resource.meta.tag`` -> ``Patient.meta.tag``: a common parameter's expression for one type."""
    members = []
    for member in split_union(expression):
        start = len(member) - len(member.lstrip("( "))
        if member[start:].startswith(old + "."):
            member = member[:start] + new + member[start + len(old) :]
        members.append(member)
    return " | ".join(members)


def _build(raw: dict[str, Any]) -> list[SearchParam]:
    codes = {p["url"]: p["code"] for p in raw["parameters"]}
    any_type = tuple(raw["anyResourceType"])
    out = []
    for p in raw["parameters"]:
        target = p.get("target", ())
        components = tuple((codes[c["definition"]], c["expression"]) for c in p.get("component", ()))
        for base in p["base"]:
            out.append(
                SearchParam(
                    code=p["code"],
                    type=p["type"],
                    base=base,
                    expression=expression_for(p.get("expression", ""), base, p["base"]),
                    url=p["url"],
                    targets=any_type if target == "*" else tuple(target),
                    components=components,
                    multiple_or=p.get("multipleOr", True),
                )
            )
    return out


@cache
def _all() -> tuple[SearchParam, ...]:
    return tuple(_build(_raw()))


def all_params() -> list[SearchParam]:
    """Every parameter, one per declared base; common ones keep base Resource/DomainResource."""
    return list(_all())


def _for_type(resource_type: str) -> dict[str, SearchParam]:
    found: dict[str, SearchParam] = {}
    for param in _all():
        if param.base == resource_type:
            found[param.code] = param
        elif param.base == "Resource" or (
            param.base == "DomainResource" and resource_type not in NOT_DOMAIN_RESOURCES
        ):
            expression = retarget(param.expression, param.base, resource_type)
            found.setdefault(param.code, replace(param, base=resource_type, expression=expression))
    return found


@cache
def _by_type() -> dict[str, Mapping[str, SearchParam]]:
    types = set(R4_RESOURCE_TYPES) | {p.base for p in _all()} - set(COMMON_BASES)
    return {t: MappingProxyType(_for_type(t)) for t in sorted(types)}


def params_for(resource_type: str) -> Mapping[str, SearchParam]:
    """code -> parameter for one resource type, common ones (_id, _lastUpdated, _tag...) included with their
    expressions rewritten to the type (``Patient.meta.tag``). Read-only and shared; {} for unknown types."""
    return _by_type().get(resource_type, MappingProxyType({}))
