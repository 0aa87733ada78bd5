"""Status changes the server makes itself (error when the endpoint keeps failing, active when it
recovers): a new version of the Subscription resource, so its owner reads the reason there, with its
state row and its audit event, in the caller's write transaction."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from fhir_api import db
from resources import interactions, jsonio
from resources.repository import ResourceRepository
from resources.subscriptions import audit_events, definition
from resources.subscriptions.models import SubscriptionState


def set_status(session: Session, sub_id: str, status: str, error: str | None) -> None:
    state = session.get(SubscriptionState, sub_id)
    if state is not None:
        state.status, state.error = status, error
    repo = ResourceRepository(session)
    current = repo.current("Subscription", sub_id, lock=True)
    if current is None or current.deleted:
        return
    stored = repo.vread("Subscription", sub_id, current.version)
    if stored is None or stored.body is None:
        return
    resource = jsonio.loads_trusted(stored.body)
    if resource.get("status") == status and resource.get("error") == error:
        return
    when = max(db.now(), current.last_updated + timedelta(milliseconds=1))
    version = current.version + 1
    stamped = interactions.stamp(
        definition.redacted(resource, status, error), "Subscription", sub_id, version, when
    )
    repo.write(
        current,
        res_type="Subscription",
        res_id=sub_id,
        version=version,
        method="PUT",
        last_updated=when,
        resource=stamped,
    )
    audit_events.status_changed(session, sub_id, version, status, error)
    from fhir_api import metrics

    metrics.subscription_status(status)
