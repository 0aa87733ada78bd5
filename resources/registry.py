"""Which resource types exist in FHIR R4 and which of them the R4B validation models can check."""

from __future__ import annotations

from functools import cache, lru_cache
from importlib.util import find_spec

from fhir.resources.R4B import get_fhir_model_class

from fhir_api.errors import UnknownResourceType, UnsupportedResourceType

_MODELS = "fhir.resources.R4B"

# The 146 resource types of FHIR R4 4.0.1 (http://hl7.org/fhir/R4/resourcelist.html), minus the abstract
# Resource/DomainResource. tests/resources/test_registry.py checks it against the official definitions.
R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent
    Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam
    CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem
    Communication CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent
    Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device
    DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest
    DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest EnrollmentResponse
    EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit
    FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy
    Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan
    Invoice Library Linkage List Location Measure MeasureReport Media Medication MedicationAdministration
    MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
    MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
    MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
    Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner
    PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson RequestGroup
    ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
    RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid SubstancePolymer
    SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification
    SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet
    VerificationResult VisionPrescription
    """.split()  # noqa: SIM905  (a word table reads better than 146 quoted strings)
)


@cache
def model_class(resource_type: str) -> type | None:
    """The R4B model for an R4 type, or None when R4B dropped or reshaped it."""
    if resource_type not in R4_RESOURCE_TYPES:
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (KeyError, ValueError, ImportError):
        return None
    return cls if getattr(cls, "get_resource_type", lambda: None)() == resource_type else None


@lru_cache(maxsize=1)
def supported_types() -> tuple[str, ...]:
    """R4 types this server stores: those the R4B models can validate, sorted for stable output.

    Found by the models' module files, without importing them: importing all 128 builds every pydantic
    schema, some 60 MB per worker, while a worker typically validates a dozen types. A test checks that
    this gives the types ``model_class`` accepts."""
    return tuple(sorted(t for t in R4_RESOURCE_TYPES if find_spec(f"{_MODELS}.{t.lower()}") is not None))


def check_type(resource_type: str) -> type:
    """The model for a type named in a URL: 404 for unknown types, 422 for R4 types R4B cannot check."""
    if resource_type not in R4_RESOURCE_TYPES:
        raise UnknownResourceType(f"'{resource_type}' is not a FHIR R4 resource type")
    cls = model_class(resource_type)
    if cls is None:
        raise UnsupportedResourceType(
            f"{resource_type} is an R4 resource type that this server cannot validate (absent from the "
            "R4B models)"
        )
    return cls
