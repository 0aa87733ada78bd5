#!/bin/sh
# Get an access token by SMART Backend Services (client_credentials + private_key_jwt) with curl.
#
#   FHIR_BASE=http://127.0.0.1:8000/fhir/R4 CLIENT_ID=... PRIVATE_KEY_FILE=key.jwk SCOPE='system/*.rs' \
#       sh get_token.sh                         # prints the access token
#   export TOKEN=$(sh get_token.sh)
#
# curl cannot sign the client assertion (a JWT signed with the client's private key), so it comes from the
# Python sample: `python3 ../python/get_token.py --assertion` (needs requests and joserfc; PYTHON picks
# the interpreter). Any JOSE tool that signs ES384/RS384 JWTs would do as well.
set -eu
FHIR_BASE=${FHIR_BASE:-http://127.0.0.1:8000/fhir/R4}
SCOPE=${SCOPE:-system/*.rs}
PYTHON=${PYTHON:-python3}
HERE=$(dirname "$0")

# 1. SMART discovery: where the token endpoint is (its URL is also the assertion's audience).
TOKEN_URL=$(curl -sS --fail-with-body "$FHIR_BASE/.well-known/smart-configuration" |
  sed -n 's/.*"token_endpoint": *"\([^"]*\)".*/\1/p')

# 2. A fresh signed client assertion (single use: a replayed jti is refused).
ASSERTION=$(FHIR_BASE="$FHIR_BASE" "$PYTHON" "$HERE/../python/get_token.py" --assertion)

# 3. The token request, form-encoded. Errors are OAuth JSON ({"error": ..., "error_description": ...}).
RESPONSE=$(curl -sS -X POST "$TOKEN_URL" \
  --data-urlencode grant_type=client_credentials \
  --data-urlencode "scope=$SCOPE" \
  --data-urlencode client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
  --data-urlencode "client_assertion=$ASSERTION")
TOKEN=$(printf '%s' "$RESPONSE" | sed -n 's/.*"access_token": *"\([^"]*\)".*/\1/p')
if [ -z "$TOKEN" ]; then
  echo "token request refused: $RESPONSE" >&2
  exit 1
fi
echo "$RESPONSE" | sed -n 's/.*"scope": *"\([^"]*\)".*/granted scope: \1/p' >&2
echo "$TOKEN"
