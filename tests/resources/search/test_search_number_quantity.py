"""Number, quantity and composite search parameters, by hand
(http://hl7.org/fhir/R4/search.html#number, #quantity, #composite): implicit precision for eq/ne
(``100`` is [99.5, 100.5), ``100.0`` is [99.95, 100.05)), exact comparison for the other prefixes,
``value|system|code`` and ``value||code`` (code or unit), and composite tuples joined by ``$``."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import (
    LOINC,
    UCUM,
    bad_request,
    coding,
    concept,
    found,
    observation,
    populated_client,
    put_all,
)


def risk(rid: str, probability: float | None) -> dict:
    body = {
        "resourceType": "RiskAssessment",
        "id": rid,
        "status": "final",
        "subject": {"reference": "Patient/p"},
    }
    if probability is not None:
        body["prediction"] = [{"probabilityDecimal": probability}]
    return body


RISKS = [
    risk("r1", 99.5),
    risk("r2", 100.4),
    risk("r3", 100.5),
    risk("r4", 100),
    risk("r5", 99.96),
    risk("r6", 0.25),
    risk("r7", None),
]
ALL_RISKS = {"r1", "r2", "r3", "r4", "r5", "r6", "r7"}

QUANTITIES = [
    observation("q1", valueQuantity={"value": 5.4, "unit": "mg", "system": UCUM, "code": "mg"}),
    observation("q2", valueQuantity={"value": 5.4, "unit": "mg"}),  # a unit but no coded unit
    observation("q3", valueQuantity={"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}),
    observation("q4", valueQuantity={"value": 5.4, "unit": "g", "system": UCUM, "code": "g"}),
    observation("q5", valueString="n/a"),
    observation("q6", valueQuantity={"value": 7, "unit": "milligram", "system": UCUM, "code": "mg"}),
]
ALL_QUANTITIES = {"q1", "q2", "q3", "q4", "q5", "q6"}


def bp(oid: str, systolic: float, diastolic: float) -> dict:
    return observation(
        oid,
        code=concept(coding(LOINC, "85354-9", "Blood pressure panel")),
        component=[
            {
                "code": concept(coding(LOINC, "8480-6")),
                "valueQuantity": {"value": systolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": concept(coding(LOINC, "8462-4")),
                "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    )


COMPOSITES = [
    observation(
        "sys-high",
        code=concept(coding(LOINC, "8480-6")),
        valueQuantity={"value": 150, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    ),
    observation(
        "dia-high",
        code=concept(coding(LOINC, "8462-4")),
        valueQuantity={"value": 150, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    ),
    observation(
        "sys-low",
        code=concept(coding(LOINC, "8480-6")),
        valueQuantity={"value": 90, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    ),
    observation(
        "smoker",
        code=concept(coding(LOINC, "72166-2")),
        valueCodeableConcept=concept(coding("http://snomed.info/sct", "449868002")),
    ),
    observation("when", code=concept(coding(LOINC, "21112-8")), valueDateTime="1970-07-01"),
    bp("bp-1", 130, 85),
    bp("bp-2", 110, 95),
]


@pytest.fixture(scope="class")
def c(database_url):
    with populated_client(database_url, lambda c: put_all(c, RISKS + QUANTITIES)) as c:
        yield c


@pytest.fixture(scope="class")
def comp(database_url):
    with populated_client(database_url, lambda c: put_all(c, COMPOSITES)) as c:
        yield c


class TestNumber:
    """RiskAssessment probability: r1 99.5, r2 100.4, r3 100.5, r4 100, r5 99.96, r6 0.25, r7 none."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("100", {"r1", "r2", "r4", "r5"}),  # [99.5, 100.5)
            ("eq100", {"r1", "r2", "r4", "r5"}),
            ("100.0", {"r4", "r5"}),  # [99.95, 100.05)
            ("100.00", {"r4"}),  # [99.995, 100.005)
            ("1e2", {"r1", "r2", "r3", "r4", "r5"}),  # one significant figure
            ("0.25", {"r6"}),
            ("0.3", {"r6"}),  # [0.25, 0.35): the lower end is included
            ("0.2", set()),  # [0.15, 0.25): the upper end is not
            ("99", set()),
        ],
    )
    def test_eq_uses_the_implicit_precision_of_the_search_value(self, c, query, expected):
        assert found(c, f"RiskAssessment?probability={query}") == expected

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("gt100", {"r2", "r3"}),
            ("ge100", {"r2", "r3", "r4"}),
            ("lt100", {"r1", "r5", "r6"}),
            ("le100", {"r1", "r4", "r5", "r6"}),
            ("ne100", {"r3", "r6"}),  # outside [99.5, 100.5)
            ("ne100.0", {"r1", "r2", "r3", "r6"}),
            ("sa99", {"r1", "r2", "r3", "r4", "r5"}),
            ("eb1", {"r6"}),
            ("ap100", {"r1", "r2", "r3", "r4", "r5"}),  # within 10%
            ("ap0.25", {"r6"}),
            ("gt-1", {"r1", "r2", "r3", "r4", "r5", "r6"}),
        ],
    )
    def test_prefixes(self, c, query, expected):
        assert found(c, f"RiskAssessment?probability={query}") == expected

    def test_missing(self, c):
        assert found(c, "RiskAssessment?probability:missing=true") == {"r7"}
        assert found(c, "RiskAssessment?probability:missing=false") == ALL_RISKS - {"r7"}

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, "RiskAssessment?probability=0.25,100.5") == {"r3", "r6"}
        assert found(c, "RiskAssessment?probability=gt99&probability=lt100.45") == {"r1", "r2", "r4", "r5"}

    @pytest.mark.parametrize("value", ["abc", "gtabc", "NaN", "Infinity", "1,abc", "1.2.3", "gt"])
    def test_invalid_number_is_400(self, c, value):
        assert "probability" in bad_request(c, f"RiskAssessment?probability={value}")["diagnostics"]

    def test_unknown_modifier_is_400(self, c):
        bad_request(c, "RiskAssessment?probability:exact=100")


