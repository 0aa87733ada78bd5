"""Blind-index rows for protected search parameters, and the hashes a search looks them up by.

The plain index rows of a protected parameter are computed as usual (same normalisation, so results are
the ones an unprotected server gives), then turned into keyed hashes and dropped:

* string: every prefix of the normalised value (``p``), for the default starts-with match, and the exact
  text (``x``) for ``:exact``. ``:contains`` cannot be answered from prefixes and is refused.
* token: code (``c``), system and code (``sc``), code without a system (``nc``), system (``s``), and
  identifier type with the value (``t``, for ``:of-type``). ``:text`` is refused.
* date: the value's calendar unit (year, month, day or second, from its precision) as a path of buckets
  (century, decade, year, month, day, hour, minute, second). A date search becomes, for each precision, a
  range of units, covered exactly by the fewest buckets; so ``birthdate=ge1970&birthdate=lt1980`` is one
  decade bucket, and results equal the unprotected ones.

Every parameter with a value also gets a presence row (``any``) for ``:missing``.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from crypto.blind import KeyedHash, parameter_key
from fhir_api.errors import BadRequest
from resources.search.values import normalize_text

BLINDABLE_TYPES = frozenset({"string", "token", "date"})
MIN_YEAR, MAX_YEAR = 1, 9999


Hasher = KeyedHash  # keyed hashes for one parameter of one type under one root key (``hasher``)


def hasher(root: bytes, res_type: str, param: str) -> Hasher:
    return Hasher(parameter_key(root, res_type, param))


# -- rows -------------------------------------------------------------------------------------------------
def hashes_for_rows(param_type: str, rows: list[dict[str, Any]], h: Hasher) -> set[int]:
    """The hashes a resource's plain rows for one parameter become (presence included)."""
    out = {h("any", "")}
    if param_type == "string":
        for row in rows:
            out.update(h.prefixes("p", row["value_norm"]))
            out.add(h("x", row["value_exact"]))
    elif param_type == "token":
        for row in rows:
            system, code = row.get("system"), row.get("code")
            if code is not None:
                out.add(h("c", code))
                out.add(h("sc", f"{system}\x00{code}") if system is not None else h("nc", code))
            if system is not None:
                out.add(h("s", system))
            ts, tc = row.get("type_system"), row.get("type_code")
            if ts is not None and tc is not None and code is not None:
                out.add(h("t", f"{ts}\x00{tc}\x00{code}"))
    elif param_type == "date":
        for row in rows:
            unit = _unit_of(row["low"], row["high"])
            if unit is not None:
                precision, parts = unit
                out.update(h(f"d{precision}", key) for key in _bucket_keys(parts))
    return out


def part_hashes(nodes: list[Any], parts: tuple[str, ...], h: Hasher) -> set[int]:
    """A HumanName or Address parameter's owner rows: each part's values under its own label, so the
    owner's rows also answer ``family``, ``given``, ``address-city``... (resources.protection.policy
    .string_groups)."""
    out = {h("any", "")}
    for node in nodes:
        if not isinstance(node, dict):
            continue
        for part in parts:
            value = node.get(part)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    out.add(h(f"any:{part}", ""))
                    out.update(h.prefixes(f"p:{part}", normalize_text(item)))
                    out.add(h(f"x:{part}", item))
    return out


# -- query side ------------------------------------------------------------------------------------------
class Unservable(BadRequest):
    """A search that blind indexes cannot answer (said plainly, never answered wrongly)."""

    slug, title = "protected-search", "Search not possible on protected data"
    explanation = (
        "The parameter is indexed from a protected (encrypted) element. Such values are searchable only "
        "through keyed hashes: string parameters by their start or :exact, tokens by code and system "
        "(with :not, :in, :not-in, :of-type), dates by every prefix but ap's fuzzy widening is exact here; "
        ":contains, :text, sorting and other types cannot be served, and are refused rather than answered "
        "wrongly."
    )


def string_hashes(
    modifier: str, value: str, norm: str, h: Hasher, name: str, parts: tuple[str, ...] | None = None
) -> list[int]:
    """``parts``: the HumanName/Address parts searched when the rows are labelled by part (a group)."""
    if parts is not None:
        if modifier == "exact":
            return [h(f"x:{part}", value) for part in parts]
        if modifier != "contains":
            return [h(f"p:{part}", norm) if norm else h(f"any:{part}", "") for part in parts]
    if modifier == "exact":
        return [h("x", value)]
    if modifier == "contains":
        raise Unservable(
            f"Parameter {name}: :contains cannot be served on a protected element. Its values are stored "
            "encrypted and searchable only by keyed hashes of their prefixes; search by the start of the "
            "value instead",
            expression=name,
        )
    return [h("p", norm)] if norm else [h("any", "")]


