"""Operations on one's own Subscriptions: the delivery log ($events), replay, and secret rotation.

Only the subscription's owner reaches them (anyone else gets 404, as for the resource itself); each is
audited like any other request.
"""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, g, request
from flask_smorest import Blueprint

from audit import recorder
from fhir_api import db
from fhir_api.auth.guard import access_for, authenticate
from fhir_api.errors import BadRequest, Conflict, NotFound
from fhir_api.http import base_url, fhir_response
from resources import jsonio
from resources.dates import parse_range
from resources.subscriptions import sealed, signing, store
from resources.subscriptions.delivery import Settings

blp = Blueprint("subscriptions", __name__, url_prefix="/fhir/R4", description="Subscription operations")
MAX_EVENTS = 1000
MAX_REPLAY = 10_000


def _own(res_id: str, action: str) -> Any:
    """The caller's own subscription (state row), or 404; 403 without the scope for ``action``."""
    principal = authenticate()
    g.principal = principal
    g.access = access = access_for(principal)
    access.require("Subscription", action)
    session = db.session()
    state = store.get(session, res_id)
    if state is None or not access.visible(session, "Subscription", res_id, "r"):
        raise NotFound(f"Subscription/{res_id} is not known")
    recorder.note_resource("Subscription", res_id)
    return state


_NUMBER = re.compile(r"[0-9]{1,9}")


def _number(value: Any, name: str, low: int) -> int:
    """A small non-negative integer as sent (text or JSON number), else 400 naming the parameter."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    if not _NUMBER.fullmatch(text) or int(text) < low:
        raise BadRequest(f"{name} must be one integer from {low} to 999999999", expression=name)
    return int(text)


def _int_arg(name: str, default: int | None, low: int = 0) -> int | None:
    values = request.args.getlist(name)
    if not values:
        return default
    if len(values) > 1:
        raise BadRequest(f"{name} must be given once", expression=name)
    return _number(values[0], name, low)


def _time(value: Any) -> str | None:
    return db.format_instant(value) if value is not None else None


@blp.route("/Subscription/<fid:res_id>/$events", methods=["GET"])
def events(res_id: str):
    """The delivery log: each event with its attempts (status code, error, latency) and next retry."""
    state = _own(res_id, "r")
    since = _int_arg("eventsSinceNumber", None, 1)
    until = _int_arg("eventsUntilNumber", None, 1)
    count = min(_int_arg("_count", 100, 1) or 100, MAX_EVENTS)
    session = db.session()
    rows = store.events(session, res_id, since=since, until=until, limit=count + 1)
    more = len(rows) > count
    rows = rows[:count]
    tried = store.attempts(session, [r.id for r in rows])
    readable = _readable(session, {(r.res_type, r.res_id) for r in rows})
    base = base_url()
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"Subscription/{res_id}"}},
        {"name": "status", "valueCode": state.status},
        {"name": "type", "valueCode": "query-event"},
        {"name": "events-since-subscription-start", "valueString": str(state.next_seq - 1)},
        {"name": "consecutive-failures", "valueInteger": state.failures},
    ]
    if state.error:
        params.append({"name": "error", "valueString": state.error})
    for status, n in sorted(store.counts(session, res_id).items()):
        params.append({"name": f"events-{status}", "valueInteger": n})
    for r in rows:
        part: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(r.event_number)},
            {"name": "timestamp", "valueInstant": _time(r.created)},
            {"name": "event", "valueCode": r.event},
            {"name": "delivery-status", "valueCode": r.status},
            {"name": "replay", "valueBoolean": bool(r.replay)},
            {"name": "attempts", "valueInteger": r.attempts},
        ]
        if (r.res_type, r.res_id) in readable:  # what the owner may no longer read is not named
            focus = {"reference": f"{r.res_type}/{r.res_id}/_history/{r.version}"}
            part.insert(2, {"name": "focus", "valueReference": focus})
        if r.next_attempt is not None and r.status == "pending":
            part.append({"name": "next-attempt", "valueInstant": _time(r.next_attempt)})
        if r.finished is not None:
            part.append({"name": "finished", "valueInstant": _time(r.finished)})
        for a in tried[r.id]:
            attempt: list[dict[str, Any]] = [
                {"name": "at", "valueInstant": _time(a.at)},
                {"name": "latency-ms", "valueInteger": a.latency_ms},
            ]
            if a.code is not None:
                attempt.append({"name": "status-code", "valueInteger": a.code})
            if a.error:
                attempt.append({"name": "error", "valueString": a.error})
            part.append({"name": "attempt", "part": attempt})
        params.append({"name": "notification-event", "part": part})
    if more:
        after = rows[-1].event_number + 1
        nxt = f"{base}/Subscription/{res_id}/$events?eventsSinceNumber={after}&_count={count}"
        params.append({"name": "next", "valueUri": nxt})
    return fhir_response({"resourceType": "Parameters", "parameter": params})


def _readable(session: Any, refs: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The resources among ``refs`` the caller may read now."""
    access = g.access
    return {
        (t, i)
        for t, i in refs
        if access.permits(t, "r") and (not access.narrows(t) or access.visible(session, t, i, "r"))
    }


