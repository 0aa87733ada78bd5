"""Search results and common parameters, by hand (http://hl7.org/fhir/R4/search.html): paging by
next/previous links, _count, _sort, _include/_revinclude (with :iterate and *), _summary, _elements,
_total, POST _search, system search with _type, Prefer: handling, :missing on every parameter type,
comma = OR and repeated = AND, _id, _lastUpdated, _tag, _profile, _security, and 400 on invalid input."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest

from tests.resources.search.fixtures import (
    LENIENT,
    LOINC,
    STRICT,
    UCUM,
    bad_request,
    bundle,
    coding,
    concept,
    entries,
    follow,
    found,
    get,
    ids_of,
    link,
    observation,
    outcome_entries,
    patient,
    populated_client,
    put,
    put_all,
    refs_of,
)

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def ref(target: str) -> dict:
    return {"reference": target}


def pages(client, query: str) -> list[list[str]]:
    """Every page of a search, following next links; the ids of each page's matches."""
    body = bundle(client, query)
    out = [ids_of(body)]
    while (url := link(body, "next")) is not None:
        body = follow(client, url)
        out.append(ids_of(body))
        assert len(out) < 50, "paging does not end"
    return out


# -- paging --------------------------------------------------------------------------------------------------
@pytest.mark.unprotected  # sorts and :contains on Patient elements that are protected by default
class TestPaging:
    def test_count_and_next_links_visit_every_match_once(self, client):
        put_all(client, [patient(f"p{i}", gender="female") for i in range(7)])
        put(client, patient("male", gender="male"))
        got = pages(client, "Patient?gender=female&_count=3")
        assert [len(p) for p in got] == [3, 3, 1]
        assert sorted(pid for page in got for pid in page) == [f"p{i}" for i in range(7)]

    def test_last_page_has_no_next_link_and_first_page_no_previous(self, client):
        put_all(client, [patient(f"p{i}") for i in range(4)])
        first = bundle(client, "Patient?_count=2")
        assert link(first, "previous") is None and link(first, "next") is not None
        second = follow(client, link(first, "next"))
        assert link(second, "next") is None  # exactly two full pages
        assert link(second, "previous") is not None
        assert link(first, "self") is not None and link(second, "self") is not None

    def test_previous_links_walk_back_through_the_same_pages(self, client):
        put_all(client, [patient(f"p{i}", birthDate=f"19{70 + i % 3}") for i in range(7)])
        for query in ("Patient?_count=3", "Patient?_count=3&_sort=birthdate,-_id"):
            forward = [bundle(client, query)]
            while link(forward[-1], "next"):
                forward.append(follow(client, link(forward[-1], "next")))
            backward = [forward[-1]]
            while link(backward[-1], "previous"):
                backward.append(follow(client, link(backward[-1], "previous")))
            assert [ids_of(b) for b in backward] == [ids_of(f) for f in reversed(forward)], query

    def test_data_added_between_pages_causes_no_duplicates_or_gaps(self, client):
        originals = [f"p-{i:02}" for i in range(1, 7)]
        put_all(client, [patient(pid, name=[{"family": f"F{pid}"}]) for pid in originals])
        for query in (
            "Patient?_count=2",
            "Patient?_count=2&_sort=-family",
            "Patient?_count=2&_sort=_lastUpdated",
        ):
            body = bundle(client, query)
            seen = ids_of(body)
            added = 0
            while (url := link(body, "next")) is not None:
                if added < 2:  # new resources sorting before, between and after what was already seen
                    for pid in (f"a-{added}", f"p-02x{added}", f"z-{added}"):
                        put(client, patient(pid, name=[{"family": f"F{pid}"}]))
                    added += 1
                body = follow(client, url)
                seen += ids_of(body)
                assert len(seen) < 50, "paging does not end"
            assert len(seen) == len(set(seen)), f"{query}: duplicates in {seen}"
            assert set(originals) <= set(seen), f"{query}: gaps in {seen}"
            for pid in [f"{p}{i}" for i in range(added) for p in ("a-", "p-02x", "z-")]:
                assert client.delete(f"/fhir/R4/Patient/{pid}").status_code == 200

    def test_deleted_between_pages_is_not_returned(self, client):
        put_all(client, [patient(f"p{i}") for i in range(6)])
        first = bundle(client, "Patient?_count=2")
        assert ids_of(first) == ["p0", "p1"]
        assert client.delete("/fhir/R4/Patient/p4").status_code == 200
        second = follow(client, link(first, "next"))
        third = follow(client, link(second, "next"))
        assert ids_of(second) + ids_of(third) == ["p2", "p3", "p5"]

    def walk(self, client, query: str) -> tuple[list[list[str]], list[list[str]], str | None]:
        """Pages forward by next links, then back from the last page by previous links."""
        forward = [bundle(client, query)]
        while link(forward[-1], "next"):
            forward.append(follow(client, link(forward[-1], "next")))
            assert len(forward) < 20
        backward = [forward[-1]]
        while link(backward[-1], "previous"):
            backward.append(follow(client, link(backward[-1], "previous")))
            assert len(backward) < 20
        return [ids_of(b) for b in forward], [ids_of(b) for b in backward], link(backward[-1], "previous")

    def test_paging_and_previous_links_with_sort_on_values_some_resources_lack(self, client):
        put_all(
            client,
            [
                patient("a", name=[{"family": "Adams"}]),
                patient("b", name=[{"family": "Baker"}]),
                patient("c", name=[{"family": "Clark"}]),
                patient("n1"),
                patient("n2"),
            ],
        )
        for query, named in (
            ("Patient?_sort=family&_count=2", "abc"),
            ("Patient?_sort=-family&_count=2", "cba"),
        ):
            forward, backward, before_first = self.walk(client, query)
            matched = [pid for page in forward for pid in page]
            assert [len(p) for p in forward] == [2, 2, 1], query
            assert sorted(matched) == ["a", "b", "c", "n1", "n2"], query
            assert [pid for pid in matched if pid in "abc"] == list(named), query  # where NULLs go is free
            assert backward == list(reversed(forward)), query
            assert before_first is None, query

    def test_total_accurate_is_the_same_on_every_page(self, client):
        put_all(client, [patient(f"p{i}") for i in range(5)])
        body = bundle(client, "Patient?_count=2&_total=accurate")
        totals = [body["total"]]
        while (url := link(body, "next")) is not None:
            body = follow(client, url)
            totals.append(body["total"])
        assert totals == [5, 5, 5]

    def test_count_zero_returns_no_matches(self, client):
        put_all(client, [patient(f"p{i}") for i in range(3)])
        body = bundle(client, "Patient?_count=0&_total=accurate")
        assert entries(body) == [] and body["total"] == 3

    def test_cursor_from_another_search_is_400(self, client):
        put_all(client, [patient(f"p{i}", birthDate="1990") for i in range(3)])
        url = link(bundle(client, "Patient?_count=1&_sort=birthdate"), "next")
        cursor = url.rsplit("_cursor=", 1)[1]
        bad_request(client, f"Patient?_count=1&_cursor={cursor}")


