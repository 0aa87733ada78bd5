"""Searches over a real corpus, checked against answers computed from the same JSON in plain Python.

The corpus is 15 Synthea patients with their organisations and practitioners (transaction bundles turned
into PUTs: ids from the ``urn:uuid:`` fullUrls, references rewritten to Type/id) plus every official R4
example the server accepts, loaded once per module. Every search walks all its pages (``next`` links) and
compares ids as sets; _include/_revinclude are checked page by page. The same module runs on SQLite and on
PostgreSQL (``FHIR_TEST_DATABASE_URL``); the digest test pins both to the same answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from sqlalchemy import text

from fhir_api import create_app
from fhir_api.db import make_engine
from tests.helpers import authorized_client, empty_tables
from tests.resources.search.corpus import (
    Corpus,
    Link,
    date_matches,
    date_ranges,
    fold,
    has_token,
    included,
    load,
    name_strings,
    pages,
    quantities,
    references,
    search_all,
    string_starts,
    walk,
)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
ANGELIC = "2ec622d5-095b-44d4-9cb2-c0e7e451cd74"  # Angelic Mueller: 82 Observations, 19 Encounters, 12 MRs
CARLTON = "ca9bfc47-3718-4ee4-8d7a-cabef90ee746"  # Carlton Ledner: 128 Encounters


def _analyze(database_url: str) -> None:
    """Planner statistics, as a database in service has them (autovacuum on PostgreSQL, ANALYZE or
    ``PRAGMA optimize`` on SQLite). Without them both planners drive each parameter's correlated EXISTS
    through the (res_type, param) index, and some searches here take seconds to minutes instead of ms."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


# Searches that blind indexes cannot serve: with protection on (the default) they are refused with 400
# protected-search; every other case must give the JSON's answer either way, protected values included.
UNSERVABLE_WHEN_PROTECTED = frozenset({"patient-name-contains", "patient-identifier-type-text"})


@pytest.fixture(scope="module", params=["protected", "clear"])
def loaded(request, database_url, shared_fhir) -> Iterator[tuple[object, Corpus]]:
    """The corpus written once per protection mode through its own app; tables emptied before and after.

    "protected" is the server's default (names, identifiers, birth dates, telecom and addresses sealed and
    searched through blind indexes); "clear" stores everything in clear, as other servers do."""
    empty_tables(database_url)
    protected = request.param == "protected"
    app = create_app({"DATABASE_URL": database_url, "TESTING": True, "PROTECTION": protected})
    app.config["TEST_PROTECTED"] = protected
    try:
        client = authorized_client(app)
        corpus = load(client, shared_fhir)
        _analyze(database_url)
        print(
            f"\ncorpus: {corpus.synthea_count} Synthea + {corpus.example_count} example resources "
            f"written in {corpus.seconds:.1f} s"
        )
        yield client, corpus
    finally:
        app.extensions["fhir_db"]["engine"].dispose()
        empty_tables(database_url)
        _analyze(database_url)  # statistics of empty tables again, for the modules that follow


@pytest.fixture
def client(loaded):
    """The module's client (shadowing the per-test one, whose teardown would empty the tables)."""
    return loaded[0]


@pytest.fixture
def protected(client) -> bool:
    return bool(client.application.config["TEST_PROTECTED"])


def assert_refused_as_protected(client, query: str) -> None:
    resp = client.get(f"/fhir/R4/{query}")
    assert resp.status_code == 400, resp.get_data(as_text=True)[:500]
    issue = resp.get_json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "protected-search"
    assert "protected" in issue["diagnostics"]


@pytest.fixture
def corpus(loaded) -> Corpus:
    return loaded[1]


# -- searches and their expected ids -------------------------------------------------------------------------
Expect = Callable[[Corpus], set[str]]


@dataclass(frozen=True)
class Case:
    name: str
    query: str  # Type?params, ?params (system search) or Patient/id/Type?params (compartment)
    expect: Expect
    bug: str | None = None  # a known engine bug: the case is a strict xfail


def where(res_type: str, test: Callable[[dict], bool]) -> Expect:
    return lambda corpus: corpus.ids(res_type, test)


def token(path: str, value: str) -> Callable[[dict], bool]:
    return lambda r: has_token(walk(r, path), value)


def dated(element: str, *searches: str) -> Callable[[dict], bool]:
    return lambda r: all(date_matches(date_ranges(r, element), s) for s in searches)


def quantity(element: str, test: Callable[[float], bool], system: str | None, code: str) -> Callable:
    def matches(r: dict) -> bool:
        return any(
            test(q["value"])
            and (q.get("system") == system if system else True)
            and (q.get("code") == code if system else code in (q.get("code"), q.get("unit")))
            for q in quantities(r, element)
        )

    return matches


def refers(path: str, target: str) -> Callable[[dict], bool]:
    return lambda r: target in references(r, path)


def patients_with(corpus: Corpus, source: str, path: str, test: Callable[[dict], bool]) -> set[str]:
    """Patients some ``source`` resource (matching ``test``) points to through ``path``: for _has."""
    out = set()
    for resource in corpus.of_type(source):
        if test(resource):
            out |= {ref.split("/", 1)[1] for ref in references(resource, path, "Patient") if corpus.get(ref)}
    return out


