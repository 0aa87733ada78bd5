"""String search parameters, by hand (http://hl7.org/fhir/R4/search.html#string): case- and
accent-insensitive starts-with by default, ``:exact``, ``:contains``, and every part of a HumanName or an
Address matching on its own."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import (
    bad_request,
    found,
    patient,
    populated_client,
    protected,
    put_all,
    refused_as_protected,
)

EVE = patient(
    "eve",
    name=[
        {
            "family": "Dupont",
            "given": ["Évelyne", "Marie"],
            "prefix": ["Mme"],
            "suffix": ["PhD"],
            "text": "Évelyne Marie Dupont",
        }
    ],
    address=[
        {
            "line": ["12 Rue de la Paix"],
            "city": "Paris",
            "district": "VIIIe arrondissement",
            "state": "Île-de-France",
            "postalCode": "75008",
            "country": "France",
            "text": "12 Rue de la Paix, 75008 Paris",
        }
    ],
)
EVA = patient("eva", name=[{"family": "Lindqvist", "given": ["Eva"]}], address=[{"city": "Malmö"}])
EVENS = patient("evens", name=[{"family": "Evens", "given": ["Bob"]}], address=[{"country": "Sweden"}])
ZOE = patient("zoe", name=[{"family": "O'Brien", "given": ["Zoë"]}])
ODD = patient("odd", name=[{"family": "Ab%cd", "given": ["Abc"]}])
NONAME = patient("noname", gender="unknown")
ALL = {"eve", "eva", "evens", "zoe", "odd", "noname"}
OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": "o-pos",
        "status": "final",
        "code": {"text": "x"},
        "valueString": "Positive",
    },
    {
        "resourceType": "Observation",
        "id": "o-neg",
        "status": "final",
        "code": {"text": "x"},
        "valueString": "négatif",
    },
]


@pytest.fixture(scope="class", params=["protected", "clear"])
def c(request, database_url):
    """Every test runs on names and addresses sealed (blind-indexed) and in clear: same answers."""
    with populated_client(
        database_url,
        lambda c: put_all(c, [EVE, EVA, EVENS, ZOE, ODD, NONAME, *OBSERVATIONS]),
        protected=request.param == "protected",
    ) as c:
        yield c


class TestStringSearch:
    def test_default_is_starts_with_on_any_name_part(self, c):
        # "eve" starts the given name Évelyne (accent folded) and the family name Evens, not "Eva".
        assert found(c, "Patient?name=eve") == {"eve", "evens"}
        assert found(c, "Patient?name=ev") == {"eve", "eva", "evens"}

    @pytest.mark.parametrize("value", ["EVE", "Eve", "%C3%89VE", "%C3%A9ve", "%C3%89velyne"])
    def test_default_is_case_and_accent_insensitive(self, c, value):
        assert found(c, f"Patient?given={value}") == {"eve"}

    def test_accented_data_matches_plain_search_and_the_reverse(self, c):
        assert found(c, "Patient?given=zoe") == {"zoe"}
        assert found(c, "Patient?given=zo%C3%AB") == {"zoe"}
        assert found(c, "Patient?address-city=malmo") == {"eva"}
        assert found(c, "Patient?address-state=ile") == {"eve"}

    def test_default_does_not_match_inside_a_word(self, c):
        assert found(c, "Patient?name=velyne") == set()
        assert found(c, "Patient?family=upont") == set()
        assert found(c, "Patient?family=dupont") == {"eve"}
        assert found(c, "Patient?family=dupontx") == set()

    def test_exact_is_case_and_accent_sensitive_and_whole_string(self, c):
        assert found(c, "Patient?given:exact=%C3%89velyne") == {"eve"}
        assert found(c, "Patient?given:exact=%C3%A9velyne") == set()  # case differs
        assert found(c, "Patient?given:exact=Evelyne") == set()  # accent differs
        assert found(c, "Patient?given:exact=%C3%89vel") == set()  # a prefix only
        assert found(c, "Patient?family:exact=O'Brien") == {"zoe"}

    def test_contains_matches_anywhere_case_and_accent_insensitively(self, c):
        if protected(c):  # prefixes are all a blind index keeps: refused, never answered wrongly
            for query in ("Patient?family:contains=pon", "Patient?name:contains=VELY"):
                refused_as_protected(c, query)
            return
        assert found(c, "Patient?family:contains=pon") == {"eve"}
        assert found(c, "Patient?name:contains=VELY") == {"eve"}
        assert found(c, "Patient?name:contains=qvis") == {"eva"}
        assert found(c, "Patient?given:contains=o%C3%AB") == {"zoe"}
        assert found(c, "Patient?name:contains=xyz") == set()

    @pytest.mark.parametrize(
        "value",
        ["dupont", "marie", "mme", "phd", "evelyne%20marie%20dup"],
        ids=["family", "given", "prefix", "suffix", "text"],
    )
    def test_every_human_name_part_matches_name(self, c, value):
        assert found(c, f"Patient?name={value}") == {"eve"}

    @pytest.mark.parametrize(
        "value",
        ["12%20rue", "paris", "viiie", "ile-de", "75008", "fran", "12%20rue%20de%20la%20paix%5C,%2075"],
        ids=["line", "city", "district", "state", "postalCode", "country", "text"],
    )
    def test_every_address_part_matches_address(self, c, value):
        # (the text value escapes its comma: "12 rue de la paix, 75" is one value, not two)
        assert found(c, f"Patient?address={value}") == {"eve"}

    def test_address_part_parameters(self, c):
        assert found(c, "Patient?address-city=PAR") == {"eve"}
        assert found(c, "Patient?address-postalcode=750") == {"eve"}
        assert found(c, "Patient?address-country=swe") == {"evens"}
        assert found(c, "Patient?address-country=paris") == set()  # the city is not a country

    def test_family_and_given_only_match_their_own_part(self, c):
        assert found(c, "Patient?family=marie") == set()
        assert found(c, "Patient?given=dupont") == set()
        assert found(c, "Patient?given=bob") == {"evens"}

    def test_comma_is_or_and_repeated_parameter_is_and(self, c):
        assert found(c, "Patient?given=marie,eva") == {"eve", "eva"}
        assert found(c, "Patient?given=evelyne&given=marie") == {"eve"}
        assert found(c, "Patient?given=evelyne&given=eva") == set()
        assert found(c, "Patient?given=marie,bob&family=evens") == {"evens"}

    def test_missing(self, c):
        assert found(c, "Patient?name:missing=true") == {"noname"}
        assert found(c, "Patient?name:missing=false") == ALL - {"noname"}
        assert found(c, "Patient?address:missing=true") == {"zoe", "odd", "noname"}

    def test_like_wildcards_in_the_value_are_literal(self, c):
        assert found(c, "Patient?family=ab%25") == {"odd"}
        assert found(c, "Patient?given=a_c") == set()
        assert found(c, "Patient?family=%25") == set()
        if not protected(c):
            assert found(c, "Patient?family:contains=%25") == {"odd"}
            assert found(c, "Patient?given:contains=_") == set()

    def test_string_value_of_another_resource_type(self, c):
        assert found(c, "Observation?value-string=POS") == {"o-pos"}
        assert found(c, "Observation?value-string=negatif") == {"o-neg"}
        assert found(c, "Observation?value-string:exact=n%C3%A9gatif") == {"o-neg"}
        assert found(c, "Observation?value-string:contains=itiv") == {"o-pos"}

    def test_unknown_or_wrong_modifier_is_400(self, c):
        assert "name:foo" in bad_request(c, "Patient?name:foo=eve")["diagnostics"]
        bad_request(c, "Patient?name:below=eve")
        bad_request(c, "Patient?name:missing=maybe")
