"""Turn the JSON nodes a search parameter's expression selects into index values, one function per type.

This is the single place where values are normalised for indexing; the query side normalises search
values with the same functions, so both always agree (and encryption can swap in keyed hashes here).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_api.errors import BadRequest
from resources.dates import parse_range
from resources.registry import R4_RESOURCE_TYPES
from resources.search.models import INDEXED_CHARS

Row = dict[str, Any]
MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_SPACES = re.compile(r"\s+")
_REFERENCE = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def normalize_text(value: str) -> str:
    """Case- and accent-insensitive form: 'Émile  Zola' -> 'emile zola'."""
    if value.isascii():  # the common case: nothing to decompose or strip
        stripped = value
    else:
        decomposed = unicodedata.normalize("NFKD", value)
        stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACES.sub(" ", stripped.casefold()).strip()[:INDEXED_CHARS]


def _cut(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:INDEXED_CHARS]


# -- string ------------------------------------------------------------------------------------------------
_STRING_PARTS = (
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "text",
)


def _strings(node: Any) -> Iterable[str]:
    """A string, or the parts of a HumanName or Address (any part matches, per the search page)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key in _STRING_PARTS:
            value = node.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    yield item


def string_rows(nodes: Iterable[Any]) -> list[Row]:
    return [
        {"value_norm": normalize_text(s), "value_exact": s} for node in nodes for s in _strings(node) if s
    ]


# -- token -------------------------------------------------------------------------------------------------
def _coding_row(coding: dict[str, Any]) -> Row | None:
    system, code = coding.get("system"), coding.get("code")
    label = coding.get("display")
    if system is None and code is None and label is None:
        return None
    return {"system": _cut(system), "code": _cut(code), "text_norm": normalize_text(label) if label else None}


def _token_rows(node: Any) -> Iterable[Row | None]:
    if isinstance(node, bool):
        yield {"code": "true" if node else "false"}
    elif isinstance(node, (str, int, Decimal)):
        yield {"code": _cut(node)}
    elif isinstance(node, dict):
        if "coding" in node or ("text" in node and "value" not in node and "system" not in node):
            # each Coding with its own display; CodeableConcept.text as a row of its own (for :text)
            for coding in node.get("coding") or []:
                if isinstance(coding, dict):
                    yield _coding_row(coding)
            text = node.get("text")
            if isinstance(text, str) and text:
                yield {"text_norm": normalize_text(text)}
        elif "value" in node and ("system" in node or "type" in node or "use" in node or "period" in node):
            row: Row = {"system": _cut(node.get("system")), "code": _cut(node.get("value"))}
            id_type = node.get("type")
            if isinstance(id_type, dict):  # Identifier.type: one row per type coding, for :of-type
                label = id_type.get("text")
                text = {"text_norm": normalize_text(label)} if isinstance(label, str) else {}
                typed = [c for c in id_type.get("coding") or [] if isinstance(c, dict)]
                for coding in typed:
                    yield {
                        **row,
                        **text,
                        "type_system": _cut(coding.get("system")),
                        "type_code": _cut(coding.get("code")),
                    }
                if not typed:
                    yield {**row, **text}
            else:
                yield row
        elif "value" in node:  # ContactPoint or Identifier without system
            yield {"system": _cut(node.get("system")), "code": _cut(node.get("value"))}
        else:
            yield _coding_row(node)


def token_rows(nodes: Iterable[Any]) -> list[Row]:
    rows = []
    for node in nodes:
        for row in _token_rows(node):
            if row:
                rows.append(
                    {
                        "system": None,
                        "code": None,
                        "text_norm": None,
                        "type_system": None,
                        "type_code": None,
                        **row,
                    }
                )
    return rows


# -- date --------------------------------------------------------------------------------------------------
def _range(value: Any) -> tuple[datetime, datetime] | None:
    if not isinstance(value, str):
        return None
    try:
        r = parse_range(value)
    except BadRequest:
        return None
    return r.low, r.high


def _date_row(node: Any) -> Row | None:
    if isinstance(node, str):
        found = _range(node)
        return {"low": found[0], "high": found[1]} if found else None
    if not isinstance(node, dict):
        return None
    if "start" in node or "end" in node:  # Period: an open end is unbounded
        start, end = _range(node.get("start")), _range(node.get("end"))
        if start is None and end is None:
            return None
        return {"low": start[0] if start else MIN_TIME, "high": end[1] if end else MAX_TIME}
    bounds: list[tuple[datetime, datetime]] = [r for r in map(_range, node.get("event") or []) if r]
    repeat = node.get("repeat")
    if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
        row = _date_row(repeat["boundsPeriod"])
        if row:
            bounds.append((row["low"], row["high"]))
    if bounds:  # Timing: from its first event to its last
        return {"low": min(b[0] for b in bounds), "high": max(b[1] for b in bounds)}
    return None


