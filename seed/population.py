"""A coherent synthetic population as FHIR R4 resources: pure, deterministic and streamed.

Why a stream of plain dicts: the loader writes each resource through the API's own update path, and a
population of 100,000+ resources must never sit in memory. Why one random stream per patient (and per
organization and practitioner): patient ``i`` comes out identical whatever the population size, so a bigger
run extends a smaller one instead of rewriting it. Why a fixed reference date: output must not depend on the
clock. Decimals are ``Decimal`` so that 1.50 stays 1.50 on the way to storage.

The order guarantees that every reference points at a resource yielded earlier: first the directory
(organizations, practitioners and their roles), then each patient followed by their Coverage and, per
encounter, the Encounter, its Conditions, Observations, MedicationRequests, Claim and ExplanationOfBenefit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import chain
from typing import Any

from seed import vocabulary as v

Resource = dict[str, Any]

REFERENCE_DATE = date(2024, 6, 30)
"""The population's "today": every generated date lies before it."""

# Organization counts grow with the population in blocks, and patient i always belongs to the same block
# whatever the population size (so ids and references never depend on how many patients are generated).
PATIENTS_PER_HOSPITAL = 5_000
PATIENTS_PER_GP_PRACTICE = 1_000
PATIENTS_PER_INSURER = 10_000
STAFF = {"hospital": 4, "gp": 3}
"""Practitioners per organization of each providing kind."""

_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Sizes:
    """How many organizations of each kind a population of ``patients`` needs."""

    patients: int
    hospitals: int
    gp_practices: int
    insurers: int

    @classmethod
    def for_patients(cls, patients: int) -> Sizes:
        if patients < 0:
            raise ValueError("the number of patients must not be negative")

        def blocks(size: int) -> int:
            return max(1, math.ceil(patients / size))

        return cls(
            patients,
            blocks(PATIENTS_PER_HOSPITAL),
            blocks(PATIENTS_PER_GP_PRACTICE),
            blocks(PATIENTS_PER_INSURER),
        )

    def organizations(self) -> dict[str, int]:
        return {"hospital": self.hospitals, "gp": self.gp_practices, "insurer": self.insurers}


# ---- ids: deterministic, readable, independent of the population size --------------------------------


def organization_id(kind: str, k: int) -> str:
    """``org-hospital-1``, ``org-gp-1``, ``org-insurer-1``..."""
    return f"org-{kind}-{k}"


def practitioner_id(kind: str, k: int, j: int) -> str:
    return f"prac-{kind}-{k}-{j}"


def patient_id(i: int) -> str:
    return f"pat-{i:04d}"


def coverage_id(i: int) -> str:
    return f"cov-{i:04d}"


def _block(i: int, size: int) -> int:
    return (i - 1) // size + 1


# ---- small builders ------------------------------------------------------------------------------------


def _coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)], "text": display}


def _ref(res_type: str, res_id: str, display: str | None = None) -> dict[str, str]:
    return {"reference": f"{res_type}/{res_id}", **({"display": display} if display else {})}


def _meta() -> dict[str, Any]:
    return {"tag": [dict(v.TEST_DATA_TAG)]}


