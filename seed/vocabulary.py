"""What the synthetic population is made of: code systems, real clinical codes and invented names.

Kept apart from the generator so that growing the population (more problems, drugs, measurements) means
adding rows here, not changing the logic. The clinical codes are real (SNOMED CT, LOINC, RxNorm, ICD-10-CM,
UCUM, as Synthea uses them), so searches by code behave as they would on real data; every name, address,
phone number and identifier is invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# Code systems
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
_THO = "http://terminology.hl7.org/CodeSystem"
ACT_CODE = f"{_THO}/v3-ActCode"
ACT_REASON = f"{_THO}/v3-ActReason"
PARTICIPATION_TYPE = f"{_THO}/v3-ParticipationType"
IDENTIFIER_TYPE = f"{_THO}/v2-0203"
DEGREE = f"{_THO}/v2-0360|2.7"  # the R4 canonical of v2 table 0360 really carries "|2.7"
ORG_TYPE = f"{_THO}/organization-type"
PRACTITIONER_ROLE = f"{_THO}/practitioner-role"
OBS_CATEGORY = f"{_THO}/observation-category"
CONDITION_CLINICAL = f"{_THO}/condition-clinical"
CONDITION_VERIFICATION = f"{_THO}/condition-ver-status"
CONDITION_CATEGORY = f"{_THO}/condition-category"
SUBSCRIBER_RELATIONSHIP = f"{_THO}/subscriber-relationship"
COVERAGE_CLASS = f"{_THO}/coverage-class"
CLAIM_TYPE = f"{_THO}/claim-type"
PROCESS_PRIORITY = f"{_THO}/processpriority"
CARE_TEAM_ROLE = f"{_THO}/claimcareteamrole"
ADJUDICATION = f"{_THO}/adjudication"
PAYMENT_TYPE = f"{_THO}/ex-paymenttype"

# Identifier systems of the invented organizations (example.org is reserved for examples).
MRN_SYSTEM = "http://hospital.example.org/mrn"
MEMBER_SYSTEM = "http://insurer.example.org/member-id"
CLAIM_ID_SYSTEM = "http://insurer.example.org/claim-id"
ORG_ID_SYSTEM = "http://directory.example.org/organization-id"
PRACTITIONER_ID_SYSTEM = "http://directory.example.org/practitioner-id"

TEST_DATA_TAG = {"system": ACT_REASON, "code": "HTEST", "display": "test health data"}
"""On every generated resource: synthetic data must never be mistaken for a real record."""


def _words(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


FEMALE_GIVEN = _words(
    "Amelia, Ava, Chloe, Clara, Elena, Emma, Grace, Hannah, Isla, Julia, Layla, Leah, Lucy, Maya, Mia, Nora, "
    "Olivia, Priya, Rosa, Sofia, Yara, Zoe"
)
MALE_GIVEN = _words(
    "Aaron, Adam, Ben, Carlos, Daniel, David, Elias, Ethan, Felix, Hugo, Isaac, Jonas, Leo, Liam, Lucas, "
    "Mateo, Noah, Omar, Oscar, Ravi, Samuel, Theo"
)
FAMILY = _words(
    "Anders, Baker, Bauer, Castillo, Chen, Dubois, Evans, Fischer, Garcia, Hansen, Ito, Jensen, Kaur, "
    "Kowalski, Larsen, Lopez, Meyer, Moreau, Nguyen, Novak, Okafor, Patel, Quinn, Rossi, Santos, Schmidt, "
    "Silva, Tanaka, Walsh, Weber, Young, Zhang"
)
STREETS = _words(
    "Maple Avenue, Oak Street, Cedar Lane, Elm Road, Birch Court, Harbor View, Mill Street, Orchard Way, "
    "Park Place, River Road, Station Road, Willow Drive"
)
CITIES = tuple(  # common US place names; the addresses in them are invented
    tuple(pair.split("/"))
    for pair in _words("Springfield/MA, Fairview/OR, Riverside/CA, Georgetown/TX, Franklin/TN, Madison/WI")
)
HOSPITAL_NAMES = _words("General Hospital, Regional Medical Center, Memorial Hospital, University Hospital")
GP_NAMES = _words("Family Practice, Primary Care Associates, Health Centre, Community Medical Group")
INSURER_NAMES = _words(
    "Northwind Health Insurance, Bluebird Mutual, Summit Health Plan, Harborview Assurance, "
    "Evergreen Care Insurance"
)


@dataclass(frozen=True)
class Plan:
    code: str
    name: str
    insurer_share: Decimal
    """Share of the eligible amount the insurer pays."""


PLANS = (
    Plan("bronze", "Bronze", Decimal("0.60")),
    Plan("silver", "Silver", Decimal("0.70")),
    Plan("gold", "Gold", Decimal("0.80")),
    Plan("platinum", "Platinum", Decimal("0.90")),
)


@dataclass(frozen=True)
class Drug:
    rxnorm: str
    display: str
    dose: str


@dataclass(frozen=True)
class Problem:
    snomed: str
    display: str
    icd10: str
    drug: Drug | None = None


@dataclass(frozen=True)
class Chronic:
    """A long-term problem: who can have it, how common it is, and what it changes in measurements."""

    key: str
    problem: Problem
    min_age: int
    prevalence: float


ACETAMINOPHEN = Drug("313782", "Acetaminophen 325 MG Oral Tablet", "2 tablets every 6 hours as needed")
HYDROCHLOROTHIAZIDE = Drug("316049", "Hydrochlorothiazide 25 MG", "1 tablet daily")
METFORMIN = Drug(
    "860975",
    "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    "1 tablet with evening meal",
)
SIMVASTATIN = Drug("312961", "Simvastatin 20 MG Oral Tablet", "1 tablet at night")
ALBUTEROL = Drug(
    "745679", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "2 puffs every 4 hours as needed"
)
PENICILLIN = Drug("834102", "Penicillin V Potassium 500 MG Oral Tablet", "1 tablet every 12 hours, 10 days")
AMOXICILLIN = Drug("308182", "Amoxicillin 250 MG Oral Capsule", "2 capsules every 8 hours for 7 days")
NAPROXEN = Drug("849574", "Naproxen sodium 220 MG Oral Tablet", "1 tablet every 12 hours as needed")
IBUPROFEN = Drug("310965", "Ibuprofen 200 MG Oral Tablet", "2 tablets every 8 hours as needed")

CHRONIC = (
    Chronic("hypertension", Problem("38341003", "Hypertension", "I10", HYDROCHLOROTHIAZIDE), 30, 0.30),
    Chronic("diabetes", Problem("44054006", "Diabetes", "E11.9", METFORMIN), 35, 0.12),
    Chronic("prediabetes", Problem("15777000", "Prediabetes", "R73.03"), 30, 0.15),
    Chronic("hyperlipidemia", Problem("55822004", "Hyperlipidemia", "E78.5", SIMVASTATIN), 35, 0.20),
    Chronic("asthma", Problem("195967001", "Asthma", "J45.909", ALBUTEROL), 18, 0.08),
)
ACUTE_GP = (  # brought to a GP "problem" visit
    Problem("444814009", "Viral sinusitis (disorder)", "J01.90"),
    Problem("195662009", "Acute viral pharyngitis (disorder)", "J02.9", ACETAMINOPHEN),
    Problem("10509002", "Acute bronchitis (disorder)", "J20.9", ACETAMINOPHEN),
    Problem("43878008", "Streptococcal sore throat (disorder)", "J02.0", PENICILLIN),
    Problem("65363002", "Otitis media", "H66.90", AMOXICILLIN),
)
ACUTE_HOSPITAL = (  # brought to the emergency room
    Problem("44465007", "Sprain of ankle", "S93.409A", NAPROXEN),
    Problem("284549007", "Laceration of hand", "S61.419A", ACETAMINOPHEN),
    Problem("65966004", "Fracture of forearm", "S52.90XA", IBUPROFEN),
)


@dataclass(frozen=True)
class EncounterKind:
    key: str
    setting: str
    """"gp" or "hospital": which kind of organization provides it."""
    act_class: str
    class_display: str
    snomed: str
    display: str
    fee: Decimal
    minutes: tuple[int, int]
    weight: int
    """Relative frequency among the visits after the first check-up."""


CHECK_UP = EncounterKind(
    key="check-up",
    setting="gp",
    act_class="AMB",
    class_display="ambulatory",
    snomed="185349003",
    display="Encounter for check up (procedure)",
    fee=Decimal("125.00"),
    minutes=(20, 40),
    weight=3,
)
PROBLEM_VISIT = EncounterKind(
    key="problem",
    setting="gp",
    act_class="AMB",
    class_display="ambulatory",
    snomed="185347001",
    display="Encounter for problem (procedure)",
    fee=Decimal("95.00"),
    minutes=(15, 30),
    weight=4,
)
EMERGENCY = EncounterKind(
    key="emergency",
    setting="hospital",
    act_class="EMER",
    class_display="emergency",
    snomed="50849002",
    display="Emergency room admission (procedure)",
    fee=Decimal("480.00"),
    minutes=(120, 360),
    weight=2,
)
FOLLOW_UPS = (CHECK_UP, PROBLEM_VISIT, EMERGENCY)


@dataclass(frozen=True)
class Measure:
    """An observation code with its category and UCUM unit."""

    loinc: str
    display: str
    category: str
    ucum: str
    unit: str


def _vital(loinc: str, display: str, ucum: str, unit: str | None = None) -> Measure:
    return Measure(loinc, display, "vital-signs", ucum, unit or ucum)


def _lab(loinc: str, display: str, ucum: str) -> Measure:
    return Measure(loinc, display, "laboratory", ucum, ucum)


HEIGHT = _vital("8302-2", "Body height", "cm")
WEIGHT = _vital("29463-7", "Body weight", "kg")
BMI = _vital("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2")
BLOOD_PRESSURE = _vital("85354-9", "Blood pressure panel with all children optional", "mm[Hg]", "mmHg")
SYSTOLIC = _vital("8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg")
DIASTOLIC = _vital("8462-4", "Diastolic blood pressure", "mm[Hg]", "mmHg")
HEART_RATE = _vital("8867-4", "Heart rate", "/min")
RESPIRATORY_RATE = _vital("9279-1", "Respiratory rate", "/min")
TEMPERATURE = _vital("8310-5", "Body temperature", "Cel", "°C")
GLUCOSE = _lab("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL")
CREATININE = _lab("38483-4", "Creatinine [Mass/volume] in Blood", "mg/dL")
CHOLESTEROL = _lab("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL")
HBA1C = _lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%")