def chained(
    corpus: Corpus,
    source: str,
    path: str,
    test: Callable[[dict], bool],
    targets: tuple[str, ...] = ("Patient",),
) -> set[str]:
    """``source`` resources whose ``path`` points to an existing resource of ``targets`` matching ``test``."""
    wanted = {f"{t}/{i}" for t in targets for i in corpus.ids(t, test)}
    return corpus.ids(source, lambda r: bool(references(r, path) & wanted))


def one_of(refs: set[str]) -> Callable[[dict], bool]:
    return lambda r: f"{r['resourceType']}/{r['id']}" in refs


def reported(corpus: Corpus, code: str) -> set[str]:
    """Results (Type/id) of the DiagnosticReports with this code."""
    return {
        ref
        for report in corpus.of_type("DiagnosticReport")
        if has_token(walk(report, "code"), code)
        for ref in references(report, "result")
    }


CASES: list[Case] = [
    # Patient
    Case(
        "patient-family-prefix",
        "Patient?family=HOE",
        where("Patient", lambda r: any(fold(f).startswith("hoe") for f in walk(r, "name.family"))),
    ),
    Case(
        "patient-name-any-part",
        "Patient?name=mrs",
        where("Patient", lambda r: string_starts(name_strings(r), "mrs")),
    ),
    Case("patient-gender", "Patient?gender=female", where("Patient", lambda r: r.get("gender") == "female")),
    Case(
        "patient-birthdate-years",
        "Patient?birthdate=ge1960&birthdate=lt1990",
        where("Patient", dated("birthDate", "ge1960", "lt1990")),
    ),
    Case(
        "patient-identifier",
        "Patient?identifier=http://hl7.org/fhir/sid/us-ssn|999-36-6589",
        where("Patient", token("identifier", "http://hl7.org/fhir/sid/us-ssn|999-36-6589")),
    ),
    # Observation
    Case(
        "observation-loinc-code",
        f"Observation?code={LOINC}|8302-2",
        where("Observation", token("code", f"{LOINC}|8302-2")),
    ),
    Case(
        "observation-subject",
        f"Observation?subject=Patient/{ANGELIC}",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
    ),
    Case(
        "observation-patient-id",
        f"Observation?patient={ANGELIC}",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
    ),
    Case(
        "observation-date-range",
        "Observation?date=ge2015-01-01T00:00:00Z&date=lt2016-01-01T00:00:00Z",
        where("Observation", dated("effective", "ge2015-01-01T00:00:00Z", "lt2016-01-01T00:00:00Z")),
    ),
    Case(
        "observation-date-day",
        "Observation?date=2016-05-18",
        where("Observation", dated("effective", "2016-05-18")),
    ),
    Case(
        "observation-value-quantity-unit",
        "Observation?value-quantity=gt100||mg/dL",
        where("Observation", quantity("valueQuantity", lambda v: v > 100, None, "mg/dL")),
    ),
    Case(
        "observation-value-quantity-ucum",
        f"Observation?value-quantity=lt5|{UCUM}|mmol/L",
        where("Observation", quantity("valueQuantity", lambda v: v < 5, UCUM, "mmol/L")),
    ),
    # other Synthea types
    Case(
        "condition-clinical-status",
        "Condition?clinical-status=active",
        where("Condition", token("clinicalStatus", "active")),
    ),
    Case(
        "condition-code",
        f"Condition?code={SNOMED}|38341003",
        where("Condition", token("code", f"{SNOMED}|38341003")),
    ),
    Case(
        "encounter-class",
        f"Encounter?class={ACT_CODE}|EMER",
        where("Encounter", token("class", f"{ACT_CODE}|EMER")),
    ),
    Case(
        "encounter-class-or",
        "Encounter?class=EMER,IMP",
        where("Encounter", lambda r: any(has_token(walk(r, "class"), c) for c in ("EMER", "IMP"))),
    ),
    Case("encounter-date", "Encounter?date=le2000", where("Encounter", dated("period", "le2000"))),
    Case(
        "medicationrequest-status",
        "MedicationRequest?status=stopped",
        where("MedicationRequest", lambda r: r.get("status") == "stopped"),
    ),
    Case(
        "medicationrequest-intent",
        "MedicationRequest?intent=order",
        where("MedicationRequest", lambda r: r.get("intent") == "order"),
    ),
    Case(
        "immunization-vaccine-code",
        f"Immunization?vaccine-code={CVX}|140",
        where("Immunization", token("vaccineCode", f"{CVX}|140")),
    ),
    Case(
        "procedure-date",
        "Procedure?date=ge2010&date=lt2012",
        where("Procedure", dated("performed", "ge2010", "lt2012")),
    ),
    Case(
        "organization-name",
        "Organization?name=baystate",
        where("Organization", lambda r: string_starts([*walk(r, "name"), *walk(r, "alias")], "baystate")),
    ),
    Case("condition-onset-date", "Condition?onset-date=le2010", where("Condition", dated("onset", "le2010"))),
    Case(
        "medicationrequest-authoredon-and-status",
        "MedicationRequest?authoredon=ge2015&status=active",
        where(
            "MedicationRequest", lambda r: r.get("status") == "active" and dated("authoredOn", "ge2015")(r)
        ),
    ),
    Case("immunization-date", "Immunization?date=2016", where("Immunization", dated("occurrence", "2016"))),
    Case(
        "allergy-clinical-status",
        "AllergyIntolerance?clinical-status=active",
        where("AllergyIntolerance", token("clinicalStatus", "active")),
    ),
    Case(
        "imagingstudy-modality",
        "ImagingStudy?modality=http://dicom.nema.org/resources/ontology/DCM|DX",
        where("ImagingStudy", token("series.modality", "http://dicom.nema.org/resources/ontology/DCM|DX")),
    ),
    Case(
        "goal-lifecycle-status",
        "Goal?lifecycle-status=accepted,completed",
        where("Goal", lambda r: r.get("lifecycleStatus") in ("accepted", "completed")),
    ),
    Case(
        "procedure-code",
        f"Procedure?code={SNOMED}|180256009",
        where("Procedure", token("code", f"{SNOMED}|180256009")),
    ),
    Case(
        "explanationofbenefit-patient",
        f"ExplanationOfBenefit?patient={ANGELIC}",
        where("ExplanationOfBenefit", refers("patient", f"Patient/{ANGELIC}")),
    ),
    Case(
        "practitioner-name-prefix-part",
        "Practitioner?name=dr",
        where("Practitioner", lambda r: string_starts(name_strings(r), "dr")),
    ),
    Case(
        "system-search-two-types",
        "?_type=Patient,Practitioner&family=van",
        lambda c: {
            f"{r['resourceType']}/{r['id']}"
            for t in ("Patient", "Practitioner")
            for r in c.of_type(t)
            if string_starts(walk(r, "name.family"), "van")
        },
    ),
    # official examples
    Case(
        "practitioner-family",
        "Practitioner?family=van",
        where("Practitioner", lambda r: string_starts(walk(r, "name.family"), "van")),
    ),
    Case(
        "medication-code-system",
        "Medication?code=http://hl7.org/fhir/sid/ndc|",
        where("Medication", token("code", "http://hl7.org/fhir/sid/ndc|")),
    ),
    Case(
        "plandefinition-url-below",
        "PlanDefinition?url:below=http://hl7.org/fhir/ig/opioid-cds",
        where(
            "PlanDefinition", lambda r: str(r.get("url", "")).startswith("http://hl7.org/fhir/ig/opioid-cds")
        ),
    ),
    Case(
        "riskassessment-probability",
        "RiskAssessment?probability=lt0.001",
        where(
            "RiskAssessment",
            lambda r: any(
                isinstance(p, float) and p < 0.001 for p in walk(r, "prediction.probabilityDecimal")
            ),
        ),
    ),
    # modifiers, prefixes and precision
    Case(
        "patient-family-exact",
        "Patient?family:exact=Mueller",
        where("Patient", lambda r: "Mueller" in walk(r, "name.family")),
    ),
    Case(
        "patient-name-contains",
        "Patient?name:contains=OEG",
        where("Patient", lambda r: any("oeg" in fold(v) for v in name_strings(r))),
    ),
    Case(
        "patient-identifier-value-only",
        "Patient?identifier=999-36-6589",
        where("Patient", token("identifier", "999-36-6589")),
    ),
    Case(
        "patient-identifier-of-type",
        "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|999-36-6589",
        where(
            "Patient",
            lambda r: any(
                i.get("value") == "999-36-6589"
                and has_token([i.get("type")], "http://terminology.hl7.org/CodeSystem/v2-0203|SS")
                for i in walk(r, "identifier")
            ),
        ),
    ),
    Case(
        "patient-identifier-type-text",
        "Patient?identifier:text=passport",
        where("Patient", lambda r: string_starts(walk(r, "identifier.type.text"), "passport")),
    ),
    Case("patient-active", "Patient?active=true", where("Patient", lambda r: r.get("active") is True)),
    Case(
        "patient-id-list",
        f"Patient?_id={ANGELIC},{CARLTON},example",
        where("Patient", lambda r: r["id"] in (ANGELIC, CARLTON, "example")),
    ),
    Case("patient-birthdate-year", "Patient?birthdate=1988", where("Patient", dated("birthDate", "1988"))),
    Case(
        "patient-address-city",
        "Patient?address-city=boston",
        where("Patient", lambda r: string_starts(walk(r, "address.city"), "boston")),
    ),
    Case(
        "patient-language",
        "Patient?language=urn:ietf:bcp:47|en-US",
        where("Patient", token("communication.language", "urn:ietf:bcp:47|en-US")),
    ),
    Case(
        "patient-deceased",
        "Patient?deceased=true",
        where("Patient", lambda r: bool(r.get("deceasedDateTime") or r.get("deceasedBoolean"))),
    ),
    Case(
        "observation-code-text",
        "Observation?code:text=body%20height",
        where(
            "Observation",
            lambda r: string_starts([*walk(r, "code.text"), *walk(r, "code.coding.display")], "body height"),
        ),
    ),
    Case(
        "observation-subject-type-modifier",
        f"Observation?subject:Patient={ANGELIC}",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
    ),
    Case(
        "observation-date-or",
        "Observation?date=2016-05-18,1999-07-02",
        where(
            "Observation",
            lambda r: any(date_matches(date_ranges(r, "effective"), d) for d in ("2016-05-18", "1999-07-02")),
        ),
    ),
    Case(
        "observation-date-sa",
        "Observation?date=sa2019-01-01T00:00:00Z",
        where("Observation", dated("effective", "sa2019-01-01T00:00:00Z")),
    ),
    Case(
        "observation-value-quantity-eq-precision",
        "Observation?value-quantity=4.6||mmol/L",
        where("Observation", quantity("valueQuantity", lambda v: 4.55 <= v < 4.65, None, "mmol/L")),
    ),
    Case(
        "observation-value-quantity-unit-not-code",
        "Observation?value-quantity=gt6||mmol/l",
        where("Observation", quantity("valueQuantity", lambda v: v > 6, None, "mmol/l")),
    ),
    Case(
        "observation-subject-absolute-url",
        f"Observation?subject=http://localhost/fhir/R4/Patient/{ANGELIC}",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
    ),
    Case(
        "observation-code-value-quantity",
        f"Observation?code-value-quantity={LOINC}|8302-2$gt150",
        where(
            "Observation",
            lambda r: (
                has_token(walk(r, "code"), f"{LOINC}|8302-2")
                and any(q["value"] > 150 for q in quantities(r, "valueQuantity"))
            ),
        ),
    ),
    Case(
        "observation-component-code-value-quantity",
        f"Observation?component-code-value-quantity={LOINC}|8480-6$gt130",
        where(
            "Observation",
            lambda r: any(
                has_token(walk(c, "code"), f"{LOINC}|8480-6")
                and any(q["value"] > 130 for q in quantities(c, "valueQuantity"))
                for c in walk(r, "component")
            ),
        ),
    ),
    Case(
        "condition-clinical-status-not",
        "Condition?clinical-status:not=resolved",
        where("Condition", lambda r: not has_token(walk(r, "clinicalStatus"), "resolved")),
    ),
    Case(
        "condition-abatement-missing",
        "Condition?abatement-date:missing=true",
        where("Condition", lambda r: not date_ranges(r, "abatement")),
    ),
    Case(
        "immunization-vaccine-code-only",
        "Immunization?vaccine-code=140",
        where("Immunization", token("vaccineCode", "140")),
    ),
    Case("procedure-date-eq-year", "Procedure?date=2015", where("Procedure", dated("performed", "2015"))),
    Case("procedure-date-ne", "Procedure?date=ne2015", where("Procedure", dated("performed", "ne2015"))),
    Case("encounter-date-eb", "Encounter?date=eb1960", where("Encounter", dated("period", "eb1960"))),
    Case(
        "riskassessment-probability-eq",
        "RiskAssessment?probability=0.0004",
        where(
            "RiskAssessment",
            lambda r: any(
                isinstance(p, float) and 0.00035 <= p < 0.00045
                for p in walk(r, "prediction.probabilityDecimal")
            ),
        ),
    ),
    Case(
        "organization-name-exact-escaped-comma",
        "Organization?name:exact=COOLEY%20DICKINSON%20HOSPITAL%20INC%5C%2CTHE",
        where("Organization", lambda r: r.get("name") == "COOLEY DICKINSON HOSPITAL INC,THE"),
    ),
    Case(
        "patient-family-accent-in-query",
        "Patient?family=HO%C3%8B",
        where("Patient", lambda r: string_starts(walk(r, "name.family"), "HOË")),
    ),
    Case(
        "patient-identifier-system-only",
        "Patient?identifier=https://github.com/synthetichealth/synthea|",
        where("Patient", token("identifier", "https://github.com/synthetichealth/synthea|")),
    ),
    Case(
        "observation-code-or",
        f"Observation?code={LOINC}|8302-2,{LOINC}|29463-7",
        where(
            "Observation",
            lambda r: any(has_token(walk(r, "code"), f"{LOINC}|{c}") for c in ("8302-2", "29463-7")),
        ),
    ),
    Case(
        "observation-code-not",
        f"Observation?code:not={LOINC}|8302-2",
        where("Observation", lambda r: not has_token(walk(r, "code"), f"{LOINC}|8302-2")),
    ),
    Case(
        "observation-value-quantity-missing",
        "Observation?value-quantity:missing=true",
        where("Observation", lambda r: not quantities(r, "valueQuantity")),
    ),
    Case(
        "observation-date-month-mixed-precision",
        "Observation?date=2016-05",
        where("Observation", dated("effective", "2016-05")),
    ),
    Case(
        "observation-date-overlap-mixed-precision",
        "Observation?date=ge2016-05-18T12:00:00Z&date=le2016-05-18T12:00:00Z",
        where("Observation", dated("effective", "ge2016-05-18T12:00:00Z", "le2016-05-18T12:00:00Z")),
    ),
    Case(
        "observation-subject-group",
        "Observation?subject:Group=herd1",
        where("Observation", refers("subject", "Group/herd1")),
    ),
    Case(
        "plandefinition-url-above",
        "PlanDefinition?url:above=http://hl7.org/fhir/ig/opioid-cds/PlanDefinition/opioidcds-04/extra",
        where(
            "PlanDefinition",
            lambda r: "http://hl7.org/fhir/ig/opioid-cds/PlanDefinition/opioidcds-04/extra".startswith(
                str(r.get("url")) + "/"
            ),
        ),
    ),
    Case(
        "coverage-status-not-contained",
        "Coverage?status=active",
        where("Coverage", lambda r: r.get("status") == "active"),
    ),
    Case(
        "compartment-patient-observation",
        f"Patient/{ANGELIC}/Observation?code={LOINC}|8302-2",
        where(
            "Observation",
            lambda r: (
                has_token(walk(r, "code"), f"{LOINC}|8302-2")
                and bool({f"Patient/{ANGELIC}"} & (references(r, "subject") | references(r, "performer")))
            ),
        ),
    ),
    Case(
        "patient-phone",
        "Patient?phone=%2B31612345678",
        where(
            "Patient",
            lambda r: any(
                t.get("system") == "phone" and t.get("value") == "+31612345678" for t in walk(r, "telecom")
            ),
        ),
    ),
    Case(
        "patient-telecom-system-value",
        "Patient?telecom=phone|555-555-2003",
        where("Patient", token("telecom", "phone|555-555-2003")),
    ),
    Case(
        "patient-email",
        "Patient?email=p.heuvel@gmail.com",
        where(
            "Patient",
            lambda r: any(
                t.get("system") == "email" and t.get("value") == "p.heuvel@gmail.com"
                for t in walk(r, "telecom")
            ),
        ),
    ),
    Case(
        "patient-address-any-part",
        "Patient?address=massachusetts",
        where(
            "Patient",
            lambda r: string_starts(
                [v for a in walk(r, "address") for part in ADDRESS_PARTS for v in walk(a, part)],
                "massachusetts",
            ),
        ),
    ),
    Case(
        "patient-address-postalcode",
        "Patient?address-postalcode=01966",
        where("Patient", lambda r: string_starts(walk(r, "address.postalCode"), "01966")),
    ),
    Case(
        "observation-combo-code",
        f"Observation?combo-code={LOINC}|8480-6",
        where(
            "Observation",
            lambda r: has_token([*walk(r, "code"), *walk(r, "component.code")], f"{LOINC}|8480-6"),
        ),
    ),
    Case(
        "observation-value-quantity-ne",
        "Observation?value-quantity=ne4.6||mmol/L",
        where("Observation", quantity("valueQuantity", lambda v: not 4.55 <= v < 4.65, None, "mmol/L")),
    ),
    Case(
        "observation-subject-missing",
        "Observation?subject:missing=true",
        where("Observation", lambda r: "subject" not in r),
    ),
    Case(
        "observation-encounter-present",
        "Observation?encounter:missing=false",
        where("Observation", lambda r: "encounter" in r),
    ),
    Case(
        "observation-date-second-precision",
        "Observation?date=2016-05-18T22:33:22Z",
        where("Observation", dated("effective", "2016-05-18T22:33:22Z")),
    ),
    Case(
        "observation-value-string-or-concept-text",
        "Observation?value-string=never",
        where(
            "Observation",
            lambda r: string_starts(
                [*walk(r, "valueString"), *walk(r, "valueCodeableConcept.text")], "never"
            ),
        ),
    ),
    Case(
        "observation-value-concept",
        f"Observation?value-concept={SNOMED}|8517006",
        where("Observation", token("valueCodeableConcept", f"{SNOMED}|8517006")),
    ),
    Case(
        "observation-value-date", "Observation?value-date=2016", where("Observation", dated("value", "2016"))
    ),
    # chains and _has
    Case(
        "chain-subject-patient-name",
        "Observation?subject:Patient.name=hoeger",
        lambda c: chained(c, "Observation", "subject", lambda p: string_starts(name_strings(p), "hoeger")),
    ),
    Case(
        "chain-subject-patient-birthdate",
        "Encounter?subject:Patient.birthdate=1988",
        lambda c: chained(c, "Encounter", "subject", dated("birthDate", "1988")),
    ),
    Case(
        "has-observation-code",
        f"Patient?_has:Observation:patient:code={LOINC}|2339-0",
        lambda c: patients_with(c, "Observation", "subject", token("code", f"{LOINC}|2339-0")),
    ),
    Case(
        "has-condition-code",
        f"Patient?_has:Condition:patient:code={SNOMED}|38341003",
        lambda c: patients_with(c, "Condition", "subject", token("code", f"{SNOMED}|38341003")),
    ),
    Case(
        "has-observation-id",
        "Patient?_has:Observation:patient:_id=f001",
        lambda c: patients_with(c, "Observation", "subject", lambda r: r["id"] == "f001"),
    ),
    Case(
        "has-nested",
        f"Patient?_has:Observation:patient:_has:DiagnosticReport:result:code={LOINC}|51990-0",
        lambda c: patients_with(c, "Observation", "subject", one_of(reported(c, f"{LOINC}|51990-0"))),
    ),
    Case(
        "chain-two-levels",
        "Observation?encounter.service-provider.name=shriners",
        lambda c: c.ids(
            "Observation",
            lambda r: any(
                string_starts([o.get("name", "")], "shriners")
                for e in references(r, "encounter", "Encounter")
                if c.get(e)
                for org in references(c.get(e), "serviceProvider", "Organization")
                if (o := c.get(org))
            ),
        ),
    ),
    Case(
        "has-two-and",
        f"Patient?_has:Observation:patient:code={LOINC}|2339-0&_has:Condition:patient:code={SNOMED}|15777000",
        lambda c: (
            patients_with(c, "Observation", "subject", token("code", f"{LOINC}|2339-0"))
            & patients_with(c, "Condition", "subject", token("code", f"{SNOMED}|15777000"))
        ),
    ),
    Case(
        "has-or-values",
        f"Patient?_has:Condition:patient:code={SNOMED}|15777000,{SNOMED}|38341003",
        lambda c: patients_with(
            c,
            "Condition",
            "subject",
            lambda r: any(
                has_token(walk(r, "code"), f"{SNOMED}|{code}") for code in ("15777000", "38341003")
            ),
        ),
    ),
    Case(
        "has-on-observation",
        f"Observation?_has:DiagnosticReport:result:code={LOINC}|51990-0",
        lambda c: {
            ref.split("/", 1)[1]
            for d in c.of_type("DiagnosticReport")
            if has_token(walk(d, "code"), f"{LOINC}|51990-0")
            for ref in references(d, "result", "Observation")
            if c.get(ref)
        },
    ),
    Case(
        "chain-multi-valued-reference",
        f"DiagnosticReport?result.code={LOINC}|2339-0",
        lambda c: c.ids(
            "DiagnosticReport",
            lambda d: any(
                has_token(walk(c.get(ref), "code"), f"{LOINC}|2339-0")
                for ref in references(d, "result")
                if c.get(ref)
            ),
        ),
    ),
    Case(
        "chain-and-filter",
        f"Observation?patient.gender=male&code={LOINC}|8302-2",
        lambda c: (
            chained(c, "Observation", "subject", lambda p: p.get("gender") == "male")
            & c.ids("Observation", token("code", f"{LOINC}|8302-2"))
        ),
    ),
    Case(
        "has-encounter-class",
        f"Patient?_has:Encounter:patient:class={ACT_CODE}|EMER",
        lambda c: patients_with(c, "Encounter", "subject", token("class", f"{ACT_CODE}|EMER")),
    ),
    Case(
        "chain-untyped-subject-name",
        "Observation?subject.name=hoeger",  # subject: Patient, Group, Device, Location; name on three
        lambda c: chained(
            c,
            "Observation",
            "subject",
            lambda r: string_starts([*name_strings(r), *walk(r, "alias")], "hoeger"),
            targets=("Patient", "Group", "Location"),
        ),
    ),
    Case(
        "chain-service-provider-name",
        "Encounter?service-provider.name=shriners",
        lambda c: c.ids(
            "Encounter",
            lambda r: any(
                string_starts([c.get(ref).get("name", "")], "shriners")
                for ref in references(r, "serviceProvider", "Organization")
                if c.get(ref)
            ),
        ),
    ),
]