def _instant(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def _decimal(rng: random.Random, low: float, high: float, places: int) -> Decimal:
    """A Decimal that keeps its trailing zeros (1.50, not 1.5): the server must store it as sent."""
    scale = 10**places
    return Decimal(rng.randint(round(low * scale), round(high * scale))).scaleb(-places)


def _money(value: Decimal) -> dict[str, Any]:
    return {"value": value.quantize(_CENT), "currency": "USD"}


def _quantity(measure: v.Measure, value: int | Decimal) -> dict[str, Any]:
    return {"value": value, "unit": measure.unit, "system": v.UCUM, "code": measure.ucum}


def _phone(rng: random.Random) -> str:
    return f"+1 555-01{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}"  # 555-01xx numbers are fictional


def _address(rng: random.Random, use: str) -> dict[str, Any]:
    city, state = rng.choice(v.CITIES)
    return {
        "use": use,
        "line": [f"{rng.randint(1, 999)} {rng.choice(v.STREETS)}"],
        "city": city,
        "state": state,
        "postalCode": f"{rng.randint(10000, 99999)}",
        "country": "US",
    }


def _human_name(rng: random.Random, gender: str, prefix: str | None = None) -> dict[str, Any]:
    pool = v.FEMALE_GIVEN if gender == "female" else v.MALE_GIVEN
    given = [rng.choice(pool)]
    if rng.random() < 0.4:
        given.append(rng.choice(pool))
    name: dict[str, Any] = {"use": "official", "family": rng.choice(v.FAMILY), "given": given}
    if prefix:
        name["prefix"] = [prefix]
    return name


def _display(name: dict[str, Any]) -> str:
    return " ".join([*name.get("prefix", []), *name["given"], name["family"]])


# ---- the directory: organizations and their staff -------------------------------------------------------

_ORG_TYPES = {
    "hospital": (v.ORG_TYPE, "prov", "Healthcare Provider", "Hospital"),
    "gp": (v.ORG_TYPE, "prov", "Healthcare Provider", "General practice"),
    "insurer": (v.ORG_TYPE, "ins", "Insurance Company", "Insurer"),
}


def _organization(kind: str, k: int, seed: int) -> Resource:
    rng = random.Random(f"{seed}:organization:{kind}:{k}")
    if kind == "insurer":
        base = v.INSURER_NAMES[(k - 1) % len(v.INSURER_NAMES)]
        name = base if k <= len(v.INSURER_NAMES) else f"{base} {k}"
    else:
        suffixes = v.HOSPITAL_NAMES if kind == "hospital" else v.GP_NAMES
        name = f"{rng.choice(v.CITIES)[0]} {rng.choice(suffixes)}"
    system, code, display, text = _ORG_TYPES[kind]
    return {
        "resourceType": "Organization",
        "id": organization_id(kind, k),
        "meta": _meta(),
        "identifier": [{"system": v.ORG_ID_SYSTEM, "value": f"{kind.upper()}-{k:04d}"}],
        "active": True,
        "type": [{"coding": [_coding(system, code, display)], "text": text}],
        "name": name,
        "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
        "address": [_address(rng, "work")],
    }


def _practitioner(kind: str, k: int, j: int, seed: int) -> Iterator[Resource]:
    """A practitioner, then the PractitionerRole that ties them to their organization."""
    rng = random.Random(f"{seed}:practitioner:{kind}:{k}:{j}")
    gender = rng.choice(("female", "male"))
    name = _human_name(rng, gender, prefix="Dr.")
    prac_id = practitioner_id(kind, k, j)
    yield {
        "resourceType": "Practitioner",
        "id": prac_id,
        "meta": _meta(),
        "identifier": [{"system": v.PRACTITIONER_ID_SYSTEM, "value": f"P-{kind.upper()}-{k:04d}-{j:02d}"}],
        "active": True,
        "name": [name],
        "telecom": [{"system": "phone", "value": _phone(rng), "use": "work"}],
        "gender": gender,
        "qualification": [
            {"code": {"coding": [_coding(v.DEGREE, "MD", "Doctor of Medicine")], "text": "MD"}}
        ],
    }
    if kind == "gp":
        specialty = _concept(v.SNOMED, "394814009", "General practice (specialty) (qualifier value)")
    else:
        specialty = rng.choice(
            (
                _concept(v.SNOMED, "419192003", "Internal medicine"),
                _concept(v.SNOMED, "773568002", "Emergency medicine"),
            )
        )
    yield {
        "resourceType": "PractitionerRole",
        "id": f"role-{kind}-{k}-{j}",
        "meta": _meta(),
        "active": True,
        "practitioner": _ref("Practitioner", prac_id, _display(name)),
        "organization": _ref("Organization", organization_id(kind, k)),
        "code": [_concept(v.PRACTITIONER_ROLE, "doctor", "Doctor")],
        "specialty": [specialty],
    }


def directory(patients: int, seed: int = 42) -> Iterator[Resource]:
    """Hospitals, GP practices and insurers, then the practitioners of the providers; before any patient."""
    counts = Sizes.for_patients(patients).organizations()
    for kind, n in counts.items():
        for k in range(1, n + 1):
            yield _organization(kind, k, seed)
    for kind, staff in STAFF.items():
        for k in range(1, counts[kind] + 1):
            for j in range(1, staff + 1):
                yield from _practitioner(kind, k, j, seed)


# ---- one patient's chart ----------------------------------------------------------------------------------


@dataclass
class _Chart:
    """What every resource of one patient needs to know about them (and their own id counters)."""

    i: int
    rng: random.Random
    patient_ref: dict[str, str]
    birth: date
    chronic: frozenset[str]
    height: Decimal
    weight: Decimal
    gp_org: str
    gp_practitioner: str
    hospital_k: int
    insurer_org: str
    plan: v.Plan
    counters: dict[str, int] = field(default_factory=dict)

    def next_id(self, prefix: str) -> str:
        """``obs-0007-3``: numbered per patient, so ids never depend on other patients."""
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}-{self.i:04d}-{self.counters[prefix]}"


