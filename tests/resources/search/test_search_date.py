"""Date search parameters, by hand (http://hl7.org/fhir/R4/search.html#date): every value is a range
given by its precision (``1980`` is the whole year), compared with the search value's range under the
prefixes eq ne gt lt ge le sa eb ap; date, dateTime with offsets, instant, Period (open or closed) and
Timing targets."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import (
    bad_request,
    found,
    observation,
    patient,
    populated_client,
    put_all,
)

PATIENTS = [
    patient("d1", birthDate="1980-05-12"),
    patient("d2", birthDate="1980-05"),
    patient("d3", birthDate="1980"),
    patient("d4", birthDate="1981-01-01"),
    patient("d5"),
]


def encounter(eid: str, period: dict) -> dict:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": period,
    }


ENCOUNTERS = [
    encounter("e1", {"start": "2020-01-01", "end": "2020-12-31"}),  # [2020-01-01, 2021-01-01)
    encounter("e2", {"start": "2020-08-01"}),  # open end: still going
    encounter("e3", {"end": "2019-03-01"}),  # open start
]

OBSERVATIONS = [
    # 2020-01-02T04:30:00Z, to the second
    observation("o-tz", effectiveDateTime="2020-01-01T23:30:00-05:00"),
    # to the millisecond
    observation("o-instant", effectiveInstant="2020-03-01T10:00:00.123Z"),
    # from the first event to the last: [2020-04-01, 2020-04-06)
    observation("o-timing", effectiveTiming={"event": ["2020-04-01", "2020-04-05"]}),
    # [06:00:00Z, 08:00:01Z) on 2020-05-01
    observation(
        "o-period",
        effectivePeriod={"start": "2020-05-01T08:00:00+02:00", "end": "2020-05-01T10:00:00+02:00"},
    ),
    observation("o-year", effectiveDateTime="2021"),
    # a Timing bounded by a Period
    observation(
        "o-bounds",
        effectiveTiming={"repeat": {"boundsPeriod": {"start": "2019-07-01", "end": "2019-07-31"}}},
    ),
]
ALL_OBSERVATIONS = {"o-tz", "o-instant", "o-timing", "o-period", "o-year", "o-bounds"}


@pytest.fixture(scope="class")
def c(database_url):
    with populated_client(database_url, lambda c: put_all(c, PATIENTS + ENCOUNTERS + OBSERVATIONS)) as c:
        yield c


class TestDateOnDates:
    """birthDate 1980-05-12 (d1), 1980-05 (d2), 1980 (d3), 1981-01-01 (d4), none (d5)."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("1980", {"d1", "d2", "d3"}),
            ("1980-05", {"d1", "d2"}),
            ("1980-05-12", {"d1"}),
            ("eq1980-05-12", {"d1"}),
            ("1980-05-13", set()),
            ("1981", {"d4"}),
        ],
    )
    def test_eq_is_the_search_range_containing_the_value(self, c, query, expected):
        assert found(c, f"Patient?birthdate={query}") == expected

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("ge1980-05-12", {"d1", "d2", "d3", "d4"}),
            ("gt1980-05-12", {"d2", "d3", "d4"}),  # the rest of May 1980 and of 1980 is above
            ("gt1980", {"d4"}),
            ("le1980-05-12", {"d1", "d2", "d3"}),
            ("lt1980-05-12", {"d2", "d3"}),
            ("lt1980", set()),
            ("le1980", {"d1", "d2", "d3"}),
            ("ne1980-05-12", {"d2", "d3", "d4"}),
            ("ne1980", {"d4"}),
            ("sa1980-05-12", {"d4"}),
            ("sa1980", {"d4"}),
            ("eb1981", {"d1", "d2", "d3"}),
            ("eb1980-05-12", set()),
        ],
    )
    def test_prefixes(self, c, query, expected):
        assert found(c, f"Patient?birthdate={query}") == expected

    def test_ap_is_approximately(self, c):
        assert "d1" in found(c, "Patient?birthdate=ap1980-05-12")
        assert found(c, "Patient?birthdate=ap1950") == set()
        assert found(c, "Patient?birthdate=ap2015") == set()

    def test_missing(self, c):
        assert found(c, "Patient?birthdate:missing=true") == {"d5"}
        assert found(c, "Patient?birthdate:missing=false") == {"d1", "d2", "d3", "d4"}

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, "Patient?birthdate=1980-05-12,1981") == {"d1", "d4"}
        assert found(c, "Patient?birthdate=ge1980&birthdate=lt1981") == {"d1", "d2", "d3"}
        assert found(c, "Patient?birthdate=1980-05&birthdate=1980-05-12") == {"d1"}


