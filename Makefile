# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PATIENTS ?= 10
# `fhir-api token` asks http://127.0.0.1:8000 unless told otherwise
TOKEN_SERVER := $(if $(filter 127.0.0.1:8000,$(HOST):$(PORT)),, --server http://$(HOST):$(PORT))

.PHONY: install demo test lint serve clean openapi

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

DEMO_KEYS := FHIR_AUTH_SIGNING_KEY_FILE=var/keys/signing.jwk FHIR_CRYPTO_KEY_FILE=var/keys/keyring.json \
	FHIR_AUDIT_SIGNING_KEY_FILE=var/keys/audit-signing.jwk

demo: install
	$(BIN)/fhir-api db upgrade
	$(DEMO_KEYS) $(BIN)/fhir-api demo-setup
	$(DEMO_KEYS) $(BIN)/fhir-api seed --patients $(PATIENTS)
	@echo ""
	@echo "FHIR R4 API on http://$(HOST):$(PORT)/fhir/R4  (interactive docs at http://$(HOST):$(PORT)/docs)"
	@echo "Every data request needs a SMART access token. In another terminal:"
	@echo "  TOKEN=\$$($(BIN)/fhir-api token demo-hospital$(TOKEN_SERVER))      # or demo-gp, demo-insurer, demo-auditor"
	@echo "  curl -s -H \"Authorization: Bearer \$$TOKEN\" http://$(HOST):$(PORT)/fhir/R4/Patient/pat-0001"
	@echo "  curl -s http://$(HOST):$(PORT)/fhir/R4/.well-known/smart-configuration"
	@echo ""
	$(DEMO_KEYS) FHIR_PUBLIC_URL=http://$(HOST):$(PORT) FHIR_SUBSCRIPTION_ALLOW_PRIVATE=true \
		$(BIN)/fhir-api serve --host $(HOST) --port $(PORT) --workers 1 --threads 8

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

# The committed OpenAPI document, regenerated from the code (tests/contract fails when they differ).
openapi: install
	$(BIN)/fhir-api openapi -o openapi.json

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info

# The committed Postman collection, regenerated from openapi.json (tests/docs fails when they differ).
.PHONY: postman
postman: install
	$(BIN)/python scripts/postman.py