def patient_record(i: int, seed: int = 42) -> Iterator[Resource]:
    """Patient ``i`` (numbered from 1) and everything about them, in reference order."""
    if i < 1:
        raise ValueError("patients are numbered from 1")
    rng = random.Random(f"{seed}:patient:{i}")
    gp_k, insurer_k = _block(i, PATIENTS_PER_GP_PRACTICE), _block(i, PATIENTS_PER_INSURER)
    gp_org, insurer_org = organization_id("gp", gp_k), organization_id("insurer", insurer_k)
    gp_practitioner = practitioner_id("gp", gp_k, rng.randint(1, STAFF["gp"]))
    pid = patient_id(i)

    gender = rng.choice(("female", "male"))
    name = _human_name(rng, gender)
    age_days = rng.randint(18 * 365, 92 * 365)  # adults only: keeps the vital-sign ranges simple
    birth = REFERENCE_DATE - timedelta(days=age_days)
    yield {
        "resourceType": "Patient",
        "id": pid,
        "meta": _meta(),
        "identifier": [
            {
                "use": "usual",
                "type": _concept(v.IDENTIFIER_TYPE, "MR", "Medical record number"),
                "system": v.MRN_SYSTEM,
                "value": f"MRN{i:07d}",
            }
        ],
        "active": True,
        "name": [name],
        "telecom": [{"system": "phone", "value": _phone(rng), "use": rng.choice(("home", "mobile"))}],
        "gender": gender,
        "birthDate": birth.isoformat(),
        "address": [_address(rng, "home")],
        "generalPractitioner": [_ref("Practitioner", gp_practitioner), _ref("Organization", gp_org)],
        "managingOrganization": _ref("Organization", gp_org),
    }

    plan = rng.choice(v.PLANS)
    member_id = f"M{insurer_k:02d}{i:08d}"
    yield {
        "resourceType": "Coverage",
        "id": coverage_id(i),
        "meta": _meta(),
        "identifier": [{"system": v.MEMBER_SYSTEM, "value": member_id}],
        "status": "active",
        "type": _concept(v.ACT_CODE, "HIP", "health insurance plan policy"),
        "subscriber": _ref("Patient", pid),
        "subscriberId": member_id,
        "beneficiary": _ref("Patient", pid),
        "relationship": _concept(v.SUBSCRIBER_RELATIONSHIP, "self", "Self"),
        "period": {"start": date(REFERENCE_DATE.year - 4, 1, 1).isoformat()},
        "payor": [_ref("Organization", insurer_org)],
        "class": [
            {
                "type": _concept(v.COVERAGE_CLASS, "plan", "Plan"),
                "value": plan.code,
                "name": f"{plan.name} plan",
            }
        ],
    }

    age = age_days // 365
    chronic = {c.key for c in v.CHRONIC if age >= c.min_age and rng.random() < c.prevalence}
    if "diabetes" in chronic:
        chronic.discard("prediabetes")
    height = _decimal(rng, 152, 178, 1) if gender == "female" else _decimal(rng, 162, 192, 1)
    weight = (_decimal(rng, 19, 34, 1) * (height / 100) ** 2).quantize(Decimal("0.1"))  # BMI 19 to 34
    chart = _Chart(
        i=i,
        rng=rng,
        patient_ref=_ref("Patient", pid, _display(name)),
        birth=birth,
        chronic=frozenset(chronic),
        height=height,
        weight=weight,
        gp_org=gp_org,
        gp_practitioner=gp_practitioner,
        hospital_k=_block(i, PATIENTS_PER_HOSPITAL),
        insurer_org=insurer_org,
        plan=plan,
    )
    later = rng.choices(v.FOLLOW_UPS, weights=[k.weight for k in v.FOLLOW_UPS], k=rng.randint(0, 3))
    kinds = [v.CHECK_UP, *later]
    for n, (kind, start) in enumerate(zip(kinds, _visit_times(rng, len(kinds)), strict=True)):
        yield from _encounter(chart, kind, start, first=n == 0)


