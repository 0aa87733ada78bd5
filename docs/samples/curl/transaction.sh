#!/bin/sh
# A transaction Bundle (all entries or none): POST [base] with a patient (created only if no patient has
# the identifier yet) and an observation that refers to it by its urn:uuid fullUrl. Prints the
# transaction-response Bundle: one entry per request, with its status and location.
#
#   TOKEN=$(sh get_token.sh) MRN=12345 sh transaction.sh
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
MRN=${MRN:-12345}
: "${TOKEN:?set TOKEN (sh get_token.sh prints one)}"

curl -sS --fail-with-body -X POST "$FHIR_BASE" \
  -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/fhir+json' \
  -H 'Accept: application/fhir+json' \
  --data-binary @- <<JSON
{
  "resourceType": "Bundle",
  "type": "transaction",
  "entry": [
    {
      "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
      "resource": {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "$MRN"}],
        "name": [{"family": "Chalmers", "given": ["Peter"]}]
      },
      "request": {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=urn:oid:1.2.36.146.595.217.0.1|$MRN"
      }
    },
    {
      "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
      "resource": {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
        "effectiveDateTime": "2024-05-01T09:30:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
      },
      "request": {"method": "POST", "url": "Observation"}
    }
  ]
}
JSON
echo