# -- _sort ---------------------------------------------------------------------------------------------------
SORTABLE = [
    patient("s1", name=[{"family": "Adams"}], birthDate="1990-01-01", gender="female"),
    patient("s2", name=[{"family": "adams"}], birthDate="1980-01-01", gender="male"),
    patient("s3", name=[{"family": "Baker"}], birthDate="1985-01-01", gender="female"),
    patient("s4", name=[{"family": "Baker"}], birthDate="1970-01-01", gender="other"),
    patient("s5", birthDate="2000-01-01", gender="male"),
]


@pytest.fixture(scope="class")
def sortable(database_url):
    def build(c):
        for p in SORTABLE:
            put(c, p)
            time.sleep(0.002)  # distinct lastUpdated

    # the engine's ordering semantics, on birth dates and names stored in clear (sorting by a protected
    # parameter is refused: tests/resources/search/test_search_corpus.py and test_protected_search.py)
    with populated_client(database_url, build, protected=False) as c:
        yield c


class TestSort:
    def order(self, c, sort: str) -> list[str]:
        return ids_of(bundle(c, f"Patient?_sort={sort}"))

    def test_single_keys(self, sortable):
        assert self.order(sortable, "birthdate") == ["s4", "s2", "s3", "s1", "s5"]
        assert self.order(sortable, "-birthdate") == ["s5", "s1", "s3", "s2", "s4"]
        assert self.order(sortable, "_id") == ["s1", "s2", "s3", "s4", "s5"]
        assert self.order(sortable, "-_id") == ["s5", "s4", "s3", "s2", "s1"]
        assert self.order(sortable, "_lastUpdated") == ["s1", "s2", "s3", "s4", "s5"]
        assert self.order(sortable, "-_lastUpdated") == ["s5", "s4", "s3", "s2", "s1"]

    def test_several_keys(self, sortable):
        # family ignores case ("Adams" and "adams" tie), then birthdate breaks the tie
        assert self.order(sortable, "family,-birthdate")[:4] == ["s1", "s2", "s3", "s4"]
        assert self.order(sortable, "family,birthdate")[:4] == ["s2", "s1", "s4", "s3"]
        assert self.order(sortable, "-family,birthdate")[:4] == ["s4", "s3", "s2", "s1"]
        assert self.order(sortable, "gender,-birthdate") == ["s1", "s3", "s5", "s2", "s4"]
        assert self.order(sortable, "gender,birthdate") == ["s3", "s1", "s2", "s5", "s4"]

    def test_id_as_the_first_of_several_keys(self, sortable):
        assert self.order(sortable, "_id,birthdate") == ["s1", "s2", "s3", "s4", "s5"]
        assert self.order(sortable, "-_id,birthdate") == ["s5", "s4", "s3", "s2", "s1"]

    def test_resources_without_the_value_are_still_returned(self, sortable):
        assert sorted(self.order(sortable, "family")) == ["s1", "s2", "s3", "s4", "s5"]

    def test_sort_with_paging_gives_the_same_order(self, sortable):
        got = pages(sortable, "Patient?_sort=gender,-birthdate&_count=2")
        assert got == [["s1", "s3"], ["s5", "s2"], ["s4"]]

    def test_sort_with_a_filter(self, sortable):
        assert ids_of(bundle(sortable, "Patient?gender=female,male&_sort=-birthdate")) == [
            "s5",
            "s1",
            "s3",
            "s2",
        ]

    @pytest.mark.unprotected  # sorts by given names, which are protected by default
    def test_a_resource_with_several_equal_sort_values_appears_once(self, client):
        # two index rows of one resource hold the same sort value: the physical row id breaks the tie
        put(client, patient("twin", name=[{"given": ["Ann", "Ann"]}, {"given": ["ann"]}]))
        put(client, patient("other", name=[{"given": ["Bea"]}]))
        both = "Patient?_id=twin,other&_sort="
        assert ids_of(bundle(client, both + "given")) == ["twin", "other"]
        assert ids_of(bundle(client, both + "-given")) == ["other", "twin"]
        assert pages(client, both + "given&_count=1") == [["twin"], ["other"]]

    def test_unknown_sort_parameter_is_400(self, sortable):
        assert "foo" in bad_request(sortable, "Patient?_sort=foo")["diagnostics"]
        bad_request(sortable, "Patient?_sort=-foo")
        bad_request(sortable, "Patient?_sort=birthdate,foo")


