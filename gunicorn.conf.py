"""gunicorn settings for ``gunicorn -c gunicorn.conf.py wsgi:app`` (docker-compose, production)."""

import os

from fhir_api.serving import default_workers, gunicorn_options

_opts = gunicorn_options(
    bind=os.environ.get("FHIR_BIND", "0.0.0.0:8000"),
    workers=int(os.environ.get("FHIR_WORKERS", default_workers())),
)
globals().update(_opts)
