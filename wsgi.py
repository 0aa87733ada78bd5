"""WSGI entry point for gunicorn: ``gunicorn wsgi:app``."""

from fhir_api import create_app

app = create_app()