def _param(case: Case | IncludeCase):
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] if case.bug else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="module")
def answers(loaded) -> dict[str, tuple[list[str], set[int | None]]]:
    """Each search walked once per module (by its own test, or else by the digest test)."""
    return {}


def served(client, answers: dict, query: str) -> tuple[list[str], set[int | None]]:
    """The ids a search returns over all its pages (Type/id for a system search) and the totals reported."""
    if query not in answers:
        matches, found = search_all(client, f"/fhir/R4/{query}&_count=40&_total=accurate")
        ids = matches if query.startswith("?") else [ref.split("/", 1)[1] for ref in matches]
        answers[query] = ids, {page.total for page in found}
    return answers[query]


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_search_matches_the_json(client, corpus, answers, case: Case, protected: bool):
    if protected and case.name in UNSERVABLE_WHEN_PROTECTED:
        assert_refused_as_protected(client, case.query)
        return
    expected = case.expect(corpus)
    assert expected, f"{case.name}: the corpus has nothing to find"
    found, totals = served(client, answers, case.query)
    missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
    assert not missing and not extra, f"{case.query}: missing {missing[:5]} extra {extra[:5]}"
    assert totals == {len(expected)}, "every page reports the total number of matches"


def test_cases_are_distinct_and_many():
    assert len({c.query for c in CASES}) == len(CASES) >= 15


