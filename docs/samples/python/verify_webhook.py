"""Verify a notification from the FHIR server (a receiver's code): HMAC-SHA256 over "<timestamp>.<body>".

Usage in a receiver: ``verify(secret, headers["X-Timestamp"], headers["X-Signature"], raw_body)``; refuse
the request (and do not process it) when it returns False. Keep the raw body bytes: parsing and
re-serialising the JSON changes them. Deduplicate by the X-Event-Id header (a retry or replay resends).
"""

import hashlib
import hmac
import sys
import time

REPLAY_WINDOW = 300  # seconds: older (or future) timestamps are refused


def verify(secret: str, timestamp: str, signature_header: str, body: bytes) -> bool:
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - sent) > REPLAY_WINDOW:
        return False
    message = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    # during a secret rotation the header carries two signatures, comma-separated: either may match
    return any(hmac.compare_digest(expected, part.strip()) for part in signature_header.split(","))


if __name__ == "__main__":  # verify_webhook.py SECRET TIMESTAMP SIGNATURE < body
    ok = verify(sys.argv[1], sys.argv[2], sys.argv[3], sys.stdin.buffer.read())
    print("valid" if ok else "INVALID")
    sys.exit(0 if ok else 1)
