"""Parse and write resource JSON without losing what the client sent (decimal precision, key order)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import simplejson

from fhir_api.errors import MalformedJson


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedJson(f"Duplicate JSON property '{dup}'")
    return out


def _no_constant(name: str) -> Any:
    raise MalformedJson(f"'{name}' is not a valid JSON number")


def loads(data: bytes | str) -> Any:
    """JSON -> Python with decimals as ``Decimal`` (so 1.50 round-trips) and duplicate keys refused."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedJson("The body is not valid UTF-8") from exc
    if data.startswith("\ufeff"):
        data = data[1:]
    try:
        return simplejson.loads(
            data, use_decimal=True, object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except simplejson.JSONDecodeError as exc:
        raise MalformedJson(f"Malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except RecursionError as exc:
        raise MalformedJson("JSON nesting is too deep") from exc


def loads_trusted(data: str) -> Any:
    """Parse JSON the server wrote itself (no duplicate-key check needed)."""
    return simplejson.loads(data, use_decimal=True)


def _as_written(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # as parsed: 1.50 stays 1.50
    if isinstance(value, simplejson.RawJSON):
        return orjson.Fragment(value.encoded_json)  # JSON text embedded as is (an opened sealed element)
    raise TypeError


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is, each ``Decimal`` written as its own text and each ``RawJSON`` as the
    text it holds. orjson writes it several times faster than simplejson, with the same bytes (tested on
    every official example); what orjson refuses (an integer beyond 64 bits) goes to simplejson, whose
    output it would have matched."""
    try:
        return orjson.dumps(obj, default=_as_written).decode()
    except TypeError:
        return simplejson.dumps(obj, use_decimal=True, separators=(",", ":"), ensure_ascii=False)


def load_resource(data: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object."""
    if not data:
        raise MalformedJson("The request body is empty; a FHIR resource was expected")
    parsed = loads(data)
    if not isinstance(parsed, dict):
        raise MalformedJson("The body must be a JSON object (a FHIR resource)")
    return parsed


__all__ = ["Decimal", "dumps", "load_resource", "loads", "loads_trusted"]
