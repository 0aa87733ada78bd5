"""URI search parameters, by hand (http://hl7.org/fhir/R4/search.html#uri): exact and case-sensitive
by default, ``:below`` (the value is a prefix of the stored URI) and ``:above`` (the stored URI is a
prefix of the value)."""

from __future__ import annotations

import pytest

from tests.resources.search.fixtures import bad_request, found, populated_client, put_all


def valueset(vid: str, url: str | None) -> dict:
    body = {"resourceType": "ValueSet", "id": vid, "status": "active"}
    if url:
        body["url"] = url
    return body


def codesystem(cid: str, url: str) -> dict:
    return {"resourceType": "CodeSystem", "id": cid, "url": url, "status": "active", "content": "complete"}


POPULATION = [
    valueset("vs-123", "http://acme.org/fhir/ValueSet/123"),
    valueset("vs-124", "http://acme.org/fhir/ValueSet/124"),
    valueset("vs-mixed", "http://acme.org/fhir/ValueSet/MixedCase"),
    valueset("vs-other", "http://acme.org/other/ValueSet/1"),
    valueset("vs-oid", "urn:oid:1.2.3.4"),
    valueset("vs-none", None),
    codesystem("cs-root", "http://acme.org/fhir"),
    codesystem("cs-x", "http://acme.org/fhir/CodeSystem/x"),
    codesystem("cs-under", "http://acme.org/cs_a"),
]


@pytest.fixture(scope="class")
def c(database_url):
    with populated_client(database_url, lambda c: put_all(c, POPULATION)) as c:
        yield c


class TestUri:
    def test_default_is_the_whole_uri(self, c):
        assert found(c, "ValueSet?url=http://acme.org/fhir/ValueSet/123") == {"vs-123"}
        assert found(c, "ValueSet?url=http://acme.org/fhir/ValueSet/12") == set()
        assert found(c, "ValueSet?url=http://acme.org/fhir/ValueSet/123/") == set()
        assert found(c, "ValueSet?url=urn:oid:1.2.3.4") == {"vs-oid"}

    def test_default_is_case_sensitive(self, c):
        assert found(c, "ValueSet?url=http://acme.org/fhir/ValueSet/mixedcase") == set()
        assert found(c, "ValueSet?url=http://acme.org/fhir/ValueSet/MixedCase") == {"vs-mixed"}

    def test_below(self, c):
        assert found(c, "ValueSet?url:below=http://acme.org/fhir/") == {"vs-123", "vs-124", "vs-mixed"}
        assert found(c, "ValueSet?url:below=http://acme.org/") == {"vs-123", "vs-124", "vs-mixed", "vs-other"}
        assert found(c, "ValueSet?url:below=http://acme.org/fhir/ValueSet/123") == {"vs-123"}
        assert found(c, "ValueSet?url:below=http://example.org/") == set()

    def test_below_treats_like_wildcards_literally(self, c):
        assert found(c, "ValueSet?url:below=http://acme.org/fhir/ValueSet/12_") == set()
        assert found(c, "ValueSet?url:below=http://acme.org/fhir/%25") == set()

    def test_below_is_case_sensitive(self, c):
        assert found(c, "ValueSet?url:below=http://acme.org/FHIR/") == set()

    def test_above(self, c):
        query = "CodeSystem?url:above=http://acme.org/fhir/CodeSystem/x/_history/2"
        assert found(c, query) == {"cs-root", "cs-x"}
        assert found(c, "CodeSystem?url:above=http://acme.org/fhir/CodeSystem/y") == {"cs-root"}
        assert found(c, "ValueSet?url:above=http://acme.org/fhir/ValueSet/123/_history/5") == {"vs-123"}
        assert found(c, "CodeSystem?url:above=http://acme.org/") == set()

    def test_above_treats_stored_like_wildcards_literally(self, c):
        assert found(c, "CodeSystem?url:above=http://acme.org/csXa/v2") == set()

    def test_comma_is_or(self, c):
        query = "ValueSet?url=http://acme.org/fhir/ValueSet/123,urn:oid:1.2.3.4"
        assert found(c, query) == {"vs-123", "vs-oid"}

    def test_missing(self, c):
        assert found(c, "ValueSet?url:missing=true") == {"vs-none"}
        assert len(found(c, "ValueSet?url:missing=false")) == 5

    def test_unknown_modifier_is_400(self, c):
        bad_request(c, "ValueSet?url:exact=http://acme.org/fhir/ValueSet/123")
        bad_request(c, "ValueSet?url:contains=acme")