def _visit_times(rng: random.Random, n: int) -> list[datetime]:
    """Distinct days within the three years before the reference date, oldest first, in office hours."""
    days = sorted(rng.sample(range(1, 3 * 365), n), reverse=True)
    out = []
    for d in days:
        day = REFERENCE_DATE - timedelta(days=d)
        hour, minute = rng.randint(8, 16), rng.choice((0, 15, 30, 45))
        out.append(datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC))
    return out


def _encounter(chart: _Chart, kind: v.EncounterKind, start: datetime, *, first: bool) -> Iterator[Resource]:
    """One encounter and what it produced: diagnoses, measurements, prescriptions, the claim and its EOB."""
    rng = chart.rng
    end = start + timedelta(minutes=rng.randint(*kind.minutes))
    if kind.setting == "gp":
        provider_org, practitioner = chart.gp_org, chart.gp_practitioner
    else:
        provider_org = organization_id("hospital", chart.hospital_k)
        practitioner = practitioner_id("hospital", chart.hospital_k, rng.randint(1, STAFF["hospital"]))
    enc_id = chart.next_id("enc")
    enc_ref, prac_ref = _ref("Encounter", enc_id), _ref("Practitioner", practitioner)
    yield {
        "resourceType": "Encounter",
        "id": enc_id,
        "meta": _meta(),
        "status": "finished",
        "class": _coding(v.ACT_CODE, kind.act_class, kind.class_display),
        "type": [_concept(v.SNOMED, kind.snomed, kind.display)],
        "subject": chart.patient_ref,
        "participant": [
            {"type": [_concept(v.PARTICIPATION_TYPE, "PPRF", "primary performer")], "individual": prac_ref}
        ],
        "period": {"start": _instant(start), "end": _instant(end)},
        "serviceProvider": _ref("Organization", provider_org),
    }

    # Chronic problems are recorded at the first check-up; problem and emergency visits bring acute ones.
    problems: list[tuple[str, v.Problem, bool]] = []  # (Condition id, problem, chronic?)
    if first:
        problems += [(chart.next_id("cond"), c.problem, True) for c in v.CHRONIC if c.key in chart.chronic]
    elif kind is not v.CHECK_UP:
        acute = v.ACUTE_HOSPITAL if kind.setting == "hospital" else v.ACUTE_GP
        problems.append((chart.next_id("cond"), rng.choice(acute), False))
    for cond_id, problem, chronic in problems:
        yield _condition(chart, cond_id, problem, chronic, start, end, enc_ref, prac_ref)

    for measure, value in _measurements(chart, kind):
        yield {
            "resourceType": "Observation",
            "id": chart.next_id("obs"),
            "meta": _meta(),
            "status": "final",
            "category": [
                _concept(
                    v.OBS_CATEGORY,
                    measure.category,
                    "Vital Signs" if measure.category == "vital-signs" else "Laboratory",
                )
            ],
            "code": _concept(v.LOINC, measure.loinc, measure.display),
            "subject": chart.patient_ref,
            "encounter": enc_ref,
            "effectiveDateTime": _instant(start + timedelta(minutes=5)),
            "issued": _instant(end),
            "performer": [prac_ref],
            **value,
        }

    prescriptions: list[v.Drug] = []
    for cond_id, problem, chronic in problems:
        if problem.drug is None:
            continue
        prescriptions.append(problem.drug)
        yield {
            "resourceType": "MedicationRequest",
            "id": chart.next_id("medreq"),
            "meta": _meta(),
            "status": "active" if chronic else "completed",
            "intent": "order",
            "medicationCodeableConcept": _concept(v.RXNORM, problem.drug.rxnorm, problem.drug.display),
            "subject": chart.patient_ref,
            "encounter": enc_ref,
            "authoredOn": _instant(end),
            "requester": prac_ref,
            "reasonReference": [_ref("Condition", cond_id)],
            "dosageInstruction": [{"sequence": 1, "text": problem.drug.dose}],
        }

    yield from _claim_and_eob(
        chart,
        kind,
        start,
        end,
        enc_ref=enc_ref,
        prac_ref=prac_ref,
        provider_org=provider_org,
        condition_ids=[cond_id for cond_id, _, _ in problems],
        prescriptions=prescriptions,
    )


