#!/bin/sh
# Create a Patient: POST [base]/Patient. 201 Created, with Location [base]/Patient/[id]/_history/1 and
# ETag W/"1". Prints the status line and headers and the stored resource.
#
#   TOKEN=$(sh get_token.sh) FAMILY=Chalmers sh create.sh
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
FAMILY=${FAMILY:-Chalmers}
: "${TOKEN:?set TOKEN (sh get_token.sh prints one)}"

curl -sS -i --fail-with-body -X POST "$FHIR_BASE/Patient" \
  -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/fhir+json' \
  -H 'Accept: application/fhir+json' \
  -d '{"resourceType": "Patient",
       "name": [{"use": "official", "family": "'"$FAMILY"'", "given": ["Peter", "James"]}],
       "gender": "male", "birthDate": "1974-12-25"}'
echo
