"""The committed openapi.json is exactly the document the code generates, and the one the app serves."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_api import openapi
from fhir_api.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"
HINT = "run `make openapi` (= .venv/bin/fhir-api openapi -o openapi.json) and commit openapi.json"


@pytest.fixture(scope="module")
def generated() -> dict:
    return openapi.build()


def test_committed_document_is_the_generated_one(generated):
    text = openapi.render(generated)
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.is_file() else ""
    if committed != text:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True),
            text.splitlines(keepends=True),
            "openapi.json (committed)",
            "openapi.json (generated from the code)",
            n=2,
        )
        shown = "".join(list(diff)[:80])
        pytest.fail(f"openapi.json differs from the code: {HINT}\n{shown}", pytrace=False)


def test_generation_is_deterministic(generated):
    assert openapi.render(openapi.build()) == openapi.render(generated)


def test_the_app_serves_the_generated_document(anonymous, generated):
    resp = anonymous.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.get_json() == generated


def test_the_command_writes_and_checks_the_document(tmp_path, generated):
    target = tmp_path / "openapi.json"
    runner = CliRunner()
    written = runner.invoke(main, ["openapi", "-o", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text(encoding="utf-8") == openapi.render(generated)
    assert runner.invoke(main, ["openapi", "--check", "-o", str(target)]).exit_code == 0

    target.write_text("{}\n", encoding="utf-8")
    stale = runner.invoke(main, ["openapi", "--check", "-o", str(target)])
    assert stale.exit_code == 1
    assert "make openapi" in stale.output