def test_the_corpus_is_what_the_tests_expect(corpus):
    assert corpus.synthea_count == 3934
    assert walk(corpus.get(f"Patient/{ANGELIC}"), "name.family")[0] == "Mueller"
    assert walk(corpus.get(f"Patient/{CARLTON}"), "name.family")[0] == "Ledner"
    assert len(corpus.ids("Observation")) > 1000
    # the examples validation refuses (tests/resources/test_official_examples.py pins which)
    assert corpus.example_count + len(corpus.refused) == 783
    assert all(400 <= status < 500 for status in corpus.refused.values())


# -- _include / _revinclude ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IncludeCase:
    name: str
    query: str
    expect: Expect  # the matches
    includes: list[Link] = field(default_factory=list)
    revincludes: list[Link] = field(default_factory=list)
    bug: str | None = None


INCLUDE_CASES = [
    IncludeCase(
        "encounter-include-subject",
        f"Encounter?subject=Patient/{ANGELIC}&_include=Encounter:subject",
        where("Encounter", refers("subject", f"Patient/{ANGELIC}")),
        includes=[Link("Encounter", "subject")],
    ),
    IncludeCase(
        "patient-revinclude-encounters",
        f"Patient?_id={ANGELIC}&_revinclude=Encounter:subject",
        lambda c: {ANGELIC},
        revincludes=[Link("Encounter", "subject")],
    ),
    IncludeCase(
        "observation-include-encounter",
        f"Observation?patient={ANGELIC}&_include=Observation:encounter",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
        includes=[Link("Observation", "encounter")],
    ),
    IncludeCase(
        "medicationrequest-include-iterate",
        f"MedicationRequest?patient={ANGELIC}&_include=MedicationRequest:encounter"
        "&_include=MedicationRequest:requester&_include:iterate=Encounter:service-provider",
        where("MedicationRequest", refers("subject", f"Patient/{ANGELIC}")),
        includes=[
            Link("MedicationRequest", "encounter"),
            Link("MedicationRequest", "requester"),
            Link("Encounter", "serviceProvider", iterate=True),
        ],
    ),
    IncludeCase(
        "patient-revinclude-iterate",
        f"Patient?_id={ANGELIC}&_revinclude=Encounter:subject&_revinclude:iterate=Observation:encounter",
        lambda c: {ANGELIC},
        revincludes=[Link("Encounter", "subject"), Link("Observation", "encounter", iterate=True)],
    ),
    IncludeCase(
        "encounter-include-and-revinclude",
        f"Encounter?subject=Patient/{ANGELIC}&_include=Encounter:subject:Patient&_revinclude=Condition:encounter",
        where("Encounter", refers("subject", f"Patient/{ANGELIC}")),
        includes=[Link("Encounter", "subject", target="Patient")],
        revincludes=[Link("Condition", "encounter")],
    ),
    IncludeCase(
        "observation-revinclude-reports-iterate-results",
        f"Observation?patient={ANGELIC}&_revinclude=DiagnosticReport:result&_include:iterate=DiagnosticReport:result",
        where("Observation", refers("subject", f"Patient/{ANGELIC}")),
        includes=[Link("DiagnosticReport", "result", iterate=True)],
        revincludes=[Link("DiagnosticReport", "result")],
    ),
    IncludeCase(
        "encounter-include-two-targets-paged",
        f"Encounter?subject=Patient/{CARLTON}&_include=Encounter:participant:Practitioner"
        "&_include=Encounter:service-provider",
        where("Encounter", refers("subject", f"Patient/{CARLTON}")),
        includes=[
            Link("Encounter", "participant.individual", target="Practitioner"),
            Link("Encounter", "serviceProvider"),
        ],
    ),
]