class TestDateOnPeriods:
    """Encounter.period: e1 2020-01-01..2020-12-31, e2 from 2020-08-01 (no end), e3 until 2019-03-01."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("2020-06", set()),  # no period lies within June 2020
            ("2020", {"e1"}),
            ("ge2020-06", {"e1", "e2"}),
            ("gt2020-06", {"e1", "e2"}),
            ("le2020-06", {"e1", "e3"}),
            ("lt2020-06", {"e1", "e3"}),
            ("sa2020-06", {"e2"}),
            ("eb2020-06", {"e3"}),
            ("ne2020-06", {"e1", "e2", "e3"}),
            ("ne2020", {"e2", "e3"}),
            ("eb2021", {"e1", "e3"}),  # e1 ends at the very start of 2021
            ("sa2019-12-31", {"e1", "e2"}),
            ("eb2020-12", {"e3"}),
        ],
    )
    def test_closed_and_open_periods(self, c, query, expected):
        assert found(c, f"Encounter?date={query}") == expected

    def test_open_end_reaches_the_far_future_and_open_start_the_far_past(self, c):
        assert found(c, "Encounter?date=gt2999") == {"e2"}
        assert found(c, "Encounter?date=lt1900") == {"e3"}
        assert found(c, "Encounter?date=ge2999-12-31") == {"e2"}


class TestDateTimesInstantsAndTimings:
    def test_datetime_with_offset_is_the_same_instant_in_any_zone(self, c):
        assert found(c, "Observation?date=2020-01-01T23:30:00-05:00") == {"o-tz"}
        assert found(c, "Observation?date=2020-01-02T04:30:00Z") == {"o-tz"}
        assert found(c, "Observation?date=2020-01-02T05:30:00%2B01:00") == {"o-tz"}
        assert found(c, "Observation?date=2020-01-01T23:30:00Z") == set()

    def test_datetime_with_offset_and_prefixes(self, c):
        assert "o-tz" in found(c, "Observation?date=gt2020-01-02T04:29:59Z")
        assert "o-tz" not in found(c, "Observation?date=gt2020-01-02T04:30:00Z")
        assert "o-tz" in found(c, "Observation?date=ge2020-01-02T04:30:00Z")
        assert "o-tz" in found(c, "Observation?date=lt2020-01-02T00:00:00-05:00")  # 05:00Z
        assert "o-tz" not in found(c, "Observation?date=lt2020-01-02T05:00:00%2B01:00")  # 04:00Z
        assert "o-tz" not in found(c, "Observation?date=lt2020-01-01T23:30:00-05:00")
        assert "o-tz" in found(c, "Observation?date=le2020-01-01T23:30:00-05:00")

    def test_instant_precision(self, c):
        assert found(c, "Observation?date=2020-03-01T10:00:00.123Z") == {"o-instant"}
        assert found(c, "Observation?date=2020-03-01T10:00:00Z") == {"o-instant"}  # the second holds it
        assert found(c, "Observation?date=2020-03-01T11:00:00%2B01:00") == {"o-instant"}
        assert found(c, "Observation?date=2020-03-01T10:00:00.124Z") == set()
        assert found(c, "Observation?date=2020-03-01T10:00:00.12Z") == {"o-instant"}  # [.120, .130)
        assert "o-instant" not in found(c, "Observation?date=gt2020-03-01T10:00:00.123Z")
        assert "o-instant" in found(c, "Observation?date=ge2020-03-01T10:00:00.123Z")
        assert "o-instant" in found(c, "Observation?date=gt2020-03-01T10:00:00.122Z")
        assert "o-instant" in found(c, "Observation?date=sa2020-03-01T10:00:00.122Z")
        assert "o-instant" not in found(c, "Observation?date=sa2020-03-01T10:00:00.123Z")

    def test_timing_spans_its_events(self, c):
        assert found(c, "Observation?date=2020-04") == {"o-timing"}
        assert found(c, "Observation?date=2020-04-01") == set()  # the timing goes on until the 5th
        assert "o-timing" in found(c, "Observation?date=gt2020-04-03")
        assert "o-timing" in found(c, "Observation?date=lt2020-04-03")
        assert "o-timing" not in found(c, "Observation?date=sa2020-04-03")
        assert "o-timing" not in found(c, "Observation?date=eb2020-04-03")

    def test_timing_bounds_period(self, c):
        assert found(c, "Observation?date=2019-07") == {"o-bounds"}
        assert found(c, "Observation?date=2019-07-15") == set()
        assert found(c, "Observation?date=eb2019-08") == {"o-bounds"}

    def test_datetime_period_with_offsets(self, c):
        assert found(c, "Observation?date=2020-05-01") == {"o-period"}
        assert found(c, "Observation?date=2020-05-01T07:00:00Z") == set()
        assert "o-period" in found(c, "Observation?date=gt2020-05-01T07:00:00Z")
        assert "o-period" in found(c, "Observation?date=lt2020-05-01T07:00:00Z")
        assert "o-period" in found(c, "Observation?date=sa2020-05-01T05:59:59Z")
        assert "o-period" not in found(c, "Observation?date=sa2020-05-01T06:00:00Z")
        # the end, 10:00:00+02:00, is a whole second: the period ends before 10:00:01, not before 10:00:00
        assert "o-period" in found(c, "Observation?date=eb2020-05-01T10:00:01%2B02:00")
        assert "o-period" not in found(c, "Observation?date=eb2020-05-01T10:00:00%2B02:00")

    def test_year_precision_datetime(self, c):
        assert found(c, "Observation?date=2021") == {"o-year"}
        assert found(c, "Observation?date=2021-03") == set()
        assert found(c, "Observation?date=ne2021") == ALL_OBSERVATIONS - {"o-year"}
        assert found(c, "Observation?date=ge2021-03") == {"o-year"}

    @pytest.mark.parametrize(
        "value",
        [
            "1980-13",
            "1980-02-30",
            "abc",
            "xx1980",
            "80-05-12",
            "1980-05-12T25:00:00Z",
            "1980/05/12",
            "gt",
            "1980-05-12T10:00:00%2B25:00",
        ],
    )
    def test_invalid_date_is_400(self, c, value):
        issue = bad_request(c, f"Patient?birthdate={value}")
        assert "birthdate" in issue["diagnostics"]