def token_hashes(modifier: str, parts: list[str], h: Hasher, name: str) -> list[int]:
    if modifier == "of-type":
        return [h("t", "\x00".join(parts))]
    if len(parts) == 1:
        return [h("c", parts[0][:255])]
    system, code = parts
    if system and code:
        return [h("sc", f"{system[:255]}\x00{code[:255]}")]
    if code:
        return [h("nc", code[:255])]
    return [h("s", system[:255])]


def valueset_hashes(pairs: Iterable[tuple[str | None, str]], h: Hasher) -> list[int]:
    return [h("sc", f"{s[:255]}\x00{c[:255]}") if s else h("c", c[:255]) for s, c in pairs]


def date_hashes(
    prefix: str, low: datetime, high: datetime, h: Hasher, *, dates_only: bool = False
) -> list[int]:
    """Hashes of the buckets holding exactly the stored values that ``prefix`` with [low, high) matches.

    The conditions mirror ``resources.search.query.date_condition`` on a value's [start, end) range; for
    one precision, start and end grow with the unit, so each condition is a range of units. A parameter
    whose values are all FHIR dates (``dates_only``) has no second-precision values to look for."""
    out: list[int] = []
    for precision in _PRECISIONS[:3] if dates_only else _PRECISIONS:
        for first, last in _unit_ranges(precision, prefix, low, high):
            out.extend(h(f"d{precision}", key) for key in _cover(precision, first, last))
    return out


def date_range_hashes(
    conditions: list[tuple[str, datetime, datetime]], h: Hasher, *, dates_only: bool = False
) -> list[int]:
    """Several conditions on one single-valued date (``birthdate=ge1970&birthdate=lt1975``) as one range
    per precision: the buckets of their intersection (a decade, not two open ranges of ~100 buckets
    each). Only for prefixes whose units form one range (not ``ne``)."""
    out: list[int] = []
    for precision in _PRECISIONS[:3] if dates_only else _PRECISIONS:
        first: tuple[int, ...] | None = None
        last: tuple[int, ...] | None = None
        empty = False
        for prefix, low, high in conditions:
            spans = _unit_ranges(precision, prefix, low, high)
            if not spans:
                empty = True
                break
            (a, b) = spans[0]
            first = a if first is None or a > first else first
            last = b if last is None or b < last else last
        if empty or first is None or last is None or first > last:
            continue
        out.extend(h(f"d{precision}", key) for key in _cover(precision, first, last))
    return out


# -- calendar units and buckets -----------------------------------------------------------------------------
# A unit is a tuple of calendar fields down to its precision: (1974,) (1974, 12) (1974, 12, 25)
# (1974, 12, 25, 10, 5, 33). Buckets are its ancestors: century, decade, year, month, day, hour, minute.
_PRECISIONS = ("Y", "M", "D", "S")
_LENGTH = {"Y": 1, "M": 2, "D": 3, "S": 6}


def _unit_of(low: datetime, high: datetime) -> tuple[str, tuple[int, ...]] | None:
    """The calendar unit a stored [low, high) is, or None for other ranges (Periods, fractions)."""
    lo = low.astimezone(UTC)
    if high - low < timedelta(seconds=1):  # a fractional-second instant: indexed as its second
        lo = lo.replace(microsecond=0)
        return "S", (lo.year, lo.month, lo.day, lo.hour, lo.minute, lo.second)
    for precision in _PRECISIONS:
        parts = (lo.year, lo.month, lo.day, lo.hour, lo.minute, lo.second)[: _LENGTH[precision]]
        if _start(precision, parts) == lo and _end(precision, parts) == high.astimezone(UTC):
            return precision, parts
    return None


def _start(precision: str, parts: tuple[int, ...]) -> datetime:
    fields = (*parts, *(1, 1, 0, 0, 0)[len(parts) - 1 :])
    return datetime(*fields[:6], tzinfo=UTC)