@pytest.mark.parametrize("case", [_param(c) for c in INCLUDE_CASES])
def test_include_and_revinclude_page_by_page(client, corpus, case: IncludeCase):
    expected = case.expect(corpus)
    matches, found = search_all(client, f"/fhir/R4/{case.query}&_total=accurate")
    assert {ref.split("/", 1)[1] for ref in matches} == expected
    assert found[0].total == len(expected), "the total counts matches only"
    for page in found:
        wanted = included(corpus, page.matches, case.includes, case.revincludes)
        assert wanted, f"{case.name}: a page with nothing to include"
        assert len(page.included) == len(set(page.included)), "an included resource appears twice on a page"
        assert set(page.included) == wanted, (
            f"missing {sorted(wanted - set(page.included))[:5]} "
            f"extra {sorted(set(page.included) - wanted)[:5]}"
        )


def test_include_closure_reaches_what_the_iterate_cases_need(corpus):
    """The expected side alone: :iterate reaches organisations, the reverse one observations."""
    cases = {c.name: c for c in INCLUDE_CASES}
    mrs = [
        f"MedicationRequest/{i}"
        for i in corpus.ids("MedicationRequest", refers("subject", f"Patient/{ANGELIC}"))
    ]
    forward = cases["medicationrequest-include-iterate"]
    types = {ref.split("/")[0] for ref in included(corpus, mrs, forward.includes, [])}
    assert types == {"Encounter", "Organization", "Practitioner"}
    reverse = cases["patient-revinclude-iterate"]
    types = {ref.split("/")[0] for ref in included(corpus, [f"Patient/{ANGELIC}"], [], reverse.revincludes)}
    assert types == {"Encounter", "Observation"}


