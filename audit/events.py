"""AuditEvent resources shaped as IHE Basic Audit Log Patterns (BALP), and their canonical serialisation.

https://profiles.ihe.net/ITI/BALP/ : type ``rest`` with the RESTful interaction as subtype; the client as
"Source Role ID" with its network address, this server as "Destination Role ID", the user (when the token
names one) as "information recipient"; the access token's ``jti`` as the requestor's policy; entities for
the resource (with version), every patient involved, the query, and the request id (``XrequestId``).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from fhir_api.db import format_instant

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
CLIENT_IDS = "urn:fhir-api:client-id"  # the identifier system of registered client ids

REST = {"system": EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
USER_AUTHENTICATION = {"system": DCM, "code": "110114", "display": "User Authentication"}
EXPORT = {"system": DCM, "code": "110106", "display": "Export"}

OUTCOME_DISPLAY = {"0": "Success", "4": "Minor failure", "8": "Serious failure", "12": "Major failure"}


def restful(code: str) -> dict[str, str]:
    return {"system": RESTFUL, "code": code, "display": code}


def dcm(code: str, display: str) -> dict[str, str]:
    return {"system": DCM, "code": code, "display": display}


def outcome_for(status: int) -> str:
    """BALP outcome from the HTTP status: 4xx is the client's (minor) failure, 5xx the server's."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


@dataclass
class Actor:
    """Who asked: the client application (from the token), its address, and the user when there is one."""

    client_id: str | None = None
    address: str | None = None
    role: str | None = None
    jti: str | None = None
    fhir_user: str | None = None
    subject: str | None = None
    purpose: tuple[str, ...] = ()
    operator: str | None = None  # a person at the command line (key rotation, client registration)


@dataclass
class Event:
    """Everything one AuditEvent says; ``resource()`` shapes it, ``links()`` lists what auditors search by."""

    type: dict[str, str]
    subtype: dict[str, str]
    action: str
    recorded: datetime
    actor: Actor
    server: str
    outcome: str = "0"
    outcome_desc: str | None = None
    failure: dict[str, Any] | None = None  # the OperationOutcome answered
    entities: list[tuple[str, str | None]] = field(default_factory=list)  # (Type/id, version)
    patients: list[str] = field(default_factory=list)  # ids
    query: str | None = None  # the request as recorded (protected values blinded)
    request_id: str | None = None
    detail: dict[str, str] = field(default_factory=dict)  # extra facts (key ids, client ids)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def resource(self) -> dict[str, Any]:
        event: dict[str, Any] = {"resourceType": "AuditEvent", "id": self.event_id}
        if self.failure is not None:
            event["contained"] = [{**self.failure, "id": "outcome"}]
        event.update(
            type=self.type,
            subtype=[self.subtype],
            action=self.action,
            recorded=format_instant(self.recorded),
            outcome=self.outcome,
        )
        if self.outcome_desc:
            event["outcomeDesc"] = self.outcome_desc
        event["agent"] = self._agents()
        event["source"] = {
            "site": self.server,
            "observer": {"display": self.server},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        }
        entities = self._entities()
        if entities:
            event["entity"] = entities
        return event

    def _agents(self) -> list[dict[str, Any]]:
        a = self.actor
        agents: list[dict[str, Any]] = []
        human = a.fhir_user or a.operator
        if a.client_id or a.address:
            client: dict[str, Any] = {
                "type": {"coding": [dcm("110153", "Source Role ID")]},
                "who": {"identifier": {"system": CLIENT_IDS, "value": a.client_id}}
                if a.client_id
                else {"display": "unidentified client"},
                "requestor": not human,
            }
            if a.role:
                client["role"] = [{"text": a.role}]
            if a.jti and not human:
                client["policy"] = [a.jti]
            if a.address:
                client["network"] = {"address": a.address, "type": "2"}
            agents.append(client)
        if human:
            user: dict[str, Any] = {
                "type": {
                    "coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]
                },
                "who": {"reference": a.fhir_user} if a.fhir_user else {"display": a.operator},
                "requestor": True,
            }
            if a.role:
                user["role"] = [{"text": a.role}]
            if a.jti:
                user["policy"] = [a.jti]
            if a.purpose:
                user["purposeOfUse"] = [{"coding": [{"code": p}]} for p in a.purpose]
            agents.append(user)
        agents.append(
            {
                "type": {"coding": [dcm("110152", "Destination Role ID")]},
                "who": {"display": self.server},
                "requestor": False,
                "network": {"address": urlsplit(self.server).netloc or self.server, "type": "1"},
            }
        )
        return agents

    def _entities(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ref, version in self.entities:
            out.append(
                {
                    "what": {"reference": f"{ref}/_history/{version}" if version else ref},
                    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                }
            )
        for pid in self.patients:
            out.append(
                {
                    "what": {"reference": f"Patient/{pid}"},
                    "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                    "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
                }
            )
        if self.query is not None:
            out.append(
                {
                    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                    "description": self.query,
                    "query": base64.b64encode(self.query.encode()).decode(),
                }
            )
        if self.request_id:
            out.append(
                {
                    "what": {"identifier": {"value": self.request_id}},
                    "type": {"system": BALP_ENTITY, "code": "XrequestId", "display": "X-Request-Id"},
                }
            )
        if self.failure is not None:
            out.append(
                {
                    "what": {"reference": "#outcome"},
                    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "description": "OperationOutcome returned",
                }
            )
        if self.detail:
            out.append(
                {
                    "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "detail": [{"type": k, "valueString": v} for k, v in sorted(self.detail.items())],
                }
            )
        return out

    def links(self) -> set[tuple[str, str]]:
        """(kind, ref) rows an auditor searches by, as few as will do: patients; entities that are not
        patients (a Patient entity is found as a patient); users and operators (the client's id is a
        column of the event itself)."""
        out = {("patient", f"Patient/{p}") for p in self.patients}
        for ref, _ in self.entities:
            out.add(("patient", ref) if ref.startswith("Patient/") else ("entity", ref))
        a = self.actor
        out |= {("agent", v) for v in (a.fhir_user, a.operator) if v}
        return out


def canonical(resource: dict[str, Any]) -> str:
    """RFC 8785 (JCS) for what AuditEvents hold: sorted keys, no whitespace, UTF-8 kept as is. The event
    has no floating-point numbers, the one place where JCS and ``json.dumps`` would differ (tested).

    orjson writes it about ten times faster than ``json.dumps``, byte for byte what ``json.dumps`` wrote
    for the events stored before it (tested for every code point); what orjson refuses (a non-string key,
    an integer beyond 64 bits) goes to ``json.dumps``."""
    try:
        return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