def _end(precision: str, parts: tuple[int, ...]) -> datetime:
    nxt = _next(precision, parts)
    if nxt is None:
        return datetime.max.replace(tzinfo=UTC)
    return _start(precision, nxt)


def _next(precision: str, parts: tuple[int, ...]) -> tuple[int, ...] | None:
    y = parts[0]
    if precision == "Y":
        return (y + 1,) if y < MAX_YEAR else None
    if precision == "M":
        m = parts[1]
        return (y, m + 1) if m < 12 else ((y + 1, 1) if y < MAX_YEAR else None)
    if precision == "D":
        nxt_day = datetime(*parts) + timedelta(days=1) if parts != (MAX_YEAR, 12, 31) else None
        return (nxt_day.year, nxt_day.month, nxt_day.day) if nxt_day else None
    t = datetime(*parts, tzinfo=UTC) + timedelta(seconds=1)
    if t.year > MAX_YEAR:
        return None
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def _unit_containing(precision: str, t: datetime) -> tuple[int, ...]:
    t = t.astimezone(UTC)
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)[: _LENGTH[precision]]


def _first_start_at_or_after(precision: str, t: datetime) -> tuple[int, ...] | None:
    unit = _unit_containing(precision, t)
    return unit if _start(precision, unit) == t.astimezone(UTC) else _next(precision, unit)


_LOWEST = datetime(MIN_YEAR, 1, 1, tzinfo=UTC)
_HIGHEST = datetime(MAX_YEAR, 12, 31, 23, 59, 59, tzinfo=UTC)


def _clip(t: datetime) -> datetime:
    return min(max(t.astimezone(UTC), _LOWEST), _HIGHEST)