# -- _include / _revinclude ---------------------------------------------------------------------------------
LINKED = [
    {"resourceType": "Organization", "id": "acme", "name": "Acme"},
    {"resourceType": "Practitioner", "id": "house", "name": [{"family": "House"}]},
    patient(
        "alice",
        managingOrganization=ref("Organization/acme"),
        generalPractitioner=[ref("Practitioner/house")],
    ),
    patient("bob"),
    observation("ob-1", subject=ref("Patient/alice"), performer=[ref("Practitioner/house")]),
    observation("ob-2", subject=ref("Patient/bob")),
    observation("ob-panel", subject=ref("Patient/alice"), hasMember=[ref("Observation/ob-1")]),
]


@pytest.fixture(scope="class")
def linked(database_url):
    with populated_client(database_url, lambda c: put_all(c, LINKED)) as c:
        yield c


class TestInclude:
    def included(self, c, query: str) -> set[str]:
        body = bundle(c, query)
        refs = refs_of(body, "include")
        assert len(refs) == len(set(refs)), f"an included resource is repeated: {refs}"
        assert not set(refs) & set(refs_of(body)), "a match is repeated as an include"
        return set(refs)

    def test_include(self, linked):
        body = bundle(linked, "Observation?_id=ob-1&_include=Observation:subject")
        assert refs_of(body) == ["Observation/ob-1"]
        assert refs_of(body, "include") == ["Patient/alice"]
        entry = entries(body, "include")[0]
        assert entry["fullUrl"] == "http://localhost/fhir/R4/Patient/alice"

    def test_include_with_target_type(self, linked):
        assert self.included(linked, "Observation?_id=ob-1&_include=Observation:performer:Practitioner") == {
            "Practitioner/house"
        }
        assert (
            self.included(linked, "Observation?_id=ob-1&_include=Observation:performer:Organization") == set()
        )

    def test_include_wildcards(self, linked):
        expected = {"Patient/alice", "Practitioner/house"}
        assert self.included(linked, "Observation?_id=ob-1&_include=Observation:*") == expected
        assert self.included(linked, "Observation?_id=ob-1&_include=*") == expected

    def test_several_includes_and_comma(self, linked):
        query = "Observation?_id=ob-1&_include=Observation:subject&_include=Observation:performer"
        assert self.included(linked, query) == {"Patient/alice", "Practitioner/house"}

    def test_included_resource_appears_once_for_several_matches(self, linked):
        body = bundle(linked, "Observation?subject=Patient/alice&_include=Observation:subject")
        assert sorted(refs_of(body)) == ["Observation/ob-1", "Observation/ob-panel"]
        assert refs_of(body, "include") == ["Patient/alice"]

    def test_a_match_is_not_repeated_as_an_include(self, linked):
        assert (
            self.included(linked, "Observation?subject=Patient/alice&_include=Observation:has-member")
            == set()
        )

    def test_revinclude(self, linked):
        query = "Patient?_id=alice&_revinclude=Observation:subject"
        assert self.included(linked, query) == {"Observation/ob-1", "Observation/ob-panel"}
        assert self.included(linked, "Patient?_id=alice&_revinclude=Observation:performer") == set()
        assert self.included(linked, "Practitioner?_revinclude=Observation:performer") == {"Observation/ob-1"}

    def test_include_without_iterate_applies_to_matches_only(self, linked):
        query = "Observation?_id=ob-1&_include=Observation:subject&_include=Patient:organization"
        assert self.included(linked, query) == {"Patient/alice"}

    def test_include_iterate(self, linked):
        query = "Observation?_id=ob-1&_include=Observation:subject&_include:iterate=Patient:organization"
        assert self.included(linked, query) == {"Patient/alice", "Organization/acme"}
        query = (
            "Observation?_id=ob-panel&_include:iterate=Observation:has-member"
            "&_include:iterate=Observation:performer"
        )
        assert self.included(linked, query) == {"Observation/ob-1", "Practitioner/house"}

    def test_revinclude_iterate(self, linked):
        query = (
            "Organization?_id=acme&_revinclude=Patient:organization&_revinclude:iterate=Observation:subject"
        )
        assert self.included(linked, query) == {"Patient/alice", "Observation/ob-1", "Observation/ob-panel"}

    def test_include_and_revinclude_together(self, linked):
        query = "Patient?_id=alice&_include=Patient:organization&_revinclude=Observation:subject"
        assert self.included(linked, query) == {
            "Organization/acme",
            "Observation/ob-1",
            "Observation/ob-panel",
        }

    def test_includes_on_system_search(self, linked):
        query = "?_type=Observation,Organization&_id=ob-1,acme&_include=Observation:subject"
        body = bundle(linked, query)
        assert sorted(refs_of(body)) == ["Observation/ob-1", "Organization/acme"]
        assert refs_of(body, "include") == ["Patient/alice"]

    def test_includes_are_per_page(self, linked):
        query = "Observation?subject=Patient/alice&_include=Observation:subject&_count=1"
        first = bundle(linked, query)
        second = follow(linked, link(first, "next"))
        assert refs_of(first, "include") == refs_of(second, "include") == ["Patient/alice"]
        assert len(refs_of(first)) == len(refs_of(second)) == 1

    def test_includes_do_not_count_in_total(self, linked):
        body = bundle(
            linked, "Observation?subject=Patient/alice&_include=Observation:subject&_total=accurate"
        )
        assert body["total"] == 2

    @pytest.mark.parametrize(
        "value",
        ["Observation:code", "Foo:subject", "Observation", "Observation:subject:Foo", "Observation:nope"],
    )
    def test_invalid_include_is_400(self, linked, value):
        bad_request(linked, f"Observation?_include={value}")


