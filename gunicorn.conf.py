"""gunicorn settings for ``gunicorn -c gunicorn.conf.py wsgi:app`` (docker-compose, production)."""

import os

from fhir_api.ratelimit import serving_problem
from fhir_api.serving import default_workers, gunicorn_options, prepare_metrics_dir

prepare_metrics_dir()  # before the app (and prometheus_client) is imported by the workers

_opts = gunicorn_options(
    bind=os.environ.get("FHIR_BIND", "0.0.0.0:8000"),
    workers=int(os.environ.get("FHIR_WORKERS", default_workers())),
)
_problem = serving_problem(
    {k[5:]: v for k, v in os.environ.items() if k.startswith("FHIR_")}, _opts["workers"]
)
if _problem:
    raise SystemExit(_problem)
globals().update(_opts)
