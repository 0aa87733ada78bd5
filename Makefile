# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
PATIENTS ?= 10

.PHONY: install demo test lint serve clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fhir-api db upgrade
	$(BIN)/fhir-api seed --patients $(PATIENTS)
	@echo ""
	@echo "FHIR R4 API on http://$(HOST):$(PORT)/fhir/R4  (errors explained at http://$(HOST):$(PORT)/docs/errors)"
	@echo "  curl -s http://$(HOST):$(PORT)/fhir/R4/Patient/pat-0001"
	@echo "  curl -s http://$(HOST):$(PORT)/fhir/R4/metadata | head -c 300"
	@echo "Authorization (SMART tokens) is not enabled yet in this build: the API is open on 127.0.0.1 only."
	@echo ""
	$(BIN)/fhir-api serve --host $(HOST) --port $(PORT) --workers 2

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
