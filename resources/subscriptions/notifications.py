"""The body of a notification: a Bundle in the shape of the R4 Subscriptions backport.

The first entry is a Parameters resource (the backport's SubscriptionStatus for R4) naming the
subscription, its status, the notification type and the event number; an ``id-only`` or ``full-resource``
notification then has an entry for the resource that changed (``full-resource`` with the resource itself,
as the subscriber may read it now). An ``empty`` one carries nothing about the resource.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fhir_api.db import format_instant
from resources import jsonio

STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)
NOTIFICATION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"
)
_METHODS = {"create": "POST", "update": "PUT", "delete": "DELETE"}


def body(
    *,
    base: str,
    sub_id: str,
    status: str,
    number: int,
    content: str,
    event: str,
    res_type: str,
    res_id: str,
    version: int,
    when: datetime,
    resource: str | None,
) -> bytes:
    """The notification Bundle as bytes (``resource``: the stored JSON text, for full-resource)."""
    focus = f"{base}/{res_type}/{res_id}"
    event_part: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(number)},
        {"name": "timestamp", "valueInstant": format_instant(when)},
    ]
    if content != "empty":
        event_part.append({"name": "focus", "valueReference": {"reference": f"{focus}/_history/{version}"}})
    status_resource = {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{sub_id}"}},
            {"name": "status", "valueCode": status},
            {"name": "type", "valueCode": "event-notification"},
            {"name": "events-since-subscription-start", "valueString": str(number)},
            {"name": "notification-event", "part": event_part},
        ],
    }
    entries = [{"fullUrl": f"urn:uuid:{status_resource['id']}", "resource": status_resource}]
    head = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": format_instant(when),
    }
    if content == "empty":
        return jsonio.dumps({**head, "entry": entries}).encode()
    entry: dict[str, Any] = {
        "fullUrl": focus,
        "request": {
            "method": _METHODS[event],
            "url": f"{res_type}/{res_id}" if event != "create" else res_type,
        },
        "response": {"status": "200" if event != "create" else "201"},
    }
    text = jsonio.dumps({**head, "entry": [*entries, entry]})
    if content == "full-resource" and resource is not None:
        # the stored text goes in as is (decimals stay as sent): spliced, not re-serialised
        text = text[: -len("}]}")] + ',"resource":' + resource + "}]}"
    return text.encode()