def test_deleted_resources_are_not_included(client):
    put_all(
        client,
        [
            patient("alice"),
            observation("ob-1", subject=ref("Patient/alice")),
            observation("ob-2", subject=ref("Patient/alice")),
        ],
    )
    assert client.delete("/fhir/R4/Observation/ob-2").status_code == 200
    body = bundle(client, "Patient?_revinclude=Observation:subject")
    assert refs_of(body, "include") == ["Observation/ob-1"]
    assert client.delete("/fhir/R4/Patient/alice").status_code == 200
    body = bundle(client, "Observation?_include=Observation:subject")
    assert refs_of(body) == ["Observation/ob-1"] and refs_of(body, "include") == []


# -- _summary, _elements, _total -----------------------------------------------------------------------------
NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Alice</div>'}
SUMMARISED = [
    patient(
        "alice",
        text=NARRATIVE,
        name=[{"family": "Smith"}],
        gender="female",
        birthDate="1980-01-01",
        photo=[{"contentType": "image/png", "data": "AAAA"}],
        contact=[{"name": {"family": "Mom"}}],
    ),
    patient("bob", name=[{"family": "Jones"}]),
    observation("ob-1", text=NARRATIVE, subject=ref("Patient/alice"), valueString="x"),
]


@pytest.fixture(scope="class")
def summarised(database_url):
    with populated_client(database_url, lambda c: put_all(c, SUMMARISED)) as c:
        yield c


