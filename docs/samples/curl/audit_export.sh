#!/bin/sh
# Export the audit log as NDJSON (auditor tokens only): GET [server]/audit/export?format=ndjson.
# One AuditEvent per line (each with its chain seq, prev and hash in meta.tag), then a Parameters line
# holding the signed manifest. Keep the file and check it where the audit key is:
#   FHIR_AUDIT_SIGNING_KEY_FILE=var/keys/audit-signing.jwk fhir-api audit verify --export audit.ndjson
#
#   TOKEN=$(SCOPE=system/AuditEvent.rs CLIENT_ID=<auditor> sh get_token.sh) sh audit_export.sh
# Optional filters: START, END (FHIR dates, end exclusive), PATIENT (Patient/id), CLIENT (client id).
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
SERVER=${FHIR_BASE%/fhir/R4}
OUTPUT=${OUTPUT:-audit.ndjson}
: "${TOKEN:?set TOKEN (an auditor token: scope system/AuditEvent.rs)}"

curl -sS --fail-with-body -G "$SERVER/audit/export" \
  -H "Authorization: Bearer $TOKEN" \
  --data-urlencode format=ndjson \
  ${START:+--data-urlencode "start=$START"} \
  ${END:+--data-urlencode "end=$END"} \
  ${PATIENT:+--data-urlencode "patient=$PATIENT"} \
  ${CLIENT:+--data-urlencode "client=$CLIENT"} \
  -o "$OUTPUT"

echo "audit events: $(grep -c '"resourceType":"AuditEvent"' "$OUTPUT")"
echo "manifest: $(tail -n 1 "$OUTPUT")"
