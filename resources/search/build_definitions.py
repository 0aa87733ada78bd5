"""Maintainer script: trim the official R4 SearchParameter Bundle to the package file the server loads.

    python -m resources.search.build_definitions [PATH]

PATH defaults to ``../shared/fhir-r4/definitions/search-parameters.json`` (relative to the repository root).
The output, ``resources/data/search-parameters.json``, keeps only the fields search needs, one parameter
per line, so that a regenerated file diffs readably. Run it again only when the source definitions change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "fhir-r4" / "definitions" / "search-parameters.json"
OUTPUT = REPO_ROOT / "resources" / "data" / "search-parameters.json"

NOTE = (
    "Derived from the official FHIR R4 4.0.1 SearchParameter definitions (package hl7.fhir.r4.core 4.0.1, "
    "http://hl7.org/fhir/R4/searchparameter-registry.html), licensed CC0-1.0. Trimmed to the fields the "
    'server uses by resources/search/build_definitions.py; do not edit by hand. A target of "*" stands for '
    "every type listed in anyResourceType (the official lists name all 145 types that can be referenced)."
)
KEPT = ("id", "url", "code", "base", "type", "expression", "target", "multipleOr", "comparator", "modifier")


def any_resource_type(params: list[dict[str, Any]]) -> list[str]:
    """The longest target list, sorted: the official 'Any' target (every resource type but Parameters)."""
    return sorted(max((p.get("target", []) for p in params), key=len))


def trim(param: dict[str, Any], any_type: set[str]) -> dict[str, Any]:
    """The fields search needs, in a fixed order; components keep only definition and expression.

    Target lists naming every type (80 of them, 145 names each) become "*": they were 40% of the file."""
    out = {key: param[key] for key in KEPT if key in param}
    if set(out.get("target", ())) == any_type:
        out["target"] = "*"
    if "component" in param:
        out["component"] = [
            {"definition": c["definition"], "expression": c["expression"]} for c in param["component"]
        ]
    return out


def search_parameters(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The SearchParameter resources of the official Bundle, in source order."""
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("expected a Bundle of SearchParameter resources")
    params = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
    odd = [p.get("id") for p in params if p.get("resourceType") != "SearchParameter"]
    if odd:
        raise ValueError(f"not SearchParameter resources: {odd[:5]}")
    return params


def render(params: list[dict[str, Any]]) -> str:
    """Compact JSON, one parameter per line."""
    any_type = any_resource_type(params)
    lines = [json.dumps(trim(p, set(any_type)), separators=(",", ":"), ensure_ascii=False) for p in params]
    header = {"note": NOTE, "fhirVersion": "4.0.1", "anyResourceType": any_type}
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False)[:-1]
    return head + ',"parameters":[\n' + ",\n".join(lines) + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else DEFAULT_SOURCE
    params = search_parameters(json.loads(source.read_text(encoding="utf-8")))
    text = render(params)
    json.loads(text)  # never write a file the server cannot read
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(params)} search parameters ({len(text.encode()):,} bytes) to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
