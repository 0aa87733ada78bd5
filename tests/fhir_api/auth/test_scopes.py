"""SMART scopes parse exactly as App Launch 1.x/2.x define them, and grants never exceed any ceiling."""

from __future__ import annotations

import pytest

from fhir_api.auth.scopes import (
    ACTIONS,
    CONTEXTS,
    ROLE_CEILINGS,
    InvalidScope,
    ResourceScope,
    RoleCeiling,
    grant,
    parse_scope,
    parse_scopes,
)

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
LAB_ENCODED = "http%3A%2F%2Fterminology.hl7.org%2FCodeSystem%2Fobservation-category%7Claboratory"


def test_constants():
    assert CONTEXTS == ("patient", "user", "system")
    assert ACTIONS == "cruds"
    assert set(ROLE_CEILINGS) == {"clinical-system", "clinician", "patient", "insurer", "auditor", "admin"}


@pytest.mark.parametrize(
    ("text", "context", "res_type", "actions"),
    [
        ("patient/Observation.read", "patient", "Observation", "rs"),
        ("user/*.write", "user", "*", "cud"),
        ("system/*.*", "system", "*", "cruds"),
        ("patient/*.read", "patient", "*", "rs"),
        ("user/Patient.*", "user", "Patient", "cruds"),
        ("system/Encounter.write", "system", "Encounter", "cud"),
    ],
)
def test_v1_suffixes(text: str, context: str, res_type: str, actions: str):
    assert parse_scope(text) == ResourceScope(context, res_type, frozenset(actions), (), text)


@pytest.mark.parametrize(
    ("text", "context", "res_type", "actions"),
    [
        ("patient/Observation.rs", "patient", "Observation", "rs"),
        ("system/*.cruds", "system", "*", "cruds"),
        ("user/Encounter.cu", "user", "Encounter", "cu"),
        ("user/Encounter.cud", "user", "Encounter", "cud"),
        ("patient/*.s", "patient", "*", "s"),
        ("patient/Patient.r", "patient", "Patient", "r"),
        ("system/Claim.c", "system", "Claim", "c"),
        ("system/Claim.u", "system", "Claim", "u"),
        ("system/Claim.d", "system", "Claim", "d"),
        ("user/MedicationRequest.crs", "user", "MedicationRequest", "crs"),
        ("user/Observation.cds", "user", "Observation", "cds"),
    ],
)
def test_v2_suffixes(text: str, context: str, res_type: str, actions: str):
    assert parse_scope(text) == ResourceScope(context, res_type, frozenset(actions), (), text)


@pytest.mark.parametrize(
    "text",
    [
        "patient/Observation.sr",  # out of order
        "patient/Observation.rr",  # repeated
        "patient/Observation.sc",
        "patient/Observation.scrud",
        "patient/Observation.crudss",
        "patient/Observation.x",
        "patient/Observation.",  # empty
        "patient/Observation",  # no '.' at all
        "patient/Observation.Read",
        "patient/Observation.READ",
        "patient/Observation.reads",
        "patient/Observation.read.write",
        "patient/Observation.**",
        "patient/Observation.rs.",
    ],
)
def test_invalid_suffixes(text: str):
    with pytest.raises(InvalidScope, match="Invalid scope"):
        parse_scope(text)


@pytest.mark.parametrize(
    "text",
    [
        "admin/Patient.read",
        "Patient/Patient.read",
        "patients/Observation.rs",
        "/Observation.rs",
        "practitioner/*.read",
    ],
)
def test_invalid_contexts(text: str):
    with pytest.raises(InvalidScope, match="context must be one of patient, user, system"):
        parse_scope(text)


@pytest.mark.parametrize(
    "text",
    [
        "patient/observation.read",  # lower-case first letter
        "patient/Observation2.read",
        "patient/Obs_ervation.rs",
        "patient/Obs-ervation.rs",
        "patient/.read",
        "patient/**.read",
        "patient/*Observation.read",
        "patient/Observation/x.read",
        "patient/$everything.rs",
    ],
)
def test_invalid_types(text: str):
    with pytest.raises(InvalidScope, match="resource type"):
        parse_scope(text)


@pytest.mark.parametrize(
    "text", ["patient/Observation.rs ", " patient/Observation.rs", "patient/Obs ervation.rs"]
)
def test_whitespace_refused(text: str):
    with pytest.raises(InvalidScope, match="whitespace"):
        parse_scope(text)


