"""Make a key pair for a backend client: the private key stays with the client, the public JWK Set is what
the server registers (`fhir-api clients add NAME --role ROLE --jwks-file client.jwks.json`).

    python new_key.py [NAME]        # writes NAME.jwk (private, mode 600) and NAME.jwks.json (public)

ES384 (P-384), the algorithm SMART Backend Services recommends with RS384; the kid is the key's RFC 7638
thumbprint. Needs: joserfc.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from joserfc.jwk import ECKey

name = sys.argv[1] if len(sys.argv) > 1 else "client"
key = ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"})
key.ensure_kid()

private = Path(f"{name}.jwk")
fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only from the start
with os.fdopen(fd, "w") as f:
    json.dump(key.as_dict(private=True), f)
public = Path(f"{name}.jwks.json")
public.write_text(json.dumps({"keys": [key.as_dict(private=False)]}, indent=2) + "\n")
print(f"private key: {private} (keep it secret; PRIVATE_KEY_FILE for get_token.py)")
print(f"public keys: {public} (register it: fhir-api clients add NAME --role ROLE --jwks-file {public})")
print(f"kid: {key.kid}")
