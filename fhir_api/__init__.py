"""FHIR R4 server: the application factory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask_compress import Compress
from flask_smorest import Api

from fhir_api import config as config_module
from resources import model_speedups  # noqa: F401  (before anything builds a fhir.resources model)


class FhirFlask(Flask):
    """Flask, deciding once per function whether it is a coroutine: ``ensure_sync`` runs for every hook,
    view and teardown function of every request (a dozen ``inspect`` calls per request here otherwise)."""

    _SYNC_CACHE_LIMIT = 1024  # the app's registered functions; anything beyond is checked each time

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except (KeyError, TypeError):  # TypeError: an unhashable callable
            ready = super().ensure_sync(func)
        if len(self._sync) < self._SYNC_CACHE_LIMIT:
            with contextlib.suppress(TypeError):
                self._sync[func] = ready
        return ready


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Defaults, then ``FHIR_*`` environment variables, then ``overrides`` (tests, CLI)."""
    app = FhirFlask(__name__)
    app.config.from_mapping(config_module.DEFAULTS)
    app.config.from_prefixed_env("FHIR")
    if overrides:
        app.config.from_mapping(overrides)
    app.config["DATABASE_URL"] = config_module.normalise_database_url(
        app.config.get("DATABASE_URL") or config_module.default_database_url()
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    from fhir_api.auth.external import check_configuration

    if problem := check_configuration(app.config):
        raise ValueError(problem)
    from fhir_api import logs

    logs.configure(app.config.get("LOG_LEVEL", "INFO"), str(app.config.get("LOG_FORMAT", "json")))

    import audit
    from audit import views as audit_views
    from fhir_api import (
        background,
        db,
        deprecation,
        docs,
        errors,
        health,
        http,
        metrics,
        openapi,
        ratelimit,
        security,
    )
    from fhir_api.auth import guard, keys, revocation
    from fhir_api.auth import models as _auth_models  # noqa: F401 (tables for metadata and tests)
    from fhir_api.auth import server as auth_server
    from resources import subscriptions
    from resources.bulk import views as bulk_views
    from resources.protection import service as protection
    from resources.protection.models import IndexKey as _IndexKey  # noqa: F401 (its table)
    from resources.views import FhirIdConverter, ResourceTypeConverter
    from resources.views import blp as fhir_blp

    app.url_map.converters["rtype"] = ResourceTypeConverter
    app.url_map.converters["fid"] = FhirIdConverter
    app.url_map.strict_slashes = False

    db.init_app(app)
    metrics.init_app(app)  # first registered, so its after_request sees the final response
    protection.init_app(app)
    http.init_app(app)
    security.init_app(app)
    audit.init_app(app)  # before the guard: refused requests are recorded too
    ratelimit.init_app(app)  # before the guard too: requests it refuses are counted by address
    keys.init_app(app)
    revocation.init_app(app)
    guard.init_app(app)
    auth_server.init_app(app)
    Compress(app)

    api = Api(app)
    for converter in (ResourceTypeConverter, FhirIdConverter):
        api.register_converter(converter, lambda c: {"type": "string", "pattern": f"^{c.regex}$"})
    api.register_blueprint(fhir_blp)
    api.register_blueprint(health.blp)
    api.register_blueprint(audit_views.blp)
    api.register_blueprint(bulk_views.blp)
    api.register_blueprint(metrics.blp)
    subscriptions.init_app(app, api)
    app.register_blueprint(docs.bp)
    background.init_app(app)
    deprecation.init_app(app)  # after the last blueprint (it checks the routes named), before openapi
    openapi.init_app(app, api)  # after the last blueprint: documents every route above
    errors.register_error_handlers(app)
    return app
