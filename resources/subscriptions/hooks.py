"""Where subscriptions meet the write path.

``before_write`` runs for every Subscription a client creates, updates, patches or deletes (inside the
write's transaction, before the version is stored): it checks what the subscription asks for, sets the
status the server decides (requested -> active, or off), keeps header values out of the stored resource and
prepares the state row. ``Listener`` then puts that row, and for every other write the outbox row, into the
write's own batch: they commit with the version or not at all.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import current_app, g, has_request_context
from sqlalchemy.orm import Session

from fhir_api import db
from fhir_api.config import flag
from fhir_api.db import Batch
from fhir_api.errors import FhirError, Forbidden, Unprocessable
from resources.dates import parse_range
from resources.subscriptions import definition, sealed, signing, store

_PENDING = "fhir_subscription_state"  # session.info: sub_id -> (statement, rows) for the write's batch
SERVER_OWNER = "fhir-api-server"


def allow_private() -> bool:
    return flag(current_app.config.get("SUBSCRIPTION_ALLOW_PRIVATE"))


def _principal() -> dict[str, Any]:
    """Who subscribes, and the FHIR base they addressed (notifications name resources under it)."""
    p = g.get("principal") if has_request_context() else None
    if p is None:
        return {"client_id": SERVER_OWNER, "role": "server", "scope": "", "subject": SERVER_OWNER}
    from fhir_api.http import base_url

    return {
        "base": base_url(),
        "client_id": p.client_id,
        "role": p.role,
        "scope": p.scope,
        "subject": p.subject,
        "patient": p.patient,
        "fhir_user": p.fhir_user,
        "organization": p.organization,
    }


SUBSCRIBER_ROLES = ("clinical-system", "insurer", "server")


def _check_subscriber(session: Session, principal: dict[str, Any]) -> None:
    """Backend clients only (a clinician or patient app is shared by its users, while a subscription
    belongs to one client), and not more live subscriptions than ``SUBSCRIPTION_MAX_PER_CLIENT``."""
    if principal["role"] not in SUBSCRIBER_ROLES:
        raise Forbidden(
            "Subscriptions are for backend clients (clinical systems and insurers, system/ scopes); "
            "an app signed in for a user cannot own one"
        )
    limit = int(current_app.config.get("SUBSCRIPTION_MAX_PER_CLIENT", 1000))
    if principal["role"] != "server" and store.owned_count(session, principal["client_id"]) >= limit:
        raise Unprocessable(
            f"This client has {limit} subscriptions already (FHIR_SUBSCRIPTION_MAX_PER_CLIENT); "
            "switch one off or delete it first",
            expression="Subscription",
        )


def _check_criteria(session: Session, d: definition.Definition) -> None:
    """The criteria must run under the subscriber's own access (unknown parameters refused now, not
    silently matching everything later), and the subscriber must be allowed to search that type."""
    from resources.search.results import match_ids

    access = g.get("access") if has_request_context() else None
    if access is not None and not access.permits(d.criteria_type, "s"):
        raise Unprocessable(
            f"The access token may not search {d.criteria_type}, so it may not subscribe to it",
            expression="Subscription.criteria",
        )
    try:
        with session.begin_nested():  # a failed statement must not take the write's transaction with it
            match_ids(session, d.criteria_type, [*d.criteria, ("_id", "-")], 1, access)
    except FhirError as exc:
        raise Unprocessable(f"Subscription.criteria: {exc}", expression="Subscription.criteria") from None
    except Exception:
        raise Unprocessable(
            "Subscription.criteria could not be run as a search", expression="Subscription.criteria"
        ) from None


def before_write(
    session: Session, current: Any, res_id: str, version: int, resource: dict[str, Any] | None
) -> dict[str, Any] | None:
    pending = session.info.setdefault(_PENDING, {})
    state = store.get(session, res_id) if current is not None else None
    if resource is None:  # deleted: nothing more is delivered
        if state is not None:
            pending[res_id] = store.state_update(res_id, {"status": "off", "due": None})
        return None
    d = definition.parse(resource, allow_private=allow_private())
    principal = _principal()
    if state is None:
        _check_subscriber(session, principal)
    _check_criteria(session, d)
    status = "off" if d.wanted == "off" else "active"
    end = resource.get("end")
    values: dict[str, Any] = {
        "status": status,
        "criteria_type": d.criteria_type,
        "criteria": urlencode(d.criteria),
        "endpoint": d.endpoint,
        "content": d.content,
        "mime": d.mime,
        "failures": 0,
        "error": None,
        "end": parse_range(end, "Subscription.end").low if isinstance(end, str) else None,
    }
    if state is None:
        data_key = sealed.new_key(res_id)
        secret = signing.new_secret()
        values.update(
            sub_id=res_id,
            owner=principal["client_id"],
            principal=json.dumps(principal),
            data_key=data_key,
            secret=sealed.seal(res_id, data_key, "secret", secret),
            old_secret=None,
            old_until=None,
            next_seq=1,
            due=None,
            lease_owner=None,
            lease_until=None,
            created=db.now(),
            headers=sealed.seal_headers(res_id, data_key, list(d.headers)),
        )
        pending[res_id] = (store.INSERT_STATE, [values])
        if has_request_context():
            g.setdefault("subscription_secrets", {})[res_id] = secret
    else:
        kept = dict(sealed.open_headers(res_id, state.data_key, state.headers))
        headers = []
        for name, value in d.headers:
            if value == definition.REDACTED:
                if name not in kept:
                    raise Unprocessable(
                        f"channel.header {name} has no stored value to keep; send it in full",
                        expression="Subscription.channel.header",
                    )
                value = kept[name]
            headers.append((name, value))
        values["headers"] = sealed.seal_headers(res_id, state.data_key, headers)
        if status == "active":
            values["due"] = db.now()  # re-activated: whatever waits goes now
        pending[res_id] = store.state_update(res_id, values)
    return definition.redacted(resource, status, None)


class Listener:
    """Plugged into the repository: the outbox row of every write, the state row of a Subscription's."""

    def rows(
        self, session: Session, res_type: str, res_id: str, version: int, deleted: bool, batch: Batch
    ) -> Batch:
        out: Batch = [(store.OUTBOX, [store.outbox_row(res_type, res_id, version, deleted, db.now())])]
        if res_type == "Subscription":
            prepared = session.info.get(_PENDING, {}).pop(res_id, None)
            if prepared is not None:
                out.insert(0, prepared)
        return out

    def failed(self, exc: BaseException) -> None:
        return None


LISTENER = Listener()