class TestSummaryElementsTotal:
    def alice(self, c, query: str) -> dict:
        body = bundle(c, query)
        (resource,) = [e["resource"] for e in entries(body) if e["resource"]["id"] == "alice"]
        return resource

    def test_summary_true(self, summarised):
        alice = self.alice(summarised, "Patient?_summary=true")
        assert {"name", "gender", "birthDate", "id", "meta"} <= set(alice)
        assert not {"text", "photo", "contact"} & set(alice)
        assert SUBSETTED in [{"system": t["system"], "code": t["code"]} for t in alice["meta"]["tag"]]

    def test_summary_text(self, summarised):
        alice = self.alice(summarised, "Patient?_summary=text")
        assert alice["text"] == NARRATIVE
        assert not {"name", "gender", "birthDate", "photo", "contact"} & set(alice)
        assert SUBSETTED["code"] in [t["code"] for t in alice["meta"]["tag"]]
        (obs,) = [e["resource"] for e in entries(bundle(summarised, "Observation?_summary=text"))]
        assert {"text", "status", "code"} <= set(obs) and "valueString" not in obs  # mandatory kept

    def test_summary_data(self, summarised):
        alice = self.alice(summarised, "Patient?_summary=data")
        assert "text" not in alice
        assert {"name", "gender", "birthDate", "photo", "contact"} <= set(alice)

    def test_summary_false_is_the_whole_resource(self, summarised):
        alice = self.alice(summarised, "Patient?_summary=false")
        stored = summarised.get("/fhir/R4/Patient/alice").get_json(force=True)
        assert alice == stored

    def test_summary_count(self, summarised):
        body = bundle(summarised, "Patient?_summary=count")
        assert body["total"] == 2 and entries(body) == []
        assert bundle(summarised, "Patient?name=smith&_summary=count")["total"] == 1

    def test_elements(self, summarised):
        alice = self.alice(summarised, "Patient?_elements=birthDate,gender")
        assert set(alice) == {"resourceType", "id", "meta", "birthDate", "gender"}
        assert SUBSETTED["code"] in [t["code"] for t in alice["meta"]["tag"]]
        (obs,) = [e["resource"] for e in entries(bundle(summarised, "Observation?_elements=subject"))]
        assert {"subject", "status", "code"} <= set(obs) and not {"valueString", "text"} & set(obs)
        (obs,) = [e["resource"] for e in entries(bundle(summarised, "Observation?_elements=value"))]
        assert obs["valueString"] == "x" and "subject" not in obs  # a choice element by its base name

    def test_elements_and_summary_are_kept_on_later_pages(self, summarised):
        first = bundle(summarised, "Patient?_elements=gender&_count=1&_sort=_id")
        second = follow(summarised, link(first, "next"))
        for resource in [e["resource"] for e in entries(first) + entries(second)]:
            assert "name" not in resource
        first = bundle(summarised, "Patient?_summary=text&_count=1&_sort=_id")
        assert "name" not in entries(follow(summarised, link(first, "next")))[0]["resource"]

    def test_elements_with_include_keeps_the_included_resource(self, summarised):
        body = bundle(summarised, "Observation?_include=Observation:subject&_elements=subject")
        (included,) = [e["resource"] for e in entries(body, "include")]
        assert included["id"] == "alice"  # whatever the subset, the included resource is there

    def test_total(self, summarised):
        assert "total" not in bundle(summarised, "Patient?_total=none")
        assert bundle(summarised, "Patient?_total=accurate&_count=1")["total"] == 2
        estimate = bundle(summarised, "Patient?_total=estimate")
        assert estimate.get("total", 2) >= 0

    @pytest.mark.parametrize(
        "query", ["Patient?_summary=maybe", "Patient?_elements=nope", "Patient?_total=maybe"]
    )
    def test_invalid_is_400(self, summarised, query):
        bad_request(summarised, query)


# -- POST _search and system search ------------------------------------------------------------------------
SEARCHABLE = [
    patient(
        "alice", name=[{"family": "Smith"}], gender="female", meta={"tag": [coding("http://ex.org/t", "t")]}
    ),
    patient("adam", name=[{"family": "Smith"}], gender="male"),
    patient("house-pat", name=[{"family": "House"}]),
    {"resourceType": "Practitioner", "id": "house", "name": [{"family": "House"}]},
    observation("ob-1", subject=ref("Patient/alice"), meta={"tag": [coding("http://ex.org/t", "t")]}),
    {"resourceType": "Organization", "id": "alice", "name": "Alice Inc"},
]


@pytest.fixture(scope="class")
def searchable(database_url):
    with populated_client(database_url, lambda c: put_all(c, SEARCHABLE)) as c:
        yield c