# -- paging beyond 1,000 matches -----------------------------------------------------------------------------
def test_paging_over_every_observation_forwards_and_back(client, corpus):
    expected = corpus.ids("Observation")
    assert len(expected) > 1000
    forward = list(pages(client, "/fhir/R4/Observation?_count=250&_total=accurate"))
    ids = [ref.split("/", 1)[1] for page in forward for ref in page.matches]
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    assert all(page.total == len(expected) for page in forward)
    assert [len(p.matches) for p in forward[:-1]] == [250] * (len(forward) - 1)
    assert "previous" not in forward[0].links and "next" not in forward[-1].links
    backward = list(pages(client, forward[-1].links["previous"], relation="previous"))
    assert [p.matches for p in backward] == [p.matches for p in reversed(forward[:-1])]
    assert all("next" in p.links for p in backward)


# -- sorted paging -------------------------------------------------------------------------------------------
SortKey = tuple[Callable[[dict], object], bool]  # (the value a resource sorts by, descending)


def earliest(element: str) -> Callable[[dict], datetime | None]:
    return lambda r: min((lo for lo, _ in date_ranges(r, element)), default=None)


def latest(element: str) -> Callable[[dict], datetime | None]:
    return lambda r: max((hi for _, hi in date_ranges(r, element)), default=None)


