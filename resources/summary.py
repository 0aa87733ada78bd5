"""The ``_summary`` and ``_elements`` result parameters (http://hl7.org/fhir/R4/search.html#summary).

Pure functions over resource JSON as stored: values are copied by reference and never re-serialised
through the models, so decimals (``Decimal``) and key order survive. Which elements are summary or
mandatory comes from the fhir.resources R4B models (the only machine-readable definitions installed),
read once per type: in R4B a few summary flags differ from R4 4.0.1, and those follow R4B.

Only the top level of a resource is filtered: an element kept is kept whole, with everything nested in
it, even where a nested element is not itself a summary element. That is what servers do in practice,
and it keeps every kept element valid. ``contained`` is not a summary element, so local references
(``#id``) in a summary may point at nothing; the SUBSETTED tag tells the client the resource is partial.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from fhir_api.errors import BadRequest
from resources.registry import model_class

SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED_TAG: Mapping[str, str] = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}

SUMMARY_MODES = ("true", "text", "data", "count", "false")

# Kept in every subset: what identifies the resource and where the SUBSETTED tag goes.
_ALWAYS = frozenset({"resourceType", "id", "_id", "meta"})
_ELEMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    """Per-type JSON key sets, so that filtering a resource is one set lookup per key."""

    summary: frozenset[str]  # _summary=true: summary and mandatory elements
    text: frozenset[str]  # _summary=text: text and mandatory elements
    mandatory: frozenset[str]  # always kept by _elements
    elements: Mapping[str, frozenset[str]]  # element name (value, valueQuantity, birthDate) -> JSON keys


def _keys(alias: str) -> frozenset[str]:
    """A JSON property and its primitive extension twin (``birthDate`` and ``_birthDate``)."""
    return frozenset({alias, "_" + alias})


@cache
def _type_info(resource_type: str) -> _TypeInfo | None:
    """Read the model's field metadata once; None for types without an R4B model."""
    model = model_class(resource_type)
    if model is None:
        return None
    summary: set[str] = set(_ALWAYS)
    mandatory: set[str] = set(_ALWAYS)
    elements: dict[str, set[str]] = {}
    required_choices: set[str] = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue  # ``_x`` twins (covered by _keys) and non-elements such as fhir_comments
        alias = field.alias or name  # class_fhir -> class
        keys = _keys(alias)
        elements.setdefault(alias, set()).update(keys)
        choice = extra.get("one_of_many")
        if isinstance(choice, str):  # value[x]: the name ``value`` selects every valueXxx
            elements.setdefault(choice, set()).update(keys)
            if extra.get("one_of_many_required"):
                required_choices.add(choice)
        # Complex mandatory fields are required pydantic fields; mandatory primitives are optional
        # fields (so that ``_x`` alone can carry them) that a validator checks, flagged element_required.
        if field.is_required() or extra.get("element_required"):
            mandatory |= keys
        if extra.get("summary_element_property"):
            summary |= keys
    for choice in required_choices:
        mandatory |= elements[choice]
    # A summary must still be a valid resource, so it keeps the mandatory elements too: in R4 a few of
    # them are not summary elements (Appointment.participant, AuditEvent.agent/source, Provenance.agent).
    summary |= mandatory
    return _TypeInfo(
        summary=frozenset(summary),
        text=frozenset(mandatory | {"text"}),
        mandatory=frozenset(mandatory),
        elements={name: frozenset(keys) for name, keys in elements.items()},
    )


def parse_summary(value: str | None) -> str | None:
    """The ``_summary`` mode, or None when absent or empty (an empty search parameter is ignored)."""
    if value is None or not value.strip():
        return None
    mode = value.strip()
    if mode not in SUMMARY_MODES:
        raise BadRequest(
            f"_summary must be one of {', '.join(SUMMARY_MODES)}, not '{mode[:64]}'", expression="_summary"
        )
    return mode


def parse_elements(value: str | None, resource_type: str | None) -> list[str] | None:
    """The ``_elements`` names, deduplicated in order; checked against the type when one is known.

    Only top-level element names are allowed (as R4 defines ``_elements``); a choice element may be named
    by its base (``value``) or one of its forms (``valueQuantity``). Without a type (a search across
    types) the names are only checked for shape, and names a resource's type lacks select nothing.
    """
    if value is None or not value.strip():
        return None
    names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    bad_shape = [name for name in names if not _ELEMENT_NAME.fullmatch(name)]
    if bad_shape:
        raise BadRequest(
            f"_elements takes top-level element names separated by commas; not {_quoted(bad_shape)}",
            expression="_elements",
        )
    info = _type_info(resource_type) if resource_type else None
    if info is not None:
        unknown = [name for name in names if name not in info.elements]
        if unknown:
            raise BadRequest(
                f"{resource_type} has no element {_quoted(unknown)} (in _elements)", expression="_elements"
            )
    return names


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name[:64]}'" for name in list(names)[:10])


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """Apply a ``_summary`` mode (true, text, data or false; the caller answers ``count`` itself).

    Returns a new top-level dict; nested values are shared with the input, which is never mutated.
    Types without a model are returned whole for true/text, since their summary elements are unknown.
    """
    if mode == "false":
        return dict(resource)
    if mode == "data":
        return _subset(resource, lambda key: key != "text")
    if mode not in ("true", "text"):
        raise ValueError(f"summarize() does not handle _summary={mode!r}")
    info = _type_info(resource.get("resourceType", ""))
    if info is None:
        return dict(resource)
    keep = info.summary if mode == "true" else info.text
    return _subset(resource, keep.__contains__)


def select_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """Apply ``_elements``: the listed top-level elements plus id, meta and the mandatory elements."""
    keep = _elements_keys(resource.get("resourceType", ""), tuple(elements))
    return _subset(resource, keep.__contains__)


@lru_cache(maxsize=512)
def _elements_keys(resource_type: str, elements: tuple[str, ...]) -> frozenset[str]:
    """JSON keys an ``_elements`` list keeps for a type; cached because a page repeats the same pair."""
    info = _type_info(resource_type)
    if info is None:  # no model: take the names at their word, mandatory elements unknown
        return _ALWAYS.union(*(_keys(name) for name in elements))
    return info.mandatory.union(*(info.elements.get(name, ()) for name in elements))


def _subset(resource: dict[str, Any], keep: Any) -> dict[str, Any]:
    """Copy the kept top-level keys; when any key was dropped, tag the copy SUBSETTED."""
    out = {key: value for key, value in resource.items() if keep(key)}
    if len(out) == len(resource):
        return out
    return _tag_subsetted(out)


def _tag_subsetted(out: dict[str, Any]) -> dict[str, Any]:
    """Add the SUBSETTED tag (once) to a copy of ``meta``: the input's meta and tag list stay untouched."""
    meta = out.get("meta")
    if not isinstance(meta, dict):
        tagged = {"resourceType": out.get("resourceType")} if "resourceType" in out else {}
        if "id" in out:
            tagged["id"] = out["id"]
        tagged["meta"] = {"tag": [dict(SUBSETTED_TAG)]}
        tagged.update((key, value) for key, value in out.items() if key != "meta")  # meta after id
        return tagged
    tags = meta.get("tag") or []
    if any(
        isinstance(tag, dict) and tag.get("system") == SUBSETTED_SYSTEM and tag.get("code") == "SUBSETTED"
        for tag in tags
    ):
        return out
    out["meta"] = {**meta, "tag": [*tags, dict(SUBSETTED_TAG)]}
    return out
