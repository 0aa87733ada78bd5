#!/bin/sh
# Search: GET [base]/[type]?params. The answer is a searchset Bundle; when there are more matches its
# "next" link (an opaque cursor) fetches the following page: follow it as given.
#
#   TOKEN=$(sh get_token.sh) QUERY='Patient?family=Chalmers&_count=10' sh search.sh
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
QUERY=${QUERY:-Patient?family=Chalmers&_count=10}
: "${TOKEN:?set TOKEN (sh get_token.sh prints one)}"

curl -sS --fail-with-body "$FHIR_BASE/$QUERY&_total=accurate" \
  -H "Authorization: Bearer $TOKEN" \
  -H 'Accept: application/fhir+json'
echo