class TestPostAndSystemSearch:
    def post(self, c, path: str, form: dict | list, query: str = ""):
        resp = c.post(
            f"/fhir/R4/{path}{query}", data=urlencode(form), content_type="application/x-www-form-urlencoded"
        )
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return resp.get_json(force=True)

    def test_post_search_with_form_body(self, searchable):
        body = self.post(searchable, "Patient/_search", {"family": "smith"})
        assert body["type"] == "searchset"
        assert set(ids_of(body)) == {"alice", "adam"}

    def test_post_search_combines_query_and_body(self, searchable):
        assert ids_of(self.post(searchable, "Patient/_search", {"family": "smith"}, "?gender=female")) == [
            "alice"
        ]

    def test_post_search_repeated_and_comma(self, searchable):
        form = [("family", "smith,house"), ("gender", "male")]
        assert ids_of(self.post(searchable, "Patient/_search", form)) == ["adam"]

    def test_post_search_pages_by_links(self, searchable):
        body = self.post(searchable, "Patient/_search", {"family": "smith", "_count": "1"})
        second = follow(searchable, link(body, "next"))
        assert sorted(ids_of(body) + ids_of(second)) == ["adam", "alice"]
        assert link(second, "next") is None

    def test_post_search_rejects_a_json_body(self, searchable):
        resp = searchable.post("/fhir/R4/Patient/_search", json={"family": "smith"})
        assert resp.status_code in (400, 415)
        assert resp.get_json(force=True)["resourceType"] == "OperationOutcome"

    def test_system_post_search(self, searchable):
        body = self.post(searchable, "_search", {"_type": "Patient", "_id": "alice"})
        assert refs_of(body) == ["Patient/alice"]

    def test_system_search_with_type(self, searchable):
        body = bundle(searchable, "?_type=Patient,Observation&_tag=http://ex.org/t|t")
        assert sorted(refs_of(body)) == ["Observation/ob-1", "Patient/alice"]
        body = bundle(searchable, "?_type=Patient")
        assert sorted(refs_of(body)) == ["Patient/adam", "Patient/alice", "Patient/house-pat"]

    def test_system_search_with_a_parameter_common_to_the_types(self, searchable):
        body = bundle(searchable, "?_type=Practitioner,Patient&name=house")
        assert sorted(refs_of(body)) == ["Patient/house-pat", "Practitioner/house"]

    def test_system_search_without_type(self, searchable):
        assert sorted(refs_of(bundle(searchable, "?_id=alice"))) == ["Organization/alice", "Patient/alice"]
        assert len(refs_of(bundle(searchable, "?_count=100"))) == len(SEARCHABLE)
        body = bundle(searchable, "?_id=alice&_total=accurate")
        assert body["total"] == 2
        assert {e["fullUrl"] for e in entries(body)} == {
            "http://localhost/fhir/R4/Organization/alice",
            "http://localhost/fhir/R4/Patient/alice",
        }

    def test_system_search_pages(self, searchable):
        got = pages(searchable, "?_count=4")
        assert [len(p) for p in got] == [4, 2]

    def test_system_search_unknown_type_is_400(self, searchable):
        bad_request(searchable, "?_type=Patient,Foo")


# -- Prefer: handling ----------------------------------------------------------------------------------------
class TestHandling:
    def test_strict_rejects_an_unknown_parameter_naming_it(self, searchable):
        issue = bad_request(searchable, "Patient?family=smith&foo=bar", STRICT)
        assert "foo" in issue["diagnostics"]
        assert issue.get("expression") == ["foo"]

    def test_strict_among_other_preferences(self, searchable):
        headers = {"Prefer": "return=representation, handling=strict"}
        assert "foo" in bad_request(searchable, "Patient?foo=bar", headers)["diagnostics"]

    def test_strict_accepts_known_parameters(self, searchable):
        assert found(searchable, "Patient?family=smith&_count=5&_sort=_id", STRICT) == {"alice", "adam"}

    def test_lenient_ignores_an_unknown_parameter_and_says_so(self, searchable):
        body = bundle(searchable, "Patient?family=smith&foo=bar", LENIENT)
        assert set(ids_of(body)) == {"alice", "adam"}  # filtered by family only
        (outcome,) = outcome_entries(body)
        assert outcome["resourceType"] == "OperationOutcome"
        assert any("foo" in i.get("diagnostics", "") for i in outcome["issue"])
        assert all(i["severity"] in ("warning", "information") for i in outcome["issue"])

    def test_no_outcome_entry_without_unknown_parameters(self, searchable):
        assert outcome_entries(bundle(searchable, "Patient?family=smith", LENIENT)) == []

    def test_unknown_modifier_is_400_even_when_lenient(self, searchable):
        bad_request(searchable, "Patient?family:foo=smith", LENIENT)

    def test_content_is_either_searched_or_reported_unsupported(self, searchable):
        body = bundle(searchable, "Patient?_content=smith", LENIENT)
        assert "alice" in ids_of(body)  # a match, or everything with an outcome entry saying it was ignored


# -- :missing on every parameter type ------------------------------------------------------------------------
MISSING = [
    patient(
        "full",
        name=[{"family": "F"}],
        gender="male",
        birthDate="1990",
        managingOrganization=ref("Organization/o"),
    ),
    patient("empty"),
    {
        "resourceType": "RiskAssessment",
        "id": "ra-full",
        "status": "final",
        "subject": ref("Patient/full"),
        "prediction": [{"probabilityDecimal": 0.5}],
    },
    {"resourceType": "RiskAssessment", "id": "ra-empty", "status": "final", "subject": ref("Patient/full")},
    observation(
        "ob-full",
        code=concept(coding(LOINC, "8480-6")),
        valueQuantity={"value": 1, "system": UCUM, "code": "mg"},
    ),
    observation("ob-empty", code=concept(coding(LOINC, "8480-6"))),
    {"resourceType": "ValueSet", "id": "vs-full", "status": "active", "url": "http://ex.org/vs"},
    {"resourceType": "ValueSet", "id": "vs-empty", "status": "active"},
]


@pytest.fixture(scope="class")
def missing(database_url):
    with populated_client(database_url, lambda c: put_all(c, MISSING)) as c:
        yield c