def date_rows(nodes: Iterable[Any]) -> list[Row]:
    return [row for row in map(_date_row, nodes) if row]


# -- number and quantity ------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        return None
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def number_rows(nodes: Iterable[Any]) -> list[Row]:
    return [{"value": v} for v in map(_number, nodes) if v is not None]


def quantity_rows(nodes: Iterable[Any]) -> list[Row]:
    rows = []
    for node in nodes:
        if not isinstance(node, dict):
            continue
        value = _number(node.get("value"))
        if value is None:
            continue
        if "currency" in node:  # Money
            rows.append(
                {
                    "value": value,
                    "system": "urn:iso:std:iso:4217",
                    "code": _cut(node["currency"]),
                    "unit": _cut(node["currency"]),
                }
            )
        else:
            rows.append(
                {
                    "value": value,
                    "system": _cut(node.get("system")),
                    "code": _cut(node.get("code")),
                    "unit": _cut(node.get("unit")),
                }
            )
    return rows


# -- reference and uri --------------------------------------------------------------------------------------
def parse_reference(value: str) -> tuple[str | None, str | None]:
    """'Patient/1', 'Patient/1/_history/2' or 'https://x/fhir/Patient/1' -> ('Patient', '1')."""
    match = _REFERENCE.search(value)
    if match and match.group("type") in R4_RESOURCE_TYPES:
        return match.group("type"), match.group("id")
    return None, None


def reference_rows(nodes: Iterable[Any], local_base: str | None = None) -> list[Row]:
    """Relative references (and absolute ones under ``local_base``) point at local resources by type and
    id; other absolute URLs, URNs and canonicals are kept by URL only, so they never match a local id."""
    rows = []
    prefix = local_base.rstrip("/") + "/" if local_base else None
    for node in nodes:
        ref = node.get("reference") if isinstance(node, dict) else node
        if not isinstance(ref, str) or not ref or ref.startswith("#"):
            if isinstance(node, dict) and node:  # contained, display- or identifier-only: present, no target
                rows.append({"target_type": None, "target_id": None, "url": None})
            continue
        if "://" in ref or ref.startswith("urn:"):
            local = ref[len(prefix) :] if prefix and ref.startswith(prefix) else None
            target_type, target_id = parse_reference(local) if local else (None, None)
            rows.append({"target_type": target_type, "target_id": target_id, "url": _cut(ref)})
        else:
            target_type, target_id = parse_reference(ref)
            rows.append({"target_type": target_type, "target_id": target_id, "url": None})
    return rows


def reference_identifier_rows(nodes: Iterable[Any]) -> list[Row]:
    """Reference.identifier as tokens, for the :identifier modifier."""
    identifiers = [
        n["identifier"] for n in nodes if isinstance(n, dict) and isinstance(n.get("identifier"), dict)
    ]
    return token_rows(identifiers)


def uri_rows(nodes: Iterable[Any]) -> list[Row]:
    return [{"value": _cut(n)} for n in nodes if isinstance(n, str) and n]


EXTRACTORS: dict[str, Callable[[Iterable[Any]], list[Row]]] = {
    "string": string_rows,
    "token": token_rows,
    "date": date_rows,
    "number": number_rows,
    "quantity": quantity_rows,
    "reference": reference_rows,
    "uri": uri_rows,
}


# -- composite ----------------------------------------------------------------------------------------------
def composite_columns(position: int, param_type: str, row: Row) -> Row | None:
    """Map one component's index row onto the composite table's ``c<position+1>_*`` columns."""
    if position == 0:
        if param_type == "token":
            return {"c1_system": row["system"], "c1_code": row["code"]}
        if param_type == "reference":
            return {"c1_system": row["target_type"], "c1_code": row["target_id"] or row["url"]}
    elif position == 1:
        if param_type == "token":
            return {"c2_system": row["system"], "c2_code": row["code"]}
        if param_type == "quantity":
            return {
                "c2_value": row["value"],
                "c2_system": row["system"],
                "c2_code": row["code"],
                "c2_unit": row["unit"],
            }
        if param_type == "number":
            return {"c2_value": row["value"]}
        if param_type == "date":
            return {"c2_low": row["low"], "c2_high": row["high"]}
        if param_type == "string":
            return {"c2_text": row["value_norm"]}
    elif position == 2 and param_type == "number":
        return {"c3_value": row["value"]}
    return None


COMPOSITE_EMPTY: Row = {
    "c1_system": None,
    "c1_code": None,
    "c2_system": None,
    "c2_code": None,
    "c2_unit": None,
    "c2_value": None,
    "c2_low": None,
    "c2_high": None,
    "c2_text": None,
    "c3_value": None,
}
