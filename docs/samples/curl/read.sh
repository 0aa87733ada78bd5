#!/bin/sh
# Read one Patient: GET [base]/Patient/[id]. Prints the status line, headers (ETag W/"n", Last-Modified)
# and the resource.
#
#   TOKEN=$(sh get_token.sh) PATIENT_ID=pat-0001 sh read.sh
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
PATIENT_ID=${PATIENT_ID:-pat-0001}
: "${TOKEN:?set TOKEN (sh get_token.sh prints one)}"

curl -sS -i --fail-with-body "$FHIR_BASE/Patient/$PATIENT_ID" \
  -H "Authorization: Bearer $TOKEN" \
  -H 'Accept: application/fhir+json'
echo
