"""Blind-index date search against the plain date semantics, as a randomized property test.

A protected date (``birthdate``) is indexed as keyed hashes of calendar buckets (century, decade, year,
month, day, hour, minute, second) and a search becomes the hashes of the fewest buckets covering exactly
the matching units. This checks, for every prefix, that a stored value is selected by those hashes exactly
when its [low, high) satisfies the condition ``resources.search.query.date_condition`` applies to clear
rows, here written again in plain Python on datetimes.

Stored values are of year, month, day and second precision (the units the index keeps); queries of year,
month, day, minute, second and fractional-second precision, with and without zone offsets. Dates are drawn
around a few centre years and near unit boundaries (month ends, leap days, 23:59:59, decade and century
edges, years 1 and 9999), where an off-by-one unit would show. The seed is fixed: a failure is reproducible.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from resources.dates import parse_range
from resources.protection.blind import date_hashes, hashes_for_rows

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
CONDITIONS: dict[str, Callable[[datetime, datetime, datetime, datetime], bool]] = {
    # value [lo, hi) against the searched range [rl, rh)
    "eq": lambda lo, hi, rl, rh: lo >= rl and hi <= rh,
    "ne": lambda lo, hi, rl, rh: lo < rl or hi > rh,
    "gt": lambda lo, hi, rl, rh: hi > rh,
    "lt": lambda lo, hi, rl, rh: lo < rl,
    "ge": lambda lo, hi, rl, rh: hi > rl,
    "le": lambda lo, hi, rl, rh: lo < rh,
    "sa": lambda lo, hi, rl, rh: lo >= rh,
    "eb": lambda lo, hi, rl, rh: hi <= rl,
}
SEED = 20261124
CASES = 3000


def h(kind: str, value: str) -> int:
    return hash((kind, value))


class Gen:
    """FHIR date/dateTime strings, clustered so that values and queries often touch each other."""

    CENTRES = (1, 9, 10, 99, 100, 1899, 1900, 1969, 1970, 1979, 1980, 1999, 2000, 2024, 9990, 9999)

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.centre = 1970

    def new_centre(self) -> None:
        self.centre = self.r.choice(self.CENTRES)

    def year(self) -> int:
        return min(9999, max(1, self.centre + self.r.choice((-1, 0, 0, 0, 1, self.r.randint(-12, 12)))))

    def month(self) -> int:
        return self.r.choice((1, 1, 2, 2, 12, 12, self.r.randint(1, 12)))

    def day(self, y: int, m: int) -> int:
        import calendar

        last = calendar.monthrange(y, m)[1]
        return self.r.choice((1, 1, last, last, 28, 29 if last >= 29 else 28, self.r.randint(1, last)))

    def clock(self) -> tuple[int, int, int]:
        edge = self.r.random() < 0.5
        if edge:
            return self.r.choice(((0, 0, 0), (23, 59, 59), (0, 0, 1), (23, 59, 58), (12, 0, 0), (12, 59, 59)))
        return self.r.randint(0, 23), self.r.randint(0, 59), self.r.randint(0, 59)

    def zone(self) -> str:
        return self.r.choice(("Z", "Z", "Z", "+00:00", "-05:00", "+05:30", "+14:00", "-12:00"))

    def value(self, precisions: str) -> str:
        y = self.year()
        kind = self.r.choice(precisions)
        if kind == "Y":
            return f"{y:04d}"
        m = self.month()
        if kind == "M":
            return f"{y:04d}-{m:02d}"
        d = self.day(y, m)
        if kind == "D":
            return f"{y:04d}-{m:02d}-{d:02d}"
        hh, mm, ss = self.clock()
        stamp = f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}"
        if kind == "m":  # minute precision (a query only)
            return stamp + self.zone()
        stamp += f":{ss:02d}"
        if kind == "f":  # fractional seconds (a query only)
            stamp += self.r.choice((".5", ".000", ".999", ".25"))
        return stamp + self.zone()


def in_range(text: str) -> bool:
    """Zone offsets can push a value of year 1 or 9999 outside the years a datetime holds in UTC, and a
    range ending after 9999-12-31 is clamped open (tested through the API below): leave those out."""
    r = parse_range(text)
    return r.low < r.high < datetime.max.replace(tzinfo=UTC)


def row_hashes(text: str) -> set[int]:
    r = parse_range(text)
    return hashes_for_rows("date", [{"low": r.low, "high": r.high}], h)


def test_date_hashes_select_exactly_the_matching_values() -> None:
    gen = Gen(SEED)
    started = time.perf_counter()
    checked = 0
    mismatches: list[str] = []
    outcomes: dict[tuple[str, bool], int] = {}
    presence = h("any", "")
    stored_cache: dict[str, set[int]] = {}
    for case in range(CASES):
        if case % 25 == 0:
            gen.new_centre()
            stored = [v for v in (gen.value("YMDSS") for _ in range(40)) if in_range(v)]
            for v in stored:
                if v not in stored_cache:
                    stored_cache[v] = row_hashes(v)
                    assert presence in stored_cache[v]
                    assert len(stored_cache[v]) > 1, f"{v} is indexed by presence only"
        query = gen.value("YMDSSmf")
        if not in_range(query):
            continue
        prefix = PREFIXES[case % len(PREFIXES)]
        r = parse_range(query)
        wanted = set(date_hashes(prefix, r.low, r.high, h))
        assert presence not in wanted, (prefix, query)
        for v in stored:
            s = parse_range(v)
            expected = CONDITIONS[prefix](s.low, s.high, r.low, r.high)
            got = bool(stored_cache[v] & wanted)
            checked += 1
            outcomes[prefix, expected] = outcomes.get((prefix, expected), 0) + 1
            if expected != got:
                mismatches.append(
                    f"{prefix}{query} vs stored {v}: expected {expected}, blind index says {got}"
                )
    assert not mismatches, f"{len(mismatches)} of {checked} comparisons differ, e.g.:\n" + "\n".join(
        mismatches[:20]
    )
    assert checked > 50_000
    # not vacuous: every prefix was seen both selecting and not selecting values, many times
    assert all(outcomes.get((p, b), 0) > 500 for p in PREFIXES for b in (True, False)), outcomes
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(
    ("prefix", "value"),
    [
        ("ge", "1970"),
        ("gt", "1970"),
        ("le", "1970"),
        ("ne", "1970-06-15"),
        ("ge", "1970-06-15T10:11:12Z"),
        ("ne", "1970-06-15T10:11:12+05:30"),
        ("lt", "2024-02-29T23:59:59Z"),
        ("sa", "0001"),
        ("eb", "9999-06"),
    ],
)
def test_open_ranges_stay_small(prefix: str, value: str) -> None:
    """An open range is a few buckets per precision, not one per unit: the search stays one small IN."""
    r = parse_range(value)
    found = date_hashes(prefix, r.low, r.high, h)
    assert 0 < len(found) < 1000, (prefix, value, len(found))


def test_decade_is_one_bucket_per_precision() -> None:
    """ge1970 and lt1980 together are the decade: the intersection of both hash lists stays tiny."""
    low = parse_range("1970")
    high = parse_range("1980")
    ge = set(date_hashes("ge", low.low, low.high, h))
    lt = set(date_hashes("lt", high.low, high.high, h))
    assert h("dY", "X197") in ge and h("dY", "X197") in lt
    for precision in "YMDS":
        assert h(f"d{precision}", "X197") in ge & lt


def test_known_cases() -> None:
    """A few hand-checked answers, readable when the property test fails."""

    def matches(prefix: str, query: str, stored: str) -> bool:
        r = parse_range(query)
        return bool(row_hashes(stored) & set(date_hashes(prefix, r.low, r.high, h)))

    assert matches("eq", "1978", "1978-04-03")
    assert matches("eq", "1978-04", "1978-04-03")
    assert not matches("eq", "1978-04-03", "1978-04")  # the month is wider than the day
    assert matches("ne", "1978-04-03", "1978-04")
    assert matches("ge", "1978-04-03", "1978-04")  # the month reaches past the day's start
    assert matches("le", "1978-04-03", "1978")
    assert not matches("gt", "1978", "1978-12-31")
    assert matches("gt", "1978-12-30", "1978-12-31")
    assert matches("sa", "1978-04-02", "1978-04-03")
    assert not matches("sa", "1978-04-03", "1978-04-03")
    assert matches("eb", "1978-04-04", "1978-04-03")
    assert matches("lt", "1978-04-03T00:00:01Z", "1978-04-03")
    assert not matches("lt", "1978-04-03T00:00:00Z", "1978-04-03")
    assert matches("eq", "1978-04-03T01:00:00+02:00", "1978-04-02T23:00:00Z")
    assert matches("ge", "9999-11", "9999-11-30")
    assert not matches("gt", "9999-11", "9999-11-30")
    assert matches("le", "0001-01-01", "0001")
    assert matches("eb", "0002", "0001-12-31T23:59:59Z")


# -- through the API -----------------------------------------------------------------------------------------
BASE = "/fhir/R4"


@pytest.mark.parametrize(
    "query", ["birthdate=9999", "birthdate=9999-12-31", "birthdate=le0001-01-01T00:00:00%2B01:00"]
)
def test_extreme_dates_are_not_a_server_error(client, query: str) -> None:
    resp = client.post(
        f"{BASE}/Patient",
        json={"resourceType": "Patient", "birthDate": "9999-12-31"},
        content_type="application/fhir+json",
    )
    assert resp.status_code == 201
    resp = client.get(f"{BASE}/Patient?{query}")
    assert resp.status_code in (200, 400), resp.get_data(as_text=True)[:500]


def test_protected_period_is_found_or_refused(database_url) -> None:
    from fhir_api import create_app
    from tests.helpers import authorized_client, empty_tables

    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2020-03-01T10:00:00Z", "end": "2020-03-01T10:30:00Z"},
    }
    answers = {}
    for protected in (False, True):
        config = {"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": protected}
        if protected:
            config["PROTECTED_ELEMENTS"] = "Encounter.period"
        made = create_app(config)
        try:
            if protected:
                assert "date" in made.extensions["fhir_protection"].protected_params("Encounter")
            client = authorized_client(made)
            assert (
                client.post(
                    f"{BASE}/Encounter", json=encounter, content_type="application/fhir+json"
                ).status_code
                == 201
            )
            resp = client.get(f"{BASE}/Encounter?date=ge2020")
            answers[protected] = (resp.status_code, len(resp.get_json().get("entry") or []))
        finally:
            made.extensions["fhir_db"]["engine"].dispose()
            empty_tables(database_url)
    assert answers[False] == (200, 1)
    assert answers[True] in ((200, 1), (400, 0)), answers


def test_merged_ranges_select_what_separate_bounds_select() -> None:
    """``ge A & lt B`` on one single-valued date: the merged cover equals the intersection of the two."""
    from resources.protection.blind import date_range_hashes

    gen = random.Random(SEED + 1)
    stored = [
        f"{gen.randint(1900, 2030):04d}-{gen.randint(1, 12):02d}-{gen.randint(1, 28):02d}" for _ in range(300)
    ]
    stored += ["1970", "1975-06", "1999-12"]
    for _ in range(200):
        a, b = sorted(gen.sample(stored, 2))
        pa, pb = gen.choice(("ge", "gt", "eq", "sa")), gen.choice(("lt", "le", "eb"))
        ra, rb = parse_range(a), parse_range(b)
        merged = set(date_range_hashes([(pa, ra.low, ra.high), (pb, rb.low, rb.high)], h, dates_only=True))
        for v in stored:
            vr = parse_range(v)
            expected = _holds(pa, vr.low, vr.high, ra) and _holds(pb, vr.low, vr.high, rb)
            assert bool(row_hashes(v) & merged) == expected, (pa, a, pb, b, v)


def _holds(prefix: str, low, high, r) -> bool:
    return {
        "eq": low >= r.low and high <= r.high,
        "gt": high > r.high,
        "lt": low < r.low,
        "ge": high > r.low,
        "le": low < r.high,
        "sa": low >= r.high,
        "eb": high <= r.low,
    }[prefix]