def in_order(a: list[object], b: list[object], directions: list[bool]) -> bool:
    """Row keys ``a`` may come before ``b``: key by key, missing values last in either direction."""
    for x, y, descending in zip(a, b, directions, strict=True):
        if x == y:
            continue
        if x is None or y is None:
            return y is None
        return x > y if descending else x < y  # type: ignore[operator]
    return True


@dataclass(frozen=True)
class SortCase:
    name: str
    query: str
    keys: list[SortKey]


# Each has matches without a value for its first key (undated Observations, example Patients without
# birthDate or gender), which sort last in either direction and must page back correctly too.
SORT_CASES = [
    SortCase("observation-date-desc", "Observation?_sort=-date&_count=250", [(latest("effective"), True)]),
    SortCase("patient-birthdate", "Patient?_sort=birthdate&_count=5", [(earliest("birthDate"), False)]),
    SortCase(
        "patient-birthdate-desc-present",
        "Patient?_sort=-birthdate&birthdate:missing=false&_count=5",
        [(latest("birthDate"), True)],
    ),
    SortCase(
        "patient-gender-then-birthdate-desc",
        "Patient?_sort=gender,-birthdate&_count=4",
        [(lambda r: r.get("gender"), False), (latest("birthDate"), True)],
    ),
    SortCase(
        "encounter-date-one-patient",
        f"Encounter?subject=Patient/{CARLTON}&_sort=date&_count=25",
        [(earliest("period"), False)],
    ),
]


