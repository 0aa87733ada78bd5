"""Every official R4 example PUT by its id: accepted ones read back as sent, the rest refused clearly."""

from __future__ import annotations

from typing import Any

import simplejson

# Known refusals, listed so that a regression either way fails: R4 types the R4B models lack (422),
# and examples the R4B models find invalid (400).
EXPECTED_REFUSALS: dict[str, tuple[int, str]] = {
    "EffectEvidenceSynthesis-example.json": (422, "not-supported"),
    "MedicinalProduct-example.json": (422, "not-supported"),
    "MedicinalProductAuthorization-example.json": (422, "not-supported"),
    "MedicinalProductContraindication-example.json": (422, "not-supported"),
    "MedicinalProductIndication-example.json": (422, "not-supported"),
    "MedicinalProductIngredient-example.json": (422, "not-supported"),
    "MedicinalProductInteraction-example.json": (422, "not-supported"),
    "MedicinalProductManufactured-example.json": (422, "not-supported"),
    "MedicinalProductPackaged-example.json": (422, "not-supported"),
    "MedicinalProductPharmaceutical-example.json": (422, "not-supported"),
    "MedicinalProductUndesirableEffect-example.json": (422, "not-supported"),
    "RiskEvidenceSynthesis-example.json": (422, "not-supported"),
    "SubstanceSpecification-example.json": (422, "not-supported"),
    # R4B reshaped Evidence: the R4 example lacks what R4B requires
    "Evidence-example.json": (400, "required"),
    # genuinely invalid examples (a required element is missing)
    "ImplementationGuide-fhir.json": (400, "value"),
    "Questionnaire-qs1.json": (400, "value"),
    # the audit log is written by the server alone: no client may PUT an AuditEvent
    "AuditEvent-example-disclosure.json": (405, "not-supported"),
    "AuditEvent-example-error.json": (405, "not-supported"),
    "AuditEvent-example-login.json": (405, "not-supported"),
    "AuditEvent-example-logout.json": (405, "not-supported"),
    "AuditEvent-example-media.json": (405, "not-supported"),
    "AuditEvent-example-pixQuery.json": (405, "not-supported"),
    "AuditEvent-example-rest.json": (405, "not-supported"),
    "AuditEvent-example-search.json": (405, "not-supported"),
    "AuditEvent-example.json": (405, "not-supported"),
}


def _without_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


def _as_stored(sent: dict[str, Any]) -> dict[str, Any]:
    """What the server keeps of an example: a Subscription's status is the server's to set (active, or off
    when asked), its error note too, and header values are never stored in clear."""
    if sent.get("resourceType") != "Subscription":
        return sent
    from resources.subscriptions.definition import redacted

    return redacted(sent, "off" if sent.get("status") == "off" else "active", None)


def test_every_official_example_round_trips_or_is_refused(client, shared_fhir):
    refused: dict[str, tuple[int, str]] = {}
    accepted = 0
    for path in sorted((shared_fhir / "hl7-r4-examples").glob("*.json")):
        raw = path.read_bytes()
        sent = simplejson.loads(raw, use_decimal=True)
        url = f"/fhir/R4/{sent['resourceType']}/{sent['id']}"
        resp = client.put(url, data=raw, content_type="application/fhir+json")
        if resp.status_code in (200, 201):
            stored = simplejson.loads(client.get(url).get_data(), use_decimal=True)
            assert _without_server_meta(stored) == _without_server_meta(_as_stored(sent)), path.name
            accepted += 1
        else:
            outcome = resp.get_json(force=True)
            assert outcome["resourceType"] == "OperationOutcome", path.name
            first = outcome["issue"][0]
            assert first["diagnostics"], path.name
            refused[path.name] = (resp.status_code, first["code"])
    assert refused == EXPECTED_REFUSALS
    assert accepted == 758


def test_decimal_text_survives_byte_for_byte(client, shared_fhir):
    """Beyond equal values: the stored text keeps the example's own spelling of decimals (1.50 stays 1.50)."""
    raw = (shared_fhir / "hl7-r4-examples" / "Claim-100151.json").read_text()
    sent = simplejson.loads(raw, use_decimal=True)
    trailing_zero = [str(v) for v in _decimals(sent) if str(v).endswith("0") and "." in str(v)]
    assert trailing_zero  # the example has values such as 125.00
    client.put(f"/fhir/R4/Claim/{sent['id']}", data=raw, content_type="application/fhir+json")
    text = client.get(f"/fhir/R4/Claim/{sent['id']}").get_data(as_text=True)
    for value in trailing_zero:
        assert f":{value}" in text


def _decimals(node: Any):
    from decimal import Decimal

    if isinstance(node, Decimal):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _decimals(value)
    elif isinstance(node, list):
        for value in node:
            yield from _decimals(value)
