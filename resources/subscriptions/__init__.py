"""Subscriptions as signed webhooks (R4 ``rest-hook``): matching on every write, a durable queue in the
database, ordered and signed delivery with retries, a delivery log, replay and endpoint health.

How the parts fit: ``hooks`` checks a Subscription as it is written and puts the outbox row of every
write in that write's transaction; ``dispatch`` turns changes into numbered events per subscription;
``delivery`` sends them (``Worker``: a thread per app process, or ``fhir-api subscriptions deliver``);
``views`` serves the log, replay and secret rotation to the owner.
"""

from __future__ import annotations

from flask import Flask, Response, g

from resources.subscriptions import models as _models  # noqa: F401 (its tables)

EVENTS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"


def _capability() -> dict[str, object]:
    return {
        "documentation": "rest-hook channels only, criteria a search; notifications are signed "
        "(X-Signature, HMAC-SHA256) Bundles in the R4 backport shape. Each client sees its own. Also "
        "$replay and $rotate-secret (see the OpenAPI document).",
        "operation": [{"name": "events", "definition": EVENTS}],
    }


def init_app(app: Flask, api: object) -> None:
    from resources.access import OWNED_TYPES
    from resources.capability import TYPE_EXTRAS
    from resources.interactions import BEFORE_WRITE
    from resources.repository import WRITE_LISTENERS
    from resources.subscriptions import hooks, store, views

    BEFORE_WRITE["Subscription"] = hooks.before_write
    OWNED_TYPES["Subscription"] = store.owned
    TYPE_EXTRAS["Subscription"] = _capability
    if not any(isinstance(x, hooks.Listener) for x in WRITE_LISTENERS):
        WRITE_LISTENERS.append(hooks.LISTENER)
    api.register_blueprint(views.blp)  # type: ignore[attr-defined]

    @app.after_request
    def _secret(resp: Response) -> Response:
        """The signing secret of each Subscription the request created, shown this once (a new one:
        $rotate-secret). One: ``X-Subscription-Secret``; several (a Bundle): ``X-Subscription-Secrets``
        with ``<id>=<secret>`` pairs."""
        secrets = g.pop("subscription_secrets", None)
        if secrets and resp.status_code in (200, 201):
            if len(secrets) == 1:
                resp.headers["X-Subscription-Secret"] = next(iter(secrets.values()))
            else:
                resp.headers["X-Subscription-Secrets"] = ", ".join(f"{k}={v}" for k, v in secrets.items())
        return resp