def _sorted_pages(client, corpus: Corpus, case: SortCase) -> list:
    found = list(pages(client, f"/fhir/R4/{case.query}"))
    refs = [ref for page in found for ref in page.matches]
    res_type = case.query.split("?", 1)[0]
    assert len(refs) == len(set(refs)), "a match appears on two pages"
    query_filters = [
        p for p in case.query.split("?", 1)[1].split("&") if not p.startswith(("_sort", "_count"))
    ]
    if not query_filters:
        assert {ref.split("/", 1)[1] for ref in refs} == corpus.ids(res_type)
    rows = [[key(corpus.get(ref)) for key, _ in case.keys] for ref in refs]
    directions = [descending for _, descending in case.keys]
    wrong = [i for i in range(len(rows) - 1) if not in_order(rows[i], rows[i + 1], directions)]
    assert not wrong, f"out of order at {refs[wrong[0]]}: {rows[wrong[0]]} then {rows[wrong[0] + 1]}"
    return found


def _sorts_by_protected(case: SortCase) -> bool:
    """Patient birth dates are protected: no order can be read from their keyed hashes."""
    return case.query.startswith("Patient?") and "birthdate" in case.query.split("_sort=", 1)[1]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in SORT_CASES])
def test_sorted_paging_forward(client, corpus, case: SortCase, protected: bool):
    if protected and _sorts_by_protected(case):
        assert_refused_as_protected(client, case.query)
        return
    found = _sorted_pages(client, corpus, case)
    assert len(found) > 1


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in SORT_CASES])
def test_sorted_paging_backward_gives_the_same_pages(client, corpus, case: SortCase, protected: bool):
    if protected and _sorts_by_protected(case):
        assert_refused_as_protected(client, case.query)
        return
    forward = list(pages(client, f"/fhir/R4/{case.query}"))
    backward = list(pages(client, forward[-1].links["previous"], relation="previous"))
    assert [p.matches for p in backward] == [p.matches for p in reversed(forward[:-1])]


# -- one digest for both databases ---------------------------------------------------------------------------
# sha256 of {query: sorted expected ids} over every case, computed from the JSON alone
JSON_DIGEST = "16b2b963e1c84a25b5a04d9ebd181fd15db435a8c30c8ccb91c352d79a70435b"


def _digest(results: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()


def test_digest_of_every_answer_equals_the_json(client, corpus, answers, protected: bool):
    """sha256 over query -> sorted ids, from the server and from the JSON. The JSON side does not depend on
    the database and is pinned, so SQLite and PostgreSQL are held to the very same answers."""
    everything = {c.query: sorted(c.expect(corpus)) for c in CASES}
    assert _digest(everything) == JSON_DIGEST, "the corpus or the cases changed: update JSON_DIGEST"
    cases = [c for c in CASES if not c.bug and not (protected and c.name in UNSERVABLE_WHEN_PROTECTED)]
    from_server = {c.query: sorted(served(client, answers, c.query)[0]) for c in cases}
    from_json = {c.query: everything[c.query] for c in cases}
    print(f"\nsearch digest over {len(cases)} of {len(CASES)} queries: {_digest(from_server)}")
    assert _digest(from_server) == _digest(from_json)