def _body_params() -> dict[str, list[Any]]:
    """Parameters from a FHIR Parameters body, or from the query string."""
    found: dict[str, list[Any]] = {}
    for name, value in request.args.items(multi=True):
        if name not in ("_format", "_pretty"):
            found.setdefault(name, []).append(value)
    if request.get_data():
        body = jsonio.load_resource(request.get_data())
        if body.get("resourceType") != "Parameters":
            raise BadRequest("The body must be a Parameters resource", expression="resourceType")
        params = body.get("parameter") or []
        if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
            raise BadRequest(
                "Parameters.parameter must be a list of objects", expression="Parameters.parameter"
            )
        for p in params:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            found.setdefault(str(p.get("name")), []).append(value)
    return found


@blp.route("/Subscription/<fid:res_id>/$replay", methods=["POST"])
def replay(res_id: str):
    """Send events again, after those already queued: one (eventNumber) or every one since an instant."""
    _own(res_id, "u")
    given = _body_params()
    unknown = sorted(set(given) - {"eventNumber", "since"})
    if unknown:
        raise BadRequest(
            f"$replay takes eventNumber or since, not {', '.join(unknown)}", expression=unknown[0]
        )
    if ("eventNumber" in given) == ("since" in given):
        raise BadRequest("$replay needs exactly one of eventNumber or since", expression="Parameters")
    number = since = None
    if len(given.get("eventNumber", given.get("since", []))) > 1:
        raise BadRequest("$replay takes one eventNumber or one since", expression="Parameters")
    if "eventNumber" in given:
        number = _number(given["eventNumber"][0], "eventNumber", 1)
    else:
        since = parse_range(str(given["since"][0]), "since").low
    session = db.session()
    with db.write_transaction(session):
        state = store.get(session, res_id, lock=True)
        assert state is not None
        if state.status not in store.LIVE:
            raise Conflict(f"Subscription/{res_id} is {state.status}: activate it before replaying")
        if store.pending_replays(session, res_id):
            raise Conflict(
                "A replay of this subscription is still being delivered; ask again once it is done"
            )
        found = store.originals(session, res_id, number=number, since=since, limit=MAX_REPLAY + 1)
        if len(found) > MAX_REPLAY:
            raise BadRequest(f"More than {MAX_REPLAY} events match; replay a later since", expression="since")
        if number is not None and not found:
            raise NotFound(f"Subscription/{res_id} has no event {number}")
        now = db.now()
        store.enqueue(
            session,
            [
                {
                    "sub_id": res_id,
                    "event_number": r.event_number,
                    "res_type": r.res_type,
                    "res_id": r.res_id,
                    "version": r.version,
                    "event": r.event,
                    "replay": True,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt": now,
                    "created": now,
                }
                for r in found
            ],
        )
        if found and state.due is None:
            state.due = now
        db.execute_batch(session, recorder.operation_batch(session, [(f"Subscription/{res_id}", None)]))
    out = {"resourceType": "Parameters", "parameter": [{"name": "replayed", "valueInteger": len(found)}]}
    return fhir_response(out, 202)


@blp.route("/Subscription/<fid:res_id>/$rotate-secret", methods=["POST"])
def rotate_secret(res_id: str):
    """A new signing secret, shown once; deliveries carry a signature with the old one too for a grace
    period (``SUBSCRIPTION_SECRET_GRACE_HOURS``), so receivers can switch without losing any."""
    _own(res_id, "u")
    grace = Settings.of(current_app.config).secret_grace
    session = db.session()
    secret = signing.new_secret()
    with db.write_transaction(session):
        state = store.get(session, res_id, lock=True)
        assert state is not None
        if state.status == "off":
            raise Conflict(f"Subscription/{res_id} is off: it has no secret to rotate")
        until = db.now() + grace
        state.old_secret, state.old_until = state.secret, until
        state.secret = sealed.seal(res_id, state.data_key, "secret", secret)
        session.flush()
        # the audit row commits with the new secret: never a secret stored that nobody was shown
        db.execute_batch(session, recorder.operation_batch(session, [(f"Subscription/{res_id}", None)]))
    out = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "secret", "valueString": secret},
            {"name": "previous-valid-until", "valueInstant": db.format_instant(until)},
        ],
    }
    return fhir_response(out)