class TestMissing:
    @pytest.mark.parametrize(
        ("res_type", "param", "prefix"),
        [
            ("Patient", "name", ""),  # string
            ("Patient", "gender", ""),  # token
            ("Patient", "birthdate", ""),  # date
            ("Patient", "organization", ""),  # reference
            ("RiskAssessment", "probability", "ra-"),  # number
            ("Observation", "value-quantity", "ob-"),  # quantity
            ("ValueSet", "url", "vs-"),  # uri
            ("Observation", "code-value-quantity", "ob-"),  # composite
        ],
    )
    def test_missing(self, missing, res_type, param, prefix):
        assert found(missing, f"{res_type}?{param}:missing=true") == {f"{prefix}empty"}
        assert found(missing, f"{res_type}?{param}:missing=false") == {f"{prefix}full"}

    def test_missing_on_id(self, missing):
        assert found(missing, "Patient?_id:missing=true") == set()
        assert found(missing, "Patient?_id:missing=false") == {"full", "empty"}

    def test_missing_on_last_updated(self, missing):
        assert found(missing, "Patient?_lastUpdated:missing=true") == set()
        assert found(missing, "Patient?_lastUpdated:missing=false") == {"full", "empty"}

    def test_missing_combines_with_other_parameters(self, missing):
        assert found(missing, "Patient?gender:missing=true&birthdate:missing=true") == {"empty"}
        assert found(missing, "Patient?gender:missing=true&name:missing=false") == set()

    def test_missing_on_an_unsupported_special_parameter_is_not_a_server_error(self, missing):
        assert get(missing, "Location?near:missing=true", STRICT).status_code == 400


# -- _id, _lastUpdated, _tag, _profile, _security ----------------------------------------------------------
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PROFILE = "http://example.org/fhir/StructureDefinition/special-patient"
META = [
    patient(
        "m1",
        meta={
            "tag": [coding("http://example.org/tags", "vip")],
            "profile": [PROFILE],
            "security": [coding(CONFIDENTIALITY, "R")],
        },
    ),
    patient(
        "m2",
        meta={
            "tag": [coding("http://other.example/tags", "vip")],
            "security": [coding(CONFIDENTIALITY, "N")],
        },
    ),
    patient("m3"),
    observation("ob-m", meta={"tag": [coding("http://example.org/tags", "vip")], "profile": [PROFILE]}),
]


@pytest.fixture(scope="class")
def tagged(database_url):
    with populated_client(database_url, lambda c: put_all(c, META)) as c:
        yield c


class TestCommonParameters:
    def test_id(self, tagged):
        assert found(tagged, "Patient?_id=m1") == {"m1"}
        assert found(tagged, "Patient?_id=m1,m3") == {"m1", "m3"}
        assert found(tagged, "Patient?_id=m1&_id=m3") == set()
        assert found(tagged, "Patient?_id=ob-m") == set()  # another type's id
        assert found(tagged, "Patient?_id=nope") == set()
        assert found(tagged, "Patient?_id=m1,m2&_tag=http://example.org/tags|vip") == {"m1"}

    def test_id_not(self, tagged):
        assert found(tagged, "Patient?_id:not=m1") == {"m2", "m3"}

    def test_tag(self, tagged):
        assert found(tagged, "Patient?_tag=vip") == {"m1", "m2"}
        assert found(tagged, "Patient?_tag=http://example.org/tags|vip") == {"m1"}
        assert found(tagged, "Patient?_tag=http://example.org/tags|") == {"m1"}
        assert found(tagged, "Patient?_tag:not=http://example.org/tags|vip") == {"m2", "m3"}
        assert found(tagged, "Patient?_tag:missing=true") == {"m3"}
        assert sorted(refs_of(bundle(tagged, "?_tag=http://example.org/tags|vip"))) == [
            "Observation/ob-m",
            "Patient/m1",
        ]

    def test_profile(self, tagged):
        assert found(tagged, f"Patient?_profile={PROFILE}") == {"m1"}
        assert found(tagged, "Patient?_profile:below=http://example.org/fhir/StructureDefinition/") == {"m1"}
        assert found(tagged, "Patient?_profile=http://example.org/fhir/StructureDefinition/special") == set()
        assert sorted(refs_of(bundle(tagged, f"?_type=Patient,Observation&_profile={PROFILE}"))) == [
            "Observation/ob-m",
            "Patient/m1",
        ]

    def test_security(self, tagged):
        assert found(tagged, f"Patient?_security={CONFIDENTIALITY}|R") == {"m1"}
        assert found(tagged, "Patient?_security=N") == {"m2"}
        assert found(tagged, f"Patient?_security={CONFIDENTIALITY}|R,{CONFIDENTIALITY}|N") == {"m1", "m2"}
        assert found(tagged, f"Patient?_security:not={CONFIDENTIALITY}|R") == {"m2", "m3"}


def _instant(body: dict) -> datetime:
    return datetime.fromisoformat(body["meta"]["lastUpdated"].replace("Z", "+00:00"))