@pytest.mark.parametrize(
    "text",
    [
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
        "something_else",
        "",
    ],
)
def test_non_resource_scopes_are_none(text: str):
    assert parse_scope(text) is None


def test_invalid_scope_message_names_scope_and_reason():
    with pytest.raises(InvalidScope) as info:
        parse_scope("admin/Patient.read")
    assert (
        str(info.value) == "Invalid scope 'admin/Patient.read': context must be one of patient, user, system"
    )
    assert isinstance(info.value, ValueError)


def test_invalid_scope_message_truncates_long_scopes():
    text = "patient/Observation.rs?code=" + "x" * 1000 + "&"
    with pytest.raises(InvalidScope) as info:
        parse_scope(text)
    assert str(info.value) == f"Invalid scope {text[:120] + '...'!r}: malformed query constraint"


@pytest.mark.parametrize(
    ("text", "query"),
    [
        (f"patient/Observation.rs?category={LAB}", (("category", LAB),)),
        (f"patient/Observation.rs?category={LAB_ENCODED}", (("category", LAB),)),
        ("patient/Observation.rs?code=a%7Cb,c%7Cd", (("code", "a|b,c|d"),)),
        ("patient/Observation.rs?code=a,b", (("code", "a,b"),)),
        (
            "user/Observation.s?status=final&category=vital-signs",
            (("status", "final"), ("category", "vital-signs")),
        ),
        ("user/Observation.s?code=a+b", (("code", "a b"),)),
        ("system/*.rs?_security=R", (("_security", "R"),)),
        ("patient/Observation.rs?a=1&a=2", (("a", "1"), ("a", "2"))),
        ("patient/Observation.rs?a=1&b=", (("a", "1"),)),  # blank values are dropped, as parse_qsl does
    ],
)
def test_query_constraints_parsed_and_decoded(text: str, query: tuple[tuple[str, str], ...]):
    scope = parse_scope(text)
    assert scope is not None
    assert scope.query == query
    assert scope.text == text
    assert scope.actions == frozenset(text.partition("?")[0].rpartition(".")[2])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("patient/Observation.rs?", "empty query constraint"),
        ("patient/Observation.rs?category=", "empty query constraint"),
        ("patient/Observation.rs?category", "malformed query constraint"),
        ("patient/Observation.rs?a=1&&b=2", "malformed query constraint"),
        ("patient/Observation.rs?&", "malformed query constraint"),
        ("patient/Observation.read?category=x", "query constraints need v2 permissions"),
        ("patient/Observation.write?category=x", "query constraints need v2 permissions"),
        ("patient/Observation.*?category=x", "query constraints need v2 permissions"),
        ("patient/Observation.sr?category=x", "permissions must be"),
    ],
)
def test_invalid_query_constraints(text: str, reason: str):
    with pytest.raises(InvalidScope, match=reason):
        parse_scope(text)


def test_parse_scopes_keeps_resource_scopes_in_order():
    scopes = parse_scopes(
        "openid  fhirUser launch/patient patient/Observation.read patient/*.rs offline_access"
    )
    assert scopes == [
        ResourceScope("patient", "Observation", frozenset("rs"), (), "patient/Observation.read"),
        ResourceScope("patient", "*", frozenset("rs"), (), "patient/*.rs"),
    ]
    assert parse_scopes("") == []
    assert parse_scopes("openid profile") == []


def test_parse_scopes_raises_on_malformed():
    with pytest.raises(InvalidScope, match=r"'user/Observation\.sr'"):
        parse_scopes("openid patient/Observation.rs user/Observation.sr")


@pytest.mark.parametrize(
    ("scope", "res_type", "action", "expected"),
    [
        ("patient/Observation.read", "Observation", "r", True),
        ("patient/Observation.read", "Observation", "s", True),
        ("patient/Observation.read", "Observation", "c", False),
        ("patient/Observation.read", "Patient", "r", False),
        ("user/*.write", "Encounter", "c", True),
        ("user/*.write", "Encounter", "u", True),
        ("user/*.write", "Encounter", "d", True),
        ("user/*.write", "Encounter", "r", False),
        ("system/*.*", "AuditEvent", "d", True),
        ("system/*.cruds", "Claim", "s", True),
        ("system/*.cruds", "Claim", "x", False),
        ("system/*.cruds", "Claim", "read", False),
        ("patient/Observation.s", "Observation", "s", True),
        ("patient/Observation.s", "Observation", "r", False),
        ("patient/Observation.rs?category=laboratory", "Observation", "r", True),
        ("patient/Observation.rs?category=laboratory", "Condition", "r", False),
    ],
)
def test_permits(scope: str, res_type: str, action: str, expected: bool):
    parsed = parse_scope(scope)
    assert parsed is not None
    assert parsed.permits(res_type, action) is expected