def _condition(
    chart: _Chart,
    cond_id: str,
    problem: v.Problem,
    chronic: bool,
    start: datetime,
    end: datetime,
    enc_ref: dict[str, str],
    prac_ref: dict[str, str],
) -> Resource:
    rng = chart.rng
    if chronic:  # began some time before this visit, in adulthood where possible
        latest = start.date() - timedelta(days=1)
        earliest = min(max(chart.birth + timedelta(days=18 * 365), latest - timedelta(days=10 * 365)), latest)
        timing: dict[str, Any] = {
            "onsetDateTime": (earliest + timedelta(days=rng.randint(0, (latest - earliest).days))).isoformat()
        }
        status, category = ("active", "Active"), ("problem-list-item", "Problem List Item")
    else:
        timing = {
            "onsetDateTime": _instant(start - timedelta(days=rng.randint(1, 5))),
            "abatementDateTime": _instant(end + timedelta(days=rng.randint(5, 21))),
        }
        status, category = ("resolved", "Resolved"), ("encounter-diagnosis", "Encounter Diagnosis")
    return {
        "resourceType": "Condition",
        "id": cond_id,
        "meta": _meta(),
        "clinicalStatus": _concept(v.CONDITION_CLINICAL, *status),
        "verificationStatus": _concept(v.CONDITION_VERIFICATION, "confirmed", "Confirmed"),
        "category": [_concept(v.CONDITION_CATEGORY, *category)],
        "code": {
            "coding": [_coding(v.SNOMED, problem.snomed, problem.display), _coding(v.ICD10, problem.icd10)],
            "text": problem.display,
        },
        "subject": chart.patient_ref,
        "encounter": enc_ref,
        **timing,
        "recordedDate": _instant(end),
        "recorder": prac_ref,
    }


def _measurements(chart: _Chart, kind: v.EncounterKind) -> Iterator[tuple[v.Measure, dict[str, Any]]]:
    """What is measured at one visit, with values consistent with the patient's chronic problems."""
    rng, chronic = chart.rng, chart.chronic

    def quantity(measure: v.Measure, value: int | Decimal) -> tuple[v.Measure, dict[str, Any]]:
        return measure, {"valueQuantity": _quantity(measure, value)}

    if kind is v.EMERGENCY:
        yield quantity(v.TEMPERATURE, _decimal(rng, 36.2, 38.4, 1))
        yield quantity(v.RESPIRATORY_RATE, rng.randint(12, 24))
    else:
        yield quantity(v.HEIGHT, chart.height)
        yield quantity(v.WEIGHT, chart.weight)
        yield quantity(v.BMI, (chart.weight / (chart.height / 100) ** 2).quantize(Decimal("0.1")))
    hypertensive = "hypertension" in chronic
    systolic = rng.randint(135, 165) if hypertensive else rng.randint(105, 129)
    diastolic = rng.randint(85, 100) if hypertensive else rng.randint(65, 84)
    yield (
        v.BLOOD_PRESSURE,
        {
            "component": [
                {"code": _concept(v.LOINC, m.loinc, m.display), "valueQuantity": _quantity(m, value)}
                for m, value in ((v.SYSTOLIC, systolic), (v.DIASTOLIC, diastolic))
            ]
        },
    )
    yield quantity(v.HEART_RATE, rng.randint(55, 100))
    if kind is not v.CHECK_UP:
        return
    diabetic, prediabetic = "diabetes" in chronic, "prediabetes" in chronic
    glucose = (140, 220) if diabetic else (100, 125) if prediabetic else (70, 99)
    yield quantity(v.GLUCOSE, rng.randint(*glucose))
    yield quantity(v.CREATININE, _decimal(rng, 0.6, 1.6, 2))
    yield quantity(
        v.CHOLESTEROL, rng.randint(220, 290) if "hyperlipidemia" in chronic else rng.randint(150, 199)
    )
    if diabetic or prediabetic:
        yield quantity(v.HBA1C, _decimal(rng, 7.0, 9.5, 1) if diabetic else _decimal(rng, 5.7, 6.4, 1))


