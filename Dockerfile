FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY setup.cfg pyproject.toml README.md wsgi.py gunicorn.conf.py ./
COPY fhir_api ./fhir_api
COPY resources ./resources
COPY audit ./audit
COPY crypto ./crypto
COPY seed ./seed
RUN pip install --no-cache-dir . && useradd --system --uid 10001 fhir \
    && mkdir -p /var/lib/fhir/exports && chown fhir /var/lib/fhir/exports
USER fhir
EXPOSE 8000
# Migrations at start, then gunicorn (graceful shutdown finishes in-flight requests).
CMD ["sh", "-c", "fhir-api db upgrade && exec gunicorn -c gunicorn.conf.py wsgi:app"]