def test_permits_on_a_literal_star_is_not_a_wildcard():
    scope = ResourceScope("patient", "Observation", frozenset("r"))
    assert not scope.permits("*", "r")


def test_role_ceilings():
    assert ROLE_CEILINGS["insurer"] == RoleCeiling(
        contexts=frozenset({"system"}),
        types=frozenset({"Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit"}),
        actions=frozenset("rs"),
        other=frozenset(),
        type_order=("Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit"),
        own=frozenset({"Subscription"}),
    )
    assert ROLE_CEILINGS["admin"].contexts == frozenset()
    assert ROLE_CEILINGS["auditor"].own == ROLE_CEILINGS["patient"].own == frozenset()
    assert ROLE_CEILINGS["clinician"].types is None
    assert ROLE_CEILINGS["patient"].actions == frozenset("rs")


INSURER_ALL = (
    "system/Patient.rs system/Coverage.rs system/Claim.rs "
    "system/ClaimResponse.rs system/ExplanationOfBenefit.rs"
)
CLINICIAN_OTHER = (
    "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access"
)


@pytest.mark.parametrize(
    ("requested", "registered", "role", "expected"),
    [
        # clinical-system: system context only, everything allowed, no identity scopes.
        ("system/*.*", "system/*.*", "clinical-system", "system/*.*"),
        ("system/*.cruds", "system/*.*", "clinical-system", "system/*.cruds"),
        ("system/Observation.read", "system/*.*", "clinical-system", "system/Observation.read"),
        ("system/*.*", "system/*.read", "clinical-system", "system/*.rs"),
        ("system/*.*", "system/*.rs system/*.cud", "clinical-system", "system/*.*"),
        (
            "system/*.* patient/*.read user/*.read",
            "system/*.* patient/*.* user/*.*",
            "clinical-system",
            "system/*.*",
        ),
        ("openid fhirUser system/*.rs", "openid fhirUser system/*.rs", "clinical-system", "system/*.rs"),
        # Subscriptions: an insurer manages its own when registered for them by name; a * does not reach them.
        (
            "system/*.rs system/Subscription.cruds",
            "system/*.rs system/Subscription.cruds",
            "insurer",
            INSURER_ALL + " system/Subscription.cruds",
        ),
        ("system/*.*", "system/*.*", "insurer", INSURER_ALL),
        ("system/Subscription.cruds", "system/AuditEvent.rs", "auditor", ""),
        # clinician: user and patient contexts, identity scopes.
        ("system/*.*", "system/*.* user/*.*", "clinician", ""),
        ("user/*.* patient/*.*", "user/*.* patient/*.*", "clinician", "user/*.* patient/*.*"),
        ("user/Observation.cruds", "user/*.*", "clinician", "user/Observation.cruds"),
        (CLINICIAN_OTHER, CLINICIAN_OTHER, "clinician", CLINICIAN_OTHER),
        ("openid fhirUser launch offline_access", "openid launch", "clinician", "openid launch"),
        ("openid something_else", "openid something_else", "clinician", "openid"),
        # patient: patient context, read and search only.
        ("patient/Observation.cruds", "patient/*.*", "patient", "patient/Observation.rs"),
        ("patient/Observation.read", "patient/*.*", "patient", "patient/Observation.read"),
        ("patient/*.*", "patient/*.*", "patient", "patient/*.rs"),
        ("patient/*.write", "patient/*.*", "patient", ""),
        ("patient/*.cud", "patient/*.*", "patient", ""),
        ("user/*.read", "user/*.read", "patient", ""),
        (
            "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access",
            CLINICIAN_OTHER,
            "patient",
            "openid fhirUser profile launch/patient offline_access online_access",
        ),
        # insurer: a fixed set of financial types; '*' names each of them.
        ("system/*.rs", "system/*.rs", "insurer", INSURER_ALL),
        ("system/*.read", "system/*.*", "insurer", INSURER_ALL),
        ("system/*.*", "system/*.*", "insurer", INSURER_ALL),
        ("system/Observation.rs", "system/*.*", "insurer", ""),
        ("system/Observation.read system/*.write", "system/*.*", "insurer", ""),
        ("system/Claim.read", "system/*.*", "insurer", "system/Claim.read"),
        ("system/Claim.cruds", "system/*.*", "insurer", "system/Claim.rs"),
        (
            "system/*.rs",
            "system/Patient.rs system/Claim.read",
            "insurer",
            "system/Patient.rs system/Claim.rs",
        ),
        ("system/Patient.rs system/*.rs", "system/*.rs", "insurer", INSURER_ALL),
        ("openid system/*.s", "openid system/*.s", "insurer", INSURER_ALL.replace(".rs", ".s")),
        ("patient/*.rs", "patient/*.rs", "insurer", ""),
        # a wildcard request against a client registered for named types gets those types
        (
            "system/*.rs",
            "system/Patient.rs system/Observation.cruds",
            "clinical-system",
            "system/Patient.rs system/Observation.rs",
        ),
        (
            "system/*.cud",
            "system/Patient.rs system/Observation.cu",
            "clinical-system",
            "system/Observation.cu",
        ),
        # auditor: AuditEvent only.
        ("system/*.rs", "system/*.*", "auditor", "system/AuditEvent.rs"),
        ("system/AuditEvent.read", "system/*.*", "auditor", "system/AuditEvent.read"),
        ("system/AuditEvent.cruds", "system/AuditEvent.*", "auditor", "system/AuditEvent.rs"),
        ("system/Patient.rs", "system/*.*", "auditor", ""),
        # admin: nothing at all.
        ("system/*.* user/*.* patient/*.* openid", "system/*.* user/*.* patient/*.* openid", "admin", ""),
    ],
)
def test_grant_by_role(requested: str, registered: str, role: str, expected: str):
    assert grant(requested, registered, role) == expected