def _unit_ranges(
    precision: str, prefix: str, low: datetime, high: datetime
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Inclusive ranges [first, last] of units whose [start, end) satisfy the prefix against [low, high)."""
    first_unit = _unit_containing(precision, _LOWEST)
    last_unit = _unit_containing(precision, _HIGHEST)

    def unit_of(t: datetime) -> tuple[int, ...]:  # the first unit whose end is after t
        return _unit_containing(precision, _clip(t))

    def start_ge(t: datetime) -> tuple[int, ...] | None:  # the first unit starting at or after t
        if t.astimezone(UTC) <= _LOWEST:
            return first_unit
        if t.astimezone(UTC) > _HIGHEST:
            return None
        return _first_start_at_or_after(precision, t)

    def before(unit: tuple[int, ...] | None) -> tuple[int, ...] | None:  # the unit before, None if none
        if unit is None:
            return last_unit
        if unit == first_unit:
            return None
        return _previous(precision, unit)

    def span(
        a: tuple[int, ...] | None, b: tuple[int, ...] | None
    ) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        if a is None or b is None or a > b:
            return []
        return [(a, b)]

    gt_high = unit_of(high) if high.astimezone(UTC) <= _HIGHEST else None  # end > high from here on
    gt_low = unit_of(low) if low.astimezone(UTC) <= _HIGHEST else None  # end > low from here on
    if high.astimezone(UTC) < _LOWEST:
        gt_high = first_unit
    if low.astimezone(UTC) < _LOWEST:
        gt_low = first_unit
    if prefix == "eq":  # start >= low and end <= high
        return span(start_ge(low), before(gt_high))
    if prefix == "ne":
        return span(first_unit, before(start_ge(low))) + span(gt_high, last_unit)
    if prefix == "gt":  # end > high
        return span(gt_high, last_unit)
    if prefix == "lt":  # start < low
        return span(first_unit, before(start_ge(low)))
    if prefix == "ge":  # end > low
        return span(gt_low, last_unit)
    if prefix == "le":  # start < high
        return span(first_unit, before(start_ge(high)))
    if prefix == "sa":  # start >= high
        return span(start_ge(high), last_unit)
    if prefix == "eb":  # end <= low
        return span(first_unit, before(gt_low))
    # ap: start < high + gap and end > low - gap (the caller widened low and high already)
    return span(gt_low, before(start_ge(high)))


def _previous(precision: str, parts: tuple[int, ...]) -> tuple[int, ...]:
    t = _start(precision, parts) - timedelta(seconds=1)
    return _unit_containing(precision, t)


def _bucket_keys(parts: tuple[int, ...]) -> Iterator[str]:
    """The keys of a unit's buckets, coarsest first: C19, X197, 1974, 1974-12, 1974-12-25, ...T10, ..."""
    y = parts[0]
    yield f"K{y // 1000}"
    yield f"C{y // 100}"
    yield f"X{y // 10}"
    yield from _fine_keys(parts)


def _fine_keys(parts: tuple[int, ...]) -> Iterator[str]:
    labels = ("{:04d}", "-{:02d}", "-{:02d}", "T{:02d}", ":{:02d}", ":{:02d}")
    key = ""
    for value, label in zip(parts, labels, strict=False):
        key += label.format(value)
        yield key


def _cover(precision: str, first: tuple[int, ...], last: tuple[int, ...]) -> list[str]:
    """The fewest bucket keys whose units together are exactly the units from ``first`` to ``last``."""
    out: list[str] = []
    depth = _LENGTH[precision]

    def walk(prefix: tuple[int, ...], level: int) -> None:
        # prefix: the calendar fields fixed so far; level: index of the next field (0 year ... 5 second)
        for child in _children(prefix, level):
            lo = child + _min_fields(child, depth)
            hi = child + _max_fields(child, depth)
            lo, hi = lo[:depth], hi[:depth]
            if hi < first or lo > last:
                continue
            if lo >= first and hi <= last:
                out.append(list(_fine_keys(child))[-1])
            elif level + 1 < depth:
                walk(child, level + 1)

    # Years in millennia, centuries and decades first, so a wide or open range is a few buckets. No value
    # lies outside [MIN_YEAR, MAX_YEAR], so a bucket is whole when its years inside that span are.
    y0, y1 = first[0], last[0]
    for millennium in range(y0 // 1000, y1 // 1000 + 1):
        m_lo, m_hi = max(millennium * 1000, MIN_YEAR), min(millennium * 1000 + 999, MAX_YEAR)
        if _whole_years(m_lo, m_hi, first, last, depth):
            out.append(f"K{millennium}")
            continue
        for century in range(max(m_lo, y0) // 100, min(m_hi, y1) // 100 + 1):
            c_lo, c_hi = max(century * 100, MIN_YEAR), min(century * 100 + 99, MAX_YEAR)
            if _whole_years(c_lo, c_hi, first, last, depth):
                out.append(f"C{century}")
                continue
            for decade in range(max(c_lo, y0) // 10, min(c_hi, y1) // 10 + 1):
                d_lo, d_hi = max(decade * 10, MIN_YEAR), min(decade * 10 + 9, MAX_YEAR)
                if _whole_years(d_lo, d_hi, first, last, depth):
                    out.append(f"X{decade}")
                    continue
                _years(out, walk, max(d_lo, y0), min(d_hi, y1), first, last, depth)
    return out


def _years(
    out: list[str], walk: Any, y_lo: int, y_hi: int, first: tuple[int, ...], last: tuple[int, ...], depth: int
) -> None:
    for year in range(y_lo, y_hi + 1):
        if _whole_years(year, year, first, last, depth):
            out.append(f"{year:04d}")
        elif depth > 1:
            walk((year,), 1)


def _whole_years(y_lo: int, y_hi: int, first: tuple[int, ...], last: tuple[int, ...], depth: int) -> bool:
    lo = ((y_lo, *_min_fields((y_lo,), depth)))[:depth]
    hi = ((y_hi, *_max_fields((y_hi,), depth)))[:depth]
    return lo >= first and hi <= last


def _children(prefix: tuple[int, ...], level: int) -> Iterator[tuple[int, ...]]:
    if level == 1:
        yield from ((*prefix, m) for m in range(1, 13))
    elif level == 2:
        yield from ((*prefix, d) for d in range(1, calendar.monthrange(prefix[0], prefix[1])[1] + 1))
    elif level == 3:
        yield from ((*prefix, h) for h in range(24))
    else:
        yield from ((*prefix, x) for x in range(60))


def _min_fields(prefix: tuple[int, ...], depth: int) -> tuple[int, ...]:
    return (1, 1, 0, 0, 0)[len(prefix) - 1 : depth - 1]


def _max_fields(prefix: tuple[int, ...], depth: int) -> tuple[int, ...]:
    fields: list[int] = []
    full = list(prefix)
    for level in range(len(prefix), depth):
        if level == 1:
            value = 12
        elif level == 2:
            value = calendar.monthrange(full[0], full[1])[1]
        elif level == 3:
            value = 23
        else:
            value = 59
        fields.append(value)
        full.append(value)
    return tuple(fields)