class TestQuantity:
    """q1 5.4 mg (UCUM mg), q2 5.4 "mg" (unit only), q3 120 mmHg (UCUM mm[Hg]), q4 5.4 g, q5 no
    quantity, q6 7 "milligram" (UCUM mg)."""

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("5.4", {"q1", "q2", "q4"}),
            (f"5.4|{UCUM}|mg", {"q1"}),
            ("5.4||mg", {"q1", "q2"}),  # no system: the code or the unit
            (f"5.4|{UCUM}|", {"q1", "q4"}),
            ("5.4|http://other.example|mg", set()),
            (f"5.40|{UCUM}|mg", {"q1"}),
            (f"5|{UCUM}|mg", {"q1"}),  # [4.5, 5.5)
            (f"7|{UCUM}|mg", {"q6"}),
            ("120||mm%5BHg%5D", {"q3"}),
            (f"gt5|{UCUM}|mg", {"q1", "q6"}),
            ("lt6||mg", {"q1", "q2"}),
            (f"le5.4|{UCUM}|g", {"q4"}),
            (f"ap7|{UCUM}|mg", {"q6"}),
            ("ne5.4", {"q3", "q6"}),
            ("ge120", {"q3"}),
            ("sa5.4", {"q3", "q6"}),
            ("eb5.4", set()),
        ],
    )
    def test_value_system_code_and_prefixes(self, c, query, expected):
        assert found(c, f"Observation?value-quantity={query}") == expected

    def test_no_system_matches_the_unit_even_when_a_code_is_present(self, c):
        assert found(c, "Observation?value-quantity=120||mmHg") == {"q3"}

    def test_missing(self, c):
        assert found(c, "Observation?value-quantity:missing=true") == {"q5"}
        assert found(c, "Observation?value-quantity:missing=false") == ALL_QUANTITIES - {"q5"}

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, f"Observation?value-quantity=5.4|{UCUM}|g,120") == {"q3", "q4"}
        assert found(c, "Observation?value-quantity=gt5&value-quantity=lt100") == {"q1", "q2", "q4", "q6"}

    @pytest.mark.parametrize("value", ["abc||mg", "5|mg", f"x5|{UCUM}|mg", "5|a|b|c"])
    def test_invalid_quantity_is_400(self, c, value):
        bad_request(c, f"Observation?value-quantity={value}")


class TestComposite:
    """sys-high 8480-6 = 150, dia-high 8462-4 = 150, sys-low 8480-6 = 90, smoker 72166-2 = SNOMED
    449868002, when 21112-8 = 1970-07-01, bp-1 (130/85) and bp-2 (110/95) as components."""

    def test_code_value_quantity(self, comp):
        assert found(comp, f"Observation?code-value-quantity={LOINC}|8480-6$gt100") == {"sys-high"}
        assert found(comp, "Observation?code-value-quantity=8480-6$lt100") == {"sys-low"}
        assert found(comp, f"Observation?code-value-quantity=8480-6$150|{UCUM}|mm%5BHg%5D") == {"sys-high"}
        assert found(comp, "Observation?code-value-quantity=8462-4$lt100") == set()

    def test_code_value_quantity_comma_is_or(self, comp):
        query = "Observation?code-value-quantity=8480-6$lt100,8462-4$gt100"
        assert found(comp, query) == {"sys-low", "dia-high"}

    def test_component_tuples_match_within_one_component(self, comp):
        query = f"Observation?component-code-value-quantity={LOINC}|8480-6$gt120"
        assert found(comp, query) == {"bp-1"}
        # bp-1 has a diastolic (85) and a value above 90 (130), but not in the same component
        assert found(comp, "Observation?component-code-value-quantity=8462-4$gt90") == {"bp-2"}
        assert found(comp, "Observation?component-code-value-quantity=8480-6$lt100") == set()

    def test_code_value_concept(self, comp):
        query = "Observation?code-value-concept=72166-2$http://snomed.info/sct|449868002"
        assert found(comp, query) == {"smoker"}
        assert found(comp, "Observation?code-value-concept=72166-2$266919005") == set()

    def test_code_value_date(self, comp):
        assert found(comp, "Observation?code-value-date=21112-8$1970") == {"when"}
        assert found(comp, "Observation?code-value-date=21112-8$gt1971") == set()

    def test_missing(self, comp):
        assert found(comp, "Observation?code-value-quantity:missing=false") == {
            "sys-high",
            "dia-high",
            "sys-low",
        }

    def test_wrong_number_of_components_is_400(self, comp):
        bad_request(comp, "Observation?code-value-quantity=8480-6")