@pytest.mark.parametrize(
    ("requested", "registered", "expected"),
    [
        # The registered scope narrows the actions; the result is written in v2 form.
        ("user/Observation.*", "user/Observation.read", "user/Observation.rs"),
        ("user/Observation.write", "user/Observation.cu", "user/Observation.cu"),
        ("user/*.*", "user/*.rs", "user/*.rs"),
        ("user/Observation.cruds", "user/*.r user/Observation.s", "user/Observation.rs"),
        # Registered type '*' covers any type; a specific type covers only itself, and a wildcard request
        # is narrowed to the registered types.
        ("user/Observation.rs", "user/*.rs", "user/Observation.rs"),
        ("user/*.rs", "user/Observation.rs", "user/Observation.rs"),
        ("user/Patient.rs", "user/Observation.rs", ""),
        # Contexts must match exactly.
        ("user/Observation.rs", "patient/*.*", ""),
        ("patient/Observation.rs", "user/*.*", ""),
        # v1 text is kept when the actions are unchanged, whatever the registered spelling.
        ("user/Observation.read", "user/*.rs", "user/Observation.read"),
        ("user/*.write", "user/*.*", "user/*.write"),
        ("user/*.*", "user/*.cruds", "user/*.*"),
        ("user/Observation.rs", "user/*.read", "user/Observation.rs"),
        # Nothing registered, nothing granted.
        ("user/Observation.rs openid", "", ""),
    ],
)
def test_grant_registered_narrows(requested: str, registered: str, expected: str):
    assert grant(requested, registered, "clinician") == expected


OBS_LAB = f"patient/Observation.rs?category={LAB}"
OBS_LAB_GRANTED = f"patient/Observation.rs?category={LAB_ENCODED}"


@pytest.mark.parametrize(
    ("requested", "registered", "expected"),
    [
        # An unconstrained registered scope covers a constrained request; the query is re-encoded.
        (OBS_LAB, "patient/*.*", OBS_LAB_GRANTED),
        (OBS_LAB, "patient/Observation.r", f"patient/Observation.r?category={LAB_ENCODED}"),
        (
            "patient/Observation.rs?code=a,b&status=final",
            "patient/*.rs",
            "patient/Observation.rs?code=a%2Cb&status=final",
        ),
        ("patient/Observation.s?code=a+b", "patient/*.rs", "patient/Observation.s?code=a+b"),
        # A constrained registered scope covers only the identical type and query.
        (OBS_LAB, OBS_LAB, OBS_LAB_GRANTED),
        (OBS_LAB_GRANTED, OBS_LAB, OBS_LAB_GRANTED),
        (f"patient/Observation.cruds?category={LAB}", OBS_LAB, OBS_LAB_GRANTED),
        ("patient/Observation.rs", OBS_LAB, ""),
        ("patient/Observation.rs?category=vital-signs", OBS_LAB, ""),
        (f"patient/*.rs?category={LAB}", OBS_LAB, OBS_LAB_GRANTED),  # the wildcard narrowed to the type
        (f"patient/Condition.rs?category={LAB}", OBS_LAB, ""),
        (OBS_LAB, f"patient/*.rs?category={LAB}", ""),
        ("patient/Observation.rs?a=1&b=2", "patient/Observation.rs?b=2&a=1", ""),
        # Constrained and unconstrained registered scopes add up.
        (OBS_LAB, f"patient/Observation.r?category={LAB} patient/*.s", OBS_LAB_GRANTED),
    ],
)
def test_grant_query_constraints(requested: str, registered: str, expected: str):
    assert grant(requested, registered, "clinician") == expected


