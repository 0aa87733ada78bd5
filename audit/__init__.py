"""Append-only, tamper-evident audit log (see issue: audit trail)."""