def _z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_last_updated_with_prefixes(client):
    old = _instant(put(client, patient("old")))
    time.sleep(0.01)
    new = _instant(put(client, patient("new")))
    assert new > old
    o, n = _z(old), _z(new)
    assert found(client, f"Patient?_lastUpdated={o}") == {"old"}
    assert found(client, f"Patient?_lastUpdated=eq{n}") == {"new"}
    assert found(client, f"Patient?_lastUpdated=gt{o}") == {"new"}
    assert found(client, f"Patient?_lastUpdated=ge{o}") == {"old", "new"}
    assert found(client, f"Patient?_lastUpdated=lt{n}") == {"old"}
    assert found(client, f"Patient?_lastUpdated=le{n}") == {"old", "new"}
    assert found(client, f"Patient?_lastUpdated=lt{o}") == set()
    assert found(client, f"Patient?_lastUpdated=gt{n}") == set()
    assert found(client, f"Patient?_lastUpdated=ne{o}") == {"new"}
    assert found(client, f"Patient?_lastUpdated=sa{o}") == {"new"}
    assert found(client, f"Patient?_lastUpdated=eb{n}") == {"old"}
    assert found(client, f"Patient?_lastUpdated=ap{o}") == {"old", "new"}
    assert found(client, "Patient?_lastUpdated=ge2000-01-01") == {"old", "new"}
    assert found(client, "Patient?_lastUpdated=lt2000") == set()
    assert found(client, f"Patient?_lastUpdated=ge{o}&_lastUpdated=lt{n}") == {"old"}
    assert found(client, f"Patient?_lastUpdated={o},{n}") == {"old", "new"}
    # the same instant written with an offset
    shifted = old.astimezone(UTC) + timedelta(hours=2)
    with_offset = shifted.replace(tzinfo=None).isoformat(timespec="milliseconds") + "%2B02:00"
    assert found(client, f"Patient?_lastUpdated={with_offset}") == {"old"}
    # a whole day holds both
    day = old.astimezone(UTC).date().isoformat()
    assert {"old"} <= found(client, f"Patient?_lastUpdated={day}")
    assert found(client, f"?_lastUpdated=ge{o}&_type=Patient") == {"old", "new"}


def test_last_updated_follows_updates(client):
    first = _instant(put(client, patient("p", gender="male")))
    time.sleep(0.01)
    put(client, patient("q"))
    time.sleep(0.01)
    put(client, patient("p", gender="female"))
    assert found(client, f"Patient?_lastUpdated=gt{_z(first)}") == {"p", "q"}
    assert found(client, f"Patient?_lastUpdated=gt{_z(first)}&_sort=-_lastUpdated") == {"p", "q"}
    assert ids_of(bundle(client, "Patient?_sort=-_lastUpdated")) == ["p", "q"]


# -- comma = OR, repeated = AND across parameter types ------------------------------------------------------
def test_or_within_a_parameter_and_and_across_parameters(client):
    put_all(
        client,
        [
            patient("a", gender="female", birthDate="1980", name=[{"family": "Smith"}]),
            patient("b", gender="male", birthDate="1990", name=[{"family": "Smith"}]),
            patient("c", gender="female", birthDate="1990", name=[{"family": "Jones"}]),
        ],
    )
    assert found(client, "Patient?gender=female,male&birthdate=1990") == {"b", "c"}
    assert found(client, "Patient?family=smith,jones&gender=female&birthdate=1980,1990") == {"a", "c"}
    assert found(client, "Patient?family=smith&family=jones") == set()
    assert found(client, "Patient?birthdate=ge1980&birthdate=le1980&gender=female") == {"a"}
    assert found(client, "Patient?_id=a,b,c&gender:not=female") == {"b"}


# -- invalid input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("Patient?birthdate=1980-13-01", "birthdate"),
        ("Patient?birthdate=gtnotadate", "birthdate"),
        ("Patient?_lastUpdated=yesterday", "_lastUpdated"),
        ("Patient?_lastUpdated:foo=gt2000", "_lastUpdated"),
        ("RiskAssessment?probability=abc", "probability"),
        ("Observation?value-quantity=ten", "value-quantity"),
        ("Patient?name:sounds=x", "name:sounds"),
        ("Patient?gender:below=male", "gender:below"),
        ("Patient?_count=abc", "_count"),
        ("Patient?_count=-1", "_count"),
        ("Patient?_cursor=not-a-cursor!", "_cursor"),
        ("Patient?_cursor=eyJhIjoxfQ", "_cursor"),  # base64 JSON, but not a cursor
        ("Patient?_sort=nope", "_sort"),
        ("Patient?_sort=-nope", "_sort"),
        ("Patient?_total=maybe", "_total"),
        ("Patient?_include=Patient:nope", "_include"),
        ("Patient?_id:exact=x", "_id"),
        ("Patient?gender:missing=perhaps", "gender"),
    ],
)
def test_invalid_input_is_400(client, query, named):
    issue = bad_request(client, query)
    assert named in issue["diagnostics"] or named in issue.get("expression", [""])[0]