def test_grant_insurer_constrained_star_expands_with_its_query():
    assert grant("system/*.rs?_security=R", "system/*.rs?_security=R", "insurer") == " ".join(
        f"{s}?_security=R" for s in INSURER_ALL.split()
    )


@pytest.mark.parametrize(
    ("requested", "registered", "role", "expected"),
    [
        ("openid openid fhirUser openid", "openid fhirUser", "clinician", "openid fhirUser"),
        ("user/*.read user/*.read", "user/*.*", "clinician", "user/*.read"),
        ("user/*.read user/*.rs", "user/*.*", "clinician", "user/*.read"),
        ("user/*.rs user/*.read", "user/*.*", "clinician", "user/*.rs"),
        ("user/*.* user/*.rs", "user/*.rs", "clinician", "user/*.rs"),
        ("system/*.rs system/Claim.read system/Claim.rs", "system/*.*", "insurer", INSURER_ALL),
        ("patient/*.* patient/*.read patient/*.rs", "patient/*.*", "patient", "patient/*.rs"),
        (
            f"patient/Observation.rs?category={LAB} patient/Observation.rs?category={LAB_ENCODED}",
            "patient/*.*",
            "clinician",
            f"patient/Observation.rs?category={LAB_ENCODED}",
        ),
    ],
)
def test_grant_removes_duplicates(requested: str, registered: str, role: str, expected: str):
    assert grant(requested, registered, role) == expected


def test_grant_keeps_requested_order():
    requested = "offline_access patient/Observation.read openid patient/Condition.rs fhirUser patient/*.s"
    registered = "openid fhirUser offline_access patient/*.*"
    assert grant(requested, registered, "clinician") == requested
    reversed_request = " ".join(reversed(requested.split()))
    assert grant(reversed_request, registered, "clinician") == reversed_request


def test_grant_non_resource_scopes_need_registration_and_role():
    assert grant("openid fhirUser", "", "clinician") == ""
    assert grant("openid fhirUser", "openid fhirUser patient/*.*", "clinician") == "openid fhirUser"
    assert grant("openid fhirUser", "openid fhirUser", "clinical-system") == ""
    assert grant("launch", "launch", "patient") == ""
    assert grant("launch/patient", "launch/patient", "patient") == "launch/patient"
    assert grant("launch/encounter", "launch/encounter", "patient") == ""
    assert grant("launch/encounter", "launch/encounter", "clinician") == "launch/encounter"


@pytest.mark.parametrize("role", ["", "Clinician", "superuser", "system"])
def test_grant_unknown_role(role: str):
    with pytest.raises(ValueError, match="unknown role") as info:
        grant("openid", "openid", role)
    assert not isinstance(info.value, InvalidScope)


@pytest.mark.parametrize(
    ("requested", "registered", "role", "bad"),
    [
        ("openid patient/Observation.sr", "patient/*.*", "patient", "patient/Observation.sr"),
        ("admin/Patient.read", "system/*.*", "clinical-system", "admin/Patient.read"),
        ("system/observation.rs", "system/*.*", "clinical-system", "system/observation.rs"),
        (
            "patient/Observation.read?category=x",
            "patient/*.*",
            "patient",
            "patient/Observation.read?category=x",
        ),
        # Malformed even though the role would drop it anyway: a client must learn its request is wrong.
        ("system/Observation.xyz", "system/*.*", "admin", "system/Observation.xyz"),
        # A malformed registration is a configuration error, not silently ignored.
        ("patient/*.rs", "patient/*.rs patient/*.sr", "patient", "patient/*.sr"),
    ],
)
def test_grant_malformed_scope_raises(requested: str, registered: str, role: str, bad: str):
    with pytest.raises(InvalidScope) as info:
        grant(requested, registered, role)
    assert str(info.value).startswith(f"Invalid scope {bad!r}: ")
