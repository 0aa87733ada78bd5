"""The committed Postman collection is exactly what scripts/postman.py makes of the committed openapi.json,
and it holds every operation of the document."""

from __future__ import annotations

import difflib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "postman.py"
COLLECTION = ROOT / "docs" / "postman_collection.json"
OPENAPI = ROOT / "openapi.json"
HINT = "run `python scripts/postman.py` (or `make postman`) and commit docs/postman_collection.json"
METHODS = ("get", "post", "put", "patch", "delete", "head", "options")


@pytest.fixture(scope="module")
def postman() -> ModuleType:
    spec = importlib.util.spec_from_file_location("postman_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def collection() -> dict:
    return json.loads(COLLECTION.read_text(encoding="utf-8"))


def requests_of(collection: dict) -> list[dict]:
    return [item for folder in collection["item"] for item in folder["item"]]


def test_committed_collection_is_the_generated_one(postman):
    text = postman.generate(OPENAPI)
    committed = COLLECTION.read_text(encoding="utf-8") if COLLECTION.is_file() else ""
    if committed != text:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True),
            text.splitlines(keepends=True),
            "docs/postman_collection.json (committed)",
            "generated from openapi.json",
            n=2,
        )
        pytest.fail(f"the Postman collection is stale: {HINT}\n{''.join(list(diff)[:60])}", pytrace=False)


def test_generation_is_deterministic(postman, document):
    assert postman.render(postman.convert(document)) == postman.render(
        postman.convert(json.loads(json.dumps(document)))
    )


def test_every_operation_is_in_the_collection(document, collection):
    def template(path_segments: list[str]) -> str:
        return "/" + "/".join(f"{{{s[1:]}}}" if s.startswith(":") else s for s in path_segments)

    present = {
        (item["request"]["method"], template(item["request"]["url"]["path"]))
        for item in requests_of(collection)
    }
    ids = {item["id"].split(":")[0] for item in requests_of(collection)}
    missing = []
    for path, path_item in document["paths"].items():
        for method in METHODS:
            op = path_item.get(method)
            if op is None:
                continue
            if (method.upper(), path) not in present or op["operationId"] not in ids:
                missing.append(f"{method.upper()} {path} ({op['operationId']})")
    assert not missing, f"operations missing from the collection ({HINT}):\n" + "\n".join(missing)


def test_collection_shape(document, collection):
    assert (
        collection["info"]["schema"] == "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
    )
    assert [v["key"] for v in collection["variable"]] == ["baseUrl", "accessToken"]
    assert collection["auth"] == {
        "type": "bearer",
        "bearer": [{"key": "token", "value": "{{accessToken}}", "type": "string"}],
    }
    note = "\n".join(collection["event"][0]["script"]["exec"])
    assert collection["event"][0]["listen"] == "prerequest" and "get_token.py" in note
    assert (ROOT / "docs" / "samples" / "python" / "get_token.py").is_file()  # the note points at a real file
    tags = [t["name"] for t in document["tags"]]
    assert [f["name"] for f in collection["item"]] == [
        t
        for t in tags
        if any(
            (op.get("tags") or [None])[0] == t
            for p in document["paths"].values()
            for m, op in p.items()
            if m in METHODS
        )
    ]
    for item in requests_of(collection):
        url = item["request"]["url"]
        assert url["raw"].startswith("{{baseUrl}}/") and url["host"] == ["{{baseUrl}}"], item["id"]


def test_public_operations_send_no_token_and_bodies_come_from_the_examples(document, collection):
    by_id = {item["id"]: item for item in requests_of(collection)}
    assert by_id["fhir_capabilities"]["request"]["auth"] == {"type": "noauth"}
    assert by_id["auth_token"]["request"]["auth"] == {"type": "noauth"}
    assert "auth" not in by_id["fhir_read"]["request"]  # inherits the collection's bearer token
    create = by_id["fhir_create"]["request"]
    example = document["components"]["examples"]["Patient"]["value"]
    assert json.loads(create["body"]["raw"]) == example
    assert {"key": "Content-Type", "value": "application/fhir+json"} in create["header"]
    transaction = by_id["fhir_bundle:transaction"]["request"]
    assert json.loads(transaction["body"]["raw"])["type"] == "transaction"
    token = by_id["auth_token"]["request"]["body"]
    assert token["mode"] == "urlencoded"
    assert {f["key"] for f in token["urlencoded"]} >= {"grant_type", "client_assertion", "scope"}
    assert by_id["fhir_patch:patch"]["request"]["header"][0]["value"] == "application/json-patch+json"
    assert by_id["fhir_read"]["request"]["url"]["variable"][1] == {
        "key": "res_id",
        "value": "pat-0001",
        "description": "Logical id of the resource.",
    }


def test_the_script_checks_and_writes(tmp_path):
    target = tmp_path / "collection.json"
    run = [sys.executable, str(SCRIPT), "-o", str(target)]
    assert subprocess.run(run, capture_output=True, check=False).returncode == 0
    assert target.read_text(encoding="utf-8") == COLLECTION.read_text(encoding="utf-8")
    assert subprocess.run([*run, "--check"], capture_output=True, check=False).returncode == 0
    target.write_text("{}\n", encoding="utf-8")
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "python scripts/postman.py" in stale.stderr
