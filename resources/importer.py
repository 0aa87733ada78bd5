"""``fhir-api import PATH...``: load Bundles and NDJSON files through the API's own transaction path.

Each file becomes transaction bundles posted in-process (the same validation, encryption, indexing,
authorization and audit as over HTTP, under a token for the operator's import), several files at once in
worker processes. Directory bundles (hospital and practitioner information, Synthea's names) go first and
alone, because patient bundles refer to them conditionally. NDJSON lines become transactions of ``chunk``
resources: PUT when the resource has an id (re-running updates instead of duplicating), POST otherwise.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMPORT_CLIENT = "fhir-api-import"
DIRECTORY_PREFIXES = ("hospital", "practitioner", "organization", "location")


@dataclass
class FileResult:
    path: str
    resources: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def expand(paths: list[str]) -> list[Path]:
    """Files named, and the .json/.ndjson files of directories named, directory bundles first."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(x for x in p.iterdir() if x.suffix in (".json", ".ndjson") and x.is_file())
        else:
            files.append(p)
    return sorted(files, key=lambda f: (not is_directory_bundle(f), str(f)))


def is_directory_bundle(path: Path) -> bool:
    return path.name.lower().startswith(DIRECTORY_PREFIXES)


def bundles_of(path: Path, chunk: int) -> Iterator[tuple[bytes, int]]:
    """(transaction bundle as JSON bytes, resource count) for one file."""
    if path.suffix == ".ndjson":
        batch: list[dict[str, Any]] = []
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    batch.append(_ndjson_entry(json.loads(line)))
                    if len(batch) >= chunk:
                        yield _transaction(batch), len(batch)
                        batch = []
        if batch:
            yield _transaction(batch), len(batch)
        return
    raw = path.read_bytes()
    doc = json.loads(raw)
    if doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch"):
        yield raw, len(doc.get("entry") or [])
    elif (
        doc.get("resourceType") == "Bundle"
    ):  # a collection or searchset: its resources, as an NDJSON would be
        entries = [_ndjson_entry(e["resource"]) for e in doc.get("entry") or [] if "resource" in e]
        yield _transaction(entries), len(entries)
    else:
        yield _transaction([_ndjson_entry(doc)]), 1


def _ndjson_entry(resource: dict[str, Any]) -> dict[str, Any]:
    res_type, res_id = resource.get("resourceType"), resource.get("id")
    if res_id:
        return {"resource": resource, "request": {"method": "PUT", "url": f"{res_type}/{res_id}"}}
    return {"resource": resource, "request": {"method": "POST", "url": res_type}}


def _transaction(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


# -- one worker process ----------------------------------------------------------------------------------
_APP: Any = None


def _client() -> Any:
    """This process's app and a client carrying the import's token (made once per worker)."""
    global _APP
    if _APP is None:
        from fhir_api import create_app
        from fhir_api.auth import tokens

        app = create_app({"AUDIT_CHAIN_INTERVAL": 0, "LOG_LEVEL": "WARNING"})
        with app.test_request_context():
            token, _ = tokens.issue(client_id=IMPORT_CLIENT, role="clinical-system", scope="system/*.*")
        _APP = (app, token)
    app, token = _APP
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def load_file(path: str, chunk: int = 500) -> FileResult:
    """Post every bundle of one file; a refused bundle is reported with its OperationOutcome's words."""
    result = FileResult(path)
    client = _client()
    for body, count in bundles_of(Path(path), chunk):
        result.resources += count
        resp = client.post("/fhir/R4", data=body, headers={"Content-Type": "application/fhir+json"})
        if resp.status_code != 200:
            result.failed += count
            payload = resp.get_json(silent=True) or {}
            said = (payload.get("issue") or [{}])[0].get("diagnostics") or resp.status
            result.errors.append(f"HTTP {resp.status_code}: {said}")
            continue
        for e in resp.get_json().get("entry", []):
            status = e.get("response", {}).get("status", "")
            if status.startswith("201"):
                result.created += 1
            elif status.startswith("200"):
                result.updated += 1
    return result


def run(
    files: list[Path], workers: int, chunk: int, progress: Callable[[FileResult], None]
) -> list[FileResult]:
    """Directory bundles one by one, then the rest over ``workers`` processes."""
    try:
        return _run(files, workers, chunk, progress)
    finally:
        close()


def close() -> None:
    """Release this process's app and its connections."""
    global _APP
    if _APP is not None:
        _APP[0].extensions["fhir_db"]["engine"].dispose()
        _APP = None


def _run(
    files: list[Path], workers: int, chunk: int, progress: Callable[[FileResult], None]
) -> list[FileResult]:
    results = []
    first = [f for f in files if is_directory_bundle(f)]
    rest = [f for f in files if not is_directory_bundle(f)]
    for f in first:
        r = load_file(str(f), chunk)
        progress(r)
        results.append(r)
    if not rest:
        return results
    if workers <= 1:
        for f in rest:
            r = load_file(str(f), chunk)
            progress(r)
            results.append(r)
        return results
    spawn = multiprocessing.get_context("spawn")  # nothing of this process's engine reaches the workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        futures = [pool.submit(load_file, str(f), chunk) for f in rest]
        for fut in as_completed(futures):
            r = fut.result()
            progress(r)
            results.append(r)
    return results