def _claim_and_eob(
    chart: _Chart,
    kind: v.EncounterKind,
    start: datetime,
    end: datetime,
    *,
    enc_ref: dict[str, str],
    prac_ref: dict[str, str],
    provider_org: str,
    condition_ids: list[str],
    prescriptions: list[v.Drug],
) -> Iterator[Resource]:
    """The provider's claim for the visit, then the insurer's adjudication of it under the patient's plan."""
    rng = chart.rng
    claim_id, eob_id = chart.next_id("claim"), chart.next_id("eob")
    lines = [(_concept(v.SNOMED, kind.snomed, kind.display), kind.fee + _decimal(rng, 0, 40, 2))]
    lines += [(_concept(v.RXNORM, d.rxnorm, d.display), _decimal(rng, 4, 60, 2)) for d in prescriptions]
    diagnosis_seqs = list(range(1, len(condition_ids) + 1))
    items = [
        {
            "sequence": seq,
            "careTeamSequence": [1],
            **({"diagnosisSequence": diagnosis_seqs} if diagnosis_seqs else {}),
            "productOrService": service,
            "servicedDate": start.date().isoformat(),
            "unitPrice": _money(price),
            "net": _money(price),
            "encounter": [enc_ref],
        }
        for seq, (service, price) in enumerate(lines, start=1)
    ]
    total = sum((price for _, price in lines), Decimal("0.00"))
    institutional = kind.setting == "hospital"
    shared = {
        "status": "active",
        "type": _concept(
            v.CLAIM_TYPE,
            *(("institutional", "Institutional") if institutional else ("professional", "Professional")),
        ),
        "use": "claim",
        "patient": _ref("Patient", patient_id(chart.i)),
        "billablePeriod": {"start": _instant(start), "end": _instant(end)},
    }
    parties = {
        "insurer": _ref("Organization", chart.insurer_org),
        "provider": _ref("Organization", provider_org),
    }
    care_team = [
        {
            "sequence": 1,
            "provider": prac_ref,
            "role": _concept(v.CARE_TEAM_ROLE, "primary", "Primary provider"),
        }
    ]
    diagnosis = [
        {"sequence": seq, "diagnosisReference": _ref("Condition", cond_id)}
        for seq, cond_id in zip(diagnosis_seqs, condition_ids, strict=True)
    ]
    coverage = _ref("Coverage", coverage_id(chart.i))
    yield {
        "resourceType": "Claim",
        "id": claim_id,
        "meta": _meta(),
        "identifier": [{"system": v.CLAIM_ID_SYSTEM, "value": claim_id.upper()}],
        **shared,
        "created": _instant(end),
        **parties,
        "priority": _concept(v.PROCESS_PRIORITY, "normal", "Normal"),
        "careTeam": care_team,
        **({"diagnosis": diagnosis} if diagnosis else {}),
        "insurance": [{"sequence": 1, "focal": True, "coverage": coverage}],
        "item": items,
        "total": _money(total),
    }

    def amount(code: str, display: str, value: Decimal) -> dict[str, Any]:
        return {"category": _concept(v.ADJUDICATION, code, display), "amount": _money(value)}

    benefits = [(price * chart.plan.insurer_share).quantize(_CENT) for _, price in lines]
    paid = sum(benefits, Decimal("0.00"))
    processed = end + timedelta(days=rng.randint(3, 20))
    yield {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id,
        "meta": _meta(),
        "identifier": [{"system": v.CLAIM_ID_SYSTEM, "value": eob_id.upper()}],
        **shared,
        "created": _instant(processed),
        **parties,
        "claim": _ref("Claim", claim_id),
        "outcome": "complete",
        "careTeam": care_team,
        **({"diagnosis": diagnosis} if diagnosis else {}),
        "insurance": [{"focal": True, "coverage": coverage}],
        "item": [
            {
                **{k: item[k] for k in ("sequence", "careTeamSequence", "diagnosisSequence") if k in item},
                **{k: item[k] for k in ("productOrService", "servicedDate", "net", "encounter")},
                "adjudication": [
                    amount("submitted", "Submitted Amount", price),
                    amount("eligible", "Eligible Amount", price),
                    amount("benefit", "Benefit Amount", benefit),
                ],
            }
            for item, (_, price), benefit in zip(items, lines, benefits, strict=True)
        ],
        "total": [amount("submitted", "Submitted Amount", total), amount("benefit", "Benefit Amount", paid)],
        "payment": {
            "type": _concept(v.PAYMENT_TYPE, "complete", "Complete"),
            "date": processed.date().isoformat(),
            "amount": _money(paid),
        },
    }


# ---- the whole population ----------------------------------------------------------------------------------


def patient_records(patients: int, seed: int = 42) -> Iterator[Iterator[Resource]]:
    """One lazy record per patient, so that a caller can count progress in patients."""
    Sizes.for_patients(patients)  # refuses a negative size before anything is generated
    return (patient_record(i, seed) for i in range(1, patients + 1))


def generate(patients: int, seed: int = 42) -> Iterator[Resource]:
    """Every resource of the population, in an order where references always point backwards."""
    return chain(directory(patients, seed), chain.from_iterable(patient_records(patients, seed)))
